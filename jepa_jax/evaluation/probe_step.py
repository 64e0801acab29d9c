"""The attentive probe's train and eval steps, the official multi-view prediction and top-k counts (reference 6).

Training: 1 view, loss = mean cross-entropy over the probe inputs of an example. Test: prediction = mean of the
softmax over views (and segments when not attending across them); top-1 and top-5 are counts of correct examples,
weighted (padding rows and unreadable videos weigh 0), summed over the whole split and divided once at the end (the
official code averages per-batch means).

probe_steps() gives the steps as pure functions of (probe params, opt state, tokens, labels, weights): they can be
jitted as they are, or vmapped over several probes trained together on the same tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jepa_jax import sharding
from jepa_jax.evaluation.probe_optim import make_probe_optimizer
from jepa_jax.models.probe import AttentiveClassifier


def view_averaged_probs(logits: jax.Array) -> jax.Array:
  """logits [B, G, C] -> mean over the G views (and segments) of softmax: the official multi-view prediction."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).mean(axis=1)


def topk_correct(probs: jax.Array, labels: jax.Array, weights: jax.Array, ks=(1, 5)) -> list[jax.Array]:
  """Number of (weighted: padding rows weigh 0) examples whose label is among the k most probable classes.

  k is capped at the number of classes. Ties count as the label ranking first only when strictly fewer than k
  classes beat it (jax.lax.top_k semantics up to ties, which do not occur with softmax outputs in practice).
  """
  rank = jnp.sum(probs > jnp.take_along_axis(probs, labels[:, None], axis=1), axis=1)
  return [jnp.sum(weights * (rank < min(k, probs.shape[-1]))) for k in ks]


def probe_steps(graphdef, tx: optax.GradientTransformation) -> tuple[Callable, Callable]:
  """(train_step, eval_step), pure and unjitted.

  train_step(params, opt_state, tokens [B, G, L, D], labels [B], weights [B]) -> (params, opt_state,
  {'loss_sum', 'correct', 'count'}); eval_step(params, tokens, labels, weights) -> {'loss_sum', 'top1', 'top5',
  'count'}. Sums, not means, so batches and hosts add up exactly.
  """

  def logits_fn(p, tokens):
    probe = nnx.merge(graphdef, p)
    b, g, l, d = tokens.shape
    return probe(tokens.reshape(b * g, l, d)).reshape(b, g, -1)

  def loss_fn(p, tokens, labels, weights):
    logits = logits_fn(p, tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, None]).mean(axis=1)  # over views
    loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (logits, jnp.sum(ce * weights))

  def train_step(p, opt_state, tokens, labels, weights):
    (_, (logits, loss_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens, labels, weights)
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    top1, = topk_correct(view_averaged_probs(logits), labels, weights, ks=(1,))
    return p, opt_state, {"loss_sum": loss_sum, "correct": top1, "count": jnp.sum(weights)}

  def eval_step(p, tokens, labels, weights):
    logits = logits_fn(p, tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, None]).mean(axis=1)
    top1, top5 = topk_correct(view_averaged_probs(logits), labels, weights)
    return {"loss_sum": jnp.sum(ce * weights), "top1": top1, "top5": top5, "count": jnp.sum(weights)}

  return train_step, eval_step


@dataclasses.dataclass(frozen=True)
class Probe:
  """The probe's graph, optimizer and jitted steps (probe_steps, params and opt state donated in training)."""
  graphdef: Any
  tx: optax.GradientTransformation
  train_step: Callable
  eval_step: Callable


def build_probe(config, embed_dim: int, encoder_heads: int, total_steps: int, mesh, rules, seed: int):
  """(Probe, params, opt_state): official AttentiveClassifier and optimizer, params sharded by the rules."""
  e = config.eval
  dtype = jnp.dtype(config.model.dtype)
  heads = int(e.get("probe_num_heads", 0) or encoder_heads)
  # The probe's cross-attention (one query token) stays on jax.nn's kernels; splash tiles self-attention.
  impl = config.model.attention_impl if config.model.attention_impl in ("xla", "cudnn") else None
  make = lambda s: AttentiveClassifier(embed_dim, heads, int(e.num_classes), dtype=dtype, implementation=impl,
                                       rngs=nnx.Rngs(s))
  with nnx.use_eager_sharding(False), nnx.logical_axis_rules(rules):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make(0)))
    params = nnx.to_pure_dict(nnx.state(make(seed)))
  with jax.set_mesh(mesh):
    shardings = sharding.param_shardings(abstract, mesh, rules)
  params = jax.device_put(params, shardings)
  tx = make_probe_optimizer(lr=float(e.lr), final_lr=float(e.get("final_lr", 0.0)),
                            weight_decay=float(e.weight_decay),
                            final_weight_decay=float(e.get("final_weight_decay", 1e-6)),
                            total_steps=int(total_steps), clip=float(e.get("clip_grad", 1.0)))
  train_step, eval_step = probe_steps(graphdef, tx)
  opt_state = jax.jit(tx.init)(params)
  probe = Probe(graphdef, tx, jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step))
  return probe, params, opt_state
