"""Entry point: `python -m jepa_jax.main --config=configs/vith16.py --workdir=DIR [--config.x=y ...]`.

--config also takes a shipped config by name (`--config=demo`, `--config=eval/vitl16_k400`): config_files.py.

config.mode selects the job: 'pretrain' (V-JEPA pretraining) or 'probe' (frozen attentive-probe evaluation).
Errors the user can fix print one line and exit 2; faults during the run print one line and exit 1 (jepa_jax/cli.py).
"""
from absl import flags

from jepa_jax import cli
from jepa_jax import config_files

_CONFIG = config_files.DEFINE_config("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder (local or gs://) for checkpoints, logs and outputs.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for explicit multi-process "
                                   "runs (TPU pods and SLURM are detected without it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes, with --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, with --coordinator_address.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with JAX's cluster "
                                 "auto-detection (every worker of a Cloud TPU pod slice passes this).")
flags.mark_flags_as_required(["config", "workdir"])

_MODES = ("pretrain", "probe")


def _lock_workdir(workdir: str):
  """Process 0 takes the workdir's lock; every process learns whether it did, so none goes on alone into a
  collective. Returns the lock (None in the other processes)."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  from jepa_jax import run_lock
  lock, refusal = None, None
  if jax.process_index() == 0:
    try:
      lock = run_lock.WorkdirLock(workdir).acquire()
    except run_lock.WorkdirLockedError as e:
      refusal = e
  if jax.process_count() > 1:
    locked = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is None)))
    if not locked and refusal is None:
      refusal = run_lock.WorkdirLockedError(f"process 0 could not lock workdir {workdir}; see its log.")
  if refusal is not None:
    raise refusal
  return lock


def main(argv):
  from absl import app
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.mode not in _MODES:
    from jepa_jax.config_validation import ConfigError
    raise ConfigError(f"config.mode={config.mode!r}; use 'pretrain' or 'probe'.")
  # XLA:CPU options the step runs faster with (jepa_jax/xla_cpu.py), set before jax starts its backends.
  from jepa_jax import xla_cpu
  xla_cpu.set_default_flags()
  # Imported after flag parsing so that --xla flags in the environment are read before jax starts.
  from jepa_jax import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)
  lock = _lock_workdir(_WORKDIR.value)
  try:
    if config.mode == "pretrain":
      from jepa_jax import train
      train.train_and_evaluate(config, _WORKDIR.value)
    else:
      from jepa_jax.evaluation import loops
      loops.probe_and_evaluate(config, _WORKDIR.value)
  finally:
    if lock is not None:
      lock.release()


if __name__ == "__main__":
  cli.run(main)
