"""Entry point: `python -m jepa_jax.main --config=configs/vith16.py --workdir=DIR [--config.x=y ...]`.

config.mode selects the job: 'pretrain' (V-JEPA pretraining) or 'probe' (frozen attentive-probe evaluation).
"""
import logging as logging_std

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder (local or gs://) for checkpoints, logs and outputs.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for explicit multi-process "
                                   "runs (TPU pods and SLURM are detected without it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes, with --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, with --coordinator_address.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with JAX's cluster "
                                 "auto-detection (every worker of a Cloud TPU pod slice passes this).")
flags.mark_flags_as_required(["config", "workdir"])


# Libraries whose INFO lines drown the training log (orbax prints a dozen per checkpoint); their warnings still show.
_QUIET_BELOW_WARNING = ("/orbax/", "/grain/", "/jax/_src/", "/etils/")


class _QuietLibraries(logging_std.Filter):

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or not any(p in record.pathname for p in _QUIET_BELOW_WARNING)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # XLA:CPU options the step runs faster with (jepa_jax/xla_cpu.py), set before jax starts its backends.
  from jepa_jax import xla_cpu
  xla_cpu.set_default_flags()
  # Imported after flag parsing so that --xla flags in the environment are read before jax starts.
  from jepa_jax import distributed
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  if config.mode == "pretrain":
    from jepa_jax import train
    train.train_and_evaluate(config, _WORKDIR.value)
  elif config.mode == "probe":
    from jepa_jax import evaluate
    evaluate.probe_and_evaluate(config, _WORKDIR.value)
  else:
    raise app.UsageError(f"config.mode={config.mode!r}; use 'pretrain' or 'probe'.")


if __name__ == "__main__":
  app.run(main)
