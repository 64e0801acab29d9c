"""The official AdamW (docs/reference.md §4.1, §4.2): four param groups, scheduled lr and wd, per-module clipping.

Built as an explicit optax chain rather than optax.inject_hyperparams(optax.adamw): a callable weight-decay mask
inside inject_hyperparams is silently treated as a schedule unless declared static (docs/reference.md §10), and the
chain below makes each official rule visible in one place:

  clip per module (after warmup) -> Adam moments with bias correction -> + wd(step) * param on decayed leaves
  -> * -lr(step)

The sum p - lr * (adam + wd * p) equals torch.optim.AdamW's decoupled update (p <- p - lr * wd * p, then the Adam
step), since the Adam step does not read p. Every stateful link counts optimizer updates from 0, in step with the
train state's 'step'.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jepa_jax import schedules


class CountState(NamedTuple):
  """Updates done so far; the schedules and the clipping switch read it."""
  count: jax.Array


def _path_name(path) -> str:
  """'.'-joined PyTorch-style name of a pytree path (int keys of layer lists become '0', '1', ...)."""
  parts = []
  for key in path:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return ".".join(parts)


def weight_decay_mask(params):
  """True for leaves that get weight decay: the official groups 1-2 (docs/reference.md §4.1).

  Excluded (groups 3-4): any name containing 'bias' and every 1-D param (LayerNorm scales). Mask tokens
  ([1, 1, D]), Linear and Conv3d kernels are decayed.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, p: ("bias" not in _path_name(path)) and jnp.ndim(p) != 1, params)


def clip_by_module_norm(max_norm: float, active_fn) -> optax.GradientTransformation:
  """torch clip_grad_norm_ applied separately to each top-level subtree ('encoder', 'predictor').

  torch scales by min(1, max_norm / (norm + 1e-6)); the 1e-6 is kept for exact parity. `active_fn(count)` gates it
  with a traced bool, so the switch at the end of warmup costs no recompile.
  """

  def init(params):
    del params
    return CountState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    active = active_fn(state.count)

    def clip(tree):
      norm = optax.tree.norm(tree)
      coef = jnp.where(active, jnp.minimum(1.0, max_norm / (norm + 1e-6)), 1.0)
      return jax.tree.map(lambda g: g * coef.astype(g.dtype), tree)

    return {name: clip(tree) for name, tree in updates.items()}, CountState(state.count + 1)

  return optax.GradientTransformation(init, update)


def add_scheduled_decayed_weights(wd_fn, mask_fn=weight_decay_mask) -> optax.GradientTransformation:
  """updates + wd(count) * param on the leaves mask_fn selects (the decoupled AdamW decay)."""

  def init(params):
    del params
    return CountState(jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay needs params: call tx.update(grads, opt_state, params)")
    wd = wd_fn(state.count)
    updates = jax.tree.map(
        lambda u, p, decay: u + wd.astype(u.dtype) * p if decay else u, updates, params, mask_fn(params))
    return updates, CountState(state.count + 1)

  return optax.GradientTransformation(init, update)


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  """AdamW exactly as the official run, over params = {'encoder': ..., 'predictor': ...}."""
  b1, b2 = (float(b) for b in optim_cfg.betas)
  return optax.chain(
      clip_by_module_norm(float(optim_cfg.clip_grad), lambda count: schedules.clip_active(count, optim_cfg)),
      # eps outside the sqrt and bias correction on both moments: torch's AdamW (eps_root=0).
      optax.scale_by_adam(b1=b1, b2=b2, eps=float(optim_cfg.eps), eps_root=0.0),
      add_scheduled_decayed_weights(schedules.weight_decay_schedule(optim_cfg)),
      optax.scale_by_learning_rate(schedules.learning_rate_schedule(optim_cfg)),
  )


def grad_norms(grads):
  """Global L2 norms of the encoder and predictor gradients (before clipping).

  [quirk] The official CSV logs the value returned by clip_grad_norm_, so it shows 0 before clipping starts
  (docs/reference.md §4.2 step 6). These are the true norms at every step; a caller wanting the official columns can
  zero them with schedules.clip_active.
  """
  return {
      "enc_grad_norm": optax.tree.norm(grads["encoder"]),
      "pred_grad_norm": optax.tree.norm(grads["predictor"]),
  }
