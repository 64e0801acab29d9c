"""The pretraining augmentation (reference §5.4)."""
import math

import numpy as np
import pytest
import torch

from input_pipeline import transforms


def _official_box(height, width, scale, ratio, uniform, randint):
  """The official `_get_param_spatial_crop`, written from reference §5.4, with injected random draws."""
  area = height * width
  for _ in range(10):
    target = area * uniform(*scale)
    ar = math.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target * ar)))
    h = int(round(math.sqrt(target / ar)))
    if 0 < w <= width and 0 < h <= height:
      return randint(0, height - h), randint(0, width - w), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("hw", [(240, 320), (360, 640), (100, 100), (30, 300), (300, 30)])
def test_crop_box_follows_the_official_rule_draw_for_draw(hw):
  for seed in range(200):
    got = transforms.random_resized_crop_box(*hw, (0.3, 1.0), (0.75, 1.35), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    want = _official_box(*hw, (0.3, 1.0), (0.75, 1.35), rng.uniform, lambda a, b: int(rng.integers(a, b + 1)))
    assert got == want


def test_centre_fallback_is_clamped_to_the_aspect_range():
  # A 20x400 frame never fits a box of aspect <= 1.35 with area >= 0.3: all 10 tries fail.
  assert transforms.random_resized_crop_box(20, 400, (0.3, 1.0), (0.75, 1.35), np.random.default_rng(0)) == (
      0, (400 - 27) // 2, 20, 27)


def test_crop_statistics_area_and_log_uniform_aspect():
  rng = np.random.default_rng(0)
  boxes = np.array([transforms.random_resized_crop_box(240, 320, (0.3, 1.0), (0.75, 1.35), rng)
                    for _ in range(4000)])
  area = boxes[:, 2] * boxes[:, 3] / (240 * 320)
  aspect = boxes[:, 3] / boxes[:, 2]
  assert 0.28 < area.min() and area.max() <= 1.0
  # Rejections (boxes too tall for the frame) remove some large areas: the mean lies below the U(0.3, 1) mean.
  assert 0.55 < area.mean() < 0.66
  # Boxes under half the frame always fit, so their aspect is the untouched log-uniform draw.
  log_aspect = np.log(aspect[area < 0.5])
  lo, hi = math.log(0.75), math.log(1.35)
  assert abs(np.median(log_aspect) - 0.5 * (lo + hi)) < 0.03
  assert abs(np.mean(log_aspect < lo + 0.25 * (hi - lo)) - 0.25) < 0.04


def test_bilinear_resize_matches_torch_interpolate():
  rng = np.random.default_rng(0)
  for (h, w), out in [((97, 131), 224), ((240, 320), 224), ((300, 200), 64), ((16, 16), 16)]:
    clip = rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    ours = transforms.resize_bilinear(clip, out, out)
    x = torch.from_numpy(clip.astype(np.float32)).permute(3, 0, 1, 2)  # [C, T, H, W] as the official code
    ref = torch.nn.functional.interpolate(x, size=(out, out), mode="bilinear", align_corners=False)
    ref = ref.permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-2)  # float32 summation order only (0..255 scale)
    assert np.abs(transforms.to_uint8(ours).astype(int) - transforms.to_uint8(ref)).max() <= 1


def test_pretrain_augment_shape_dtype_one_box_for_all_frames_and_flip_rate():
  rng = np.random.default_rng(1)
  clip = np.repeat(rng.integers(0, 256, (1, 60, 80, 3), dtype=np.uint8), 8, 0)  # identical frames
  flips = 0
  for seed in range(200):
    out = transforms.pretrain_augment(clip, np.random.default_rng(seed), crop_size=32)
    assert out.shape == (8, 32, 32, 3) and out.dtype == np.uint8
    assert (out == out[:1]).all()  # one box and one flip decision for all frames
    no_flip = transforms.pretrain_augment(clip, np.random.default_rng(seed), crop_size=32, horizontal_flip=False)
    flips += not np.array_equal(out, no_flip)
    if not np.array_equal(out, no_flip):
      np.testing.assert_array_equal(out, no_flip[:, :, ::-1])
  assert 70 < flips < 130


def test_augment_is_a_function_of_the_generator_only():
  clip = np.random.default_rng(0).integers(0, 256, (4, 50, 70, 3), dtype=np.uint8)
  np.random.seed(0)
  a = transforms.pretrain_augment(clip, np.random.default_rng(5), crop_size=24)
  np.random.seed(1)
  b = transforms.pretrain_augment(clip, np.random.default_rng(5), crop_size=24)
  np.testing.assert_array_equal(a, b)
