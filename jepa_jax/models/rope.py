"""3-D rotary position embedding of V-JEPA 2, as the official RoPEAttention computes it (docs/reference.md §9.1).

Each attention head's channels are read as [t | h | w | rest]: three rotated chunks of 2 * ((head_dim // 3) // 2)
channels, one per grid axis, then an unrotated remainder (head_dim 64 = 20*3 + 4 for ViT-L and ViT-g, 80 = 26*3 + 2
for ViT-H, 32 = 10*3 + 2 for the predictor). The three positions of a token are its integer patch coordinates
(frame, row, column), read from its flat index f = t * H' * W' + h * W' + w in the full token grid, so a masked
(gathered) token keeps its place. Positions are not normalised.

Layout: q and k as jax.nn.dot_product_attention takes them, [B, N, heads, head_dim]; token indices [B, N] (or [N],
shared by the batch). RoPE goes on q and k after the qkv projection, before the attention.

    q = rope.apply_rope(q, token_indices, grid)                    # one call per q and k
    tables = rope.rope_tables(token_indices, grid, head_dim)       # or: build once per forward ...
    q, k = rope.apply_rope_tables(q, tables), rope.apply_rope_tables(k, tables)   # ... and reuse in every layer

The encoder passes its real patch grid (T', H', W') (non-square clips work); the predictor passes its built square
grid (T', S, S) with S = crop_size // patch_size, as the official predictor does.

Angles are computed in float32 whatever the compute dtype (the official code computes them in q's dtype, so in
bfloat16 under its bf16 autocast; docs/reference.md §10).
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class RopeTables(NamedTuple):
  """cos and sin, float32 [..., N, 1, rotated] with rotated = 3 * chunk_dim(head_dim); broadcast over heads."""
  cos: jax.Array
  sin: jax.Array


def chunk_dim(head_dim: int) -> int:
  """Channels per rotated axis: 2 * ((head_dim // 3) // 2) (official d_dim = h_dim = w_dim)."""
  return 2 * ((head_dim // 3) // 2)


def grid_positions(token_indices: jax.Array, grid: Sequence[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Integer (frame, row, column) of flat token indices in a (T', H', W') grid, each shaped like token_indices."""
  _, height, width = (int(g) for g in grid)
  idx = jnp.asarray(token_indices, jnp.int32)
  per_frame = height * width
  frame = idx // per_frame
  row = (idx - frame * per_frame) // width
  col = idx - frame * per_frame - row * width
  return frame, row, col


def _frequencies(width: int) -> np.ndarray:
  """omega_i = 1 / 10000^(i / (width / 2)), i < width / 2: the official formula, per chunk of `width` channels."""
  return (1.0 / 10000.0 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))).astype(np.float32)


def _chunk_angles(pos: jax.Array, width: int) -> jax.Array:
  angle = pos.astype(jnp.float32)[..., None] * jnp.asarray(_frequencies(width))
  # [quirk docs/reference.md §9.1] The official code tiles the D/2 angles as [f0..f(D/2-1), f0..f(D/2-1)]
  # (repeat(1, 1, 1, 2)) while the rotation pairs adjacent channels (x0, x1), (x2, x3), ...: channel j gets
  # frequency j mod D/2, so pair k does not get frequency k and the map is not a rotation. The released weights
  # were trained with it (the upstream note in rotate_queries_or_keys; vjepa2 PR #15); keep it.
  return jnp.concatenate([angle, angle], axis=-1)


def rope_tables(token_indices: jax.Array, grid: Sequence[int], head_dim: int) -> RopeTables:
  """cos/sin of every rotated channel for the given tokens; compute once per forward and share across layers."""
  width = chunk_dim(head_dim)
  if width == 0:
    raise ValueError(f"head_dim {head_dim} is too small for 3-D RoPE: each of t, h, w needs >= 2 channels")
  angle = jnp.concatenate([_chunk_angles(p, width) for p in grid_positions(token_indices, grid)], axis=-1)
  angle = angle[..., None, :]  # [..., N, 1, 3 * width]: the same for every head
  return RopeTables(jnp.cos(angle), jnp.sin(angle))


def apply_rope_tables(x: jax.Array, tables: RopeTables) -> jax.Array:
  """Rotates the first 3 * chunk_dim channels of each head of x [B, N, heads, head_dim]; the rest pass unchanged.

  Computed in float32, returned in x's dtype.
  """
  rotated_dim = tables.cos.shape[-1]
  xf = x.astype(jnp.float32)
  head, rest = xf[..., :rotated_dim], xf[..., rotated_dim:]
  pairs = head.reshape(*head.shape[:-1], rotated_dim // 2, 2)
  # (x0, x1) -> (-x1, x0) for every adjacent pair: the official stack((-y2, y1)).
  partner = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(head.shape)
  head = head * tables.cos + partner * tables.sin
  return jnp.concatenate([head, rest], axis=-1).astype(x.dtype)


def apply_rope(x: jax.Array, token_indices: jax.Array, grid: Sequence[int]) -> jax.Array:
  """3-D RoPE of q or k [B, N, heads, head_dim] for tokens at flat indices token_indices [B, N] (or [N]) of a
  (T', H', W') grid. Pure; jit- and vmap-safe (grid is static)."""
  return apply_rope_tables(x, rope_tables(token_indices, grid, x.shape[-1]))
