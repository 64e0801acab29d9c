"""The V-JEPA predictor (reference §2.3): narrow transformer that fills target positions from context tokens."""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jepa_jax.models import attention
from jepa_jax.models import layers
from jepa_jax.models import packing as packing_lib
from jepa_jax.models.attention import TokenLayout


class VisionTransformerPredictor(nnx.Module):
  """predictor_embed -> [context; mask tokens] + own sin-cos positions -> blocks -> norm -> last Kt -> proj.

  One mask token per mask generator (mask_tokens[i] for generator i). The positional table is computed from the
  built size and never interpolated: like the official predictor, it only runs at the training clip size.
  """

  def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
               embed_dim: int = 768, predictor_embed_dim: int = 384, depth: int = 6, num_heads: int = 12,
               mlp_ratio: float = 4.0, qkv_bias: bool = True, uniform_power: bool = True,
               num_mask_tokens: int = 2, zero_init_mask_tokens: bool = True, dtype=jnp.float32,
               attention_impl: str | None = None, remat: str = "none", scan_layers: bool = False,
               rngs: nnx.Rngs):
    if predictor_embed_dim % num_heads:
      raise ValueError(f"predictor_embed_dim {predictor_embed_dim} is not divisible by num_heads {num_heads}")
    self.embed_dim, self.predictor_embed_dim = embed_dim, predictor_embed_dim
    self.depth, self.num_heads = depth, num_heads
    self.num_mask_tokens = num_mask_tokens
    self.uniform_power = uniform_power
    self.remat, self.scan_layers = remat, scan_layers
    self.attention_impl, self.dtype = attention_impl, dtype
    self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
    self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]

    # D -> 384 and back: only the predictor side carries 'embed', so the two axes never map to the same mesh axis.
    self.predictor_embed = layers.linear(embed_dim, predictor_embed_dim, (None, "embed"), "norm", dtype, rngs)
    # [quirk §2.3] Mask tokens are nn.Parameters, not modules, so the official Linear re-init never touches them:
    # they stay zero with zero_init_mask_tokens (else trunc_normal(0.02) ~ normal(0.02)).
    token_init = layers.zeros_init if zero_init_mask_tokens else layers.weight_init
    self.mask_tokens = nnx.List([
        nnx.Param(token_init(rngs.params(), (1, 1, predictor_embed_dim), jnp.float32),
                  out_sharding=(None, None, "norm"))
        for _ in range(num_mask_tokens)])
    self.predictor_blocks = layers.make_blocks(
        depth, lambda r: layers.Block(predictor_embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                      dtype=dtype, attention_impl=attention_impl, rngs=r),
        scan_layers=scan_layers, rngs=rngs)
    self.predictor_norm = layers.layer_norm(predictor_embed_dim, rngs)
    self.predictor_proj = layers.linear(predictor_embed_dim, embed_dim, ("embed", None), "norm", dtype, rngs)

  def pos_embed(self):
    """[N, 384] float32 sin-cos table of the built grid (official predictor_pos_embed)."""
    return layers.pos_table(self.predictor_embed_dim, self.grid, self.grid, self.uniform_power)

  def __call__(self, context_tokens: jax.Array, context_indices: jax.Array, target_indices: jax.Array,
               mask_index: int) -> jax.Array:
    """context_tokens [B, Kc, D] at context_indices [B, Kc]; predicts [B, Kt, D] at target_indices [B, Kt]."""
    return self.predict_masks([context_tokens], [context_indices], [target_indices], packing="none",
                              first_mask_index=mask_index)[0]

  def predict_masks(self, context_tokens: Sequence[jax.Array], context_indices: Sequence[jax.Array],
                    target_indices: Sequence[jax.Array], packing: str = "",
                    first_mask_index: int = 0) -> list[jax.Array]:
    """Predictions [B, Kt_g, D] for mask generators g = 0, 1, ... (mask token first_mask_index + g).

    'none' runs the blocks once per generator, as the official PredictorMultiMaskWrapper; 'sequence' and 'batch'
    run them once over all generators (jepa_jax/models/packing.py), '' picks by attention kernel. All compute the
    same numbers.
    """
    packing_lib.check(packing, "config.model.predictor_packing", allow_auto=True)
    if not packing:
      platform = attention.current_platform()
      packing = packing_lib.predictor_packing_for(attention.resolve(self.attention_impl, platform, self.dtype),
                                                  platform)
    sequences = [self._tokens(z, c, t, first_mask_index + g)
                 for g, (z, c, t) in enumerate(zip(context_tokens, context_indices, target_indices))]
    positions = [jnp.concatenate([c, t], axis=1).astype(jnp.int32) for c, t in zip(context_indices, target_indices)]
    lengths = [x.shape[1] for x in sequences]
    if packing == "none":
      outputs = [self._blocks(x, TokenLayout(positions=p)) for x, p in zip(sequences, positions)]
    elif packing == "sequence":
      layout = TokenLayout(positions=packing_lib.pack_sequence(positions), segments=tuple(lengths))
      outputs = packing_lib.unpack_sequence(self._blocks(packing_lib.pack_sequence(sequences), layout), lengths)
    else:
      layout = TokenLayout(positions=packing_lib.pack_batch(positions),
                           kv_lengths=packing_lib.batch_lengths(lengths, sequences[0].shape[0]))
      outputs = packing_lib.unpack_batch(self._blocks(packing_lib.pack_batch(sequences), layout), lengths)
    # Only the target tokens are projected back (official: x[:, N_ctxt:]).
    return [self.predictor_proj(x[:, -t.shape[1]:]).astype(jnp.float32) for x, t in zip(outputs, target_indices)]

  def _tokens(self, context_tokens, context_indices, target_indices, mask_index: int) -> jax.Array:
    """[context; targets] of one generator: embedded context tokens and mask tokens, with their positions."""
    pos = jnp.asarray(self.pos_embed())
    x = self.predictor_embed(context_tokens).astype(jnp.float32) + pos[context_indices]
    # Official: mask_tokens[mask_index % num_mask_tokens], repeated over all N positions and gathered at the
    # targets; gathering a constant is a broadcast.
    token = self.mask_tokens[mask_index % self.num_mask_tokens][...]
    b, kt = target_indices.shape
    targets = jnp.broadcast_to(token, (b, kt, self.predictor_embed_dim)) + pos[target_indices]
    # [quirk §2.3] V1 concatenates [context; targets] without sorting by position, full attention, no mask.
    return jnp.concatenate([x, targets], axis=1)

  def _blocks(self, x: jax.Array, layout: TokenLayout) -> jax.Array:
    x = layers.constrain(x)
    x = layers.run_blocks(self.predictor_blocks, x, scan_layers=self.scan_layers, remat=self.remat, layout=layout)
    return layers.constrain(self.predictor_norm(x))
