"""The V-JEPA pretraining step as pure functions: (state, batch) -> (state, metrics).

docs/reference.md §4.2. Per step: normalise the uint8 clip on the device; the target encoder sees every token (no
gradient), its output is layer-normed without affine; for each mask generator the context encoder sees only the context
tokens and the predictor, with that generator's mask token, predicts the target tokens; loss = mean over generators of
the mean |pred - target|^p / p (+ reg_coeff * reg term); AdamW; EMA of the target encoder after the update.

The context encoder and the predictor each run once for all mask generators, packed as config.model.context_packing
and config.model.predictor_packing say (jepa_jax/models/packing.py; 'none' is the official pass per generator).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jepa_jax import optim
from jepa_jax import schedules
from jepa_jax.models import layers

# ImageNet statistics in the 0..255 range: the clip leaves the host as uint8 (4x fewer bytes than float32).
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
_BATCH_AXES = ("data", "fsdp")


def normalize_clips(clips: jax.Array, dtype) -> jax.Array:
  """uint8 [..., 3] RGB -> ImageNet-normalised values in the compute dtype."""
  return ((clips.astype(jnp.float32) - _MEAN) / _STD).astype(dtype)


def layer_norm_no_affine(x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """F.layer_norm(x, (D,)) of the official target normalisation (docs/reference.md §4.2), in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """What the step needs besides state and batch; static under jit."""
  encoder_def: Any
  predictor_def: Any
  tx: optax.GradientTransformation
  compute_dtype: Any
  loss_exp: float
  reg_coeff: float
  grad_accum_steps: int
  context_packing: str
  predictor_packing: str
  ema_momentum: Callable[[jax.Array], jax.Array]
  learning_rate: Callable[[jax.Array], jax.Array]
  weight_decay: Callable[[jax.Array], jax.Array]


def make_step_functions(config, encoder_def, predictor_def, tx) -> StepFunctions:
  return StepFunctions(
      encoder_def=encoder_def,
      predictor_def=predictor_def,
      tx=tx,
      compute_dtype=jnp.dtype(config.model.dtype),
      loss_exp=float(config.loss.loss_exp),
      reg_coeff=float(config.loss.reg_coeff),
      grad_accum_steps=int(config.optim.grad_accum_steps),
      context_packing=config.model.context_packing,
      predictor_packing=config.model.predictor_packing,
      ema_momentum=schedules.ema_momentum_schedule(config.optim),
      learning_rate=schedules.learning_rate_schedule(config.optim),
      weight_decay=schedules.weight_decay_schedule(config.optim),
  )


def jepa_loss(params, target_params, batch, fns: StepFunctions):
  """Loss of one (micro-)batch and its parts. Gradients flow into params only."""
  encoder = nnx.merge(fns.encoder_def, params["encoder"])
  predictor = nnx.merge(fns.predictor_def, params["predictor"])
  target_encoder = nnx.merge(fns.encoder_def, jax.lax.stop_gradient(target_params))

  clips = normalize_clips(batch["clips"], fns.compute_dtype)
  targets = jax.lax.stop_gradient(layer_norm_no_affine(target_encoder(clips)))

  contexts, target_masks = list(batch["context_masks"]), list(batch["target_masks"])
  zs = encoder.encode_masks(clips, contexts, packing=fns.context_packing)
  preds = predictor.predict_masks(zs, contexts, target_masks, packing=fns.predictor_packing)
  losses, stds = [], []
  for pred, target in zip(preds, target_masks):
    h = layers.take_tokens(targets, target)
    losses.append(jnp.mean(jnp.abs(pred - h) ** fns.loss_exp) / fns.loss_exp)
    # Official reg term: std over tokens (unbiased, torch.var default) of the predictions, per sample and feature.
    stds.append(jnp.sqrt(jnp.var(pred, axis=1, ddof=1) + 1e-4))
  loss_jepa = sum(losses) / len(losses)
  loss_reg = jnp.mean(jax.nn.relu(1.0 - sum(stds) / len(stds)))
  loss = loss_jepa + fns.reg_coeff * loss_reg
  # Collapse watch: spread of the normalised targets over clips and tokens (~1 when features are diverse, -> 0 when
  # the target encoder maps everything to one vector, which a falling loss alone does not reveal).
  target_std = jnp.mean(jnp.std(targets, axis=(0, 1)))
  return loss, {"loss_jepa": loss_jepa, "loss_reg": loss_reg, "target_std": target_std}


def _split_micro_batches(batch, num_micro: int):
  """[B, ...] -> [num_micro, B / num_micro, ...] with micro-batch a = rows a, a + A, a + 2A, ...

  Strided rather than contiguous, so that every micro-batch takes the same share of rows from every device and no
  data moves between devices.
  """
  def split(x):
    x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    spec = jax.sharding.PartitionSpec(None, _BATCH_AXES, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, spec) if _mesh_is_set() else x
  return jax.tree.map(split, batch)


def _mesh_is_set() -> bool:
  return not jax.sharding.get_abstract_mesh().empty


def loss_and_grads(params, target_params, batch, fns: StepFunctions):
  """Mean loss and gradients over the whole batch, accumulated over micro-batches when configured."""
  grad_fn = jax.value_and_grad(jepa_loss, has_aux=True)
  if fns.grad_accum_steps == 1:
    return grad_fn(params, target_params, batch, fns)

  micro_batches = _split_micro_batches(batch, fns.grad_accum_steps)

  def accumulate(total, micro):
    return jax.tree.map(jnp.add, total, grad_fn(params, target_params, micro, fns)), None

  one_micro = jax.tree.map(lambda x: x[0], micro_batches)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(lambda p, t, b: grad_fn(p, t, b, fns), params, target_params, one_micro))
  total, _ = jax.lax.scan(accumulate, zeros, micro_batches)
  return jax.tree.map(lambda x: x / fns.grad_accum_steps, total)


def train_step(state: dict, batch: dict, fns: StepFunctions) -> tuple[dict, dict]:
  """One optimizer step. Pure: no host sync; metrics stay on the device until the loop logs them."""
  step = state["step"]
  (loss, aux), grads = loss_and_grads(state["params"], state["target_encoder"], batch, fns)
  norms = optim.grad_norms(grads)
  updates, opt_state = fns.tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)

  # EMA of the context encoder into the target, after the update (docs/reference.md §4.2 step 8).
  momentum = fns.ema_momentum(step)
  target = jax.tree.map(lambda t, p: momentum * t + (1.0 - momentum) * p, state["target_encoder"], params["encoder"])

  new_state = {"step": step + 1, "params": params, "target_encoder": target, "opt_state": opt_state}
  metrics = {
      "loss": loss,
      "loss_jepa": aux["loss_jepa"],
      "loss_reg": aux["loss_reg"],
      "target_std": aux["target_std"],
      "lr": fns.learning_rate(step),
      "wd": fns.weight_decay(step),
      "ema_momentum": momentum,
      **norms,
  }
  return new_state, metrics
