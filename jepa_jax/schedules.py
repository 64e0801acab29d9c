"""Learning-rate, weight-decay and EMA-momentum schedules as traceable functions of our step.

Our `step` counts optimizer updates already done (0 before the first update). The official loop increments its
scheduler counters *before* use, so the value our step k uses is the official value at s = k + 1 (docs/reference.md
§4.3). Every function here is jnp-only, so it can run inside the jitted train step without a host round trip.
"""
import jax.numpy as jnp


def _warmup_steps(optim_cfg) -> int:
  return int(optim_cfg.warmup * optim_cfg.ipe)


def _horizon(optim_cfg) -> int:
  # [quirk] The horizon is ipe_scale (1.25) times the run length, so the run stops at 80% of every curve
  # (docs/reference.md §1, §4.3).
  return int(optim_cfg.ipe_scale * optim_cfg.epochs * optim_cfg.ipe)


def total_steps(optim_cfg) -> int:
  """Optimizer steps in the run: optim.total_steps when set, else ipe x epochs (90,000 for the official run)."""
  return int(optim_cfg.total_steps) or int(optim_cfg.ipe * optim_cfg.epochs)


LR_SCHEDULES = ("warmup_cosine", "linear_decay")


def learning_rate_schedule(optim_cfg):
  """The official lr scheduler named by optim.lr_schedule.

  'warmup_cosine' (WarmupCosineSchedule): linear start_lr -> lr over W steps, then cosine towards final_lr over
  T - W. V-JEPA 1; also V-JEPA 2 pretraining, whose configs set final_lr = lr, so the cosine is the constant lr.
  'linear_decay' (LinearDecaySchedule, the V-JEPA 2 cooldown): lr + s / T (final_lr - lr), no warmup.
  """
  kind = optim_cfg.get("lr_schedule", "warmup_cosine")
  if kind == "linear_decay":
    return _linear_decay_schedule(optim_cfg)
  if kind != "warmup_cosine":
    raise ValueError(f"config.optim.lr_schedule={kind!r}; use 'warmup_cosine' (V-JEPA 1, V-JEPA 2 pretraining) "
                     f"or 'linear_decay' (the V-JEPA 2 cooldown).")
  start, ref, final = float(optim_cfg.start_lr), float(optim_cfg.lr), float(optim_cfg.final_lr)
  warmup, horizon = _warmup_steps(optim_cfg), _horizon(optim_cfg)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0  # official s = our step + 1 (docs/reference.md §4.3)
    warm = start + s / max(1, warmup) * (ref - start)
    progress = (s - warmup) / max(1, horizon - warmup)
    cosine = final + (ref - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(s < warmup, warm, jnp.maximum(final, cosine))

  return schedule


def _linear_decay_schedule(optim_cfg):
  """Official LinearDecaySchedule (app/vjepa/utils.py:init_opt with is_anneal): from lr at s = 0 to final_lr at
  s = T = int(ipe_scale * epochs * ipe), no warmup, no clamp.

  [quirk docs/reference.md §9.4] T is the ipe_scale (1.25) horizon while the run stops after epochs x ipe steps, so
  the cooldown ends at 80% of the ramp: lr 5.25e-4 -> final_lr 1e-6 over T = 15,000 stops near 1.058e-4.
  """
  if _warmup_steps(optim_cfg):
    raise ValueError(f"config.optim.warmup={optim_cfg.warmup} but config.optim.lr_schedule='linear_decay' has no "
                     f"warmup (the official LinearDecaySchedule starts at lr); set config.optim.warmup=0.")
  ref, final = float(optim_cfg.lr), float(optim_cfg.final_lr)
  horizon = _horizon(optim_cfg)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0  # official s = our step + 1 (docs/reference.md §4.3)
    return ref + s / max(1, horizon) * (final - ref)

  return schedule


def weight_decay_schedule(optim_cfg):
  """Official CosineWDSchedule: cosine weight_decay -> final_weight_decay over T, no warmup, clamped at final."""
  ref, final = float(optim_cfg.weight_decay), float(optim_cfg.final_weight_decay)
  horizon = _horizon(optim_cfg)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0
    wd = final + (ref - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * s / max(1, horizon)))
    # The clamp keeps wd from overshooting final; its direction depends on whether wd rises or falls (docs/reference.md
    # §4.3).
    return jnp.minimum(final, wd) if final > ref else jnp.maximum(final, wd)

  return schedule


def ema_momentum_schedule(optim_cfg):
  """Official momentum generator m_i = ema0 + i (ema1 - ema0) / (ipe epochs ipe_scale); ema = (m, m) is constant m
  (V-JEPA 2: 0.99925).

  The generator is advanced after the optimizer step and yields i = 0 first, so our step k uses i = k (the very
  first EMA update uses exactly ema0). The denominator is the unrounded float product, as in the official code.
  Past the generator's end (i > int(ipe epochs ipe_scale), where the official code would raise StopIteration) the
  value is held at its last entry.
  """
  ema0, ema1 = (float(m) for m in optim_cfg.ema)
  denom = float(optim_cfg.ipe * optim_cfg.epochs * optim_cfg.ipe_scale)
  last = int(denom)

  def schedule(step):
    i = jnp.minimum(jnp.asarray(step, jnp.float32), float(last))
    return ema0 + i * (ema1 - ema0) / denom

  return schedule


def clip_active(step, optim_cfg):
  """Whether gradient clipping applies at our step (a traced bool).

  [quirk] The official loop clips only when the 0-based epoch is > warmup (docs/reference.md §4.2 step 6): with ipe 300
  and warmup 40 that is epoch >= 41, i.e. from 0-based iteration (warmup + 1) * ipe = 12,300 on. Our step k is the
  0-based iteration index, so the test is step // ipe > warmup. optim.clip_always turns it on from the first step.
  optim.clip_grad = 0 turns clipping off (V-JEPA 2's train loop has none, docs/reference.md §9.3).
  """
  if float(optim_cfg.clip_grad) < 0:
    raise ValueError(f"config.optim.clip_grad={optim_cfg.clip_grad} must be >= 0 (0: no gradient clipping).")
  step = jnp.asarray(step, jnp.int32)
  if float(optim_cfg.clip_grad) == 0:
    return jnp.zeros_like(step, dtype=jnp.bool_)
  if optim_cfg.clip_always:
    return jnp.ones_like(step, dtype=jnp.bool_)
  return (step // int(optim_cfg.ipe)) > optim_cfg.warmup
