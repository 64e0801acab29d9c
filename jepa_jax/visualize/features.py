"""Feature maps: PCA of the frozen target encoder's patch features, three components shown as RGB per token.

The first three principal components of all tokens of all clips (one basis, so colours stay put over time) are
scaled to [0, 1] between their 1st and 99th percentiles; each (t, h, w) token then colours its tubelet_size frames
x patch_size x patch_size pixels. Structure the encoder has learned (objects against background, parts that move
together) shows as regions of one colour; an untrained encoder gives mostly position-coloured noise.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from jepa_jax.visualize import render

_QUANTILE = 0.01


def pca_rgb(features: np.ndarray, quantile: float = _QUANTILE) -> tuple[np.ndarray, np.ndarray]:
  """features [..., D] -> (rgb float32 [..., 3] in [0, 1], explained variance ratios [3]).

  Components are sign-fixed (largest loading positive) so the colours do not flip between calls; missing
  components (fewer than 3 tokens or dims) are grey.
  """
  lead, d = features.shape[:-1], features.shape[-1]
  x = np.asarray(features, np.float64).reshape(-1, d)
  x = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(3, vt.shape[0])
  basis = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
  proj = x @ basis.T
  lo, hi = np.quantile(proj, quantile, axis=0), np.quantile(proj, 1 - quantile, axis=0)
  rgb = np.full((x.shape[0], 3), 0.5)
  rgb[:, :k] = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
  var = s ** 2
  explained = np.zeros(3)
  explained[:k] = var[:k] / max(var.sum(), 1e-30)
  return rgb.reshape(*lead, 3).astype(np.float32), explained


def token_map_to_frames(rgb: np.ndarray, *, patch_size: int, tubelet_size: int) -> np.ndarray:
  """[..., T', H', W', 3] floats in [0, 1] -> uint8 [..., T, H, W, 3]: each token fills its tubelet and patch."""
  up = rgb.repeat(tubelet_size, axis=-4).repeat(patch_size, axis=-3).repeat(patch_size, axis=-2)
  return np.clip(np.rint(up * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Clips of the run's videos, for its frozen target encoder (read through jepa_jax.load_encoder).
# --------------------------------------------------------------------------------------------------------------

def read_clips(path: str, config, max_clips: int) -> np.ndarray:
  """uint8 [K, T, S, S, 3]: up to max_clips consecutive clips from the start of the video, with the config's
  frame step, short side resized to the crop size and centre-cropped (a short video repeats its last frame)."""
  from input_pipeline import transforms
  from input_pipeline import video
  num_frames, fps = video.video_info(path)
  sampling = video.ClipSampling.from_config(config.data)
  step = video.effective_frame_step(sampling, fps)
  t, size = config.model.num_frames, config.model.crop_size
  clip_len = t * step
  count = max(1, min(max_clips, num_frames // clip_len))
  indices = np.minimum(np.arange(count * t) * step, num_frames - 1)
  frames = video.decode_frames(path, indices)
  h, w = frames.shape[1:3]
  scale = size / min(h, w)
  rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
  frames = transforms.to_uint8(transforms.resize_bilinear(frames, rh, rw))
  top, left = (rh - size) // 2, (rw - size) // 2
  return frames[:, top:top + size, left:left + size].reshape(count, t, size, size, 3)


def is_file_list(path: str) -> bool:
  """An official list ('path label' per line: .csv or .txt) rather than a video."""
  return path.endswith((".csv", ".txt"))


def first_readable_clips(path: str, config, max_clips: int) -> tuple[str, np.ndarray, dict[str, str]]:
  """(video, its clips, {skipped video: why}): `path` itself, or the first readable video of the list `path`.

  Unreadable or too-short videos of a list are skipped as training skips them (a warning naming each file and
  why, a stop past config.data.max_failure_fraction); a single video that cannot be read is a clear error.
  """
  from input_pipeline import pipeline
  from input_pipeline import sources
  from input_pipeline import video
  if not is_file_list(path):
    try:
      return path, read_clips(path, config, max_clips), {}
    except video.VideoDecodeError as e:
      raise ValueError(f"{e.path} cannot be read ({e.reason}); pass another video, or a list to take the first "
                       "readable one of") from None
  failures = pipeline.DecodeFailures(float(config.data.get("max_failure_fraction", 0.5)), where=path)
  for candidate in sources.read_file_list(path)[0]:
    try:
      clips = read_clips(candidate, config, max_clips)
    except video.VideoDecodeError as e:
      failures.failed(e.path, e.reason)
      continue
    return candidate, clips, failures.skipped
  failures.check(final=True)
  raise ValueError(f"{path} lists no videos")


def feature_maps(workdir: str, video_path: str, *, max_clips: int = 1, step: int | None = None):
  """(clips uint8 [K, T, S, S, 3], pca frames uint8 [K, T, S, S, 3], explained [3], encoder, video, skipped).

  video_path: a video, or a list whose first readable video is drawn (`skipped`: the videos passed over, and why).
  """
  from jepa_jax.loading import load_encoder
  encoder = load_encoder(workdir, which="target", step=step)  # only the target encoder is read
  config = encoder.config
  if "data" not in config:  # a checkpoint file states only its model: the default sampling (frame step 4)
    from jepa_jax import config_files
    config.data = config_files.load("default").data
  video_path, clips, skipped = first_readable_clips(video_path, config, max_clips)
  m = config.model
  grid = (m.num_frames // m.tubelet_size, m.crop_size // m.patch_size, m.crop_size // m.patch_size)
  features = encoder.encode(clips)  # [K, N, D], tokens in (t, h, w) order
  rgb, explained = pca_rgb(features.reshape(clips.shape[0], *grid, -1))
  maps = token_map_to_frames(rgb, patch_size=m.patch_size, tubelet_size=m.tubelet_size)
  return clips, maps, explained, encoder, video_path, skipped


def draw_features(workdir: str, video_path: str, out: str, *, max_clips: int = 4, step: int | None = None,
                  fps: int = 8) -> str:
  """Writes the PCA feature maps of `video_path` (a video, or a list: its first readable video) to `out`: .png
  (first clip, one column per tubelet), .gif or .mp4 (every frame of up to max_clips clips, input beside
  features)."""
  ext = os.path.splitext(out)[1].lower()
  if ext not in (".png", ".gif", ".mp4"):
    raise ValueError(f"--out={out}: use .png, .gif or .mp4")
  clips, maps, explained, encoder, video_path, skipped = feature_maps(
      workdir, video_path, max_clips=1 if ext == ".png" else max_clips, step=step)
  config, step = encoder.config, encoder.step
  ratios = ", ".join(f"{100 * e:.0f}%" for e in explained)
  passed_over = f"; {len(skipped)} unreadable videos skipped before it" if skipped else ""
  if skipped:
    logging.warning("Feature maps: %d unreadable videos skipped before %s.", len(skipped), video_path)
  if ext == ".png":
    tub = config.model.tubelet_size
    fig = render.strip_grid(
        [clips[0, ::tub], maps[0, ::tub]], ["input frames", "target encoder\nPCA -> RGB"],
        col_labels=[f"frame {i}" for i in range(0, clips.shape[1], tub)],
        title=f"Target encoder features at step {step}: {os.path.basename(video_path)}{passed_over}\n"
              f"first 3 principal components as RGB (explained variance {ratios})")
    return render.save(fig, out)
  frames = np.concatenate([clips, maps], axis=3).reshape(-1, *clips.shape[2:3], 2 * clips.shape[3], 3)
  zoom = max(1, 256 // frames.shape[1])
  frames = frames.repeat(zoom, axis=1).repeat(zoom, axis=2)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if ext == ".gif":
    from PIL import Image
    images = [Image.fromarray(f) for f in frames]
    images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
  elif ext == ".mp4":
    from input_pipeline import synthetic
    synthetic.write_mp4(out, frames[:, :frames.shape[1] // 2 * 2, :frames.shape[2] // 2 * 2], fps=fps)
  logging.info("Feature maps of %d frames (explained variance %s) written to %s", len(frames), ratios, out)
  return out
