"""One forward pass for several mask generators: their token sequences packed into one.

The official step runs the context encoder and the predictor once per mask generator (docs/reference.md §4.2): twice as
many, half-size kernels. Each generator has fixed token counts (input_pipeline/masks.py), so two static ways to
pack them exist, and both compute exactly the per-generator function:

- 'sequence': side by side along the sequence, [B, K_0 + K_1, D], with block-diagonal attention (TokenLayout
  segments). No padding, so no wasted MLP work; dense attention (xla, cudnn) computes the masked cross-generator
  logits too, splash skips the blocks its static mask rules out.
- 'batch': stacked along the batch, [B * G, max K, D], each padded to the longest, keys past a row's length masked
  (TokenLayout kv_lengths). Every layer works on the padding: a waste where the lengths differ a lot.
- 'none': one pass per generator, the official structure.

Measured (docs/performance.md, "One pass for both mask generators"), ViT-L/16 at 224 px: the context encoder
packs along the sequence (362 and 101 context tokens: batch packing would spend 56% more context-encoder FLOPs on
padding, the dense cross-generator logits cost 2.4%). The predictor (1116 and 1203 tokens) packs along the
sequence under splash, which skips the cross-generator blocks; along the batch under dense kernels (4.9% of its
FLOPs on padding, against 33% for dense logits over the packed sequence); not at all on the CPU, where neither
paid for its extra work (models/packing.predictor_packing_for).

Rows of a batch-packed array are interleaved (row b * G + g is clip b of generator g), so a batch sharded over
devices stays where it is: no data moves between chips.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

PACKINGS = ("sequence", "batch", "none")


def check(packing: str, field: str, allow_auto: bool = False) -> None:
  if packing not in PACKINGS and not (allow_auto and packing == ""):
    raise ValueError(f"{field}={packing!r}; use one of {PACKINGS}" + (" or '' (by kernel)." if allow_auto else "."))


def predictor_packing_for(kernel: str, platform: str) -> str:
  """The predictor's packing when config.model.predictor_packing is '' (docs/performance.md, "One pass for both
  mask generators"): 'sequence' where the kernel skips the masked cross-generator blocks (splash); 'batch' for the
  dense kernels of accelerators, which would compute all of those logits; 'none' on the CPU, where neither
  packing paid for its extra logits or padding."""
  if kernel == "splash":
    return "sequence"
  return "none" if platform == "cpu" else "batch"


def pack_sequence(parts: Sequence[jax.Array]) -> jax.Array:
  """[B, K_g, ...] per generator -> [B, sum K_g, ...]."""
  return jnp.concatenate(parts, axis=1)


def unpack_sequence(x: jax.Array, lengths: Sequence[int]) -> list[jax.Array]:
  """Inverse of pack_sequence."""
  starts = [sum(lengths[:g]) for g in range(len(lengths))]
  return [x[:, s:s + k] for s, k in zip(starts, lengths)]


def pack_batch(parts: Sequence[jax.Array]) -> jax.Array:
  """[B, K_g, ...] per generator -> [B * G, max K, ...], zero-padded, row b * G + g from generator g."""
  longest = max(p.shape[1] for p in parts)
  padded = [jnp.pad(p, [(0, 0), (0, longest - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts]
  stacked = jnp.stack(padded, axis=1)  # [B, G, L, ...]
  return stacked.reshape(-1, *stacked.shape[2:])


def batch_lengths(lengths: Sequence[int], batch: int) -> jax.Array:
  """int32 [B * G]: the real length of each row of pack_batch's output."""
  return jnp.tile(jnp.asarray(lengths, jnp.int32), batch)


def unpack_batch(x: jax.Array, lengths: Sequence[int]) -> list[jax.Array]:
  """Inverse of pack_batch: [B * G, L, ...] -> [B, K_g, ...] per generator."""
  grouped = x.reshape(-1, len(lengths), *x.shape[1:])
  return [grouped[:, g, :k] for g, k in enumerate(lengths)]
