"""The attentive probe of the frozen evaluation: one learned query cross-attends to the encoder tokens.

Module and attribute names follow src/models/attentive_pooler.py and src/models/utils/modules.py, so the parameter
path joined with '.' is the official probe key without the DDP 'module.' prefix (after kernel->weight with a
transpose, scale->weight). A released probe therefore loads by renaming leaves, and ours export the same way.

depth (the official num_probe_blocks) selects the generation:
  1  V-JEPA 1 (docs/reference.md §6.1): the cross-attention block alone, the unused xattn.proj kept as a parameter.
  >1 V-JEPA 2 (docs/reference.md §9.5; 4 in every released eval config): depth - 1 self-attention Blocks over all
     encoder tokens (plain attention: no RoPE, no positions), then the cross-attention block, whose xattn has q and
     kv only (the V-JEPA 2 CrossAttention has no proj parameter at all).

A one-block probe sees many tokens (8 segments x 1568 = 12,544 keys for K400): its cost is the kv projection over
them, and the V-JEPA 2 probe adds full self-attention over them. The compute dtype is configurable; LayerNorm,
softmax, the residual stream and the logits are float32.
"""
import math

import jax
import jax.numpy as jnp
from flax import nnx

# Logical axis names, shared with models/layers.py: the sharding rules in the config map them to mesh axes.
_EMBED, _HEADS, _MLP, _NORM, _CLASSES = 'embed', 'heads', 'mlp', 'norm', 'classes'


def _normal(std, names):
  # Official init is trunc_normal_(std=0.02) with the default *absolute* bounds a=-2, b=2, i.e. +-100 std: it
  # never truncates, so a plain normal draws from the same distribution (docs/reference.md §6.1, §10).
  return nnx.with_partitioning(nnx.initializers.normal(std), names)


def _zeros(names):
  return nnx.with_partitioning(nnx.initializers.zeros_init(), names)


def _linear(din, dout, names, rngs, dtype, use_bias=True):
  """nn.Linear as the pooler's _init_weights leaves it: weight N(0, 0.02), bias 0."""
  return nnx.Linear(
      din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=_normal(0.02, names), bias_init=_zeros(names[1:]), rngs=rngs)


def _layer_norm(dim, rngs):
  # Probe norms are nn.LayerNorm with the torch default eps 1e-5 (the encoder uses 1e-6). Always float32.
  return nnx.LayerNorm(
      dim, epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), (_NORM,)),
      bias_init=_zeros((_NORM,)), rngs=rngs)


class Mlp(nnx.Module):
  """fc1 -> exact-erf GELU -> fc2 (torch nn.GELU default; flax's default is the tanh approximation)."""

  def __init__(self, dim, hidden, *, dtype, rngs):
    self.fc1 = _linear(dim, hidden, (_EMBED, _MLP), rngs, dtype)
    self.fc2 = _linear(hidden, dim, (_MLP, _EMBED), rngs, dtype)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class CrossAttention(nnx.Module):
  """Queries attend to the (already normalised) encoder tokens.

  kv is one Linear(D, 2D) whose output rows are [k | v], each head-major, as the official reshape
  (B, N, 2, H, D/H) reads them.
  """

  def __init__(self, dim, num_heads, *, qkv_bias, dtype, implementation, with_proj=True, rngs):
    if dim % num_heads:
      raise ValueError(f'embed_dim {dim} is not divisible by num_heads {num_heads}')
    self.num_heads = num_heads
    self.implementation = implementation
    self.q = _linear(dim, dim, (_EMBED, _HEADS), rngs, dtype, use_bias=qkv_bias)
    self.kv = _linear(dim, 2 * dim, (_EMBED, _HEADS), rngs, dtype, use_bias=qkv_bias)
    if with_proj:
      # [quirk, docs/reference.md §6.1] V-JEPA 1: proj is created (and initialised, and rescaled) so the state dict
      # matches the released probes, but forward does not apply it: adding it (jepa PR #17) broke the released probes
      # and was reverted (a0517b4); jepa issue #94. It receives zero gradient. V-JEPA 2 drops the parameter.
      self.proj = _linear(dim, dim, (_HEADS, _EMBED), rngs, dtype)

  def __call__(self, q, x):
    b, n, d = q.shape
    h = self.num_heads
    q = self.q(q).reshape(b, n, h, d // h)
    kv = self.kv(x).reshape(b, x.shape[1], 2, h, d // h)
    k, v = kv[:, :, 0], kv[:, :, 1]
    # Scale head_dim ** -0.5, as torch SDPA; layout [B, T, H, head_dim].
    out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    return out.reshape(b, n, d)


class CrossAttentionBlock(nnx.Module):
  """y = xattn(q, norm1(x)); q += y; q += mlp(norm2(q)). The query itself is never normalised before attention."""

  def __init__(self, dim, num_heads, mlp_ratio, *, qkv_bias, dtype, implementation, with_proj=True, rngs):
    self.dtype = dtype
    self.norm1 = _layer_norm(dim, rngs)
    self.xattn = CrossAttention(
        dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, implementation=implementation, with_proj=with_proj,
        rngs=rngs)
    self.norm2 = _layer_norm(dim, rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, q, x):
    y = self.xattn(q.astype(self.dtype), self.norm1(x).astype(self.dtype))
    q = q + y.astype(q.dtype)
    return q + self.mlp(self.norm2(q).astype(self.dtype)).astype(q.dtype)


class SelfAttention(nnx.Module):
  """The probe Blocks' attention: the official (non-RoPE) Attention, fused qkv with rows q | k | v, head-major."""

  def __init__(self, dim, num_heads, *, qkv_bias, dtype, implementation, rngs):
    if dim % num_heads:
      raise ValueError(f'embed_dim {dim} is not divisible by num_heads {num_heads}')
    self.num_heads = num_heads
    self.implementation = implementation
    self.qkv = _linear(dim, 3 * dim, (_EMBED, _HEADS), rngs, dtype, use_bias=qkv_bias)
    self.proj = _linear(dim, dim, (_HEADS, _EMBED), rngs, dtype)

  def __call__(self, x):
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=self.implementation)
    return self.proj(out.reshape(b, n, d))


class Block(nnx.Module):
  """The official Block as the V-JEPA 2 pooler builds it: pre-norm (LayerNorm eps 1e-5), attention, GELU MLP."""

  def __init__(self, dim, num_heads, mlp_ratio, *, qkv_bias, dtype, implementation, rngs):
    self.dtype = dtype
    self.norm1 = _layer_norm(dim, rngs)
    self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, implementation=implementation,
                              rngs=rngs)
    self.norm2 = _layer_norm(dim, rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    x = x.astype(jnp.float32)  # the residual stream stays float32 (bf16 features in, float32 through the blocks)
    x = x + self.attn(self.norm1(x).astype(self.dtype)).astype(jnp.float32)
    return x + self.mlp(self.norm2(x).astype(self.dtype)).astype(jnp.float32)


class AttentivePooler(nnx.Module):
  """One learned query pooled over the tokens: [B, N, D] -> [B, 1, D] (V-JEPA 2: after depth - 1 Blocks)."""

  def __init__(self, embed_dim, num_heads, mlp_ratio=4.0, depth=1, qkv_bias=True, dtype=jnp.float32,
               implementation=None, remat=False, *, rngs):
    if depth < 1:
      raise ValueError(f'AttentivePooler depth (num_probe_blocks) must be >= 1: 1 for the V-JEPA 1 probe, 4 for '
                       f'the V-JEPA 2 probe; got {depth}')
    self.remat = bool(remat)
    self.query_tokens = nnx.Param(
        _normal(0.02, (None, None, _EMBED))(rngs.params(), (1, 1, embed_dim), jnp.float32))
    self.cross_attention_block = CrossAttentionBlock(
        embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, dtype=dtype, implementation=implementation,
        with_proj=depth == 1, rngs=rngs)
    if depth > 1:
      # V-JEPA 2 order: the Blocks run over the tokens before the query attends. (V-JEPA 1's code applied
      # depth > 1 Blocks to the query after it; no V-JEPA 1 config or released probe used that, so it is not built.)
      self.blocks = nnx.List([
          Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, dtype=dtype, implementation=implementation,
                rngs=rngs) for _ in range(depth - 1)])
    else:
      self.blocks = None
    # Official _rescale_blocks, after the init and never undone: block i's attn.proj and mlp.fc2 by
    # 1/sqrt(2 (i + 1)); the cross block's mlp.fc2 with the last block's layer_id + 1, i.e. 1/sqrt(2 (depth - 1))
    # (1/sqrt(2) for depth 1, where V-JEPA 1 also rescales its unused xattn.proj).
    for i, blk in enumerate(self.blocks or []):
      for lin in (blk.attn.proj, blk.mlp.fc2):
        lin.kernel[...] = lin.kernel[...] / math.sqrt(2.0 * (i + 1))
    cross = self.cross_attention_block
    cross_scale = math.sqrt(2.0 * max(1, depth - 1))
    for lin in ((cross.xattn.proj,) if depth == 1 else ()) + (cross.mlp.fc2,):
      lin.kernel[...] = lin.kernel[...] / cross_scale

  def __call__(self, x):
    # remat: each Block's activations are recomputed in the backward pass, only its input is kept (the official
    # use_activation_checkpointing=True of the V-JEPA 2 eval). Same numbers; K heads over 10^4 tokens need it.
    run = nnx.remat(lambda blk, h: blk(h)) if self.remat else (lambda blk, h: blk(h))
    for blk in self.blocks or []:
      x = run(blk, x)
    q = jnp.broadcast_to(self.query_tokens[...], (x.shape[0],) + self.query_tokens.shape[1:])
    return self.cross_attention_block(q, x)


class AttentiveClassifier(nnx.Module):
  """Pooler + linear head; returns float32 logits [B, num_classes] for tokens [B, N, D]."""

  def __init__(self, embed_dim, num_heads, num_classes, mlp_ratio=4.0, depth=1, qkv_bias=True,
               dtype=jnp.float32, implementation=None, remat=False, *, rngs):
    self.pooler = AttentivePooler(
        embed_dim, num_heads, mlp_ratio, depth, qkv_bias, dtype, implementation, remat, rngs=rngs)
    # The head is a plain nn.Linear created outside the pooler, so _init_weights never touches it: it keeps
    # torch's default init, U(-1/sqrt(D), 1/sqrt(D)) for weight and bias (kaiming_uniform with a=sqrt(5)).
    bound = 1.0 / math.sqrt(embed_dim)
    uniform = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    self.linear = nnx.Linear(
        embed_dim, num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(uniform, (_EMBED, _CLASSES)),
        bias_init=nnx.with_partitioning(uniform, (_CLASSES,)), rngs=rngs)

  def __call__(self, tokens):
    pooled = self.pooler(tokens)[:, 0]
    return self.linear(pooled.astype(jnp.float32))
