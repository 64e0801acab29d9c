"""Feature maps: PCA of the frozen target encoder's patch features, three components shown as RGB per token.

The first three principal components of all tokens of all clips (one basis, so colours stay put over time) are
scaled to [0, 1] between their 1st and 99th percentiles; each (t, h, w) token then colours its tubelet_size frames
x patch_size x patch_size pixels. Structure the encoder has learned (objects against background, parts that move
together) shows as regions of one colour; an untrained encoder gives mostly position-coloured noise.
"""
from __future__ import annotations

import json
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
# The run's frozen target encoder.
# --------------------------------------------------------------------------------------------------------------

def load_run_config(workdir: str):
  """The config of the run in workdir: WORKDIR/config.json (written by the loop), else the checkpoint's copy."""
  import ml_collections
  from jepa_jax import checkpointing
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  ckpt = checkpointing.Checkpointer(workdir, async_save=False, read_only=True)
  return ml_collections.ConfigDict(ckpt.restore_config())


def load_target_encoder(workdir: str, config, step: int | None = None):
  """(encode fn: uint8 clips [B, T, H, W, 3] -> float32 [B, N, D], restored step), on the host's first device.

  Only the target encoder is read from the checkpoint (no context encoder, predictor or optimizer moments).
  """
  import jax
  from flax import nnx
  from jepa_jax import checkpointing
  from jepa_jax import train_state
  from jepa_jax import train_step

  ckpt = checkpointing.Checkpointer(workdir, async_save=False, read_only=True)
  step = ckpt.latest_step() if step is None else step
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first, or pass the run's workdir")
  defs = train_state.model_defs(config)
  shapes = train_state.abstract_param_shapes(defs)["encoder"]
  params = checkpointing.restore_params_only(workdir, {"target_encoder": shapes}, step=step)["target_encoder"]
  dtype = jax.numpy.dtype(config.model.dtype)

  @jax.jit
  def encode(params, clips):
    return nnx.merge(defs.encoder_def, params)(train_step.normalize_clips(clips, dtype)).astype(jax.numpy.float32)

  return (lambda clips: np.asarray(encode(params, clips))), step


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


def feature_maps(workdir: str, video_path: str, *, max_clips: int = 1, step: int | None = None):
  """(clips uint8 [K, T, S, S, 3], pca frames uint8 [K, T, S, S, 3], explained [3], config, step)."""
  config = load_run_config(workdir)
  encode, step = load_target_encoder(workdir, config, step)
  clips = read_clips(video_path, config, max_clips)
  m = config.model
  grid = (m.num_frames // m.tubelet_size, m.crop_size // m.patch_size, m.crop_size // m.patch_size)
  features = encode(clips)  # [K, N, D], tokens in (t, h, w) order
  rgb, explained = pca_rgb(features.reshape(clips.shape[0], *grid, -1))
  return clips, token_map_to_frames(rgb, patch_size=m.patch_size, tubelet_size=m.tubelet_size), explained, config, step


def draw_features(workdir: str, video_path: str, out: str, *, max_clips: int = 4, step: int | None = None,
                  fps: int = 8) -> str:
  """Writes the PCA feature maps of `video_path` to `out`: .png (first clip, one column per tubelet), .gif or
  .mp4 (every frame of up to max_clips clips, input beside features)."""
  ext = os.path.splitext(out)[1].lower()
  clips, maps, explained, config, step = feature_maps(workdir, video_path, max_clips=1 if ext == ".png" else max_clips,
                                                      step=step)
  ratios = ", ".join(f"{100 * e:.0f}%" for e in explained)
  if ext == ".png":
    tub = config.model.tubelet_size
    fig = render.strip_grid(
        [clips[0, ::tub], maps[0, ::tub]], ["input frames", "target encoder\nPCA -> RGB"],
        col_labels=[f"frame {i}" for i in range(0, clips.shape[1], tub)],
        title=f"Target encoder features at step {step}: {os.path.basename(video_path)}\n"
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
  else:
    raise ValueError(f"--out={out}: use .png, .gif or .mp4")
  logging.info("Feature maps of %d frames (explained variance %s) written to %s", len(frames), ratios, out)
  return out
