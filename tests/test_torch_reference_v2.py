"""The PyTorch V-JEPA 2 oracle (tests/torch_reference_v2.py): official sizes, key names and behaviours.

The large models are built on the meta device (no memory, no init) to count their parameters.
"""
import math

import numpy as np
import pytest
import torch
from flax import nnx

from jepa_jax import models
from jepa_jax.models import vit
from tests import torch_reference_v2 as ref
from tests.torch_reference import rel_error

torch.set_num_threads(1)


def _meta(make):
  with torch.device("meta"):
    return make()


# --------------------------------------------------------------------------------------------------------------
# Sizes (the official count_parameters: requires_grad parameters)


@pytest.mark.parametrize("name,count", [
    ("vit_large", 303_885_312), ("vit_huge", 631_648_000), ("vit_giant_xformers", 1_012_173_952)])
def test_encoder_parameter_counts(name, count):
  assert ref.count_parameters(_meta(lambda: ref.TORCH_MODEL_ZOO_V2[name](img_size=256, num_frames=64))) == count


@pytest.mark.parametrize("embed_dim,count", [(1024, 22_086_016), (1280, 22_282_880), (1408, 22_381_312)])
def test_predictor_parameter_counts(embed_dim, count):
  # 384 wide, 12 deep, 12 heads, 10 mask tokens (src/hub/backbones.py), for ViT-L, ViT-H and ViT-g.
  pred = _meta(lambda: ref.TorchPredictorV2(img_size=256, num_frames=64, embed_dim=embed_dim))
  assert ref.count_parameters(pred) == count


def test_probe_parameter_count_vit_large_ssv2():
  assert ref.count_parameters(_meta(lambda: ref.AttentiveClassifierV2(1024, 16, 174, depth=4))) == 49_514_670


def test_our_zoo_vit_giant_xformers_is_the_released_vitg():
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: vit.MODEL_ZOO["vit_giant_xformers"](
        img_size=256, num_frames=16, scan_layers=True, rngs=nnx.Rngs(0)))
  assert (model.embed_dim, model.depth, model.num_heads, model.patch_size) == (1408, 40, 22, 16)
  assert model.blocks.mlp.fc1.kernel.shape == (40, 1408, 6144)
  assert models.count_params(model) == 1_012_173_952


# --------------------------------------------------------------------------------------------------------------
# Key names: what an official V-JEPA 2 file holds under 'module.backbone.' (docs/reference.md §9.7)


def _official_encoder_keys(depth):
  keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
  for i in range(depth):
    for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
      keys += [f"blocks.{i}.{m}.weight", f"blocks.{i}.{m}.bias"]
  return keys


def _official_predictor_keys(depth, mask_tokens):
  keys = [f"mask_tokens.{i}" for i in range(mask_tokens)]
  for m in ("predictor_embed", "predictor_norm", "predictor_proj"):
    keys += [f"{m}.weight", f"{m}.bias"]
  for i in range(depth):
    for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
      keys += [f"predictor_blocks.{i}.{m}.weight", f"predictor_blocks.{i}.{m}.bias"]
  return keys


def test_an_official_file_loads_strictly_after_dropping_the_stale_pos_embed():
  enc = ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=64, depth=2, num_heads=4)
  pred = ref.TorchPredictorV2(img_size=64, num_frames=4, embed_dim=64, predictor_embed_dim=48, depth=2,
                              num_heads=4)
  assert sorted(enc.state_dict()) == sorted(_official_encoder_keys(2))
  assert sorted(pred.state_dict()) == sorted(_official_predictor_keys(2, 10))
  # A released-file-like dict: DDP + MultiSeqWrapper prefix and the stale absolute table.
  file_encoder = {f"module.backbone.{k}": v.clone() for k, v in enc.state_dict().items()}
  file_encoder["module.backbone.pos_embed"] = torch.zeros(1, 2 * 4 * 4, 64)
  cleaned = {k.removeprefix("module.backbone."): v for k, v in file_encoder.items() if not k.endswith("pos_embed")}
  fresh = ref.TorchVisionTransformerV2(img_size=64, num_frames=4, embed_dim=64, depth=2, num_heads=4)
  fresh.load_state_dict(cleaned, strict=True)
  with pytest.raises(RuntimeError, match="pos_embed"):
    fresh.load_state_dict({k.removeprefix("module.backbone."): v for k, v in file_encoder.items()}, strict=True)


# --------------------------------------------------------------------------------------------------------------
# Behaviours of the oracle that the JAX model must share


def test_official_init_keeps_the_depth_rescale():
  torch.manual_seed(0)
  enc = ref.TorchVisionTransformerV2(img_size=32, num_frames=2, embed_dim=512, depth=3, num_heads=8)
  for i, blk in enumerate(enc.blocks):
    assert float(blk.attn.qkv.weight.detach().std()) == pytest.approx(0.02, rel=0.03)
    for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
      assert float(w.detach().std()) == pytest.approx(0.02 / math.sqrt(2 * (i + 1)), rel=0.03)


def test_rope_positions_from_indices_equal_the_unmasked_grid():
  torch.manual_seed(1)
  att = ref.RoPEAttention(64, 2, grid_size=4)
  x = torch.randn(2, 2 * 3 * 5, 64)
  ids = torch.arange(30).repeat(2, 1)
  with torch.no_grad():
    full = att(x, T=2, H_patches=3, W_patches=5)
    by_index = att(x, mask=ids, T=2, H_patches=3, W_patches=5)
    square = att(x, mask=ids)  # the predictor's path: positions from the square grid_size 4, not 3 x 5
  torch.testing.assert_close(by_index, full, rtol=0, atol=0)
  assert rel_error(square.numpy(), full.numpy()) > 1e-3


def test_encoder_masked_forward_keeps_absolute_positions():
  torch.manual_seed(2)
  enc = ref.TorchVisionTransformerV2(img_size=48, num_frames=4, embed_dim=64, depth=2, num_heads=4).eval()
  clip = torch.randn(1, 3, 4, 48, 64)  # non-square: 2 x 3 x 4 tokens
  keep = torch.tensor([[1, 5, 6, 11, 12, 20, 23]])
  with torch.no_grad():
    masked = enc(clip, masks=keep)
    # Same kept tokens, re-indexed as if they were the first 7 of the grid: other positions, other output.
    moved = enc(clip, masks=torch.arange(7)[None])
  assert masked.shape == (1, 7, 64)
  assert rel_error(moved.numpy(), masked.numpy()) > 1e-3


def _predictor_inputs(seed, b=2, n_ctxt=30, n_tgt=12, total=2 * 4 * 4, dim=64):
  rng = np.random.default_rng(seed)
  perms = [rng.permutation(total) for _ in range(b)]
  ctxt_idx = torch.from_numpy(np.stack([np.sort(p[:n_ctxt]) for p in perms]))
  tgt_idx = torch.from_numpy(np.stack([np.sort(p[n_ctxt:n_ctxt + n_tgt]) for p in perms]))
  ctxt = torch.from_numpy(rng.normal(size=(b, n_ctxt, dim)).astype(np.float32))
  return ctxt, ctxt_idx, tgt_idx


def _predictor(seed=3):
  torch.manual_seed(seed)
  pred = ref.TorchPredictorV2(img_size=64, num_frames=4, embed_dim=64, predictor_embed_dim=48, depth=2,
                              num_heads=4, zero_init_mask_tokens=False)
  return pred.eval()


def test_predictor_sort_changes_only_rounding_and_targets_follow_their_order():
  pred = _predictor()
  ctxt, ctxt_idx, tgt_idx = _predictor_inputs(4)
  with torch.no_grad():
    out = pred(ctxt, ctxt_idx, tgt_idx, mask_index=0)
    # Unsorted: [context; targets] straight through the blocks, as V-JEPA 1 runs them.
    x = torch.cat([pred.predictor_embed(ctxt), pred.mask_tokens[0].repeat(2, tgt_idx.size(1), 1)], dim=1)
    positions = torch.cat([ctxt_idx, tgt_idx], dim=1)
    for blk in pred.predictor_blocks:
      x = blk(x, mask=positions)
    unsorted = pred.predictor_proj(pred.predictor_norm(x)[:, ctxt_idx.size(1):])
    flipped = pred(ctxt, ctxt_idx, tgt_idx.flip(1), mask_index=0)
  assert rel_error(out.numpy(), unsorted.numpy()) < 1e-5
  torch.testing.assert_close(flipped, out.flip(1), rtol=1e-5, atol=1e-6)


def test_mask_token_is_the_frame_count_group_not_the_generator():
  pred = _predictor(seed=5)
  groups = [[_predictor_inputs(6), _predictor_inputs(7)]]  # one frame-count group, two mask generators
  ctxt = [[g[0] for g in groups[0]]]
  masks_ctxt, masks_tgt = [[g[1] for g in groups[0]]], [[g[2] for g in groups[0]]]
  with torch.no_grad():
    base = ref.predict_multiseq(pred, ctxt, masks_ctxt, masks_tgt)
    # A random shift (a constant one would vanish in the LayerNorms).
    pred.mask_tokens[1].add_(torch.randn(1, 1, 48))  # generator 1's token in V-JEPA 1; unused here
    same = ref.predict_multiseq(pred, ctxt, masks_ctxt, masks_tgt)
    pred.mask_tokens[0].add_(torch.randn(1, 1, 48))
    moved = ref.predict_multiseq(pred, ctxt, masks_ctxt, masks_tgt)
  for j in range(2):
    torch.testing.assert_close(same[0][j], base[0][j], rtol=0, atol=0)
    assert rel_error(moved[0][j].numpy(), base[0][j].numpy()) > 1e-3
