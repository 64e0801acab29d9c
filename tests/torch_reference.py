"""A minimal PyTorch V-JEPA encoder and predictor, written from docs/reference.md §2, as a test oracle.

Module names equal the official ones, so an official state_dict (prefix 'module.backbone.' removed) loads with
load_state_dict(strict=True), and so does torch_layout.to_torch_state_dict(ours) plus the positional tables.
Layout is the official channels-first [B, 3, T, H, W]. The sin-cos table is an independent numpy implementation
of the official formula (meshgrid in 'xy' order, as the original), so tests can check ours against it.

API:
  get_3d_sincos_pos_embed(embed_dim, grid_depth, grid_size, uniform_power) -> np.ndarray float32 [N, D]
  TorchVisionTransformer(...).forward(x [B,3,T,H,W], masks=None | LongTensor [B,K] | list) -> [B', K, D]
  TorchPredictor(...).forward(ctxt [B,Kc,D], masks_ctxt [B,Kc], masks_tgt [B,Kt], mask_index) -> [B, Kt, D]
  init_official(*modules): the effective official pretraining init (docs/reference.md §2.2 "Initialisation")
  torch_vit_tiny ... torch_vit_gigantic(**kwargs), TORCH_MODEL_ZOO, torch_vit_predictor(**kwargs)
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _sincos_1d(dim, pos):
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000 ** omega
  out = np.outer(pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_3d_sincos_pos_embed(embed_dim, grid_depth, grid_size, uniform_power=False):
  """Official pos_embs.get_3d_sincos_pos_embed (float64, then float32 on assignment to the Parameter)."""
  grid_d = np.arange(grid_depth, dtype=float)
  grid_h = np.arange(grid_size, dtype=float)
  grid_w = np.arange(grid_size, dtype=float)
  grid_h, grid_d, grid_w = np.meshgrid(grid_h, grid_d, grid_w)  # 'xy' indexing: arrays are [T', H', W'].
  if not uniform_power:
    h_dim = w_dim = int(np.ceil(embed_dim / 4)) * 1
    d_dim = embed_dim // 2
  else:
    h_dim = w_dim = d_dim = int(np.ceil(embed_dim / 6) * 2)
  emb_h = _sincos_1d(h_dim, grid_h)
  emb_w = _sincos_1d(w_dim, grid_w)
  emb_d = _sincos_1d(d_dim, grid_d)
  return np.concatenate([emb_d, emb_h, emb_w], axis=1)[:, :embed_dim].astype(np.float32)


def apply_masks(x, masks):
  """Gathers kept tokens per mask [B, K] and concatenates the results along the batch axis (official)."""
  if torch.is_tensor(masks):
    masks = [masks]
  out = [torch.gather(x, 1, m.unsqueeze(-1).repeat(1, 1, x.size(-1))) for m in masks]
  return torch.cat(out, dim=0)


class PatchEmbed3D(nn.Module):

  def __init__(self, patch_size=16, tubelet_size=2, in_chans=3, embed_dim=768):
    super().__init__()
    self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                          stride=(tubelet_size, patch_size, patch_size))

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()  # exact erf
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):

  def __init__(self, dim, num_heads, qkv_bias=True):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):

  def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TorchVisionTransformer(nn.Module):
  """Official VisionTransformer (video path, no out_layers)."""

  def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768, depth=12,
               num_heads=12, mlp_ratio=4.0, qkv_bias=True, uniform_power=True):
    super().__init__()
    self.input_size, self.patch_size = img_size, patch_size
    self.num_frames, self.tubelet_size = num_frames, tubelet_size
    self.embed_dim, self.num_heads = embed_dim, num_heads
    self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, 3, embed_dim)
    grid_depth, grid_size = num_frames // tubelet_size, img_size // patch_size
    self.num_patches = grid_depth * grid_size * grid_size
    self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim), requires_grad=False)
    self.pos_embed.data.copy_(torch.from_numpy(
        get_3d_sincos_pos_embed(embed_dim, grid_depth, grid_size, uniform_power)).unsqueeze(0))
    self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

  def interpolate_pos_encoding(self, x, pos_embed):
    _, _, t, h, w = x.shape
    if h == self.input_size and w == self.input_size and t == self.num_frames:
      return pos_embed
    _, n, dim = pos_embed.shape
    t, h, w = t // self.tubelet_size, h // self.patch_size, w // self.patch_size
    n_t = self.num_frames // self.tubelet_size
    n_h = n_w = self.input_size // self.patch_size
    scale_factor = (t / n_t, h / n_h, w / n_w)
    pos_embed = F.interpolate(pos_embed.reshape(1, n_t, n_h, n_w, dim).permute(0, 4, 1, 2, 3),
                              scale_factor=scale_factor, mode="trilinear")
    return pos_embed.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)

  def forward(self, x, masks=None):
    pos_embed = self.interpolate_pos_encoding(x, self.pos_embed)
    x = self.patch_embed(x) + pos_embed
    if masks is not None:
      x = apply_masks(x, masks)
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)


class TorchPredictor(nn.Module):
  """Official VisionTransformerPredictor (use_mask_tokens=True, V1: no sorting)."""

  def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768,
               predictor_embed_dim=384, depth=6, num_heads=12, mlp_ratio=4.0, qkv_bias=True, uniform_power=True,
               num_mask_tokens=2, zero_init_mask_tokens=True):
    super().__init__()
    self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim, bias=True)
    self.num_mask_tokens = num_mask_tokens
    self.mask_tokens = nn.ParameterList(
        [nn.Parameter(torch.zeros(1, 1, predictor_embed_dim)) for _ in range(num_mask_tokens)])
    grid_depth, grid_size = num_frames // tubelet_size, img_size // patch_size
    self.num_patches = grid_depth * grid_size * grid_size
    self.predictor_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, predictor_embed_dim),
                                            requires_grad=False)
    self.predictor_pos_embed.data.copy_(torch.from_numpy(
        get_3d_sincos_pos_embed(predictor_embed_dim, grid_depth, grid_size, uniform_power)).unsqueeze(0))
    self.predictor_blocks = nn.ModuleList(
        [Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
    self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=1e-6)
    self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim, bias=True)
    if not zero_init_mask_tokens:
      for p in self.mask_tokens:
        nn.init.trunc_normal_(p, std=0.02)

  def forward(self, ctxt, masks_ctxt, masks_tgt, mask_index=1):
    b = ctxt.size(0)
    x = self.predictor_embed(ctxt)
    x = x + apply_masks(self.predictor_pos_embed.repeat(b, 1, 1), masks_ctxt)
    pos_embs = apply_masks(self.predictor_pos_embed.repeat(b, 1, 1), masks_tgt)
    pred_tokens = self.mask_tokens[mask_index % self.num_mask_tokens].repeat(b, self.num_patches, 1)
    pred_tokens = apply_masks(pred_tokens, masks_tgt) + pos_embs
    x = torch.cat([x, pred_tokens], dim=1)
    for blk in self.predictor_blocks:
      x = blk(x)
    x = self.predictor_norm(x)
    return self.predictor_proj(x[:, -pred_tokens.size(1):])


@torch.no_grad()
def init_official(*modules):
  """The effective official pretraining init: Linear trunc_normal(0.02) (absolute bounds +-2, so a plain normal)
  with bias 0 and no depth rescale (init_video_model's re-init overwrites it), LayerNorm 1/0, Conv3d
  trunc_normal(0.02) with bias 0; mask tokens are left as they are (zero)."""
  for module in modules:
    for m in module.modules():
      if isinstance(m, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
          nn.init.zeros_(m.bias)
      elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
  return modules[0] if len(modules) == 1 else modules


def _factory(**dims):
  def make(**kwargs):
    return TorchVisionTransformer(**{**dims, **kwargs})
  return make


torch_vit_tiny = _factory(patch_size=16, embed_dim=192, depth=12, num_heads=3)
torch_vit_small = _factory(patch_size=16, embed_dim=384, depth=12, num_heads=6)
torch_vit_base = _factory(patch_size=16, embed_dim=768, depth=12, num_heads=12)
torch_vit_large = _factory(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
torch_vit_huge = _factory(patch_size=16, embed_dim=1280, depth=32, num_heads=16)
torch_vit_giant = _factory(patch_size=16, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11)
torch_vit_gigantic = _factory(patch_size=14, embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.0)  # mpl_ratio typo
TORCH_MODEL_ZOO = {
    "vit_tiny": torch_vit_tiny, "vit_small": torch_vit_small, "vit_base": torch_vit_base,
    "vit_large": torch_vit_large, "vit_huge": torch_vit_huge, "vit_giant": torch_vit_giant,
    "vit_gigantic": torch_vit_gigantic,
}


def torch_vit_predictor(**kwargs):
  return TorchPredictor(**kwargs)


def rel_error(ours, ref) -> float:
  """max |ours - ref| / max |ref|: the figure the parity tests report."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))

