"""The pretraining loop, read top to bottom: config check → mesh → data → state → restore → compile → loop.

The math of one step lives in train_step.py; this file only wires it to data, devices, checkpoints and logs.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from input_pipeline import masks as masks_lib
from input_pipeline import pipeline
from jepa_jax import checkpointing
from jepa_jax import compiled_step
from jepa_jax import config_validation
from jepa_jax import distributed
from jepa_jax import flops as flops_lib
from jepa_jax import metrics as metrics_lib
from jepa_jax import optim
from jepa_jax import profiling
from jepa_jax import remat_plans
from jepa_jax import schedules
from jepa_jax import sharding
from jepa_jax import synthetic_data
from jepa_jax import train_state
from jepa_jax import train_step as train_step_lib
from jepa_jax import visualize
from jepa_jax.models import attention
from jepa_jax.progress import ProgressBar


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains V-JEPA as configured; resumes from the latest checkpoint in workdir. Returns the last metrics."""
  workdir = epath.Path(workdir)
  is_primary = jax.process_index() == 0

  # --- Config check: before anything is built or compiled ---
  num_devices = jax.device_count()
  per_device_batch = config_validation.validate_pretrain_config(config, num_devices)
  with config.unlocked():  # 'auto' -> this chip's plan, before config.json and the checkpoints record the config
    remat_plans.resolve(config.model, jax.devices()[0].device_kind, per_device_batch,
                        attention.resolve(config.model.attention_impl, jax.default_backend(), config.model.dtype))
  if is_primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  distributed.check_config_agrees_across_processes(config)

  # --- Synthetic demo data, written once by process 0 ---
  if config.data.synthetic_videos > 0:
    lists = synthetic_data.ensure_synthetic_videos(config, workdir, is_primary=is_primary)
    multihost_utils.sync_global_devices("synthetic data written")
    with config.unlocked():
      config.data.datasets = tuple(lists)

  # --- Mesh ---
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape), num_devices, jax.process_count())

  # --- Masks and input pipeline ---
  specs = masks_lib.mask_specs_from_config(config, per_device_batch)
  logging.info("Mask generators (context, target tokens): %s",
               [(s.num_context, s.num_target) for s in specs])
  mask_fn = masks_lib.MultiBlockMaskGenerator(
      specs, crop_size=config.model.crop_size, num_frames=config.model.num_frames,
      patch_size=config.model.patch_size, tubelet_size=config.model.tubelet_size)
  dataset = pipeline.make_pretrain_dataset(
      config, mask_fn=mask_fn, global_batch_size=config.data.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(), seed=config.seed)
  data_iter = iter(dataset)

  # --- Model, optimizer, shardings ---
  defs = train_state.model_defs(config)
  tx = optim.make_optimizer(config.optim)
  with jax.set_mesh(mesh):
    state_sh = train_state.state_shardings(defs, tx, mesh, rules)
  fns = train_step_lib.make_step_functions(config, defs.encoder_def, defs.predictor_def, tx)
  total_steps = schedules.total_steps(config.optim)

  # --- Restore the latest checkpoint, or initialise ---
  ckpt = checkpointing.Checkpointer(
      workdir / "checkpoints", keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
      every_steps=config.checkpoint.every_steps)
  ckpt.install_sigterm_handler()
  abstract = train_state.abstract_state(defs, tx, state_sh)
  if ckpt.latest_step() is not None:  # the newest readable step; damaged newer ones are reported and set aside
    state = ckpt.restore(abstract, data_iterator=data_iter)
    logging.info("Resumed from step %d.", int(state["step"]))
  elif config.get("init_from"):  # the V-JEPA 2 cooldown: weights and moments from a run or file, schedules at 0
    from jepa_jax import warm_start
    state = warm_start.initial_state(config, tx, state_sh)
  else:
    state = train_state.create_train_state(config, tx, state_sh, seed=config.seed)
  start_step = int(jax.device_get(state["step"]))
  if start_step >= total_steps:
    logging.info("This run already finished (step %d of %d); nothing to do.", start_step, total_steps)
    ckpt.close()
    return {}

  # --- Compile once: static shapes, donated state ---
  compiled, lower_s, compile_s = compiled_step.compile_train_step(config, fns, state_sh, abstract, specs, mesh)
  flops_per_step = flops_lib.train_step_flops_from_config(config, specs)["total"]
  logging.info("Compiled the train step in %.1f s.", lower_s + compile_s)
  compiled_step.log_compiled(compiled, flops_per_step, num_devices)

  # --- Loop ---
  writer = metrics_lib.MetricsWriter(workdir, is_primary=is_primary, write_tag=config.write_tag)
  tokens_per_clip = (config.model.num_frames // config.model.tubelet_size) * (
      config.model.crop_size // config.model.patch_size) ** 2
  device_kind = jax.devices()[0].device_kind
  progress = ProgressBar(total=total_steps, initial=start_step, enabled=is_primary)
  profiler = profiling.ProfilerWindow(workdir, config.profile_steps, enabled=is_primary)
  last_metrics, window_start, window_steps = {}, time.perf_counter(), 0
  step = start_step
  try:
    while step < total_steps:
      profiler.maybe_start(step)
      local = next(data_iter)
      batch = sharding.host_local_batch_to_global(local, mesh)
      state, metrics = compiled(state, batch)
      step += 1
      window_steps += 1
      profiler.maybe_stop(step, sync=metrics["loss"])

      stopping = ckpt.should_stop(step)
      if step % config.log_every == 0 or step == total_steps or ckpt.should_save(step) or stopping:
        metrics = jax.device_get(metrics)  # The one host sync: at log steps only.
        if not np.isfinite(metrics["loss"]):
          raise NonFiniteLossError(
              f"loss is {metrics['loss']} at step {step}; stopping. The last good checkpoint (step "
              f"{ckpt.latest_step()}) is kept in {workdir / 'checkpoints'}. Lower config.optim.lr or check the data.")
        elapsed = time.perf_counter() - window_start
        step_time = elapsed / window_steps
        clips_per_s = config.data.batch_size / step_time
        last_metrics = {
            **{k: float(v) for k, v in metrics.items()},
            "wall_time_ms": step_time * 1e3,
            "clips_per_s": clips_per_s,
            "tokens_per_s_per_device": clips_per_s * tokens_per_clip / num_devices,
            "mfu": metrics_lib.mfu(flops_per_step, step_time, num_devices, device_kind),
            "skipped_videos": pipeline.skipped_files(),
        }
        writer.write(step, last_metrics, ipe=config.optim.ipe)
        progress.update(step, last_metrics)
        window_start, window_steps = time.perf_counter(), 0

      if ckpt.should_save(step) or stopping or step == total_steps:
        ckpt.save(step, state, data_iterator=data_iter, config=config, force=True)
        if is_primary:
          try:
            visualize.write_curves(workdir)
          except OSError as e:  # a picture is not worth stopping the run for (a full disk is found by the save)
            logging.warning("Could not write the loss curves picture: %s", e)
        if stopping:
          logging.warning("Preemption signal received: saved step %d and stopping.", step)
          break
  finally:  # A crash or a NaN stop still finishes the last save and flushes the logs.
    try:
      ckpt.close()  # waits for the last async save: DiskFullError when it ran out of space
    finally:
      writer.close()
      progress.close()
  finished = step >= total_steps
  if is_primary and config.visualize_at_end and finished:
    for name, path in visualize.write_run_pictures(workdir, config).items():
      print(f"{name}: {path}")
  if config.probe_at_end and finished:
    from jepa_jax.evaluation import demo_report  # the probe code is only needed at the end of the demo
    demo_report.report_demo_probe(workdir)
  return last_metrics
