"""A minimal PyTorch V-JEPA 2 encoder, predictor and attentive probe, written from docs/reference.md §9 and the
official modules (src/models/{vision_transformer,predictor,attentive_pooler}.py, src/models/utils/modules.py), as a
test oracle.

Module names equal the official ones, so an official V-JEPA 2 state_dict loads with load_state_dict(strict=True)
once the prefix is removed ('module.backbone.' for encoder and predictor, 'module.' for a probe) and the stale
'pos_embed' the released files carry is dropped (these modules use RoPE and have no position table, as the official
ones with use_rope=True). Layout is the official channels-first [B, 3, T, H, W]. What V-JEPA 1 shares (tubelet
embedding, MLP, plain attention, apply_masks) comes from tests/torch_reference.py.

Constructors apply the official V-JEPA 2 init: trunc_normal(0.02) on Linear and Conv3d weights, zero biases,
LayerNorm 1/0, then the depth rescale of attn.proj and mlp.fc2 by 1/sqrt(2 * layer_id). Unlike V-JEPA 1
(tests/torch_reference.init_official), V-JEPA 2's init_video_model does not re-initialise afterwards, so the rescale
stays. Build under `torch.device('meta')` to count parameters of the large models without allocating them.

Checked once against the official modules themselves (facebookresearch/vjepa2 at c2963a4, run outside this
repository with the same weights): encoder on a non-square clip, full and masked, the predictor for mask_index 0, 1
and 3, the PredictorMultiSeqWrapper path for two generators and the 4-block probe all agree exactly (0.0); the key
sets and parameter counts (ViT-L/H/g encoders, the three predictors, the probe) are the official ones. The encoder
with out_layers [1, 3, 4] (5 blocks, a non-square clip, full and masked) too: 0.0.

API:
  rotate_queries_or_keys(x [..., N, D], pos [..., N]) -> [..., N, D]   one rotated chunk (official function)
  RoPEAttention(dim, num_heads, grid_size).forward(x, mask=None, T=None, H_patches=None, W_patches=None)
  TorchVisionTransformerV2(...).forward(x [B,3,T,H,W], masks=None | LongTensor [B,K] | list) -> [B', K, D]
      (with out_layers=[i, ...]: a list of [B', K, D], norm(x) after each of those blocks)
  TorchPredictorV2(...).forward(ctxt [B,Kc,D], masks_ctxt, masks_tgt, mask_index) -> [B, Kt, D]
  predict_multiseq(predictor, ctxt, masks_ctxt, masks_tgt): the official PredictorMultiSeqWrapper's mask-token rule
  AttentiveClassifierV2(embed_dim, num_heads, num_classes, depth=4).forward(tokens [B, N, D]) -> logits [B, C]
  torch_vit_large_v2, torch_vit_huge_v2, torch_vit_giant_xformers(**kwargs), TORCH_MODEL_ZOO_V2
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import Attention, Mlp, PatchEmbed3D, apply_masks

INIT_STD = 0.02


def rotate_queries_or_keys(x, pos):
  """The official 1-D rotation of one chunk of D channels by integer positions `pos` (broadcast against x[..., 0]).

  omega_i = 1 / 10000^(i / (D/2)) for i < D/2, angle = pos * omega, computed in x's dtype as the official code does.
  """
  d = x.size(-1)
  omega = torch.arange(d // 2, dtype=x.dtype, device=x.device) / (d / 2.0)
  omega = 1.0 / 10000 ** omega
  freq = pos.unsqueeze(-1) * omega  # integer positions promote to x's dtype, as in the official einsum
  sin, cos = freq.sin(), freq.cos()
  # [quirk, docs/reference.md §9.1] sin/cos are tiled [f0..f(D/2-1), f0..f(D/2-1)] (the official repeat(1, 1, 1, 2))
  # while the rotation below pairs adjacent channels (x0, x1), (x2, x3), ...: pair k does not get frequency k. The
  # released weights were trained with it (vjepa2 PR #15 documents the fix that would break them).
  sin, cos = torch.cat([sin, sin], dim=-1), torch.cat([cos, cos], dim=-1)
  pairs = x.unflatten(-1, (-1, 2))
  rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
  return x * cos + rotated * sin


class RoPEAttention(nn.Module):
  """Official RoPEAttention: fused qkv, 3-D RoPE on q and k, SDPA, proj.

  Positions: the flat token indices `mask` [B, N] (kept tokens) or arange(T*H*W); split into (frame, row, column)
  with the real patch counts when H_patches/W_patches are given (the encoder), else with the square grid_size (the
  predictor).
  """

  def __init__(self, dim, num_heads, qkv_bias=True, grid_size=16):
    super().__init__()
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)
    self.chunk = 2 * ((self.head_dim // 3) // 2)  # d_dim = h_dim = w_dim
    self.grid_size = grid_size

  def separate_positions(self, ids, h_patches=None, w_patches=None):
    if h_patches is None or w_patches is None:
      per_frame, per_row = self.grid_size * self.grid_size, self.grid_size
    else:
      per_frame, per_row = h_patches * w_patches, w_patches
    frame = ids // per_frame
    row = (ids - per_frame * frame) // per_row
    col = ids - per_frame * frame - per_row * row
    return frame, row, col

  def rotate(self, x, positions):
    parts, s = [], 0
    for pos in positions:
      parts.append(rotate_queries_or_keys(x[..., s:s + self.chunk], pos))
      s += self.chunk
    parts.append(x[..., s:])  # the unrotated remainder (empty when 3 chunks fill the head)
    return torch.cat(parts, dim=-1)

  def forward(self, x, mask=None, T=None, H_patches=None, W_patches=None):
    b, n, c = x.shape
    qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, head_dim]
    if mask is not None:
      ids = mask.unsqueeze(1).repeat(1, self.num_heads, 1)
    elif T is None or H_patches is None or W_patches is None:
      depth = n // (self.grid_size * self.grid_size)
      ids = torch.arange(depth * self.grid_size * self.grid_size, device=x.device)
    else:
      ids = torch.arange(T * H_patches * W_patches, device=x.device)
    positions = self.separate_positions(ids, H_patches, W_patches)
    q, k = self.rotate(q, positions), self.rotate(k, positions)
    x = F.scaled_dot_product_attention(q, k, v)
    return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
  """Official Block: pre-norm, RoPEAttention (use_rope) or plain Attention, GELU MLP; norm eps as the caller's
  norm_layer (1e-6 in encoder and predictor, torch's default 1e-5 in the probe)."""

  def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, use_rope=False, grid_size=16, norm_eps=1e-6):
    super().__init__()
    self.use_rope = use_rope
    self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
    self.attn = RoPEAttention(dim, num_heads, qkv_bias, grid_size) if use_rope else Attention(dim, num_heads,
                                                                                             qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x, mask=None, T=None, H_patches=None, W_patches=None):
    if self.use_rope:
      y = self.attn(self.norm1(x), mask=mask, T=T, H_patches=H_patches, W_patches=W_patches)
    else:
      y = self.attn(self.norm1(x))
    x = x + y
    return x + self.mlp(self.norm2(x))


@torch.no_grad()
def _official_init(module, std=INIT_STD):
  """_init_weights of the official modules: trunc_normal(std) (absolute bounds +-2) with zero bias on Linear and
  Conv3d, LayerNorm 1/0. Parameters that are not modules (mask tokens, query tokens) are left to the caller."""
  for m in module.modules():
    if isinstance(m, (nn.Linear, nn.Conv3d)):
      nn.init.trunc_normal_(m.weight, std=std)
      if m.bias is not None:
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


@torch.no_grad()
def _rescale_blocks(blocks):
  """Official _rescale_blocks: block i's attn.proj and mlp.fc2 weights divided by sqrt(2 (i + 1))."""
  for i, blk in enumerate(blocks):
    blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
    blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))


class TorchVisionTransformerV2(nn.Module):
  """Official VisionTransformer with use_rope=True (video path, handle_nonsquare_inputs=True).

  out_layers (block indices, as the Diving48 configs pass them): forward returns the list of norm(x) after each of
  those blocks, in block order, instead of the normed output of the last block (the official forward).
  """

  def __init__(self, img_size=256, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=1024, depth=24,
               num_heads=16, mlp_ratio=4.0, qkv_bias=True, out_layers=None):
    super().__init__()
    self.out_layers = out_layers
    self.patch_size, self.tubelet_size = patch_size, tubelet_size
    self.embed_dim, self.num_heads = embed_dim, num_heads
    self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, 3, embed_dim)
    self.blocks = nn.ModuleList([
        Block(embed_dim, num_heads, mlp_ratio, qkv_bias, use_rope=True, grid_size=img_size // patch_size)
        for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    _official_init(self)
    _rescale_blocks(self.blocks)

  def forward(self, x, masks=None):
    _, _, t, h, w = x.shape
    grid = dict(T=t // self.tubelet_size, H_patches=h // self.patch_size, W_patches=w // self.patch_size)
    x = self.patch_embed(x)
    if masks is not None:
      masks = [masks] if torch.is_tensor(masks) else masks
      x = apply_masks(x, masks)
      masks = torch.cat(masks, dim=0)
    outs = []
    for i, blk in enumerate(self.blocks):
      x = blk(x, mask=masks, **grid)
      if self.out_layers is not None and i in self.out_layers:
        outs.append(self.norm(x))  # the same final norm, applied to each chosen block's output
    if self.out_layers is not None:
      return outs
    return self.norm(x)


class TorchPredictorV2(nn.Module):
  """Official VisionTransformerPredictor with use_rope=True and use_mask_tokens=True.

  Forward: embed the context, append the mask token at every target, sort [context; targets] by flat position, run
  the RoPE blocks with the sorted positions (square grid of img_size // patch_size: the official predictor passes no
  patch counts), norm, un-sort, keep the targets, project.
  """

  def __init__(self, img_size=256, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=1024,
               predictor_embed_dim=384, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, num_mask_tokens=10,
               zero_init_mask_tokens=True):
    super().__init__()
    self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim, bias=True)
    self.num_mask_tokens = num_mask_tokens
    self.mask_tokens = nn.ParameterList(
        [nn.Parameter(torch.zeros(1, 1, predictor_embed_dim)) for _ in range(num_mask_tokens)])
    grid_size = img_size // patch_size
    self.num_patches = (num_frames // tubelet_size) * grid_size * grid_size
    self.predictor_blocks = nn.ModuleList([
        Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, use_rope=True, grid_size=grid_size)
        for _ in range(depth)])
    self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=1e-6)
    self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim, bias=True)
    if not zero_init_mask_tokens:
      with torch.no_grad():
        for p in self.mask_tokens:
          nn.init.trunc_normal_(p, std=INIT_STD)
    _official_init(self)
    _rescale_blocks(self.predictor_blocks)

  def forward(self, ctxt, masks_ctxt, masks_tgt, mask_index=1):
    masks_ctxt = [masks_ctxt] if torch.is_tensor(masks_ctxt) else masks_ctxt
    masks_tgt = [masks_tgt] if torch.is_tensor(masks_tgt) else masks_tgt
    b = len(ctxt) // len(masks_ctxt)
    x = self.predictor_embed(ctxt)
    n_ctxt = x.size(1)
    token = self.mask_tokens[mask_index % self.num_mask_tokens]
    targets = apply_masks(token.repeat(b, self.num_patches, 1), masks_tgt)
    x = torch.cat([x.repeat(len(masks_ctxt), 1, 1), targets], dim=1)
    positions = torch.cat([torch.cat(masks_ctxt, dim=0), torch.cat(masks_tgt, dim=0)], dim=1)
    order = torch.argsort(positions, dim=1)
    positions = torch.gather(positions, 1, order)
    x = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.size(-1)))
    for blk in self.predictor_blocks:
      x = blk(x, mask=positions)
    x = self.predictor_norm(x)
    undo = torch.argsort(order, dim=1)
    x = torch.gather(x, 1, undo.unsqueeze(-1).expand(-1, -1, x.size(-1)))
    return self.predictor_proj(x[:, n_ctxt:])


def predict_multiseq(predictor, ctxt, masks_ctxt, masks_tgt):
  """The official PredictorMultiSeqWrapper: ctxt[i][j] are the context tokens of frame-count group i under mask
  generator j. [quirk, docs/reference.md §9.2] It passes mask_index=i, the group index, not j: with one group (all
  datasets at the same frame count, as every released config) every generator uses mask token 0."""
  return [[predictor(c, mc, mt, mask_index=i) for c, mc, mt in zip(cs, mcs, mts)]
          for i, (cs, mcs, mts) in enumerate(zip(ctxt, masks_ctxt, masks_tgt))]


class CrossAttentionV2(nn.Module):
  """Official V-JEPA 2 CrossAttention: q and kv projections only (the output projection is commented out)."""

  def __init__(self, dim, num_heads, qkv_bias=True):
    super().__init__()
    self.num_heads = num_heads
    self.q = nn.Linear(dim, dim, bias=qkv_bias)
    self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

  def forward(self, q, x):
    b, n, c = q.shape
    h = self.num_heads
    q = self.q(q).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
    kv = self.kv(x).reshape(b, x.shape[1], 2, h, c // h).permute(2, 0, 3, 1, 4)
    q = F.scaled_dot_product_attention(q, kv[0], kv[1])
    return q.transpose(1, 2).reshape(b, n, c)


class CrossAttentionBlockV2(nn.Module):

  def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim)  # the probe's norm_layer is nn.LayerNorm: eps 1e-5
    self.xattn = CrossAttentionV2(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, q, x):
    q = q + self.xattn(q, self.norm1(x))
    return q + self.mlp(self.norm2(q))


class AttentivePoolerV2(nn.Module):
  """Official V-JEPA 2 AttentivePooler: depth - 1 self-attention Blocks (no RoPE) over all tokens, then one query
  cross-attends to them."""

  def __init__(self, embed_dim, num_heads, mlp_ratio=4.0, depth=4, qkv_bias=True, init_std=INIT_STD):
    super().__init__()
    self.query_tokens = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.cross_attention_block = CrossAttentionBlockV2(embed_dim, num_heads, mlp_ratio, qkv_bias)
    self.blocks = None
    if depth > 1:
      self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, use_rope=False, norm_eps=1e-5)
                                   for _ in range(depth - 1)])
    with torch.no_grad():
      nn.init.trunc_normal_(self.query_tokens, std=init_std)
    _official_init(self, init_std)
    # Official _rescale_blocks: blocks as the encoder's; then the cross block's fc2 with the last block's layer_id
    # + 1 (sqrt(2 (depth - 1)); sqrt(2) for depth 1).
    _rescale_blocks(self.blocks or [])
    with torch.no_grad():
      self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * max(1, depth - 1)))

  def forward(self, x):
    for blk in self.blocks or []:
      x = blk(x)
    q = self.query_tokens.repeat(len(x), 1, 1)
    return self.cross_attention_block(q, x)


class AttentiveClassifierV2(nn.Module):

  def __init__(self, embed_dim, num_heads, num_classes, mlp_ratio=4.0, depth=4, qkv_bias=True):
    super().__init__()
    self.pooler = AttentivePoolerV2(embed_dim, num_heads, mlp_ratio, depth, qkv_bias)
    self.linear = nn.Linear(embed_dim, num_classes)  # torch default init: the pooler's init does not reach it

  def forward(self, x):
    return self.linear(self.pooler(x).squeeze(1))


def _factory(**dims):
  def make(**kwargs):
    return TorchVisionTransformerV2(**{**dims, **kwargs})
  return make


torch_vit_large_v2 = _factory(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
torch_vit_huge_v2 = _factory(patch_size=16, embed_dim=1280, depth=32, num_heads=16)
# The released ViT-g: 22 heads of 64 channels, hidden int(1408 * 48 / 11) = 6144.
torch_vit_giant_xformers = _factory(patch_size=16, embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11)
TORCH_MODEL_ZOO_V2 = {
    "vit_large": torch_vit_large_v2, "vit_huge": torch_vit_huge_v2, "vit_giant_xformers": torch_vit_giant_xformers,
}


def count_parameters(module) -> int:
  """Trainable parameters, as the official count_parameters (requires_grad only)."""
  return sum(p.numel() for p in module.parameters() if p.requires_grad)
