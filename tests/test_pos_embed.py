"""The sin-cos positional tables follow the official formula and resize like PyTorch's trilinear F.interpolate."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepa_jax.models import layers
from tests import torch_reference as ref


@pytest.mark.parametrize("uniform_power", [True, False])
@pytest.mark.parametrize("dim", [192, 384, 1024, 1280])
def test_table_equals_independent_float64_implementation(dim, uniform_power):
  ours = layers.get_3d_sincos_pos_embed(dim, 8, 14, uniform_power)
  want = ref.get_3d_sincos_pos_embed(dim, 8, 14, uniform_power)
  assert ours.shape == (8 * 14 * 14, dim) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-7)


def test_layout_is_t_h_w_blocks_of_sines_then_cosines_truncated_to_width():
  """D=1024 with uniform_power: 342 dims per axis, 1026 in all, the last 2 (width cosines) dropped."""
  table = layers.get_3d_sincos_pos_embed(1024, 8, 14, True).astype(np.float64)
  t, h, w = 5, 3, 11
  row = table[t * 14 * 14 + h * 14 + w]  # token order t-major, then h, then w
  omega = 1.0 / 10000 ** (np.arange(171) / 171.0)
  np.testing.assert_allclose(row[0:171], np.sin(t * omega), atol=1e-6)
  np.testing.assert_allclose(row[171:342], np.cos(t * omega), atol=1e-6)
  np.testing.assert_allclose(row[342:513], np.sin(h * omega), atol=1e-6)
  np.testing.assert_allclose(row[684:855], np.sin(w * omega), atol=1e-6)
  np.testing.assert_allclose(row[855:1024], np.cos(w * omega[:169]), atol=1e-6)


def test_non_uniform_power_gives_time_half_the_width():
  table = layers.get_3d_sincos_pos_embed(384, 8, 14, False).astype(np.float64)
  t = 7
  omega = 1.0 / 10000 ** (np.arange(96) / 96.0)
  np.testing.assert_allclose(table[t * 196, :96], np.sin(t * omega), atol=1e-6)
  np.testing.assert_allclose(table[t * 196, 96:192], np.cos(t * omega), atol=1e-6)


@pytest.mark.parametrize("src,dst", [
    ((8, 14, 14), (8, 24, 24)),   # 224 -> 384 crop
    ((8, 14, 14), (4, 7, 7)),     # downsampling
    ((2, 4, 4), (3, 6, 6)),       # scale 1.5
    ((8, 16, 16), (16, 20, 12)),  # anisotropic
])
def test_interpolation_equals_torch_trilinear(src, dst):
  table = np.random.default_rng(0).standard_normal((int(np.prod(src)), 24)).astype(np.float32)
  ours = layers.interpolate_pos_embed(table, src, dst)
  grid = torch.from_numpy(table).reshape(1, *src, 24).permute(0, 4, 1, 2, 3)
  scale = tuple(d / s for d, s in zip(dst, src))
  want = F.interpolate(grid, scale_factor=scale, mode="trilinear").permute(0, 2, 3, 4, 1).reshape(-1, 24)
  assert ours.shape == (int(np.prod(dst)), 24)
  # A few float32 ulps apart (different summation order) on unit-variance values; a wrong weight or index would
  # be off by ~0.1.
  np.testing.assert_allclose(ours, want.numpy(), rtol=0, atol=1e-5)


def test_interpolation_to_the_same_grid_is_the_identity():
  table = layers.get_3d_sincos_pos_embed(96, 4, 2, True)
  np.testing.assert_array_equal(layers.interpolate_pos_embed(table, (4, 2, 2), (4, 2, 2)), table)
