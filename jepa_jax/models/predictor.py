"""The V-JEPA predictor (docs/reference.md §2.3): a narrow transformer that fills target positions from
context tokens."""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jepa_jax.models import attention
from jepa_jax.models import layers
from jepa_jax.models import packing as packing_lib
from jepa_jax.models.attention import TokenLayout


class VisionTransformerPredictor(nnx.Module):
  """predictor_embed -> [context; mask tokens] (+ positions) -> blocks -> norm -> last Kt -> proj.

  'sincos' (V-JEPA 1): the predictor's own sin-cos table is added to the tokens; [context; targets] go through the
  blocks unsorted; generator g uses mask_tokens[g]. The table is computed from the built size and never
  interpolated: like the official predictor, it only runs at the training clip size.
  'rope' (V-JEPA 2, docs/reference.md §9.2): no table; RoPE in every block with positions split on the built
  square grid (T', S, S), S = img_size // patch_size (the official predictor passes no patch counts); [context;
  targets] sorted by position before the blocks and un-sorted after (per generator when several share a pass).
  mask_token_rule: 'generator' (mask token g for generator g, V-JEPA 1) or 'frame_group' (the official V-JEPA 2
  PredictorMultiSeqWrapper indexes by frame-count group, and with one group every generator uses mask token 0).
  """

  def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
               embed_dim: int = 768, predictor_embed_dim: int = 384, depth: int = 6, num_heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, uniform_power: bool = True,
               pos_embed: str = "sincos", depth_rescale_init: bool = False, num_mask_tokens: int = 2,
               mask_token_rule: str = "generator", zero_init_mask_tokens: bool = True, dtype=jnp.float32,
               attention_impl: str | None = None, remat: str = "none", scan_layers: bool = False,
               rngs: nnx.Rngs):
    if predictor_embed_dim % num_heads:
      raise ValueError(f"predictor_embed_dim {predictor_embed_dim} is not divisible by num_heads {num_heads}")
    if pos_embed not in ("sincos", "rope"):
      raise ValueError(f"pos_embed={pos_embed!r}; use 'sincos' (V-JEPA 1) or 'rope' (V-JEPA 2)")
    if mask_token_rule not in MASK_TOKEN_RULES:
      raise ValueError(f"mask_token_rule={mask_token_rule!r}; use one of {MASK_TOKEN_RULES}")
    self.embed_dim, self.predictor_embed_dim = embed_dim, predictor_embed_dim
    self.depth, self.num_heads = depth, num_heads
    self.num_mask_tokens = num_mask_tokens
    self.mask_token_rule = mask_token_rule
    self.uniform_power = uniform_power
    self.use_rope = pos_embed == "rope"
    self.remat, self.scan_layers = remat, scan_layers
    self.attention_impl, self.dtype = attention_impl, dtype
    self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
    self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]

    # D -> 384 and back: only the predictor side carries 'embed', so the two axes never map to the same mesh axis.
    self.predictor_embed = layers.linear(embed_dim, predictor_embed_dim, (None, "embed"), "norm", dtype, rngs)
    # [quirk, docs/reference.md §2.3] Mask tokens are nn.Parameters, not modules, so the official Linear re-init never
    # touches them: they stay zero with zero_init_mask_tokens (else trunc_normal(0.02) ~ normal(0.02)).
    token_init = layers.zeros_init if zero_init_mask_tokens else layers.weight_init
    self.mask_tokens = nnx.List([
        nnx.Param(token_init(rngs.params(), (1, 1, predictor_embed_dim), jnp.float32),
                  **layers.logical_axes(None, None, "norm"))
        for _ in range(num_mask_tokens)])
    self.predictor_blocks = layers.make_blocks(
        depth, lambda r: layers.Block(predictor_embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                      use_rope=self.use_rope, dtype=dtype, attention_impl=attention_impl, rngs=r),
        scan_layers=scan_layers, rngs=rngs)
    self.predictor_norm = layers.layer_norm(predictor_embed_dim, rngs)
    self.predictor_proj = layers.linear(predictor_embed_dim, embed_dim, ("embed", None), "norm", dtype, rngs)
    if depth_rescale_init:
      layers.rescale_blocks(self.predictor_blocks, scan_layers=scan_layers)

  def pos_embed(self):
    """[N, 384] float32 sin-cos table of the built grid (official predictor_pos_embed; 'sincos' models only)."""
    if self.use_rope:
      raise ValueError("a RoPE predictor has no position table")
    return layers.pos_table(self.predictor_embed_dim, self.grid, self.grid, self.uniform_power)

  def __call__(self, context_tokens: jax.Array, context_indices: jax.Array, target_indices: jax.Array,
               mask_index: int) -> jax.Array:
    """context_tokens [B, Kc, D] at context_indices [B, Kc]; predicts [B, Kt, D] at target_indices [B, Kt] with
    mask token mask_index (modulo the number of tokens, as the official predictor)."""
    return self.predict_masks([context_tokens], [context_indices], [target_indices], packing="none",
                              first_mask_index=mask_index)[0]

  def mask_index(self, generator: int, first_mask_index: int = 0) -> int:
    """The mask token generator `generator` uses (mask_token_rule; the class doc)."""
    return first_mask_index + (generator if self.mask_token_rule == "generator" else 0)

  def predict_masks(self, context_tokens: Sequence[jax.Array], context_indices: Sequence[jax.Array],
                    target_indices: Sequence[jax.Array], packing: str = "",
                    first_mask_index: int = 0) -> list[jax.Array]:
    """Predictions [B, Kt_g, D] for mask generators g = 0, 1, ... (mask token self.mask_index(g, first_mask_index)).

    'none' runs the blocks once per generator, as the official PredictorMultiMaskWrapper; 'sequence' and 'batch'
    run them once over all generators (jepa_jax/models/packing.py), '' picks by attention kernel. All compute the
    same numbers.
    """
    packing_lib.check(packing, "config.model.predictor_packing", allow_auto=True)
    if not packing:
      platform = attention.current_platform()
      packing = packing_lib.predictor_packing_for(attention.resolve(self.attention_impl, platform, self.dtype),
                                                  platform)
    sequences = [self._tokens(z, c, t, self.mask_index(g, first_mask_index))
                 for g, (z, c, t) in enumerate(zip(context_tokens, context_indices, target_indices))]
    positions = [jnp.concatenate([c, t], axis=1).astype(jnp.int32) for c, t in zip(context_indices, target_indices)]
    orders = None
    if self.use_rope:
      # Official V-JEPA 2: [context; targets] and their indices sorted by position (argsort) before the blocks and
      # un-sorted after the norm. With RoPE and full attention it changes only the summation order.
      orders = [jnp.argsort(p, axis=1) for p in positions]
      sequences = [_take(x, o) for x, o in zip(sequences, orders)]
      positions = [jnp.take_along_axis(p, o, axis=1) for p, o in zip(positions, orders)]
    lengths = [x.shape[1] for x in sequences]
    if packing == "none":
      outputs = [self._blocks(x, self._layout(p)) for x, p in zip(sequences, positions)]
    elif packing == "sequence":
      layout = self._layout(packing_lib.pack_sequence(positions), segments=tuple(lengths))
      outputs = packing_lib.unpack_sequence(self._blocks(packing_lib.pack_sequence(sequences), layout), lengths)
    else:
      layout = self._layout(packing_lib.pack_batch(positions),
                            kv_lengths=packing_lib.batch_lengths(lengths, sequences[0].shape[0]))
      outputs = packing_lib.unpack_batch(self._blocks(packing_lib.pack_batch(sequences), layout), lengths)
    if orders is not None:
      outputs = [_take(x, jnp.argsort(o, axis=1)) for x, o in zip(outputs, orders)]
    # Only the target tokens are projected back (official: x[:, N_ctxt:]).
    return [self.predictor_proj(x[:, -t.shape[1]:]).astype(jnp.float32) for x, t in zip(outputs, target_indices)]

  def _layout(self, positions: jax.Array, **fields) -> TokenLayout:
    if self.use_rope:  # the square built grid: the official predictor's blocks get no patch counts
      return layers.rope_layout(positions, self.grid, self.predictor_embed_dim // self.num_heads, **fields)
    return TokenLayout(positions=positions, **fields)

  def _tokens(self, context_tokens, context_indices, target_indices, mask_index: int) -> jax.Array:
    """[context; targets] of one generator: embedded context tokens and mask tokens (+ their sin-cos positions)."""
    x = self.predictor_embed(context_tokens).astype(jnp.float32)
    # Official: mask_tokens[mask_index % num_mask_tokens], repeated over all N positions and gathered at the
    # targets; gathering a constant is a broadcast.
    token = self.mask_tokens[mask_index % self.num_mask_tokens][...]
    b, kt = target_indices.shape
    targets = jnp.broadcast_to(token, (b, kt, self.predictor_embed_dim))
    if not self.use_rope:
      pos = jnp.asarray(self.pos_embed())
      x = x + layers.take_tokens(pos, context_indices)
      targets = targets + layers.take_tokens(pos, target_indices)
    # [quirk, docs/reference.md §2.3] V1 concatenates [context; targets] without sorting by position, full attention,
    # no mask.
    return jnp.concatenate([x, targets], axis=1)

  def _blocks(self, x: jax.Array, layout: TokenLayout) -> jax.Array:
    x = layers.constrain(x)
    x = layers.run_blocks(self.predictor_blocks, x, scan_layers=self.scan_layers, remat=self.remat, layout=layout)
    return layers.constrain(self.predictor_norm(x))


MASK_TOKEN_RULES = ("generator", "frame_group")


def _take(x: jax.Array, order: jax.Array) -> jax.Array:
  """x [B, L, D] reordered along L by order [B, L]."""
  return jnp.take_along_axis(x, order[..., None], axis=1)
