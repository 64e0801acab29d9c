"""The V-JEPA video encoder (also the target encoder) and the official model zoo (docs/reference.md §2.1, §2.2)."""
import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jepa_jax.models import layers
from jepa_jax.models import packing as packing_lib
from jepa_jax.models.attention import TokenLayout


class VisionTransformer(nnx.Module):
  """Tubelet embedding + positions + pre-norm blocks + final LayerNorm; no CLS token, no pooling.

  Positions enter one of two ways (config.model.pos_embed):
  - 'sincos' (V-JEPA 1): a 3-D sin-cos table added to the patch tokens. It is recomputed from static sizes instead
    of stored, so it is not a parameter (the official one is a frozen nn.Parameter; exporters write it with
    torch_layout.pos_embed_entries).
  - 'rope' (V-JEPA 2, docs/reference.md §9.1): no table; every attention rotates q and k by each token's integer
    (t, h, w) patch coordinates, read from its flat index in the clip's real token grid (T', H', W'), so
    non-square clips and masked (gathered) tokens keep their places. The rotary tables are built once per forward.
  """

  def __init__(self, *, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, tubelet_size: int = 2,
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, uniform_power: bool = True, pos_embed: str = "sincos",
               depth_rescale_init: bool = False, dtype=jnp.float32, attention_impl: str | None = None,
               remat: str = "none", scan_layers: bool = False, rngs: nnx.Rngs):
    if img_size % patch_size or num_frames % tubelet_size:
      raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size} and num_frames "
                       f"{num_frames} by tubelet_size {tubelet_size}")
    if embed_dim % num_heads:
      raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    if pos_embed not in ("sincos", "rope"):
      raise ValueError(f"pos_embed={pos_embed!r}; use 'sincos' (V-JEPA 1) or 'rope' (V-JEPA 2)")
    self.img_size, self.patch_size = img_size, patch_size
    self.num_frames, self.tubelet_size = num_frames, tubelet_size
    self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
    self.uniform_power = uniform_power
    self.use_rope = pos_embed == "rope"
    self.remat, self.scan_layers = remat, scan_layers
    self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
    self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]

    self.patch_embed = layers.PatchEmbed3D(
        patch_size=patch_size, tubelet_size=tubelet_size, embed_dim=embed_dim, dtype=dtype, rngs=rngs)
    self.blocks = layers.make_blocks(
        depth, lambda r: layers.Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                      use_rope=self.use_rope, dtype=dtype, attention_impl=attention_impl, rngs=r),
        scan_layers=scan_layers, rngs=rngs)
    self.norm = layers.layer_norm(embed_dim, rngs)
    if depth_rescale_init:
      layers.rescale_blocks(self.blocks, scan_layers=scan_layers)

  def pos_embed(self, grid: tuple[int, int, int] | None = None):
    """[N, D] float32 sin-cos table for a token grid; trilinearly resized from the built grid like the official
    interpolate_pos_encoding when the clip size differs ('sincos' models only)."""
    if self.use_rope:
      raise ValueError("a RoPE encoder has no position table")
    return layers.pos_table(self.embed_dim, self.grid, tuple(grid or self.grid), self.uniform_power)

  def __call__(self, x: jax.Array, keep_indices: jax.Array | None = None) -> jax.Array:
    """x: [B, T, H, W, 3] normalised clip, or an image [B, H, W, 3]; keep_indices: int [B, K] tokens to keep.

    Returns float32 [B, K or N, D]. Kept tokens carry their absolute positions (official apply_masks): each gets the
    sin-cos table's row of its own index (embed), RoPE reads their indices.
    """
    x = self._as_clip(x)
    if keep_indices is None:
      tokens = self.embed(x)
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape[:2])
      return self.encode(tokens, self._layout(positions, x))
    keep_indices = keep_indices.astype(jnp.int32)
    return self.encode(self.embed(x, keep_indices), self._layout(keep_indices, x))

  def encode_masks(self, x: jax.Array, masks: Sequence[jax.Array], packing: str = "sequence") -> list[jax.Array]:
    """The context encoder for several masks of the same clips (one per mask generator): [B, K_g, D] for each.

    'none' runs one forward per mask, as the official MultiMaskWrapper; 'sequence' and 'batch' run one forward over
    all of them (jepa_jax/models/packing.py). All three compute the same numbers.
    """
    packing_lib.check(packing, "config.model.context_packing")
    if packing == "none":
      return [self(x, keep_indices=m) for m in masks]
    x = self._as_clip(x)
    masks = [m.astype(jnp.int32) for m in masks]
    lengths = [m.shape[1] for m in masks]
    if packing == "sequence":
      indices = packing_lib.pack_sequence(masks)
      layout = self._layout(indices, x, segments=tuple(lengths))
      return packing_lib.unpack_sequence(self.encode(self.embed(x, indices), layout), lengths)
    layout = self._layout(packing_lib.pack_batch(masks), x,
                          kv_lengths=packing_lib.batch_lengths(lengths, x.shape[0]))
    tubelets, grid = self.patch_embed.tubelets(x), self.token_grid(x)  # once for every generator
    kept = packing_lib.pack_batch([self._embed_tubelets(tubelets, grid, m) for m in masks])
    return packing_lib.unpack_batch(self.encode(kept, layout), lengths)

  def _as_clip(self, x: jax.Array) -> jax.Array:
    if x.ndim == 4:
      # Official image eval: a forward pre-hook repeats each image num_frames times in time (docs/reference.md §6.3).
      x = jnp.repeat(x[:, None], self.num_frames, axis=1)
    _, t, h, w, _ = x.shape
    if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
      raise ValueError(f"clip {x.shape[1:4]} is not divisible by the tubelet/patch size "
                       f"({self.tubelet_size}, {self.patch_size}, {self.patch_size})")
    return x

  def token_grid(self, x: jax.Array) -> tuple[int, int, int]:
    """(T', H', W'): the clip's real token grid (non-square clips give H' != W')."""
    _, t, h, w, _ = x.shape
    return (t // self.tubelet_size, h // self.patch_size, w // self.patch_size)

  def _layout(self, positions: jax.Array, x: jax.Array, **fields) -> TokenLayout:
    if self.use_rope:  # the encoder passes its real grid (official handle_nonsquare_inputs)
      return layers.rope_layout(positions, self.token_grid(x), self.embed_dim // self.num_heads, **fields)
    return TokenLayout(positions=positions, **fields)

  def embed(self, x: jax.Array, keep_indices: jax.Array | None = None) -> jax.Array:
    """Clip (or image) -> float32 [B, N, D] patch tokens, with their sin-cos positions added ('sincos').

    keep_indices (int [B, K]): only those tokens, [B, K, D]. The official encoder embeds all N tokens and gathers
    the kept ones afterwards (apply_masks); the projection and the table act token by token, so gathering the
    tubelets' pixels first gives the same tokens without embedding the dropped ones, and the backward pass has no
    scatter of the kept tokens' gradients back into all N (docs/performance.md, "Token selection").
    """
    x = self._as_clip(x)
    return self._embed_tubelets(self.patch_embed.tubelets(x), self.token_grid(x), keep_indices)

  def _embed_tubelets(self, tubelets: jax.Array, grid: tuple[int, int, int],
                      keep_indices: jax.Array | None) -> jax.Array:
    """embed() from the clip's flattened tubelets [B, N, P] and its token grid."""
    if keep_indices is not None:
      tubelets = layers.take_tokens(tubelets, keep_indices)
    tokens = self.patch_embed.project(tubelets)
    if not self.use_rope:
      table = jnp.asarray(self.pos_embed(grid))
      tokens = tokens + (table[None] if keep_indices is None else layers.take_tokens(table, keep_indices))
    return layers.constrain(tokens)

  def encode(self, tokens: jax.Array, layout: TokenLayout) -> jax.Array:
    """Blocks and final norm over embedded tokens laid out as `layout` says; float32 [B, K, D]."""
    tokens = layers.run_blocks(self.blocks, tokens, scan_layers=self.scan_layers, remat=self.remat, layout=layout)
    return layers.constrain(self.norm(tokens)).astype(jnp.float32)


# --------------------------------------------------------------------------------------------------------------
# Model zoo (docs/reference.md §2.1). Every official model uses qkv_bias=True and LayerNorm eps 1e-6.


@dataclasses.dataclass(frozen=True)
class ZooSize:
  """One zoo model's dimensions: the only place they are written (FLOP counts, importers and benchmarks read them
  through jepa_jax.models.model_dims)."""
  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0


MODEL_SIZES = {
    "vit_tiny": ZooSize(16, 192, 12, 3),
    "vit_small": ZooSize(16, 384, 12, 6),
    "vit_base": ZooSize(16, 768, 12, 12),
    "vit_large": ZooSize(16, 1024, 24, 16),
    "vit_huge": ZooSize(16, 1280, 32, 16),
    # mlp_ratio 48/11 gives int(1408 * 48/11) = int(6144.0) = 6144 hidden units.
    "vit_giant": ZooSize(16, 1408, 40, 16, 48 / 11),
    # [quirk, docs/reference.md §2.1] The official factory passes `mpl_ratio=64/13` (a typo) that **kwargs swallows, so
    # the MLP keeps the default ratio 4.0 (hidden 6656). We reproduce the effective model. Its default patch size is 14.
    "vit_gigantic": ZooSize(14, 1664, 48, 16, 4.0),
    # V-JEPA 2 (docs/reference.md §9.1). The released "ViT-g" is vit_giant_xformers: 22 heads of 64 channels (the
    # 16-head vit_giant above is not a V-JEPA 2 model); hidden int(1408 * 48/11) = 6144. L and H are unchanged.
    "vit_giant_xformers": ZooSize(16, 1408, 40, 22, 48 / 11),
}


def _zoo_model(name: str, kwargs: dict) -> VisionTransformer:
  """The named zoo model; keyword arguments override its sizes (small test and demo models)."""
  return VisionTransformer(**{**dataclasses.asdict(MODEL_SIZES[name]), **kwargs})


def vit_tiny(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_tiny", kwargs)


def vit_small(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_small", kwargs)


def vit_base(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_base", kwargs)


def vit_large(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_large", kwargs)


def vit_huge(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_huge", kwargs)


def vit_giant(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_giant", kwargs)


def vit_gigantic(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_gigantic", kwargs)


def vit_giant_xformers(**kwargs) -> VisionTransformer:
  return _zoo_model("vit_giant_xformers", kwargs)


MODEL_ZOO = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_huge": vit_huge,
    "vit_giant": vit_giant,
    "vit_gigantic": vit_gigantic,
    "vit_giant_xformers": vit_giant_xformers,
}
