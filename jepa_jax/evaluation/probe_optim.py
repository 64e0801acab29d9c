"""The optimizer of the official frozen evaluation (reference 6.2): AdamW, cosine lr and wd, clip at 1.0.

Kept apart from optim.py because the probe's recipe differs from pretraining in every knob that matters: no lr
warmup, a weight-decay schedule whose end point is hard-coded, clipping from the first step, two param groups.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def probe_lr_schedule(lr, final_lr, total_steps):
  """Official WarmupCosineSchedule with warmup = 0 (start_lr = ref_lr = lr), stepped once per iteration.

  The official scheduler increments its counter before use, so the first update uses s = 1; optax counts from 0,
  hence s = count + 1. Not clamped past total_steps, like the official formula (the eval never goes past it).
  """
  t = float(max(1, total_steps))

  def schedule(count):
    s = jnp.asarray(count, jnp.float32) + 1.0
    cosine = final_lr + (lr - final_lr) * 0.5 * (1.0 + jnp.cos(math.pi * s / t))
    return jnp.maximum(final_lr, cosine)

  return schedule


def probe_wd_schedule(weight_decay, final_weight_decay, total_steps):
  """Official CosineWDSchedule: cosine from weight_decay to final_weight_decay, clamped at the final value."""
  t = float(max(1, total_steps))

  def schedule(count):
    s = jnp.asarray(count, jnp.float32) + 1.0
    wd = final_weight_decay + (weight_decay - final_weight_decay) * 0.5 * (1.0 + jnp.cos(math.pi * s / t))
    if final_weight_decay <= weight_decay:
      return jnp.maximum(final_weight_decay, wd)
    return jnp.minimum(final_weight_decay, wd)

  return schedule


def _names(path):
  return [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path]


def probe_weight_decay_mask(params):
  """True where the official eval decays: 'bias' not in the name and ndim != 1 (so query_tokens IS decayed).

  xattn.proj is also left undecayed: it is not used in forward, so in torch its .grad stays None and AdamW skips
  it entirely (no decay either); with a zero gradient, leaving it out of the decay keeps it bit-identical too.
  """
  def decayed(path, leaf):
    names = _names(path)
    if any('bias' in n for n in names) or jnp.ndim(leaf) == 1:
      return False
    return not ('xattn' in names and 'proj' in names)

  return jax.tree_util.tree_map_with_path(decayed, params)


def clip_by_global_norm_like_torch(max_norm):
  """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).

  optax.clip_by_global_norm omits the 1e-6 and skips the scaling below the threshold; the difference is ~1e-6
  relative, which is what the parity test resolves, so we follow torch.
  """
  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class AdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adam_like_torch(b1=0.9, b2=0.999, eps=1e-8):
  """Adam moments as torch.optim.AdamW: m_hat / (sqrt(v_hat) + eps), bias corrections accurate to float32.

  optax.scale_by_adam computes 1 - 0.999**t in float32, where 0.999 itself is off by 1.3e-5 relative of the
  correction at t = 1; torch does it in Python doubles. That alone made every update differ by ~7e-6. Here
  1 - b**t = -expm1(t log b) with log b taken in double, which is exact to float32 rounding.
  """
  log_b1, log_b2 = math.log(b1), math.log(b2)

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return AdamState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    t = count.astype(jnp.float32)
    bc1, bc2 = -jnp.expm1(t * log_b1), -jnp.expm1(t * log_b2)
    out = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v / bc2) + eps), mu, nu)
    return out, AdamState(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def make_probe_optimizer(lr=1e-3, final_lr=0.0, weight_decay=0.01, final_weight_decay=1e-6, *, total_steps,
                         clip=1.0):
  """optax transform equal to the official probe step: clip_grad_norm_(clip) then torch AdamW on 2 groups.

  [quirk, reference 6.2] final_weight_decay is 1e-6 in the official eval whatever the config says (final_wd is
  not read), so the probe's decay fades to almost nothing by the end. total_steps = epochs * ipe.
  torch AdamW: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), betas (0.9, 0.999), eps 1e-8; the chain below is
  that update with the lr and wd of the same step.
  """
  parts = []
  if clip is not None and clip > 0:
    parts.append(clip_by_global_norm_like_torch(clip))
  parts += [
      scale_by_adam_like_torch(b1=0.9, b2=0.999, eps=1e-8),
      optax.add_decayed_weights(probe_wd_schedule(weight_decay, final_weight_decay, total_steps),
                                mask=probe_weight_decay_mask),
      optax.scale_by_learning_rate(probe_lr_schedule(lr, final_lr, total_steps)),
  ]
  return optax.chain(*parts)
