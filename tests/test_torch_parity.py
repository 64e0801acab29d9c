"""Our encoder and predictor equal the official PyTorch computation (tests/torch_reference.py) with the same weights.

Weights cross through jepa_jax.torch_layout in both directions; inputs and weights are seeded random draws (a
failure reproduces) and the measured relative error (max |ours - torch| / max |torch|) is printed (pytest -s shows
it).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jepa_jax import torch_layout
from jepa_jax.models import predictor, vit
from tests import torch_reference as ref

TOL = 1e-5
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded_torch():
  """The official init (ref.init_official, torch's default Linear init) draws from torch's global generator."""
  torch.manual_seed(0)


def _encoder(seed=1, **kwargs) -> vit.VisionTransformer:
  dims = dict(embed_dim=96, depth=2, num_heads=4)
  with nnx.use_eager_sharding(False):
    return vit.VisionTransformer(**{**dims, **kwargs}, rngs=nnx.Rngs(seed))


def _params(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _load_into_torch(model, torch_model):
  """Ours -> official state_dict (+ the frozen positional table) -> strict load."""
  sd = torch_layout.to_torch_state_dict(_params(model), scanned=model.scan_layers)
  sd.update(torch_layout.pos_embed_entries(model))
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  return torch_model.eval()


def _run(model, *args):
  """Our forward as the train step runs it: jitted, functional (one compile instead of op-by-op dispatch)."""
  graphdef, params = nnx.split(model)
  static = tuple(a for a in args if isinstance(a, int))
  arrays = tuple(jnp.asarray(a) for a in args if not isinstance(a, int))
  return jax.jit(lambda p, *a: nnx.merge(graphdef, p)(*a, *static))(params, *arrays)


def _torch_clip(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))  # [B,T,H,W,C] -> [B,C,T,H,W]


def _random_masks(rng, batch, num_patches, keep) -> np.ndarray:
  """Per-sample random subsets of `keep` token indices, unsorted (the official masks are sorted; order must not
  matter to the gather)."""
  return np.stack([rng.permutation(num_patches)[:keep] for _ in range(batch)]).astype(np.int32)


@pytest.mark.parametrize("frames,size,scan_layers", [(16, 32, False), (4, 64, True)])
def test_encoder_matches_torch_on_full_clips_and_masked_subsets(frames, size, scan_layers):
  rng = np.random.default_rng(frames)
  model = _encoder(img_size=size, num_frames=frames, scan_layers=scan_layers)
  torch_model = _load_into_torch(model, ref.TorchVisionTransformer(
      img_size=size, num_frames=frames, embed_dim=96, depth=2, num_heads=4))
  x = rng.standard_normal((2, frames, size, size, 3)).astype(np.float32)
  masks = _random_masks(rng, 2, model.num_patches, 11)
  with torch.no_grad():
    want_full = torch_model(_torch_clip(x)).numpy()
    want_masked = torch_model(_torch_clip(x), masks=torch.from_numpy(masks).long()).numpy()
  err_full = ref.rel_error(_run(model, x), want_full)
  err_masked = ref.rel_error(_run(model, x, masks), want_masked)
  print(f"encoder {frames}x{size}x{size} scan={scan_layers}: full {err_full:.2e}, masked {err_masked:.2e}")
  assert want_full.shape == (2, model.num_patches, 96) and want_masked.shape == (2, 11, 96)
  assert err_full < TOL and err_masked < TOL


def test_encoder_from_official_init_matches_torch_at_another_clip_size():
  """Torch weights (official init) -> ours; a clip larger than the built size exercises the trilinear positions."""
  torch_model = ref.init_official(ref.TorchVisionTransformer(
      img_size=32, num_frames=8, embed_dim=96, depth=2, num_heads=4)).eval()
  model = _encoder(img_size=32, num_frames=8)
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  nnx.update(model, torch_layout.from_torch_state_dict(sd, _params(model)))
  x = np.random.default_rng(2).standard_normal((2, 12, 48, 48, 3)).astype(np.float32)  # grid (6,3,3) from (4,2,2)
  with torch.no_grad():
    want = torch_model(_torch_clip(x)).numpy()
  err = ref.rel_error(_run(model, x), want)
  print(f"encoder interpolated positions 12x48x48 (built 8x32x32): {err:.2e}")
  assert want.shape == (2, 54, 96) and err < TOL


def test_predictor_matches_torch_for_two_mask_generators():
  rng = np.random.default_rng(3)
  kwargs = dict(img_size=32, num_frames=16, embed_dim=96, predictor_embed_dim=48, depth=2, num_heads=4,
                num_mask_tokens=2)
  with nnx.use_eager_sharding(False):
    # Non-zero mask tokens, so that using the wrong generator's token would show.
    model = predictor.VisionTransformerPredictor(**kwargs, zero_init_mask_tokens=False, rngs=nnx.Rngs(4))
  torch_model = _load_into_torch(model, ref.TorchPredictor(**kwargs))
  n = model.num_patches
  for mask_index, (kc, kt) in enumerate([(20, 6), (9, 17)]):  # a small-block and a large-block generator
    perm = np.stack([rng.permutation(n) for _ in range(3)]).astype(np.int32)
    ctx_idx, tgt_idx = np.sort(perm[:, :kc], axis=1), np.sort(perm[:, kc:kc + kt], axis=1)
    ctx = rng.standard_normal((3, kc, 96)).astype(np.float32)
    with torch.no_grad():
      want = torch_model(torch.from_numpy(ctx), torch.from_numpy(ctx_idx).long(),
                         torch.from_numpy(tgt_idx).long(), mask_index).numpy()
    got = _run(model, ctx, ctx_idx, tgt_idx, mask_index)
    err = ref.rel_error(got, want)
    print(f"predictor generator {mask_index} (Kc={kc}, Kt={kt}): {err:.2e}")
    assert got.shape == (3, kt, 96) and err < TOL


def test_official_init_state_dict_round_trips_bit_exactly():
  torch_model = ref.init_official(ref.TorchPredictor(img_size=32, num_frames=4, embed_dim=64,
                                                     predictor_embed_dim=32, depth=3, num_heads=4))
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  with nnx.use_eager_sharding(False):
    for scan in (False, True):
      model = nnx.eval_shape(lambda: predictor.VisionTransformerPredictor(
          img_size=32, num_frames=4, embed_dim=64, predictor_embed_dim=32, depth=3, num_heads=4, scan_layers=scan,
          rngs=nnx.Rngs(0)))
      pure = torch_layout.from_torch_state_dict(sd, _params(model), scanned=scan)
      back = torch_layout.to_torch_state_dict(pure, scanned=scan)
      assert set(back) == set(sd) - {"predictor_pos_embed"}
      for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
      np.testing.assert_array_equal(torch_layout.pos_embed_entries(model)["predictor_pos_embed"],
                                    sd["predictor_pos_embed"])


def test_mismatched_state_dict_is_refused_with_every_problem_listed():
  kwargs = dict(img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=4)
  sd = {k: v.numpy() for k, v in ref.TorchVisionTransformer(**kwargs).state_dict().items()}
  del sd["blocks.1.mlp.fc2.bias"]
  sd["blocks.1.attn.q_norm.weight"] = np.ones(16, np.float32)
  sd["blocks.0.attn.qkv.weight"] = np.zeros((96, 64), np.float32)
  model = nnx.eval_shape(lambda: _encoder(**kwargs))
  with pytest.raises(ValueError) as info:
    torch_layout.from_torch_state_dict(sd, _params(model))
  message = str(info.value)
  assert "missing keys (1): ['blocks.1.mlp.fc2.bias']" in message
  assert "unexpected keys (1): ['blocks.1.attn.q_norm.weight']" in message
  assert "blocks.0.attn.qkv.weight: got (96, 64) (PyTorch layout), model wants (192, 64)" in message
