"""Orbax checkpoints of a pretraining run: train state, grain iterator state and config in one step.

One CheckpointManager step directory holds three items:
  state      the train state pytree (StandardSave; restored against an abstract target carrying shardings, which
             keeps int keys, optax namedtuples and the mesh layout)
  data_iter  the grain iterator position, one JSON file per process (grain's own orbax handler), so a resumed run
             sees the same batches (the official code does not restore its iterator, docs/reference.md §4.6)
  config     the run config as JSON, for export and evaluation without the config file
Saves are asynchronous: save() returns once device arrays are copied to host, and the write runs behind the next
steps. Orbax writes into a temporary directory and renames it when complete (or marks commit_success on object
stores), so a save killed midway leaves the previous step as the latest.

What goes wrong, and what is kept (docs/faults.md):
  - a damaged step (truncated or missing array files, unreadable JSON, a folder without its state): restore warns
    naming the step and the reason, moves it aside to `<step>.unreadable` (so orbax's max_to_keep never counts it
    and deletes the good step that was restored instead) and restores the newest readable step; when no step can
    be read, nothing is moved and NoReadableCheckpointError lists every step with its reason;
  - a full disk or quota while saving: DiskFullError names the workdir, the step and its size; the unfinished
    save's temporary folder is removed (and any left by a killed run is removed at the next start);
  - preemption: one stop step that every process agrees on (JAX's preemption sync manager, which
    jax.distributed.initialize starts and which owns SIGTERM); a single process without jax.distributed traps
    SIGTERM itself.
"""
import errno
import json
import re
import signal
import threading
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

_STATE, _DATA_ITER, _CONFIG = "state", "data_iter", "config"
UNREADABLE_SUFFIX = ".unreadable"
# Orbax's temporary step folders on a local disk: `<step>.orbax-checkpoint-tmp[-<timestamp>]`.
_TMP_STEP = re.compile(r"^\d+\.orbax-checkpoint-tmp")
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SPACE_MESSAGES = ("No space left on device", "Disk quota exceeded")  # strerror of ENOSPC and EDQUOT


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint step in the folder is damaged; the message lists each with its reason."""


class DiskFullError(OSError):
  """A save ran out of space (or quota); the last complete step is intact."""


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


def newest_whole_step(directory, steps) -> Optional[int]:
  """The newest of `steps` that step_damage() finds whole (a warning for each damaged one), else the newest: for
  readers, which must not move anything; the read itself may still find damage in array bytes."""
  directory = epath.Path(directory)
  for step in sorted(steps, reverse=True):
    reason = step_damage(directory / str(step))
    if reason is None:
      return step
    logging.warning("Checkpoint step %d in %s cannot be read: %s. Trying the previous step.", step, directory,
                    reason)
  return max(steps, default=None)


def describe_error(error: BaseException, limit: int = 300) -> str:
  """An exception as one short line: its root cause (tensorstore's wrapper message is a kilobyte of spec)."""
  return _short(error, limit)


def _short(error: BaseException, limit: int = 300) -> str:
  """An exception as one short line: its root cause (tensorstore's wrapper message is a kilobyte of spec)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = " ".join(str(error).split())
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[:limit] + " ..."


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds in every process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.array([int(ok)], np.int32))
  return bool(np.all(np.asarray(flags)))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def step_damage(step_dir: epath.Path) -> Optional[str]:
  """Why the step folder cannot be restored, found without reading arrays; None when it looks whole.

  Checks what a half-written or damaged folder lacks: the state item and its metadata, JSON files that parse
  (checkpoint metadata, state metadata, config, this process's iterator position) and array files that are not
  empty. A truncated array file that is not empty is only found by reading it (restore does).
  """
  if not step_dir.is_dir():
    return "the step folder is missing"
  if not (step_dir / _STATE).is_dir():
    return f"it has no '{_STATE}' folder (a half-written or foreign folder)"
  json_files = [step_dir / "_CHECKPOINT_METADATA", step_dir / _STATE / "_METADATA", step_dir / _CONFIG / "metadata"]
  iter_dir = step_dir / _DATA_ITER
  if iter_dir.is_dir():
    json_files.append(iter_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json")
  for path in json_files:
    if not path.exists():
      if path.name == "_METADATA" and path.parent.name == _STATE:
        return f"{path.relative_to(step_dir)} is missing"
      continue  # optional: older orbax wrote no _CHECKPOINT_METADATA; an imported checkpoint may hold no config
    try:
      json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      return f"{path.relative_to(step_dir)} is not valid JSON ({_short(e, 120)})"
  state = step_dir / _STATE
  for path in [*state.glob("d/*"), *state.glob("ocdbt.process_*/d/*")]:  # array data (OCDBT), never empty
    if path.stat().length == 0:
      return f"{path.relative_to(step_dir)} is empty (truncated array data)"
  return None


def is_out_of_space(error: BaseException) -> bool:
  """Whether an exception (or one it was raised from) reports a full disk or an exhausted quota."""
  seen, todo = set(), [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
      return True
    if any(m.lower() in str(e).lower() for m in _SPACE_MESSAGES):
      return True
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return False


def _human_bytes(n: int) -> str:
  for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} bytes"


def _state_nbytes(state) -> int:
  """Bytes of the saved arrays (global, uncompressed): what a save of `state` writes, give or take compression."""
  return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(state)))


class Checkpointer:
  """Saves every `every_steps`, keeps the last `keep`, restores the newest readable step."""

  def __init__(self, workdir_or_ckpt_dir, *, keep: int = 3, async_save: bool = True, every_steps: int = 1,
               read_only: bool = False):
    """read_only: for readers (export, pictures, tests) beside a live run: they must not delete the run's
    in-progress save, which a writable manager's start-up clean-up of temporary folders would do, nor move a step
    they cannot read."""
    self.directory = _resolve_dir(workdir_or_ckpt_dir)
    self.every_steps = int(every_steps)
    self.read_only = read_only
    self._async = bool(async_save)
    self.restored_step: Optional[int] = None
    self._sigterm = threading.Event()
    self._pending: Optional[tuple[int, int]] = None  # (step, bytes) of the save in flight
    self._failed = False
    if not read_only:
      self._remove_unfinished_saves()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,  # (orbax warns when a reader passes saving options)
        save_interval_steps=0 if read_only else 1,  # should_save() decides; force=True saves at any step.
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,  # object stores' unfinished steps (no commit_success marker)
        create=not read_only,
        read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_item_handlers())

  @property
  def workdir(self) -> epath.Path:
    return self.directory.parent if self.directory.name == "checkpoints" else self.directory

  def _remove_unfinished_saves(self) -> None:
    """Deletes the temporary folders of saves that never finished (a killed run, a full disk): they hold space
    and are never restored. Process 0 only, before any save of this run can exist."""
    if jax.process_index() != 0 or not self.directory.exists():
      return
    for path in self.directory.iterdir():
      if _TMP_STEP.match(path.name) and path.is_dir():
        logging.warning("Removing %s, left by a save that did not finish.", path)
        path.rmtree(missing_ok=True)

  # --- queries -------------------------------------------------------------------------------------------------
  def latest_step(self) -> Optional[int]:
    """The newest finalised step (temporaries of unfinished saves are never listed), or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

  # --- save ----------------------------------------------------------------------------------------------------
  def save(self, step: int, state, data_iterator=None, config=None, force: bool = False) -> bool:
    """Starts an (async) save of `state` at `step`; returns whether one started.

    Every process must call this (orbax writes each process's shards and iterator file). The iterator state is
    read now, synchronously, so later next() calls do not leak into the checkpoint. A save that runs out of space
    (this one, or the previous asynchronous one) raises DiskFullError.
    """
    if not (force or self.should_save(step)):
      return False
    self.wait()  # the previous async save's failure belongs to its own step
    if step in self._manager.all_steps():
      logging.info("checkpoint for step %d already exists; not saving again", step)
      return False
    items = {_STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[_DATA_ITER] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items[_CONFIG] = ocp.args.JsonSave(_config_to_json(config))
    self._pending = (step, _state_nbytes(state))
    try:
      started = bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))
    except Exception as e:  # pylint: disable=broad-except
      self._raise_if_out_of_space(e)
      raise
    if not self._async:
      self._pending = None
    return started

  def _raise_if_out_of_space(self, error: BaseException) -> None:
    if not is_out_of_space(error) or self._pending is None:
      return
    step, nbytes = self._pending
    self._pending, self._failed = None, True
    latest = self._manager.latest_step()
    removed = self._remove_failed_save(step)
    kept = (f"the last complete checkpoint, step {latest}, is kept and readable" if latest is not None
            else "there is no earlier checkpoint")
    raise DiskFullError(
        f"no space left on device (or quota exceeded) in workdir {self.workdir}: saving checkpoint step {step} "
        f"tried to write {nbytes} bytes ({_human_bytes(nbytes)}, the train state uncompressed){removed}; {kept}. "
        "Free space (or raise the quota) and rerun the same command: it resumes from the last complete step.",
    ) from error

  def _remove_failed_save(self, step: int) -> str:
    """Deletes the failed save's temporary folder at once (it holds space); process 0 only."""
    if jax.process_index() != 0:
      return ""
    removed = []
    for path in self.directory.iterdir() if self.directory.exists() else ():
      if _TMP_STEP.match(path.name) and path.name.split(".")[0] == str(step):
        try:
          path.rmtree(missing_ok=True)
          removed.append(path.name)
        except OSError as e:
          logging.warning("Could not remove %s: %s", path, e)
    return f"; its unfinished folder {removed[0]} was removed" if removed else ""

  # --- restore -------------------------------------------------------------------------------------------------
  def restore(self, abstract_state, data_iterator=None, step: Optional[int] = None):
    """The train state at `step` (default: the newest readable step), laid out like `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings (jax.eval_shape of the init plus the
    state shardings). A `data_iterator` is moved to the saved position in place. Without `step`, a damaged newer
    step is reported, moved aside (writable Checkpointers only) and the one before it tried; the step restored is
    in `self.restored_step`.
    """
    if step is not None:
      state = self._restore_step(step, abstract_state, data_iterator)
      self.restored_step = step
      return state
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    damaged = []
    for i, candidate in enumerate(steps):
      reason = step_damage(self.directory / str(candidate))
      if _all_processes_agree(reason is None):
        try:
          state = self._restore_step(candidate, abstract_state, data_iterator)
        except Exception as e:  # pylint: disable=broad-except  # any failure to read is a damaged step here
          reason = _short(e)
        if _all_processes_agree(reason is None):
          self._set_aside(damaged)
          self.restored_step = candidate
          return state
      reason = reason or "another process could not read its part (see that process's log)"
      logging.warning("Checkpoint step %d in %s cannot be read: %s.%s", candidate, self.directory, reason,
                      " Trying the previous step." if i + 1 < len(steps) else "")
      damaged.append((candidate, reason))
    listing = "; ".join(f"step {s}: {r}" for s, r in damaged)
    raise NoReadableCheckpointError(
        f"no checkpoint in {self.directory} can be read ({listing}). Nothing was moved or deleted. If the steps "
        "were written with another config (model size, optimizer), run with that config; if they are damaged, "
        "restore the folder from a copy, or move it away to start the run from scratch.")

  def _restore_step(self, step: int, abstract_state, data_iterator):
    items = {_STATE: ocp.args.StandardRestore(abstract_state)}
    # A checkpoint imported from PyTorch has no data position (neither does the official one): the stream
    # then starts from its beginning.
    if data_iterator is not None and (self.directory / str(step) / _DATA_ITER).exists():
      items[_DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))[_STATE]

  def _set_aside(self, damaged) -> None:
    """Renames damaged steps to `<step>.unreadable` (kept for inspection, never deleted), so that orbax neither
    lists them as the latest step nor counts them in max_to_keep and deletes the good step restored instead."""
    if not damaged or self.read_only:
      return
    if jax.process_index() == 0:
      for step, _ in damaged:
        source = self.directory / str(step)
        target = self.directory / f"{step}{UNREADABLE_SUFFIX}"
        n = 1
        while target.exists():
          n += 1
          target = self.directory / f"{step}{UNREADABLE_SUFFIX}.{n}"
        source.rename(target)
        logging.warning("Moved the unreadable checkpoint step %d to %s (kept for inspection; delete it when done).",
                        step, target)
    _barrier("checkpointing: unreadable steps set aside")
    self._manager.reload()

  def restore_config(self, step: Optional[int] = None):
    """The config saved with `step` (default: the newest step whose config can be read)."""
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps or steps[0] is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    for i, candidate in enumerate(steps):
      try:
        return self._manager.restore(
            candidate, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))[_CONFIG]
      except Exception as e:  # pylint: disable=broad-except
        if step is not None or i == len(steps) - 1:
          raise
        logging.warning("The config of checkpoint step %d in %s cannot be read (%s); using step %d's.", candidate,
                        self.directory, _short(e), steps[i + 1])

  # --- preemption ----------------------------------------------------------------------------------------------
  def install_sigterm_handler(self):
    """Makes SIGTERM a request to save and stop, agreed by every process.

    Under jax.distributed, JAX's preemption sync manager already owns SIGTERM: it tells every process, and
    reached_preemption(step) turns true at the same step everywhere. A Python handler would replace JAX's and
    leave a per-process flag (processes stopping at different steps then wait forever in a collective), so none
    is installed. A single process without jax.distributed sets a flag instead of dying. Only the main thread may
    install signal handlers; the previous one is put back by close().
    """
    if jax.distributed.is_initialized():
      logging.info("SIGTERM is handled by JAX's preemption sync manager (all processes stop at the same step).")
      return

    def handler(signum, frame):
      del frame
      logging.warning("signal %d received: saving a checkpoint at the next step and exiting", signum)
      self._sigterm.set()
    self._previous_handler = signal.signal(signal.SIGTERM, handler)

  def reached_preemption(self, step: int) -> bool:
    """True when the run should save now and stop, at the same step in every process.

    Every process must call it at every step (JAX's sync protocol picks the step after the largest one any
    process has reported). orbax asks JAX's preemption sync manager; without jax.distributed that answers False
    and our SIGTERM flag decides.
    """
    return bool(self._manager.reached_preemption(step)) or self._sigterm.is_set()

  should_stop = reached_preemption  # the loop's name for it

  # --- lifetime -----------------------------------------------------------------------------------------------
  def wait(self):
    """Blocks until the async save in flight (if any) is on disk; DiskFullError if it ran out of space."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if self._failed:
        return  # already reported
      self._raise_if_out_of_space(e)
      raise
    self._pending = None

  def close(self):
    """Waits for the save in flight (DiskFullError the first time a save is found out of space) and closes."""
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise
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
  Without `step`, a damaged newest step is reported and the one before it read (nothing is moved: a reader may
  run beside the training run).
  """
  directory = _resolve_dir(workdir_or_ckpt_dir)
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0)
  manager = ocp.CheckpointManager(
      directory, options=options, item_handlers={_STATE: ocp.PyTreeCheckpointHandler()})
  try:
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    restore_args = jax.tree.map(_restore_arg, abstract_subset)
    args = ocp.args.PyTreeRestore(item=abstract_subset, restore_args=restore_args, partial_restore=True)
    damaged = []
    for candidate in steps:
      reason = None if step is not None else step_damage(directory / str(candidate))
      if reason is None:
        try:
          return manager.restore(candidate, args=ocp.args.Composite(**{_STATE: args}))[_STATE]
        except Exception as e:  # pylint: disable=broad-except
          if step is not None:
            raise
          reason = _short(e)
      logging.warning("Checkpoint step %d in %s cannot be read: %s. Trying the previous step.", candidate,
                      directory, reason)
      damaged.append((candidate, reason))
    listing = "; ".join(f"step {s}: {r}" for s, r in damaged)
    raise NoReadableCheckpointError(f"no checkpoint in {directory} can be read ({listing}).")
  finally:
    manager.close()


def _restore_arg(leaf):
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape, dtype=leaf.dtype)
