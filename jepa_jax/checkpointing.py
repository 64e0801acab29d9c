"""Orbax checkpoints of a pretraining run: train state, grain iterator state and config in one step.

One CheckpointManager step directory holds three items:
  state      the train state pytree (StandardSave; restored against an abstract target carrying shardings, which
             keeps int keys, optax namedtuples and the mesh layout; nnx_functional_patterns §6)
  data_iter  the grain iterator position, one JSON file per process (grain's own orbax handler), so a resumed run
             sees the same batches (the official code does not restore its iterator, reference §4.6)
  config     the run config as JSON, for export and evaluation without the config file
Saves are asynchronous: save() returns once device arrays are copied to host, and the write runs behind the next
steps. Orbax writes into a temporary directory and renames it when complete (or marks commit_success on object
stores), so a save killed midway leaves the previous step as the latest; stale temporaries are removed at start.
"""
import json
import signal
import threading
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

_STATE, _DATA_ITER, _CONFIG = "state", "data_iter", "config"


def _item_handlers(state_handler=None):
  return {
      _STATE: state_handler or ocp.StandardCheckpointHandler(),
      _DATA_ITER: grain.checkpoint.CheckpointHandler(),
      _CONFIG: ocp.JsonCheckpointHandler(),
  }


def _resolve_dir(workdir_or_ckpt_dir) -> epath.Path:
  """A workdir gets a 'checkpoints' subfolder; a path already named 'checkpoints' is used as is."""
  path = epath.Path(workdir_or_ckpt_dir)
  return path if path.name == "checkpoints" else path / "checkpoints"


def _config_to_json(config) -> Mapping[str, Any]:
  """An ml_collections ConfigDict as plain JSON data (tuples become lists); plain dicts pass through."""
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return config


class Checkpointer:
  """Saves every `every_steps`, keeps the last `keep`, restores the latest complete step."""

  def __init__(self, workdir_or_ckpt_dir, *, keep: int = 3, async_save: bool = True, every_steps: int = 1,
               read_only: bool = False):
    """read_only: for readers (export, pictures, tests) beside a live run: they must not delete the run's
    in-progress save, which a writable manager's start-up clean-up of temporary folders would do."""
    self.directory = _resolve_dir(workdir_or_ckpt_dir)
    self.every_steps = int(every_steps)
    self._sigterm = threading.Event()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=1,  # should_save() decides; force=True must be able to save at any step.
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,  # leftovers of a save killed midway
        create=not read_only,
        read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_item_handlers())

  # --- queries -------------------------------------------------------------------------------------------------
  def latest_step(self) -> Optional[int]:
    """The newest finalised step (temporaries of unfinished saves are never listed), or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

  # --- save / restore ------------------------------------------------------------------------------------------
  def save(self, step: int, state, data_iterator=None, config=None, force: bool = False) -> bool:
    """Starts an (async) save of `state` at `step`; returns whether one started.

    Every process must call this (orbax writes each process's shards and iterator file). The iterator state is
    read now, synchronously, so later next() calls do not leak into the checkpoint.
    """
    if not (force or self.should_save(step)):
      return False
    if step in self._manager.all_steps():
      logging.info("checkpoint for step %d already exists; not saving again", step)
      return False
    items = {_STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[_DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items[_CONFIG] = ocp.args.JsonSave(_config_to_json(config))
    return bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))

  def restore(self, abstract_state, data_iterator=None, step: Optional[int] = None):
    """The train state at `step` (default: latest complete), laid out like `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings (jax.eval_shape of the init plus the
    state shardings). A `data_iterator` is moved to the saved position in place.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    items = {_STATE: ocp.args.StandardRestore(abstract_state)}
    # A checkpoint imported from PyTorch has no data position (neither does the official one): the stream
    # then starts from its beginning.
    if data_iterator is not None and (self.directory / str(step) / _DATA_ITER).exists():
      items[_DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored[_STATE]

  def restore_config(self, step: Optional[int] = None):
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))[_CONFIG]

  # --- preemption ----------------------------------------------------------------------------------------------
  def install_sigterm_handler(self):
    """On SIGTERM, set a flag instead of dying; the loop sees it in reached_preemption(), saves and exits.

    Only the main thread may install signal handlers; the previous handler is kept for restore.
    """
    def handler(signum, frame):
      del frame
      logging.warning("signal %d received: saving a checkpoint at the next step and exiting", signum)
      self._sigterm.set()
    self._previous_handler = signal.signal(signal.SIGTERM, handler)

  def reached_preemption(self, step: int) -> bool:
    """True when the run should save now and stop: orbax's multi-host preemption sync point or our SIGTERM flag.

    orbax's check agrees across processes (every host stops at the same step) when jax.distributed runs the
    preemption service; the SIGTERM flag is per process, which suffices when every host receives the signal.
    """
    return bool(self._manager.reached_preemption(step)) or self._sigterm.is_set()

  should_stop = reached_preemption  # the loop's name for it

  # --- lifetime -----------------------------------------------------------------------------------------------
  def wait(self):
    """Blocks until the async save in flight (if any) is on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
    if getattr(self, "_previous_handler", None) is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def restore_params_only(workdir_or_ckpt_dir, abstract_subset, step: Optional[int] = None):
  """Reads only some top-level entries of a saved train state (e.g. 'params' and 'target_encoder').

  For export and evaluation: the optimizer moments (2x the params) are never read or placed in device memory.
  `abstract_subset` is e.g. {'params': abstract_params, 'target_encoder': abstract_target}, leaves
  jax.ShapeDtypeStruct (with shardings to place them; without, they come back on the default device).
  Uses orbax's partial restore (PyTreeRestore(partial_restore=True)), which skips entries missing from the target.
  """
  directory = _resolve_dir(workdir_or_ckpt_dir)
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  manager = ocp.CheckpointManager(
      directory, options=options, item_handlers={_STATE: ocp.PyTreeCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    restore_args = jax.tree.map(_restore_arg, abstract_subset)
    args = ocp.args.PyTreeRestore(item=abstract_subset, restore_args=restore_args, partial_restore=True)
    return manager.restore(step, args=ocp.args.Composite(**{_STATE: args}))[_STATE]
  finally:
    manager.close()


def _restore_arg(leaf):
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape, dtype=leaf.dtype)
