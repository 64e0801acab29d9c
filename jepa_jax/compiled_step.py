"""The pretraining step as it runs: jitted with its shardings and a donated state, compiled once for the shapes of
one global batch before the first batch exists, and what the compiler says about it.

train.py compiles through here, and so do the benchmarks (bench/train_step.py, bench/memory_plan.py), so a figure
measured there is the step the training loop runs.
"""
from __future__ import annotations

import functools
import time

import jax
import numpy as np
from absl import logging
from flax import nnx

from jepa_jax import sharding
from jepa_jax import train_step as train_step_lib


def abstract_batch(config, specs, mesh) -> dict:
  """ShapeDtypeStructs of one global batch as the input pipeline yields it, sharded over the batch axes."""
  m, b = config.model, config.data.batch_size
  sh = sharding.batch_sharding(mesh)
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
  return {
      "clips": sds((b, m.num_frames, m.crop_size, m.crop_size, 3), np.uint8),
      "labels": sds((b,), np.int32),
      "context_masks": tuple(sds((b, s.num_context), np.int32) for s in specs),
      "target_masks": tuple(sds((b, s.num_target), np.int32) for s in specs),
  }


def compile_train_step(config, fns, state_shardings, abstract_state, specs, mesh):
  """Lowers and compiles train_step.train_step for the abstract state and batch: one compile per run.

  The state is donated (updated in place); the metrics come back replicated. Returns (compiled, lower seconds,
  compile seconds).
  """
  jitted = jax.jit(functools.partial(train_step_lib.train_step, fns=fns),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.logical_rules(config.mesh)):
    t0 = time.perf_counter()
    lowered = jitted.lower(abstract_state, abstract_batch(config, specs, mesh))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  return compiled, t1 - t0, t2 - t1


def memory_figures(compiled) -> dict:
  """Per-device bytes of the compiled program ({} where the backend reports none).

  'peak' is peak_memory_in_bytes where the backend fills it (TPU); otherwise arguments + outputs + temporaries -
  aliased (donated) bytes, an upper bound.
  """
  ma = compiled.memory_analysis()
  if ma is None:
    return {}
  get = lambda k: int(getattr(ma, k, 0) or 0)
  out = {k: get(k + "_in_bytes") for k in ("argument_size", "output_size", "temp_size", "alias_size",
                                             "generated_code_size")}
  peak = get("peak_memory_in_bytes")
  out["peak_from_backend"] = bool(peak)
  out["peak"] = peak or (out["argument_size"] + out["output_size"] + out["temp_size"] - out["alias_size"])
  return out


def log_compiled(compiled, step_flops_total: float, num_devices: int) -> None:
  """The console lines after the compile: memory per device and the analytic FLOPs of one step."""
  mem = memory_figures(compiled)
  if mem:
    gib = 1024 ** 3
    logging.info("Compiled step memory per device: arguments %.2f GiB, outputs %.2f GiB, temporaries %.2f GiB, "
                 "generated code %.2f MiB.", mem["argument_size"] / gib, mem["output_size"] / gib,
                 mem["temp_size"] / gib, mem["generated_code_size"] / 2 ** 20)
  logging.info("Analytic FLOPs per step: %.4g total, %.4g per device.", step_flops_total,
               step_flops_total / num_devices)
