"""The official pretraining augmentation on uint8 clips, in numpy (reference §5.4).

Random resized crop (one box for every frame of the clip), bilinear resize as torch's
F.interpolate(mode='bilinear', align_corners=False) without antialias, then a horizontal flip with p = 0.5.
Normalisation by the ImageNet mean and std is left to the device: clips leave the host as uint8, 4x fewer bytes.

All randomness comes from the numpy Generator passed in (grain's per-element generator), so a pipeline is
reproducible from (seed, position); the official code draws from Python's `random` and the global numpy state.
"""
import math

import numpy as np


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator, num_tries: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the crop, the official `_get_param_spatial_crop` (reference §5.4).

  ratio is width/height, sampled log-uniformly; after `num_tries` rejected boxes, the centre crop clamped to the
  ratio range.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(num_tries):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))  # random.randint is inclusive of both ends
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices and weights of torch's bilinear kernel with align_corners=False (no antialias)."""
  scale = np.float32(in_size / out_size)
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))  # torch clamps negative source coordinates to 0
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0).astype(np.float32)
  return i0, i1, lam


def resize_bilinear(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """[T, H, W, C] (any dtype) → float32 [T, out_h, out_w, C], as torch F.interpolate(bilinear, align_corners=False).

  Gathers the four taps of every output pixel in the input dtype first (uint8: 4x fewer bytes), then blends in
  float32 with torch's formula h0·(w0·x00 + w1·x01) + h1·(w0·x10 + w1·x11): the float work is on the output size,
  not on the (up to 1280x720) input.
  """
  _, h, w, _ = frames.shape
  y0, y1, ly = _bilinear_taps(h, out_h)
  x0, x1, lx = _bilinear_taps(w, out_w)
  top = np.take(frames, y0, axis=1)
  bottom = np.take(frames, y1, axis=1)
  wx1 = lx[None, None, :, None]
  wx0 = np.float32(1) - wx1
  wy1 = ly[None, :, None, None]
  wy0 = np.float32(1) - wy1
  upper = wx0 * np.take(top, x0, axis=2) + wx1 * np.take(top, x1, axis=2)
  lower = wx0 * np.take(bottom, x0, axis=2) + wx1 * np.take(bottom, x1, axis=2)
  return wy0 * upper + wy1 * lower


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def pretrain_augment(clip: np.ndarray, rng: np.random.Generator, *, crop_size: int,
                     scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (0.75, 1.35),
                     horizontal_flip: bool = True) -> np.ndarray:
  """uint8 [T, H, W, 3] → uint8 [T, crop_size, crop_size, 3]: the official `VideoTransform` without normalisation."""
  _, height, width, _ = clip.shape
  top, left, h, w = random_resized_crop_box(height, width, tuple(scale), tuple(ratio), rng)
  # Crop first, then resize only the box (never the whole frame).
  out = to_uint8(resize_bilinear(clip[:, top:top + h, left:left + w], crop_size, crop_size))
  if horizontal_flip and rng.random() < 0.5:
    out = np.ascontiguousarray(out[:, :, ::-1])
  return out
