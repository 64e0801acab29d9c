"""Checks a pretraining config before anything is built or compiled, with errors that say what to change.

A wrong config found after a 5-minute compile on a pod wastes the pod; found here it costs nothing. Every message
names the field by its full name (config.optim.lr), as it is given on the command line.
"""
from __future__ import annotations

import math

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
  for name in ("patch_size", "tubelet_size", "num_frames", "crop_size", "pred_depth", "pred_embed_dim"):
    _require(model[name] >= 1, f"config.model.{name}={model[name]} must be >= 1.")
  for name in ("embed_dim", "depth", "num_heads", "pred_num_heads"):
    _require(model[name] >= 0, f"config.model.{name}={model[name]} must be >= 0 (0: the zoo's value).")
  _require(model.crop_size % model.patch_size == 0,
           f"config.model.crop_size={model.crop_size} is not divisible by config.model.patch_size="
           f"{model.patch_size}; use a multiple, e.g. {model.crop_size // model.patch_size * model.patch_size}.")
  _require(model.num_frames % model.tubelet_size == 0,
           f"config.model.num_frames={model.num_frames} is not divisible by config.model.tubelet_size="
           f"{model.tubelet_size}; use a multiple of the tubelet size.")
  _require(model.dtype in ("float32", "bfloat16", "float16"),
           f"config.model.dtype={model.dtype!r} is not a compute dtype; use 'float32', 'bfloat16' or 'float16'.")
  _require(model.remat in ("none", "full", "dots", "dots_no_batch", "auto"),
           f"config.model.remat={model.remat!r}; use 'none', 'full', 'dots', 'dots_no_batch' or 'auto' (the chip's "
           "plan: jepa_jax/remat_plans.py).")
  try:
    attention.resolve(model.attention_impl, platform or jax.default_backend(), model.dtype)
    packing.check(model.context_packing, "config.model.context_packing")
    packing.check(model.predictor_packing, "config.model.predictor_packing", allow_auto=True)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  validate_positions(model)


def validate_positions(model) -> None:
  """The V-JEPA 2 fields: positional scheme, mask tokens and their rule (docs/reference.md §9.1, §9.2)."""
  from jepa_jax import models  # the zoo's sizes, to check the RoPE head dims
  pos_embed = model.get("pos_embed", "sincos")
  _require(pos_embed in ("sincos", "rope"),
           f"config.model.pos_embed={pos_embed!r}; use 'sincos' (V-JEPA 1) or 'rope' (V-JEPA 2).")
  rule = model.get("mask_token_rule", "generator")
  _require(rule in ("generator", "frame_group"),
           f"config.model.mask_token_rule={rule!r}; use 'generator' (V-JEPA 1: generator g uses mask token g) or "
           "'frame_group' (V-JEPA 2: token of the frame-count group, 0 with one group).")
  _require(model.get("num_mask_tokens", 0) >= 0,
           f"config.model.num_mask_tokens={model.get('num_mask_tokens')} must be >= 0 (0: one per mask generator).")
  if pos_embed == "rope":
    dims = models.model_dims(model)
    for field, width, heads in (("num_heads", dims.embed_dim, dims.num_heads),
                                ("pred_num_heads", dims.pred_embed_dim, dims.pred_num_heads)):
      # 3-D RoPE rotates three chunks of 2 * ((head_dim // 3) // 2) channels: each needs at least 2.
      _require(width // heads >= 6,
               f"config.model.pos_embed='rope' needs a head dim of at least 6 (2 channels per axis t, h, w), but "
               f"{width} / {heads} heads = {width // heads}; lower config.model.{field}.")


def validate_init_from(config) -> None:
  """A cooldown (linear decay) starts from a pretraining run or file, as the official is_anneal needs anneal_ckpt."""
  if config.optim.get("lr_schedule", "warmup_cosine") == "linear_decay":
    _require(bool(config.get("init_from")),
             "config.optim.lr_schedule='linear_decay' is the V-JEPA 2 cooldown, which starts from a pretraining run: "
             "set --config.init_from=PRETRAIN_WORKDIR (or a checkpoint file such as vitl.pt).")


def validate_batch(config, num_devices: int) -> int:
  """Checks the mesh against the devices and the batch against the mesh; returns the per-device batch."""
  try:
    shape = sharding.resolve_mesh_shape(config.mesh.shape, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  dp = shape[0] * shape[1]
  batch, accum = config.data.batch_size, config.optim.grad_accum_steps
  _require(batch >= 1, f"config.data.batch_size={batch} must be >= 1 (clips per optimizer step, all devices).")
  _require(accum >= 1, f"config.optim.grad_accum_steps={accum} must be >= 1.")
  _require(batch % accum == 0,
           f"config.data.batch_size={batch} is not divisible by config.optim.grad_accum_steps={accum}.")
  micro = batch // accum
  _require(micro % dp == 0,
           f"the micro-batch config.data.batch_size / config.optim.grad_accum_steps = {micro} is not divisible by the "
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


def validate_data_numbers(data) -> None:
  """Numbers of config.data that any run (synthetic or not) uses."""
  _require(data.frames_per_clip >= 1, f"config.data.frames_per_clip={data.frames_per_clip} must be >= 1.")
  _require(data.frame_step >= 1, f"config.data.frame_step={data.frame_step} must be >= 1.")
  _require(data.fps >= 0, f"config.data.fps={data.fps} must be >= 0 (0: use config.data.frame_step).")
  _require(data.clip_duration >= 0, f"config.data.clip_duration={data.clip_duration} must be >= 0 (0: off).")
  _require(data.num_workers >= 0, f"config.data.num_workers={data.num_workers} must be >= 0 (0: decode in the "
           "main process).")
  _require(data.prefetch_buffer >= 1, f"config.data.prefetch_buffer={data.prefetch_buffer} must be >= 1.")
  _require(0 <= data.max_failure_fraction <= 1,
           f"config.data.max_failure_fraction={data.max_failure_fraction} must be in [0, 1].")
  _require(data.synthetic_videos >= 0, f"config.data.synthetic_videos={data.synthetic_videos} must be >= 0.")
  lo, hi = data.random_resize_scale
  _require(0 < lo <= hi <= 1, f"config.data.random_resize_scale=({lo}, {hi}) must satisfy 0 < min <= max <= 1.")
  lo, hi = data.random_resize_aspect_ratio
  _require(0 < lo <= hi, f"config.data.random_resize_aspect_ratio=({lo}, {hi}) must satisfy 0 < min <= max.")


def _number(optim, name: str) -> float:
  value = optim[name]
  _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
           f"config.optim.{name}={value!r} must be a finite number.")
  return float(value)


def validate_optim(optim, loss) -> None:
  """The optimiser's numbers: a negative learning rate or a beta of 1 trains (or diverges) without an error."""
  for name in ("start_lr", "lr", "final_lr", "weight_decay", "final_weight_decay"):
    value = _number(optim, name)
    _require(value >= 0, f"config.optim.{name}={value} must be >= 0.")
  betas = tuple(optim.betas)
  _require(len(betas) == 2, f"config.optim.betas={betas} must hold two numbers (beta1, beta2).")
  for i, beta in enumerate(betas):
    _require(0 <= beta < 1, f"config.optim.betas[{i}]={beta} must be in [0, 1) (official (0.9, 0.999)).")
  eps = _number(optim, "eps")
  _require(eps > 0, f"config.optim.eps={eps} must be > 0 (official 1e-8).")
  ema = tuple(optim.ema)
  _require(len(ema) == 2, f"config.optim.ema={ema} must hold two numbers (start, end momentum).")
  for i, m in enumerate(ema):
    _require(0 <= m <= 1, f"config.optim.ema[{i}]={m} must be in [0, 1] (official (0.998, 1.0)).")
  clip = _number(optim, "clip_grad")
  _require(clip >= 0, f"config.optim.clip_grad={clip} must be >= 0 (a max gradient norm; 0: no clipping).")
  _require(optim.ipe >= 1, f"config.optim.ipe={optim.ipe} must be >= 1 (iterations per epoch).")
  _require(optim.epochs >= 1, f"config.optim.epochs={optim.epochs} must be >= 1.")
  _require(0 <= optim.warmup <= optim.epochs,
           f"config.optim.warmup={optim.warmup} must be in [0, config.optim.epochs={optim.epochs}] (epochs of "
           "linear warmup).")
  _require(_number(optim, "ipe_scale") >= 1,
           f"config.optim.ipe_scale={optim.ipe_scale} must be >= 1: the schedules span ipe_scale x the run "
           "(official 1.25), and a shorter span would run the cosine past its end.")
  _require(optim.total_steps >= 0, f"config.optim.total_steps={optim.total_steps} must be >= 0 (0: ipe x epochs).")
  _require(_number(loss, "loss_exp") > 0, f"config.loss.loss_exp={loss.loss_exp} must be > 0 (official 1).")
  _require(_number(loss, "reg_coeff") >= 0, f"config.loss.reg_coeff={loss.reg_coeff} must be >= 0.")


def validate_masks(config, per_device_batch: int) -> None:
  from input_pipeline import masks  # Imported here: mask validation may simulate the official statistics.
  try:
    masks.mask_specs_from_config(config, per_device_batch)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def validate_pretrain_config(config, num_devices: int) -> int:
  """All checks for pretraining; returns the per-device batch."""
  validate_model(config.model)
  validate_optim(config.optim, config.loss)
  validate_data_numbers(config.data)
  _require(config.data.frames_per_clip == config.model.num_frames,
           f"config.data.frames_per_clip={config.data.frames_per_clip} differs from config.model.num_frames="
           f"{config.model.num_frames}; the encoder is built for the clip length, so set both to the same value.")
  per_device_batch = validate_batch(config, num_devices)
  validate_init_from(config)
  validate_data(config.data)
  validate_masks(config, per_device_batch)
  _require(config.checkpoint.every_steps > 0,
           f"config.checkpoint.every_steps={config.checkpoint.every_steps} must be > 0.")
  _require(config.checkpoint.keep >= 1, f"config.checkpoint.keep={config.checkpoint.keep} must be >= 1.")
  _require(config.log_every > 0, f"config.log_every={config.log_every} must be > 0.")
  return per_device_batch
