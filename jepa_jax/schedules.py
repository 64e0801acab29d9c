"""Learning-rate, weight-decay and EMA-momentum schedules as traceable functions of our step.

Our `step` counts optimizer updates already done (0 before the first update). The official loop increments its
scheduler counters *before* use, so the value our step k uses is the official value at s = k + 1 (reference §4.3).
Every function here is jnp-only, so it can run inside the jitted train step without a host round trip.
"""
import jax.numpy as jnp


def _warmup_steps(optim_cfg) -> int:
  return int(optim_cfg.warmup * optim_cfg.ipe)


def _horizon(optim_cfg) -> int:
  # [quirk] The horizon is ipe_scale (1.25) times the run length, so the run stops at 80% of every curve (§1, §4.3).
  return int(optim_cfg.ipe_scale * optim_cfg.epochs * optim_cfg.ipe)


def total_steps(optim_cfg) -> int:
  """Optimizer steps in the run: optim.total_steps when set, else ipe x epochs (90,000 for the official run)."""
  return int(optim_cfg.total_steps) or int(optim_cfg.ipe * optim_cfg.epochs)


def learning_rate_schedule(optim_cfg):
  """Official WarmupCosineSchedule: linear start_lr -> lr over W steps, then cosine towards final_lr over T - W."""
  start, ref, final = float(optim_cfg.start_lr), float(optim_cfg.lr), float(optim_cfg.final_lr)
  warmup, horizon = _warmup_steps(optim_cfg), _horizon(optim_cfg)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0  # official s = our step + 1 (§4.3)
    warm = start + s / max(1, warmup) * (ref - start)
    progress = (s - warmup) / max(1, horizon - warmup)
    cosine = final + (ref - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(s < warmup, warm, jnp.maximum(final, cosine))

  return schedule


def weight_decay_schedule(optim_cfg):
  """Official CosineWDSchedule: cosine weight_decay -> final_weight_decay over T, no warmup, clamped at final."""
  ref, final = float(optim_cfg.weight_decay), float(optim_cfg.final_weight_decay)
  horizon = _horizon(optim_cfg)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32) + 1.0
    wd = final + (ref - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * s / max(1, horizon)))
    # The clamp keeps wd from overshooting final; its direction depends on whether wd rises or falls (§4.3).
    return jnp.minimum(final, wd) if final > ref else jnp.maximum(final, wd)

  return schedule


def ema_momentum_schedule(optim_cfg):
  """Official momentum generator m_i = ema0 + i (ema1 - ema0) / (ipe epochs ipe_scale).

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

  [quirk] The official loop clips only when the 0-based epoch is > warmup (§4.2 step 6): with ipe 300 and warmup
  40 that is epoch >= 41, i.e. from 0-based iteration (warmup + 1) * ipe = 12,300 on. Our step k is the 0-based
  iteration index, so the test is step // ipe > warmup. optim.clip_always turns it on from the first step.
  """
  step = jnp.asarray(step, jnp.int32)
  if optim_cfg.clip_always:
    return jnp.ones_like(step, dtype=jnp.bool_)
  return (step // int(optim_cfg.ipe)) > optim_cfg.warmup
