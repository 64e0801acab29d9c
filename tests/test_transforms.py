"""The pretraining augmentation (docs/reference.md §5.4)."""
import math

import numpy as np
import pytest
import torch

from input_pipeline import transforms


def _official_box(height, width, scale, ratio, uniform, randint):
  """The official `_get_param_spatial_crop`, written from docs/reference.md §5.4, with injected random draws."""
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


def _torch_resize(clip, out_h, out_w):
  """torch F.interpolate(bilinear, align_corners=False, antialias=False) on float32 [C, T, H, W] as the official
  pretraining transform, rounded to uint8."""
  x = torch.from_numpy(np.ascontiguousarray(clip).astype(np.float32)).permute(3, 0, 1, 2)
  ref = torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False,
                                        antialias=False)
  return transforms.to_uint8(ref.permute(1, 2, 3, 0).numpy())


@pytest.mark.parametrize("in_hw,out_hw", [
    ((97, 131), (224, 224)),   # up, odd input
    ((240, 320), (224, 224)),  # down in both
    ((300, 200), (64, 64)),    # down ~3-5x
    ((448, 448), (224, 224)),  # exactly 2x down (OpenCV switches to area averaging: same taps at 2x)
    ((721, 1279), (224, 224)),  # 720p-sized crop, odd
    ((13, 7), (224, 224)),     # tiny crop, large upscale
    ((5, 3), (7, 9)),          # odd output, non-square
    ((224, 224), (223, 225)),  # almost identity, mixed up and down
    ((16, 16), (16, 16)),      # identity
])
def test_bilinear_resize_is_within_one_level_of_torch_interpolate(in_hw, out_hw):
  rng = np.random.default_rng(sum(in_hw) + sum(out_hw))
  (h, w), (oh, ow) = in_hw, out_hw
  frames = rng.integers(0, 256, (3, h + 9, w + 5, 3), dtype=np.uint8)
  crop = frames[:, 4:4 + h, 2:2 + w]  # a strided view, as the augment passes it
  ours = transforms.resize_bilinear(crop, oh, ow)
  assert ours.dtype == np.uint8 and ours.shape == (3, oh, ow, 3)
  diff = np.abs(ours.astype(np.int32) - _torch_resize(crop, oh, ow))
  assert diff.max() <= 1
  assert diff.mean() < 0.2  # off-by-one only where the float result sits near a .5 rounding edge


def test_bilinear_resize_rejects_float_frames():
  with pytest.raises(ValueError, match="uint8"):
    transforms.resize_bilinear(np.zeros((1, 4, 4, 3), np.float32), 2, 2)


@pytest.mark.parametrize("hw", [(272, 640), (144, 176), (720, 1280)])
def test_augment_draws_box_then_flip_and_matches_torch_on_that_box(hw):
  """Same draws as before the OpenCV resize (box, then one rng.random() for the flip): existing seeds keep their
  crops; the pixels are torch's resize of that box within one level."""
  rng = np.random.default_rng(hw[0])
  clip = rng.integers(0, 256, (2,) + hw + (3,), dtype=np.uint8)
  for seed in range(6):
    out = transforms.pretrain_augment(clip, np.random.default_rng(seed), crop_size=224)
    replay = np.random.default_rng(seed)
    top, left, h, w = transforms.random_resized_crop_box(*hw, (0.3, 1.0), (0.75, 1.35), replay)
    want = _torch_resize(clip[:, top:top + h, left:left + w], 224, 224)
    if replay.random() < 0.5:
      want = want[:, :, ::-1]
    assert np.abs(out.astype(np.int32) - want).max() <= 1


def test_opencv_runs_one_thread_here_and_in_grain_worker_processes():
  import cv2
  import grain
  assert cv2.getNumThreads() == 1
  ds = grain.MapDataset.range(2).map(_opencv_threads).to_iter_dataset()
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
  assert list(ds) == [1, 1]


def _opencv_threads(_):
  """Runs in a grain worker process: OpenCV's thread count there, after the pipeline's modules are imported."""
  import cv2
  from input_pipeline import transforms as worker_transforms  # noqa: F401  what a pipeline worker imports
  return cv2.getNumThreads()


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
