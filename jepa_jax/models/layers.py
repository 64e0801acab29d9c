"""Building blocks shared by the encoder and the predictor (docs/reference.md §2.2).

Modules are named like the official PyTorch modules so that a parameter path joined with '.' is the PyTorch
state_dict key (see jepa_jax/torch_layout.py). Parameters are float32; `dtype` is the compute dtype of the matmuls.
LayerNorm, the attention softmax and the residual stream stay float32, as under the official bf16 autocast.

Every parameter carries logical axis names ('embed', 'mlp', 'heads', 'norm', 'conv'); configs/default.py maps
them to mesh axes. Nothing here needs a mesh at construction (see logical_axes): the modules build in a plain Python
session, under nnx.eval_shape, or inside a jitted init whose out_shardings place them.
"""
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jepa_jax.models import attention
from jepa_jax.models import rope

LN_EPS = 1e-6
# take_tokens: the largest token count that a TPU program selects from by one-hot matmul. Its cost grows with N^2
# per clip, a gather's with N: by the TPU compiler's estimates (docs/performance.md, "Token selection") the
# one-hot matmul saves 1.1 ms of ViT-L's step at 1,568 tokens (224 px) and costs 0.4 ms of ViT-H's at 4,608 (384 px).
# 2,048 covers 224 and 256 px at 16 frames.
ONE_HOT_MAX_TOKENS = 2048

# [quirk, docs/reference.md §2.2, Initialisation] Official pretraining re-initialises every Linear after construction
# (app/vjepa/utils.py:init_video_model), which overwrites the depth rescale of proj/fc2: all Linear weights end
# up N(0, 0.02), biases 0. Its trunc_normal_ cuts at the absolute bounds [-2, 2], i.e. never at std 0.02, so the
# matching JAX initialiser is a plain normal; jax's truncated_normal would cut at 2 sigma and shrink the std.
weight_init = nnx.initializers.normal(0.02)
zeros_init = nnx.initializers.zeros_init()


def take_tokens(x: jax.Array, indices: jax.Array) -> jax.Array:
  """x [B, N, ...] (or a table [N, ...] shared by the batch) at int indices [B, K] -> [B, K, ...].

  The official apply_masks: a gather along the tokens. The TPU compiler charges a gather of rows along a non-minor
  axis more than the one-hot matmul that computes the same rows on the matrix unit (the TPU idiom for small tables,
  as in flaxformer's one-hot embedding; docs/performance.md "Token selection"), so a TPU program selects
  tokens by one_hot(indices) @ x while N is at most ONE_HOT_MAX_TOKENS, and gathers elsewhere. Each one-hot row
  holds a single 1, so at full precision (float32 operands: Precision.HIGHEST, whose bf16 passes split each value
  exactly; bfloat16 operands are exact at the default) the rows equal the gather's (a -0.0 may come back +0.0).
  """
  n = x.shape[0] if x.ndim == 2 else x.shape[1]
  if attention.current_platform() != "tpu" or n > ONE_HOT_MAX_TOKENS:
    if x.ndim == 2:
      return jnp.take(x, indices, axis=0)
    return jnp.take_along_axis(x, indices.reshape(*indices.shape, *([1] * (x.ndim - 2))), axis=1)
  one_hot = jax.nn.one_hot(indices, n, dtype=x.dtype)
  precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
  spec = "bkn,n...->bk..." if x.ndim == 2 else "bkn,bn...->bk..."
  return jnp.einsum(spec, one_hot, x, precision=precision)


def constrain(x: jax.Array) -> jax.Array:
  """Pins the residual stream [B, N, D] to batch sharding.

  Without it XLA's SPMD partitioner produced silently wrong numbers on a (2, 2, 2) mesh
  (docs/reference.md §10, activation sharding constraints). A no-op when no logical axis rules are active.
  """
  return nn.with_logical_constraint(x, ("batch", None, None))


def logical_axes(*names: str | None) -> dict:
  """Variable metadata naming a parameter's logical axes, without sharding it at creation.

  flax shards a Variable with `out_sharding` eagerly when it is created, which needs a mesh and the axis rules
  (outside one: "An auto mesh context or metadata is required"). Ours are placed later, from these names
  (sharding.param_shardings, the train state's jitted init), so creation never needs a mesh.
  """
  return {"out_sharding": names, "eager_sharding": False}


def linear(in_features: int, out_features: int, axes: tuple[str | None, str | None], bias_axis: str | None,
           dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """An official-init Linear whose kernel [in, out] carries `axes` and whose bias carries `bias_axis`."""
  return nnx.Linear(
      in_features, out_features, use_bias=True, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=weight_init, bias_init=zeros_init, rngs=rngs,
      kernel_metadata=logical_axes(*axes), bias_metadata=logical_axes(bias_axis))


def layer_norm(dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm(eps 1e-6, affine) computed in float32 whatever the compute dtype."""
  return nnx.LayerNorm(
      dim, epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs,
      scale_metadata=logical_axes("norm"), bias_metadata=logical_axes("norm"))


# --------------------------------------------------------------------------------------------------------------
# Positional tables (docs/reference.md §2.2 "Positional embedding"). Computed, never learned, so not nnx.Params.


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """[sin(p w_0..w_{d/2-1}) | cos(...)] for integer positions p, all sines first (not interleaved)."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("p,k->pk", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_3d_sincos_pos_embed(embed_dim: int, grid_depth: int, grid_size: int, uniform_power: bool) -> np.ndarray:
  """The official 3-D sin-cos table [T'*H'*W', D], float32, token order t-major, then h, then w.

  Features are laid out [t | h | w]. With uniform_power every axis gets ceil(D/6)*2 dims and the concatenation is
  truncated to D (D=1024 drops the last 2 width-cosine dims); otherwise t gets D/2, h and w D/4 each.
  """
  if uniform_power:
    d_t = d_h = d_w = int(math.ceil(embed_dim / 6) * 2)
  else:
    d_t, d_h, d_w = embed_dim // 2, int(math.ceil(embed_dim / 4)), int(math.ceil(embed_dim / 4))
  t, h, w = np.meshgrid(np.arange(grid_depth), np.arange(grid_size), np.arange(grid_size), indexing="ij")
  table = np.concatenate([_sincos_1d(d_t, t), _sincos_1d(d_h, h), _sincos_1d(d_w, w)], axis=1)
  return table[:, :embed_dim].astype(np.float32)


def _linear_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
  """[n_out, n_in] interpolation matrix of PyTorch's linear upsampling with align_corners=False.

  When F.interpolate gets scale_factor (as the official interpolate_pos_encoding passes), the source coordinate is
  (dst + 0.5) / scale_factor - 0.5, clamped below at 0, and the right neighbour is clamped at the edge.
  """
  # PyTorch's CPU kernel does this index arithmetic in float32 (1/scale rounded once); so do we, to match it to
  # float32 rounding instead of ~3e-6 at non-dyadic scales such as 24/14.
  f32 = np.float32
  src = f32(1.0 / scale) * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
  src = np.maximum(src, f32(0.0))
  i0 = src.astype(np.int64)
  lam = (src - i0.astype(f32)).astype(np.float64)
  i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
  mat = np.zeros((n_out, n_in), np.float64)
  np.add.at(mat, (np.arange(n_out), i0), 1.0 - lam)
  np.add.at(mat, (np.arange(n_out), i1), lam)
  return mat


def interpolate_pos_embed(table: np.ndarray, src_grid: tuple[int, int, int],
                          dst_grid: tuple[int, int, int]) -> np.ndarray:
  """Resizes a [T'*H'*W', D] table to dst_grid like F.interpolate(scale_factor=dst/src, mode='trilinear').

  Trilinear resampling is separable, so it is three small matrix products along t, h and w (float64).
  """
  src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
  if src_grid == dst_grid:
    return np.asarray(table, np.float32)
  grid = np.asarray(table, np.float64).reshape(*src_grid, -1)
  for axis, (n_in, n_out) in enumerate(zip(src_grid, dst_grid)):
    scale = n_out / n_in
    if math.floor(n_in * scale) != n_out:  # PyTorch derives the output size as floor(in * scale_factor).
      raise ValueError(f"grid {src_grid} -> {dst_grid}: PyTorch would produce a different size on axis {axis}")
    grid = np.moveaxis(np.tensordot(_linear_weights(n_in, n_out, scale), grid, axes=(1, axis)), 0, axis)
  return grid.reshape(-1, grid.shape[-1]).astype(np.float32)


@functools.lru_cache(maxsize=32)
def pos_table(embed_dim: int, built_grid: tuple[int, int, int], grid: tuple[int, int, int],
              uniform_power: bool) -> np.ndarray:
  """The table a model built at built_grid uses at grid (interpolated when they differ); cached, read-only.

  The official table is created once for the square built grid (T0, S, S) and only resized in the forward pass.
  """
  table = get_3d_sincos_pos_embed(embed_dim, built_grid[0], built_grid[1], uniform_power)
  table = interpolate_pos_embed(table, built_grid, grid)
  table.setflags(write=False)
  return table


# --------------------------------------------------------------------------------------------------------------
# Modules


class PatchEmbed3D(nnx.Module):
  """Conv3d tubelet embedding, channels-last: [B, T, H, W, 3] -> [B, T'*H'*W', D] in t-h-w token order."""

  def __init__(self, *, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3, embed_dim: int = 768,
               dtype=jnp.float32, rngs: nnx.Rngs):
    kernel = (tubelet_size, patch_size, patch_size)
    self.dtype = dtype
    # Conv3d weight keeps trunc_normal(0.02) in the official init (the Linear re-init does not touch it).
    self.proj = nnx.Conv(
        in_chans, embed_dim, kernel_size=kernel, strides=kernel, padding="VALID", dtype=dtype,
        param_dtype=jnp.float32, kernel_init=weight_init, bias_init=zeros_init, rngs=rngs,
        kernel_metadata=logical_axes("conv", "conv", "conv", "conv", "embed"),
        bias_metadata=logical_axes("norm"))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.project(self.tubelets(x))

  def tubelets(self, x: jax.Array) -> jax.Array:
    """[B, T, H, W, C] -> [B, N, kt*kh*kw*C]: each token's pixels, flattened in the kernel's (t, h, w, c) order.

    Stride equals kernel, so the conv is a matmul over flattened tubelets. Written as one: same parameters and
    numbers (up to summation order), but XLA:CPU's strided-conv weight gradient took 3/4 of a tiny model's step
    (docs/performance.md), and a plain dot is what every backend is best at. Split from project() so that a caller
    can select tokens before embedding them (VisionTransformer.embed).
    """
    (kt, kh, kw, c, _), (b, t, h, w, _) = self.proj.kernel.shape, x.shape
    x = x.reshape(b, t // kt, kt, h // kh, kh, w // kw, kw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (t // kt) * (h // kh) * (w // kw), kt * kh * kw * c)

  def project(self, tubelets: jax.Array) -> jax.Array:
    """Flattened tubelets [..., kt*kh*kw*C] -> float32 tokens [..., D]."""
    kernel = self.proj.kernel[...]
    kernel = kernel.reshape(-1, kernel.shape[-1]).astype(self.dtype)
    y = jnp.dot(tubelets.astype(self.dtype), kernel) + self.proj.bias[...].astype(self.dtype)
    return y.astype(jnp.float32)


def apply_linear(layer: nnx.Linear, x: jax.Array) -> jax.Array:
  """layer(x), with a weight gradient XLA:CPU computes well when the program is compiled for the CPU.

  Autodiff's weight gradient x^T dy contracts over the tokens, the major axis of both operands; XLA:CPU then runs a
  dot with both operands transposed outside its matmul libraries and copies dy transposed first (a third of a
  small model's backward, docs/performance.md "CPU step"). Materialising the transpose of the narrower operand
  behind an optimization barrier gives it a plain row-major dot. Same numbers up to summation order. Accelerators
  keep layer(x): their matrix units take transposed operands natively and the barrier would only add a copy.
  """
  if attention.current_platform() != "cpu":
    return layer(x)
  dtype = layer.dtype or x.dtype
  return _cpu_dense(x.astype(dtype), layer.kernel[...].astype(dtype), layer.bias[...].astype(dtype))


@jax.custom_vjp
def _cpu_dense(x, kernel, bias):
  return jnp.dot(x, kernel) + bias


def _cpu_dense_fwd(x, kernel, bias):
  return _cpu_dense(x, kernel, bias), (x, kernel)


def _cpu_dense_bwd(residuals, g):
  x, kernel = residuals
  d_in, d_out = kernel.shape
  x2, g2 = x.reshape(-1, d_in), g.reshape(-1, d_out)
  if d_in <= d_out:
    d_kernel = jnp.dot(jax.lax.optimization_barrier(x2.T), g2)
  else:
    # The barrier on the product too: XLA would otherwise fold the final transpose back into the dot's operands.
    d_kernel = jax.lax.optimization_barrier(jnp.dot(jax.lax.optimization_barrier(g2.T), x2)).T
  return jnp.dot(g, kernel.T), d_kernel, g2.sum(0)


_cpu_dense.defvjp(_cpu_dense_fwd, _cpu_dense_bwd)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv Linear (rows q | k | v, head-major).

  V1 attends over the whole sequence; a TokenLayout restricts it when several mask generators share one pass
  (segments packed along the sequence, or padded rows along the batch) and carries each token's grid position.
  The kernel (xla, cudnn, splash) is jepa_jax/models/attention.py's, per config.model.attention_impl.
  """

  def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, use_rope: bool = False,
               dtype=jnp.float32, attention_impl: str | None = None, rngs: nnx.Rngs):
    if not qkv_bias:
      raise ValueError("every official model uses qkv_bias=True")
    if use_rope and not rope.chunk_dim(dim // num_heads):
      raise ValueError(f"3-D RoPE needs a head dim of at least 6; {dim} / {num_heads} heads = {dim // num_heads}")
    self.num_heads = num_heads
    self.dtype = dtype
    self.use_rope = use_rope
    self.attention_impl = attention_impl
    self.qkv = linear(dim, 3 * dim, ("embed", "heads"), "heads", dtype, rngs)
    self.proj = linear(dim, dim, ("heads", "embed"), "norm", dtype, rngs)

  def __call__(self, x: jax.Array, layout: attention.TokenLayout | None = None) -> jax.Array:
    b, n, d = x.shape
    qkv = apply_linear(self.qkv, x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, N, H, hd]
    if self.use_rope:
      # V-JEPA 2 (docs/reference.md §9.1): q and k rotated by each token's (t, h, w) after the qkv projection; v not.
      if layout is None or layout.rope is None:
        raise ValueError("RoPE attention needs the rotary tables of its tokens (TokenLayout.rope)")
      tables = rope.RopeTables(*layout.rope)
      q, k = rope.apply_rope_tables(q, tables), rope.apply_rope_tables(k, tables)
    # Scale 1/sqrt(hd) as SDPA's default. The logits and softmax are float32 even for bf16 q/k/v
    # (tests/test_models.py checks the jaxpr).
    out = attention.dot_product_attention(q, k, v, implementation=self.attention_impl, layout=layout)
    return apply_linear(self.proj, out.reshape(b, n, d))


class Mlp(nnx.Module):
  """fc1 -> exact (erf) GELU -> fc2. Flax's gelu defaults to the tanh approximation; the official nn.GELU does not."""

  def __init__(self, dim: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.fc1 = linear(dim, hidden, ("embed", "mlp"), "mlp", dtype, rngs)
    self.fc2 = linear(hidden, dim, ("mlp", "embed"), "norm", dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return apply_linear(self.fc2, gelu(apply_linear(self.fc1, x)))


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU written as torch's nn.GELU computes it, x/2 (1 + erf(x/sqrt(2))). jax.nn.gelu(approximate=False)
  goes through erfc, which XLA:CPU evaluates 2.5x slower (forward), for the same float32 values to 1e-6."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)))


class Block(nnx.Module):
  """Pre-norm transformer block; no layer-scale, no drop-path, no dropout (V1, and V-JEPA 2 with use_rope)."""

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
               use_rope: bool = False, dtype=jnp.float32, attention_impl: str | None = None, rngs: nnx.Rngs):
    self.norm1 = layer_norm(dim, rngs)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, use_rope=use_rope, dtype=dtype,
                          attention_impl=attention_impl, rngs=rngs)
    self.norm2 = layer_norm(dim, rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, layout: attention.TokenLayout | None = None) -> jax.Array:
    x = constrain(x + self.attn(self.norm1(x), layout).astype(jnp.float32))
    return constrain(x + self.mlp(self.norm2(x)).astype(jnp.float32))


# --------------------------------------------------------------------------------------------------------------
# Stacks of blocks: a list (one compile per block) or one vmapped stack run by a scan (compile time flat in depth).

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def make_blocks(depth: int, make_block: Callable[[nnx.Rngs], Block], *, scan_layers: bool, rngs: nnx.Rngs):
  """nnx.List of `depth` blocks, or one Block whose params carry a leading 'layers' axis of size depth."""
  if not scan_layers:
    return nnx.List([make_block(rngs) for _ in range(depth)])

  # Without transform_metadata the stacked params keep 2-D names on 3-D arrays and the layer axis gets sharded
  # (docs/reference.md §10, scanned blocks).
  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def stack(r):
    return make_block(r)

  return stack(rngs)


def rescale_blocks(blocks, *, scan_layers: bool) -> None:
  """The official _rescale_blocks: block i's attn.proj and mlp.fc2 weights divided by sqrt(2 (i + 1)).

  V-JEPA 2 keeps it in the initial weights (its init_video_model does not re-initialise the Linears afterwards,
  docs/reference.md §9.1); V-JEPA 1's training undoes it (the quirk at weight_init above), so it is not applied there.
  """
  for kernel in ("attn", "proj"), ("mlp", "fc2"):
    if scan_layers:
      param = getattr(getattr(blocks, kernel[0]), kernel[1]).kernel
      depth = param.shape[0]
      scale = 1.0 / np.sqrt(2.0 * np.arange(1, depth + 1, dtype=np.float64))
      param[...] = param[...] * jnp.asarray(scale, jnp.float32)[:, None, None]
    else:
      for i, blk in enumerate(blocks):
        param = getattr(getattr(blk, kernel[0]), kernel[1]).kernel
        param[...] = param[...] / jnp.float32(math.sqrt(2.0 * (i + 1)))


def rope_layout(positions: jax.Array, grid: tuple[int, int, int], head_dim: int, **fields) -> attention.TokenLayout:
  """A TokenLayout whose rotary tables are built once, here, for every block of a forward (V-JEPA 2)."""
  return attention.TokenLayout(positions=positions, rope=tuple(rope.rope_tables(positions, grid, head_dim)),
                               **fields)


def run_blocks(blocks, x: jax.Array, *, scan_layers: bool, remat: str,
               layout: attention.TokenLayout | None = None) -> jax.Array:
  """Applies the blocks in order, functionally (split/merge), with the configured jax.checkpoint policy; every
  block sees the same token layout."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  policy = REMAT_POLICIES[remat]

  def apply(graphdef, state, h, layout):
    return nnx.merge(graphdef, state)(h, layout)

  if remat != "none":
    apply = jax.checkpoint(apply, policy=policy, static_argnums=(0,), prevent_cse=not scan_layers)
  if scan_layers:
    graphdef, stacked = nnx.split(blocks)
    x, _ = jax.lax.scan(lambda h, s: (apply(graphdef, s, h, layout), None), x, stacked)
    return x
  for blk in blocks:
    graphdef, state = nnx.split(blk)
    x = apply(graphdef, state, x, layout)
  return x
