"""Analytic FLOPs of one pretraining step, for MFU.

Counts the matmuls only (2 FLOPs per multiply-add); LayerNorm, softmax, GELU and the loss are O(tokens x dim) and
below 1% at ViT-L scale. Forward+backward is 3x forward (the backward computes input and weight gradients).
The official forward embeds all N patches and gathers the context tokens afterwards (docs/reference.md §2.2), so the
context encoder's patch embedding runs on all tokens; its backward needs only the weight gradient (the input is
pixels), so it counts 2x, not 3x. These are the official step's FLOPs (a pass per mask generator) whatever
config.model.context_packing says. Our context encoder embeds only the kept tokens (jepa_jax/models/vit.py: embed),
so it does fewer: context_embedding_saved_flops (tests/test_bench.py compares the count less those with XLA's).
"""
from typing import Sequence

from jepa_jax.models import model_dims


def block_flops(num_tokens: int, dim: int, mlp_hidden: int) -> int:
  """One pre-norm transformer block on one sequence: qkv, scores, weighted values, proj, fc1, fc2."""
  n, d = num_tokens, dim
  qkv = 2 * n * d * 3 * d
  attention = 2 * n * n * d + 2 * n * n * d  # q k^T and softmax(.) v, summed over heads
  proj = 2 * n * d * d
  mlp = 2 * n * d * mlp_hidden * 2
  return qkv + attention + proj + mlp


def encoder_blocks_flops(num_tokens, embed_dim, depth, mlp_hidden) -> int:
  return depth * block_flops(num_tokens, embed_dim, mlp_hidden)


def predictor_forward_flops(*, embed_dim, pred_embed_dim, pred_depth, pred_mlp_hidden, num_context,
                            num_target) -> int:
  """predictor_embed on the context tokens, blocks on context + targets, predictor_proj on the targets
  (docs/reference.md §2.3)."""
  embed = 2 * num_context * embed_dim * pred_embed_dim
  blocks = pred_depth * block_flops(num_context + num_target, pred_embed_dim, pred_mlp_hidden)
  proj = 2 * num_target * pred_embed_dim * embed_dim
  return embed + blocks + proj


def train_step_flops(*, embed_dim: int, depth: int, mlp_hidden: int, num_tokens: int, pred_embed_dim: int,
                     pred_depth: int, pred_mlp_hidden: int, num_context: Sequence[int], num_target: Sequence[int],
                     batch: int, patch_dim: int) -> dict:
  """FLOPs of one optimizer step over `batch` clips (global batch: divide by devices for per-device figures)."""
  patch_embed = 2 * num_tokens * patch_dim * embed_dim
  target_fwd = batch * (patch_embed + encoder_blocks_flops(num_tokens, embed_dim, depth, mlp_hidden))
  context, predictor = 0, 0
  for n_ctx, n_tgt in zip(num_context, num_target, strict=True):
    context += 2 * patch_embed + 3 * encoder_blocks_flops(n_ctx, embed_dim, depth, mlp_hidden)
    predictor += 3 * predictor_forward_flops(
        embed_dim=embed_dim, pred_embed_dim=pred_embed_dim, pred_depth=pred_depth,
        pred_mlp_hidden=pred_mlp_hidden, num_context=n_ctx, num_target=n_tgt)
  out = {"target_fwd": target_fwd, "context_fwd_bwd": batch * context, "predictor_fwd_bwd": batch * predictor}
  out["total"] = sum(out.values())
  return {k: float(v) for k, v in out.items()}


def train_step_flops_from_config(config, specs) -> dict:
  """train_step_flops for config.model (the zoo's sizes with the config's overrides) and the mask generator specs
  (num_context, num_target), global batch."""
  d = model_dims(config.model)
  return train_step_flops(
      embed_dim=d.embed_dim, depth=d.depth, mlp_hidden=d.mlp_hidden, num_tokens=d.num_tokens,
      pred_embed_dim=d.pred_embed_dim, pred_depth=d.pred_depth, pred_mlp_hidden=d.pred_mlp_hidden,
      num_context=tuple(s.num_context for s in specs), num_target=tuple(s.num_target for s in specs),
      batch=config.data.batch_size, patch_dim=d.patch_dim)


def context_embedding_saved_flops(*, embed_dim: int, num_tokens: int, patch_dim: int, num_context: Sequence[int],
                                  batch: int) -> int:
  """The official context patch embedding's FLOPs (all N tokens, once per generator, forward + weight gradient)
  that our step does not compute: it embeds only each generator's kept tokens, packed or not."""
  official = len(num_context) * 2 * (2 * num_tokens * patch_dim * embed_dim)
  ours = 2 * (2 * sum(num_context) * patch_dim * embed_dim)
  return batch * (official - ours)


def packing_waste_flops(*, embed_dim: int, depth: int, mlp_hidden: int, pred_embed_dim: int, pred_depth: int,
                        pred_mlp_hidden: int, num_context: Sequence[int], num_target: Sequence[int], batch: int,
                        context_packing: str, predictor_packing: str, dense_attention: bool = True) -> dict:
  """FLOPs (forward + backward, `batch` clips) that one pass for all mask generators computes beyond the pass per
  generator (jepa_jax/models/packing.py); not part of the model FLOPs above.

  'batch' packing runs every layer on the padding up to the longest generator; 'sequence' packing computes the
  masked cross-generator attention logits when the kernel is dense (xla, cudnn; dense_attention=False for splash,
  which skips those blocks, up to its 128-token tiles). The linear layers cancel in the sequence case.
  """
  def waste(lengths, dim, hidden, layers, packing):
    exact = sum(block_flops(n, dim, hidden) for n in lengths)
    if packing == "batch":
      packed = len(lengths) * block_flops(max(lengths), dim, hidden)
    elif packing == "sequence" and dense_attention:
      packed = block_flops(sum(lengths), dim, hidden)
    else:
      packed = exact
    return 3 * layers * (packed - exact)

  sequences = [c + t for c, t in zip(num_context, num_target, strict=True)]
  out = {"context": batch * waste(num_context, embed_dim, mlp_hidden, depth, context_packing),
         "predictor": batch * waste(sequences, pred_embed_dim, pred_mlp_hidden, pred_depth, predictor_packing)}
  out["total"] = sum(out.values())
  return {k: float(v) for k, v in out.items()}
