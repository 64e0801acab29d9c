"""The official pretraining augmentation on uint8 clips, in numpy (docs/reference.md §5.4).

Random resized crop (one box for every frame of the clip), bilinear resize as torch's
F.interpolate(mode='bilinear', align_corners=False) without antialias (through OpenCV, within one uint8 level of
it), then a horizontal flip with p = 0.5.
Normalisation by the ImageNet mean and std is left to the device: clips leave the host as uint8, 4x fewer bytes.

All randomness comes from the numpy Generator passed in (grain's per-element generator), so a pipeline is
reproducible from (seed, position); the official code draws from Python's `random` and the global numpy state.
"""
import math

import cv2
import numpy as np

# One OpenCV thread per process: grain runs one worker process per core, and OpenCV's own pool would oversubscribe
# the cores. Set at import, so it holds in every process that can run a transform (grain workers import this module
# to unpickle the transforms; forked workers inherit the setting).
cv2.setNumThreads(1)


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator, num_tries: int = 10) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the crop, the official `_get_param_spatial_crop` (docs/reference.md §5.4).

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


def resize_bilinear(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """uint8 [T, H, W, C] (C <= 4; strided views welcome) → uint8 [T, out_h, out_w, C], OpenCV INTER_LINEAR per frame.

  INTER_LINEAR samples at torch's half-pixel centres (F.interpolate(bilinear, align_corners=False), no antialias)
  and clamps at the borders as torch does; it blends in 11-bit fixed point, so a value can differ from torch's
  float result, rounded, by one level (tested). Each frame is written straight into the output array.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4:
    raise ValueError(f"expected uint8 frames [T, H, W, C], got {frames.dtype} {frames.shape}")
  out = np.empty((frames.shape[0], out_h, out_w, frames.shape[3]), np.uint8)
  for frame, dst in zip(frames, out):
    cv2.resize(frame, (out_w, out_h), dst=dst, interpolation=cv2.INTER_LINEAR)
  return out


def flip_in_place(frames: np.ndarray) -> np.ndarray:
  """Mirrors each frame of uint8 [T, H, W, C] left-right in place (numpy's reversed-stride copy is ~40x slower)."""
  for frame in frames:
    cv2.flip(frame, 1, dst=frame)
  return frames


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def pretrain_augment(clip: np.ndarray, rng: np.random.Generator, *, crop_size: int,
                     scale: tuple[float, float] = (0.3, 1.0), ratio: tuple[float, float] = (0.75, 1.35),
                     horizontal_flip: bool = True) -> np.ndarray:
  """uint8 [T, H, W, 3] → uint8 [T, crop_size, crop_size, 3]: the official `VideoTransform` without normalisation."""
  _, height, width, _ = clip.shape
  top, left, h, w = random_resized_crop_box(height, width, tuple(scale), tuple(ratio), rng)
  # Crop first, then resize only the box (never the whole frame).
  out = resize_bilinear(clip[:, top:top + h, left:left + w], crop_size, crop_size)
  if horizontal_flip and rng.random() < 0.5:
    flip_in_place(out)
  return out
