"""The V-JEPA predictor (reference §2.3): narrow transformer that fills target positions from context tokens."""
import jax
import jax.numpy as jnp
from flax import nnx

from jepa_jax.models import layers


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
    self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
    self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]

    # D -> 384 and back: only the predictor side carries 'embed', so the two axes never map to the same mesh axis.
    self.predictor_embed = layers.linear(embed_dim, predictor_embed_dim, (None, "embed"), "norm", dtype, rngs)
    # [quirk §2.3] Mask tokens are nn.Parameters, not modules, so the official Linear re-init never touches them:
    # they stay zero with zero_init_mask_tokens (else trunc_normal(0.02) ~ normal(0.02)).
    token_init = layers.zeros_init if zero_init_mask_tokens else layers.weight_init
    self.mask_tokens = nnx.List([
        nnx.Param(token_init(rngs.params(), (1, 1, predictor_embed_dim), jnp.float32),
                  **layers.logical_axes(None, None, "norm"))
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
    pos = jnp.asarray(self.pos_embed())
    x = self.predictor_embed(context_tokens).astype(jnp.float32) + pos[context_indices]
    # Official: mask_tokens[mask_index % num_mask_tokens], repeated over all N positions and gathered at the
    # targets; gathering a constant is a broadcast.
    token = self.mask_tokens[mask_index % self.num_mask_tokens][...]
    b, kt = target_indices.shape
    targets = jnp.broadcast_to(token, (b, kt, self.predictor_embed_dim)) + pos[target_indices]
    # [quirk §2.3] V1 concatenates [context; targets] without sorting by position, full attention, no mask.
    x = layers.constrain(jnp.concatenate([x, targets], axis=1))
    x = layers.run_blocks(self.predictor_blocks, x, scan_layers=self.scan_layers, remat=self.remat)
    x = layers.constrain(self.predictor_norm(x))
    return self.predictor_proj(x[:, -kt:]).astype(jnp.float32)
