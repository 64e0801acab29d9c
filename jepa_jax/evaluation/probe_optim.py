"""The probe optimizers of the official frozen evaluations: torch AdamW with per-iteration lr and wd schedules.

One transformation, two recipes chosen by config values (configs/eval/base.py, configs/eval/vjepa2/):
  V-JEPA 1 (docs/reference.md §6.2): one probe; two parameter groups (no decay on biases and 1-D tensors);
      gradient clipping at 1.0; lr cosine to 0 without warmup; weight decay cosine to 1e-6 whatever the config says.
  V-JEPA 2 (docs/reference.md §9.5): K probes, each with its own AdamW of ONE parameter group (every parameter
      decayed), no clipping, lr warmup (IN1K: 5 epochs from start_lr) then cosine to final_lr, weight decay cosine
      from weight_decay to final_weight_decay (constant in every released config but IN1K's first head).

A probe's hyperparameters live in its optimizer state (ProbeOptState.hparams), not in the transformation, so the same
transformation serves K probes vmapped over their params and states: each reads its own lr and weight decay. Kept
apart from optim.py because the probe's recipe differs from pretraining in every knob that matters.
"""
import math
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

# The per-head settings of the official multihead_kwargs (configs/eval/vitl/*.yaml), by their official names.
# warmup is in epochs (the official int(warmup * iterations_per_epoch) steps).
HEAD_FIELDS = ("lr", "start_lr", "final_lr", "warmup", "weight_decay", "final_weight_decay")


class HeadHparams(NamedTuple):
  """One probe's schedule values as float32 scalars (arrays [K] for K probes)."""
  lr: jax.Array
  start_lr: jax.Array
  final_lr: jax.Array
  warmup_steps: jax.Array
  weight_decay: jax.Array
  final_weight_decay: jax.Array


def head_hparams(head: Mapping[str, float], steps_per_epoch: int) -> HeadHparams:
  """A head of config.eval.heads (official names, warmup in epochs) as its HeadHparams."""
  values = dict(head)
  warmup_steps = int(float(values["warmup"]) * int(steps_per_epoch))  # official int(warmup * ipe)
  return HeadHparams(*(jnp.asarray(v, jnp.float32) for v in (
      values["lr"], values["start_lr"], values["final_lr"], warmup_steps, values["weight_decay"],
      values["final_weight_decay"])))


def stack_hparams(heads, steps_per_epoch: int) -> HeadHparams:
  """HeadHparams of every head, each field an array [K] in head order."""
  per_head = [head_hparams(h, steps_per_epoch) for h in heads]
  return HeadHparams(*(jnp.stack(field) for field in zip(*per_head)))


def lr_at(h: HeadHparams, count, total_steps: int):
  """The official multi-head WarmupCosineLRSchedule at optimizer step `count` (0-based).

  The official scheduler increments its counter before use, so the first update uses s = 1; optax counts from 0,
  hence s = count + 1. Linear warmup from start_lr while s < warmup_steps, then cosine from lr to final_lr over the
  remaining total - warmup steps, floored at final_lr. With warmup 0 this is the V-JEPA 1 WarmupCosineSchedule.
  """
  s = jnp.asarray(count, jnp.float32) + 1.0
  warm = h.warmup_steps
  warming = h.start_lr + s / jnp.maximum(1.0, warm) * (h.lr - h.start_lr)
  progress = (s - warm) / jnp.maximum(1.0, float(total_steps) - warm)
  cosine = jnp.maximum(h.final_lr, h.final_lr + (h.lr - h.final_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress)))
  return jnp.where(s < warm, warming, cosine)


def wd_at(h: HeadHparams, count, total_steps: int):
  """Official CosineWDSchedule at step `count`: cosine from weight_decay to final_weight_decay, clamped at the end
  value (from above when decaying, from below when growing)."""
  s = jnp.asarray(count, jnp.float32) + 1.0
  wd = h.final_weight_decay + (h.weight_decay - h.final_weight_decay) * 0.5 * (
      1.0 + jnp.cos(math.pi * s / float(max(1, total_steps))))
  return jnp.where(h.final_weight_decay <= h.weight_decay, jnp.maximum(h.final_weight_decay, wd),
                   jnp.minimum(h.final_weight_decay, wd))


def _constant_head(lr, final_lr, weight_decay, final_weight_decay, start_lr=None, warmup_steps=0) -> HeadHparams:
  start_lr = lr if start_lr is None else start_lr
  return HeadHparams(*(jnp.asarray(v, jnp.float32) for v in (
      lr, start_lr, final_lr, warmup_steps, weight_decay, final_weight_decay)))


def probe_lr_schedule(lr, final_lr, total_steps, start_lr=None, warmup_steps=0):
  """lr_at for fixed values, as a function of the step (V-JEPA 1: warmup 0, start_lr = lr)."""
  h = _constant_head(lr, final_lr, 0.0, 0.0, start_lr, warmup_steps)
  return lambda count: lr_at(h, count, total_steps)


def probe_wd_schedule(weight_decay, final_weight_decay, total_steps):
  """wd_at for fixed values, as a function of the step."""
  h = _constant_head(0.0, 0.0, weight_decay, final_weight_decay)
  return lambda count: wd_at(h, count, total_steps)


def _names(path):
  return [str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path]


def probe_weight_decay_mask(params, decay_all_params: bool = False):
  """True where the official eval decays.

  V-JEPA 1 (decay_all_params False): 'bias' not in the name and ndim != 1 (so query_tokens IS decayed).
  V-JEPA 2 (True): every parameter (one param group).
  Either way xattn.proj (V-JEPA 1 only) is left undecayed: it is not used in forward, so in torch its .grad stays
  None and AdamW skips it entirely (no decay either); with a zero gradient, leaving it out of the decay keeps it
  bit-identical too.
  """
  def decayed(path, leaf):
    names = _names(path)
    if 'xattn' in names and 'proj' in names:
      return False
    if decay_all_params:
      return True
    return not (any('bias' in n for n in names) or jnp.ndim(leaf) == 1)

  return jax.tree_util.tree_map_with_path(decayed, params)


def clip_by_global_norm_like_torch(grads, max_norm):
  """torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (norm + 1e-6)).

  optax.clip_by_global_norm omits the 1e-6 and skips the scaling below the threshold; the difference is ~1e-6
  relative, which is what the parity test resolves, so we follow torch.
  """
  norm = optax.tree.norm(grads)
  coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return jax.tree.map(lambda g: (g * coef).astype(g.dtype), grads)


class ProbeOptState(NamedTuple):
  count: jax.Array  # int32: updates applied so far (the schedules use s = count + 1)
  mu: optax.Updates
  nu: optax.Updates
  hparams: HeadHparams  # this probe's lr / wd schedule values


def make_probe_optimizer(lr=1e-3, final_lr=0.0, weight_decay=0.01, final_weight_decay=1e-6, *, total_steps,
                         clip=1.0, start_lr=None, warmup_steps=0, decay_all_params=False):
  """optax transformation equal to the official probe step: [clip_grad_norm_(clip)] then torch AdamW.

  torch AdamW: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p), betas (0.9, 0.999), eps 1e-8, with the lr and wd
  of the same step. Adam's bias corrections 1 - b**t are computed as -expm1(t log b) with log b in double: optax's
  float32 0.999**t is off by 1.3e-5 relative at t = 1, which alone made every update differ by ~7e-6 from torch,
  which does this in Python doubles.

  init(params, hparams=None): hparams (HeadHparams, e.g. from head_hparams) are this probe's schedule values; by
  default the ones given here. Vmapping init and update over stacked params and HeadHparams trains K probes.
  [quirk, docs/reference.md §6.2] V-JEPA 1 configs pass final_weight_decay 1e-6: the official V-JEPA 1 eval does not
  read final_wd, so the decay fades to almost nothing by the end. total_steps = epochs * iterations per epoch.
  """
  default = _constant_head(lr, final_lr, weight_decay, final_weight_decay, start_lr, warmup_steps)
  b1, b2, eps = 0.9, 0.999, 1e-8
  log_b1, log_b2 = math.log(b1), math.log(b2)

  def init_fn(params, hparams: HeadHparams | None = None):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    hparams = default if hparams is None else HeadHparams(*(jnp.asarray(v, jnp.float32) for v in hparams))
    return ProbeOptState(jnp.zeros([], jnp.int32), zeros(), zeros(), hparams)

  def update_fn(grads, state, params):
    if clip is not None and clip > 0:
      grads = clip_by_global_norm_like_torch(grads, clip)
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    t = count.astype(jnp.float32)
    bc1, bc2 = -jnp.expm1(t * log_b1), -jnp.expm1(t * log_b2)
    lr_now = lr_at(state.hparams, state.count, total_steps)
    wd_now = wd_at(state.hparams, state.count, total_steps)
    mask = probe_weight_decay_mask(params, decay_all_params)

    def step(m, v, p, decayed):
      direction = (m / bc1) / (jnp.sqrt(v / bc2) + eps)
      if decayed:
        direction = direction + wd_now * p
      return (-lr_now * direction).astype(p.dtype)

    updates = jax.tree.map(step, mu, nu, params, mask)
    return updates, ProbeOptState(count, mu, nu, state.hparams)

  return optax.GradientTransformation(init_fn, update_fn)
