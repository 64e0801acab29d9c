"""A minimal PyTorch AttentiveClassifier written from reference section 6.1, used only as the oracle in tests.

Names, init and forward are the official ones (including the unapplied xattn.proj), so a state dict from a released
probe (minus 'module.') loads into it with strict=True, and so does one converted from our NNX probe.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


class MLP(nn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class CrossAttention(nn.Module):

  def __init__(self, dim, num_heads, qkv_bias=True):
    super().__init__()
    self.num_heads = num_heads
    self.q = nn.Linear(dim, dim, bias=qkv_bias)
    self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, q, x):
    b, n, c = q.shape
    h = self.num_heads
    q = self.q(q).reshape(b, n, h, c // h).permute(0, 2, 1, 3)
    kv = self.kv(x).reshape(b, x.shape[1], 2, h, c // h).permute(2, 0, 3, 1, 4)
    q = F.scaled_dot_product_attention(q, kv[0], kv[1])
    # Official quirk (docs/reference.md §6.1): self.proj is not applied.
    return q.transpose(1, 2).reshape(b, n, c)


class CrossAttentionBlock(nn.Module):

  def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim)
    self.xattn = CrossAttention(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim)
    self.mlp = MLP(dim, int(dim * mlp_ratio))

  def forward(self, q, x):
    q = q + self.xattn(q, self.norm1(x))
    return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):

  def __init__(self, embed_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, init_std=0.02):
    super().__init__()
    self.query_tokens = nn.Parameter(torch.zeros(1, 1, embed_dim))
    self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias)
    nn.init.trunc_normal_(self.query_tokens, std=init_std)  # default absolute bounds [-2, 2]
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=init_std)
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    with torch.no_grad():
      self.cross_attention_block.xattn.proj.weight.div_(math.sqrt(2.0))
      self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0))

  def forward(self, x):
    q = self.query_tokens.repeat(len(x), 1, 1)
    return self.cross_attention_block(q, x)


class AttentiveClassifier(nn.Module):

  def __init__(self, embed_dim, num_heads, num_classes, mlp_ratio=4.0, qkv_bias=True):
    super().__init__()
    self.pooler = AttentivePooler(embed_dim, num_heads, mlp_ratio, qkv_bias)
    self.linear = nn.Linear(embed_dim, num_classes)  # torch default init, untouched by the pooler's init

  def forward(self, x):
    return self.linear(self.pooler(x).squeeze(1))
