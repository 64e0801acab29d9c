"""Checks a pretraining config before anything is built or compiled, with errors that say what to change.

A wrong config found after a 5-minute compile on a pod wastes the pod; found here it costs nothing.
"""
from __future__ import annotations

import jax
from etils import epath

from jepa_jax import sharding
from jepa_jax.models import attention, packing
from jepa_jax.models.vit import MODEL_ZOO


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def validate_model(model, platform: str | None = None) -> None:
  """platform: where the step will run (default: JAX's default backend); decides which attention kernels exist."""
  _require(model.name in MODEL_ZOO,
           f"config.model.name={model.name!r} is not a model; choose one of {sorted(MODEL_ZOO)}.")
  _require(model.crop_size % model.patch_size == 0,
           f"config.model.crop_size={model.crop_size} is not divisible by config.model.patch_size="
           f"{model.patch_size}; use a multiple, e.g. {model.crop_size // model.patch_size * model.patch_size}.")
  _require(model.num_frames % model.tubelet_size == 0,
           f"config.model.num_frames={model.num_frames} is not divisible by config.model.tubelet_size="
           f"{model.tubelet_size}; use a multiple of the tubelet size.")
  _require(model.dtype in ("float32", "bfloat16", "float16"),
           f"config.model.dtype={model.dtype!r}; use 'float32' or 'bfloat16'.")
  _require(model.remat in ("none", "full", "dots", "dots_no_batch"),
           f"config.model.remat={model.remat!r}; use 'none', 'full', 'dots' or 'dots_no_batch'.")
  try:
    attention.resolve(model.attention_impl, platform or jax.default_backend(), model.dtype)
    packing.check(model.context_packing, "config.model.context_packing")
    packing.check(model.predictor_packing, "config.model.predictor_packing", allow_auto=True)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate_batch(config, num_devices: int) -> int:
  """Checks the mesh against the devices and the batch against the mesh; returns the per-device batch."""
  try:
    shape = sharding.resolve_mesh_shape(config.mesh.shape, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dp = shape[0] * shape[1]
  batch, accum = config.data.batch_size, config.optim.grad_accum_steps
  _require(accum >= 1, f"config.optim.grad_accum_steps={accum} must be >= 1.")
  _require(batch % accum == 0,
           f"config.data.batch_size={batch} is not divisible by config.optim.grad_accum_steps={accum}.")
  micro = batch // accum
  _require(micro % dp == 0,
           f"the micro-batch config.data.batch_size / grad_accum_steps = {micro} is not divisible by the "
           f"data-parallel size {dp} (mesh 'data' x 'fsdp' = {shape[0]} x {shape[1]}); use a batch that is a "
           f"multiple of {dp * accum}, or change config.mesh.shape.")
  return micro // dp


def validate_data(data) -> None:
  if data.synthetic_videos > 0:
    return
  lists = [p for p in data.datasets if p]
  _require(bool(lists), "config.data.datasets is empty: give one or more video list files ('path label' per "
           "line), or set config.data.synthetic_videos > 0 for the synthetic demo data.")
  missing = [p for p in lists if not epath.Path(p).exists()]
  _require(not missing, f"data list files not found: {missing}. Fix config.data.datasets.")
  weights = tuple(data.datasets_weights)
  _require(not weights or len(weights) == len(lists),
           f"config.data.datasets_weights has {len(weights)} entries for {len(lists)} datasets; give one weight "
           "per list or none.")
  _require(data.num_clips >= 1, f"config.data.num_clips={data.num_clips} must be >= 1.")


def validate_masks(config, per_device_batch: int) -> None:
  from input_pipeline import masks  # Imported here: mask validation may simulate the official statistics.
  try:
    masks.mask_specs_from_config(config, per_device_batch)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate_pretrain_config(config, num_devices: int) -> int:
  """All checks for pretraining; returns the per-device batch."""
  validate_model(config.model)
  _require(config.data.frames_per_clip == config.model.num_frames,
           f"config.data.frames_per_clip={config.data.frames_per_clip} differs from config.model.num_frames="
           f"{config.model.num_frames}; the encoder is built for the clip length, so set both to the same value.")
  per_device_batch = validate_batch(config, num_devices)
  validate_data(config.data)
  validate_masks(config, per_device_batch)
  _require(config.checkpoint.every_steps > 0, "config.checkpoint.every_steps must be > 0.")
  _require(config.log_every > 0, "config.log_every must be > 0.")
  return per_device_batch
