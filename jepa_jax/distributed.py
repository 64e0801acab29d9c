"""Multi-process start-up: jax.distributed from the environment or explicit flags, and a config agreement check."""
from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def _is_slurm_multi_task() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_NODELIST" in os.environ


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               auto: bool = False) -> None:
  """Starts jax.distributed when this run spans several processes.

  Explicit flags win (local multi-process tests, custom clusters); `auto` (the launch scripts' --distributed) lets
  JAX's own cluster detection find Cloud TPU pods and SLURM; a SLURM job with several tasks is detected without it.
  A single process on one host needs nothing.
  """
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address needs --num_processes and --process_id as well.")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto or _is_slurm_multi_task():
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def config_fingerprint(config) -> int:
  """A 63-bit hash of the config's JSON, equal in every process that read the same config."""
  digest = hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).digest()
  return int.from_bytes(digest[:8], "little") >> 1


def check_config_agrees_across_processes(config) -> None:
  """Refuses to start when processes were given different configs (a silent source of wrong runs)."""
  if jax.process_count() == 1:
    return
  mine = np.array([config_fingerprint(config)], dtype=np.int64)
  everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
  if not np.all(everyone == everyone[0]):
    raise ValueError(
        f"the processes of this run were started with different configs (fingerprints {everyone.tolist()}); "
        "start every worker with the same --config file and the same --config.* overrides.")
