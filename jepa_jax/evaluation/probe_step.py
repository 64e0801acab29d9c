"""The attentive probe's train and eval steps, the official multi-view prediction and top-k counts (docs/reference.md
§6).

Training: 1 view, loss = mean cross-entropy over the probe inputs of an example. Test: prediction = mean of the
softmax over views (and segments when not attending across them); top-1 and top-5 are counts of correct examples,
weighted (padding rows and unreadable videos weigh 0), summed over the whole split and divided once at the end (the
official code averages per-batch means).

probe_steps() gives the steps as pure functions of (probe params, opt state, tokens, labels, weights); build_probe
vmaps them over K probes trained together on the same tokens (the V-JEPA 2 protocol: the encoder runs once per batch,
whatever K), each head with its own init and its own lr / wd schedule values in its optimizer state.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jepa_jax import sharding
from jepa_jax.evaluation.eval_config import probe_heads
from jepa_jax.evaluation.probe_optim import make_probe_optimizer, stack_hparams
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
  """K probes trained together on the same tokens (docs/reference.md §9.5; K = 1 for V-JEPA 1).

  One AttentiveClassifier graph; params and optimizer states carry a leading axis of K (head i = config.eval.heads[i]
  in config order); train_step and eval_step are probe_steps vmapped over that axis, the tokens, labels and weights
  shared, and jitted once (params and opt state donated in training). Metrics come back per head, arrays [K].
  """
  graphdef: Any
  tx: optax.GradientTransformation
  heads: tuple  # the heads' settings (eval_config.probe_heads), in the order of the leading axis
  train_step: Callable
  eval_step: Callable

  @property
  def num_heads(self) -> int:
    return len(self.heads)


def head_params(params, i: int):
  """Head i of stacked probe params (or opt state)."""
  return jax.tree.map(lambda x: x[i], params)


def stacked_shardings(shardings):
  """The NamedShardings of one head's leaves with a leading, unsharded head axis."""
  return jax.tree.map(lambda s: NamedSharding(s.mesh, P(None, *s.spec)), shardings)


def classifier_factory(config, embed_dim: int, encoder_heads: int) -> Callable[[Any], AttentiveClassifier]:
  """seed -> the configured AttentiveClassifier: config.eval.num_probe_blocks (1: V-JEPA 1, 4: V-JEPA 2),
  config.eval.probe_num_heads attention heads (0: the encoder's), the official init, its blocks rematerialised
  with config.eval.probe_remat."""
  e = config.eval
  heads = int(e.get("probe_num_heads", 0) or encoder_heads)
  depth = int(e.get("num_probe_blocks", 1))
  dtype = jnp.dtype(config.model.dtype)
  # The probe's cross-attention (one query token) stays on jax.nn's kernels; splash tiles self-attention.
  impl = config.model.attention_impl if config.model.attention_impl in ("xla", "cudnn") else None
  return lambda seed: AttentiveClassifier(embed_dim, heads, int(e.num_classes), depth=depth, dtype=dtype,
                                          implementation=impl,
                                          remat=bool(e.get("probe_remat", False)), rngs=nnx.Rngs(seed))


def build_probe(config, embed_dim: int, encoder_heads: int, steps_per_epoch: int, mesh, rules, seed: int,
                heads=None):
  """(Probe, params, opt_state) for the heads of the config (or `heads`): stacked [K, ...], sharded by the rules.

  Head i is initialised from seed + i (its own draw, as the official heads are built one after another); its
  optimizer state holds its lr / wd schedule values (probe_optim.HeadHparams), warmup in steps of steps_per_epoch.
  """
  e = config.eval
  heads = probe_heads(config) if heads is None else tuple(heads)
  make = classifier_factory(config, embed_dim, encoder_heads)

  def init(s):  # the same draws as make(int seed): nnx.Rngs makes jax.random.key(seed) of an int
    return nnx.to_pure_dict(nnx.state(make(jax.random.key(s))))

  with nnx.use_eager_sharding(False), nnx.logical_axis_rules(rules):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make(0)))
    with jax.set_mesh(mesh):
      shardings = stacked_shardings(sharding.param_shardings(abstract, mesh, rules))
    params = jax.jit(jax.vmap(init), out_shardings=shardings)(seed + jnp.arange(len(heads), dtype=jnp.int32))
  tx = make_probe_optimizer(total_steps=int(steps_per_epoch) * int(e.epochs), clip=float(e.get("clip_grad", 1.0)),
                            decay_all_params=bool(e.get("decay_all_params", False)))
  train_step, eval_step = probe_steps(graphdef, tx)
  opt_state = jax.jit(jax.vmap(tx.init))(params, stack_hparams(heads, steps_per_epoch))
  probe = Probe(graphdef, tx, heads,
                jax.jit(jax.vmap(train_step, in_axes=(0, 0, None, None, None)), donate_argnums=(0, 1)),
                jax.jit(jax.vmap(eval_step, in_axes=(0, None, None, None))))
  return probe, params, opt_state
