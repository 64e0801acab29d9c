"""The attention kernel behind every block, chosen per platform (config.model.attention_impl), and the token layout
that tells it which keys each query may see.

Three kernels compute the same function (softmax(q k^T / sqrt(hd)) v, logits and softmax in float32):
- 'xla': dense attention written out in XLA (the numbers of jax.nn.dot_product_attention's XLA path, laid out heads
  first). Materialises the [B, H, N, N] logits; without remat the backward keeps the float32 softmax of every
  layer (84 GiB of ViT-L's 119.5 GiB at 24 clips per chip, docs/performance.md).
- 'cudnn': jax.nn.dot_product_attention(implementation='cudnn'), cuDNN's fused flash attention on NVIDIA GPUs
  (bfloat16/float16 only).
- 'splash': Pallas splash attention for TPU (jax.experimental.pallas.ops.tpu.splash_attention), a flash attention
  that keeps only O(N) residuals (output and log-sum-exp) and skips key blocks its static mask rules out.
  Chosen over tokamax because it ships inside the pinned jax (no new pin, always built against the same Mosaic
  compiler as the rest of the program), has an interpreter mode (so the CPU tests check its numbers and
  gradients), takes a static block-sparse mask (our packing of the mask generators is the same for every clip, so
  cross-generator blocks are skipped at compile time) and documents its shard_map recipe (MaxText runs it so).
  q, k and v go to it sequence-minor when the head dimension does not fill 128 lanes (_splash_layout).

'' picks per platform: TPU splash, GPU cuDNN (bfloat16/float16 compute; XLA for float32), CPU XLA. The platform is
the one the program is compiled for (the mesh's devices: an ahead-of-time TPU compile on a CPU host says 'tpu').
"""
from __future__ import annotations

import contextlib
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

IMPLEMENTATIONS = ("xla", "cudnn", "splash")
_PLATFORM_IMPLEMENTATIONS = {"cpu": ("xla",), "gpu": ("xla", "cudnn"), "tpu": ("xla", "splash")}
_HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_interpret = False


@contextlib.contextmanager
def pallas_interpret():
  """Runs the Pallas kernel through its interpreter on any platform while active: how the CPU tests check it."""
  global _interpret
  previous, _interpret = _interpret, True
  try:
    yield
  finally:
    _interpret = previous


def available(platform: str) -> tuple[str, ...]:
  """The kernels that run on a platform ('splash' on any platform inside pallas_interpret())."""
  impls = _PLATFORM_IMPLEMENTATIONS.get(platform, ("xla",))
  return impls + ("splash",) if _interpret and "splash" not in impls else impls


def resolve(requested: str | None, platform: str, dtype) -> str:
  """The kernel to run for config.model.attention_impl: '' or None picks the platform's best; an impossible request is
  a ValueError that names what the platform offers."""
  dtype = jnp.dtype(dtype)
  if not requested:
    if platform == "tpu":
      return "splash"
    return "cudnn" if platform == "gpu" and dtype in _HALF_DTYPES else "xla"
  if requested not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention_impl={requested!r} is not a kernel; use '' (pick per platform) or one "
                     f"of {IMPLEMENTATIONS}.")
  if requested not in available(platform):
    raise ValueError(f"config.model.attention_impl={requested!r} does not run on {platform}; available there: "
                     f"{available(platform)} (or '' to pick per platform).")
  if requested == "cudnn" and dtype not in _HALF_DTYPES:
    raise ValueError(f"config.model.attention_impl='cudnn' needs bfloat16 or float16 compute, not {dtype}; set "
                     "config.model.dtype='bfloat16' or use 'xla'.")
  return requested


def current_platform() -> str:
  """The platform of the program being traced: the set mesh's devices, else the default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


# --------------------------------------------------------------------------------------------------------------
# Token layout


@struct.dataclass
class TokenLayout:
  """Where the tokens of a [B, N, D] sequence come from: what attention needs besides the activations.

  positions: int32 [B, N], each token's flat index in the full (t, h, w) token grid of its clip
    (t * H' * W' + h * W' + w). Rotary embeddings (V-JEPA 2) read it; V-JEPA 1 adds its sin-cos table before the
    blocks and attention does not need it.
  segments: static lengths of consecutive segments packed along the sequence (one per mask generator); a token
    attends only to tokens of its own segment (block-diagonal attention). Static because every clip of a step has
    the same fixed token counts per generator, which lets the Pallas kernel skip cross-segment blocks at compile
    time. A per-segment reordering of tokens (V-JEPA 2's predictor sorts by position) keeps the layout.
  kv_lengths: int32 [B]: row b has kv_lengths[b] real tokens followed by padding that no query attends to (mask
    generators concatenated along the batch, each padded to the longest).
  rope: the rotary tables (cos, sin) of `positions` for V-JEPA 2's RoPE attention (jepa_jax/models/rope.py), built
    once per forward by the encoder or predictor (which know their token grid) and applied to q and k in every
    block; None for V-JEPA 1.
  """
  positions: jax.Array | None = None
  kv_lengths: jax.Array | None = None
  rope: tuple[jax.Array, jax.Array] | None = None
  segments: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

  def segment_ids(self) -> np.ndarray | None:
    """int32 [N]: the segment of each position (None without packing)."""
    if self.segments is None:
      return None
    return np.repeat(np.arange(len(self.segments), dtype=np.int32), self.segments)


def _block_diagonal(segment_ids: np.ndarray) -> np.ndarray:
  return segment_ids[:, None] == segment_ids[None, :]


# --------------------------------------------------------------------------------------------------------------
# Kernels


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str | None,
                          layout: TokenLayout | None = None) -> jax.Array:
  """q, k, v [B, N, H, hd] -> [B, N, H, hd] with the kernel `implementation` ('' / None: the platform's best).

  Scale 1/sqrt(hd) (SDPA's default); logits and softmax in float32 whatever the input dtype.
  """
  impl = resolve(implementation, current_platform(), q.dtype)
  layout = layout or TokenLayout()
  segment_ids = layout.segment_ids()
  if segment_ids is not None and segment_ids.shape[0] != q.shape[1]:
    raise ValueError(f"layout.segments {layout.segments} sum to {segment_ids.shape[0]}, not the {q.shape[1]} tokens")
  if impl == "splash":
    return _splash_attention(q, k, v, segment_ids, layout.kv_lengths)
  if impl == "xla":
    return _xla_attention(q, k, v, segment_ids, layout.kv_lengths)
  n = q.shape[1]
  mask = None
  if segment_ids is not None and len(layout.segments) > 1:
    if n % 2:
      # cuDNN takes the mask as an additive bias and then wants even lengths in training: one padding token in a
      # segment of its own (so its row is not empty), dropped after.
      pad = lambda x: jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
      segment_ids = np.append(segment_ids, len(layout.segments))
      out = jax.nn.dot_product_attention(
          pad(q), pad(k), pad(v), mask=jnp.asarray(_block_diagonal(segment_ids))[None, None],
          key_value_seq_lengths=layout.kv_lengths, implementation=impl)
      return out[:, :n]
    mask = jnp.asarray(_block_diagonal(segment_ids))[None, None]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=layout.kv_lengths,
                                      implementation=impl)


def _xla_attention(q, k, v, segment_ids: np.ndarray | None, kv_lengths: jax.Array | None) -> jax.Array:
  """Dense attention, heads first: the same numbers as jax.nn.dot_product_attention's XLA path (float32 logits
  and softmax, probabilities cast to v's dtype), without its vmap over head groups, after which XLA:CPU reduced
  the softmax gradient across a strided axis and copied the logits around (docs/performance.md "CPU step")."""
  hd = q.shape[-1]
  q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, H, N, hd]
  mask = None
  if segment_ids is not None and len(np.unique(segment_ids)) > 1:
    mask = jnp.asarray(_block_diagonal(segment_ids))[None, None]
  if kv_lengths is not None:
    keys = jnp.arange(k.shape[2])[None, None, None, :] < kv_lengths[:, None, None, None]
    mask = keys if mask is None else mask & keys
  scale = 1.0 / math.sqrt(hd)
  if q.dtype == jnp.float32 and current_platform() == "cpu":
    return _cpu_attention(q, k, v, mask, scale).transpose(0, 2, 1, 3)
  return _dense_attention(q, k, v, mask, scale)[0].transpose(0, 2, 1, 3)


_MASKED = np.float32(-0.7 * np.finfo(np.float32).max)


def _dense_attention(q, k, v, mask, scale: float):
  """Heads-first dense attention: (output, float32 probabilities)."""
  # As jax.nn: bf16 inputs accumulate in f32 in both directions (jax issue 24047 has the mixed-precision pitfall).
  precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32, precision=precision)
  logits = logits * jnp.float32(scale)
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED)
  probs = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _cpu_attention(q, k, v, mask, scale: float):
  """float32 dense attention, heads first, with a backward laid out for XLA:CPU's matmul libraries.

  The forward is _dense_attention, as on every other path. Autodiff's backward contracts the [B, H, N, N]
  probabilities over their query axis for dk and dv (p^T ds-style dots), which XLA:CPU runs outside its matmul
  libraries at a fifth of their speed (docs/performance.md "CPU step"); here the small [B, H, N, hd] operand is
  transposed instead (behind an optimization barrier, so XLA does not fold it back into the dot) and the row sums use
  dO.O (FlashAttention's identity sum_k p dp = dO.O, a [B, H, N, hd] product instead of an [N, N] one). Same numbers
  up to summation order.
  """
  return _dense_attention(q, k, v, mask, scale)[0]


def _cpu_attention_fwd(q, k, v, mask, scale):
  out, probs = _dense_attention(q, k, v, mask, scale)
  return out, (q, k, v, probs, out)


def _cpu_attention_bwd(scale, residuals, g):
  q, k, v, probs, out = residuals
  transposed = lambda x: jax.lax.optimization_barrier(x.swapaxes(-1, -2))  # [B, H, N, hd] -> [B, H, hd, N]
  d_probs = jnp.einsum("bhqd,bhkd->bhqk", g, v)
  d_logits = probs * (d_probs - jnp.sum(g * out, axis=-1, keepdims=True)) * jnp.float32(scale)
  dq = jnp.einsum("bhqk,bhkd->bhqd", d_logits, k)
  dk = jnp.einsum("bhdq,bhqk->bhdk", transposed(q), d_logits).swapaxes(-1, -2)
  dv = jnp.einsum("bhdq,bhqk->bhdk", transposed(g), probs).swapaxes(-1, -2)
  return dq, dk, dv, None


_cpu_attention.defvjp(_cpu_attention_fwd, _cpu_attention_bwd)


# Splash attention --------------------------------------------------------------------------------------------

_LANES = 128  # splash's key blocks are multiples of the TPU lane width


def _splash_block(padded_len: int, segmented: bool) -> int:
  """Tile size: 128 tokens when segments are packed (so more cross-segment tiles are skipped), else the largest of
  512/256/128 that tiles the padded sequence (bigger tiles keep the MXU busier)."""
  return next(b for b in (512, 256, 128) if padded_len % b == 0 and not (segmented and b > _LANES))


def _splash_layout(head_dim: int):
  """How the kernel lays q, k and v out in memory: sequence-minor ([hd, N]) unless the head dimension fills whole
  128-lane rows.

  A TPU vector register is 8 sublanes x 128 lanes and the minor dimension of an array goes on the lanes, so
  head-minor blocks [N, hd] with hd = 24 (V-JEPA 1's predictors: 384 wide, 16 heads), 64 (ViT-L) or 80 (ViT-H) pad
  every row to 128 lanes: 5.3x, 2x and 1.6x the memory traffic and vector work of the operands. Sequence-minor
  blocks put the tokens on the lanes (the sequence is padded to a multiple of 128 anyway). The TPU compiler's
  estimate of ViT-L/16's step at 24 clips per v5p chip falls from 0.279 s to 0.243 s (docs/performance.md, "Memory
  plan"). Only the physical layout changes: splash's interface stays [H, N, hd] and the numbers are the same.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  return splash.QKVLayout.HEAD_DIM_MINOR if head_dim % _LANES == 0 else splash.QKVLayout.SEQ_MINOR


def _splash_kernel(num_heads: int, ids: np.ndarray, interpret: bool, head_dim: int):
  """A splash kernel for one head count, head dimension and static segment layout (padding included).

  Built inside the trace: its block tables become constants of this program (splash caches the mask analysis).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  n = ids.shape[0]
  segmented = not np.all(ids == ids[0])
  head_mask = splash.NumpyMask(_block_diagonal(ids)) if segmented else splash.FullMask((n, n))
  block = _splash_block(n, segmented)
  layout = _splash_layout(head_dim)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
                            q_layout=layout, k_layout=layout, v_layout=layout)
  return splash.make_splash_mha(splash.MultiHeadMask([head_mask] * num_heads), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, interpret=interpret)


def _splash_attention(q, k, v, segment_ids: np.ndarray | None, kv_lengths: jax.Array | None) -> jax.Array:
  """Splash attention per shard: shard_map over the batch and head axes of the mesh when one is set.

  The kernel is a custom call that XLA's partitioner cannot split, so without shard_map it would gather the whole
  batch onto every chip. The sequence is padded to a multiple of 128 tokens; the padding forms a segment of its own
  (a query row with no key would divide by zero) and is dropped after. Splash does not scale: q is pre-scaled.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  b, n, h, hd = q.shape
  padded = -(-n // _LANES) * _LANES
  ids = np.zeros(n, np.int32) if segment_ids is None else segment_ids.astype(np.int32)
  pad_id = int(ids.max()) + 1
  static_ids = np.concatenate([ids, np.full(padded - n, pad_id, np.int32)])
  q = q * jnp.asarray(1.0 / math.sqrt(hd), q.dtype)
  to_heads_first = lambda x: jnp.pad(x, ((0, 0), (0, padded - n), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  q, k, v = to_heads_first(q), to_heads_first(k), to_heads_first(v)  # [B, H, N', hd]
  lengths = None if kv_lengths is None else kv_lengths.astype(jnp.int32)
  interpret = _interpret

  def per_shard(q, k, v, lengths):
    kernel = _splash_kernel(q.shape[1], static_ids, interpret, hd)
    if lengths is None:
      return jax.vmap(kernel)(q, k, v)
    # Keys past a row's length join the padding segment, and so do the queries there (their rows stay non-empty).
    position = jnp.arange(padded)
    dynamic_ids = jnp.where(position[None] < lengths[:, None], jnp.asarray(static_ids)[None], pad_id)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s)))(
        q, k, v, dynamic_ids)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = per_shard(q, k, v, lengths)
  else:
    batch_axes, head_axes = _mesh_axes(mesh, "batch", b), _mesh_axes(mesh, "heads", h)
    spec = jax.P(batch_axes, head_axes, None, None)
    out = jax.shard_map(per_shard, in_specs=(spec, spec, spec, None if lengths is None else jax.P(batch_axes)),
                        out_specs=spec, check_vma=False)(q, k, v, lengths)
  return out.transpose(0, 2, 1, 3)[:, :n]


def _mesh_axes(mesh, logical: str, size: int):
  """The mesh axes the logical rules map `logical` to, or None when the dimension does not divide over them."""
  axes = nn.logical_to_mesh_axes((logical,))[0]
  if axes is None:
    return None
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  names = tuple(a for a in names if mesh.shape[a] > 1)
  if not names or size % math.prod(mesh.shape[a] for a in names):
    return None
  return names
