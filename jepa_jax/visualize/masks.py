"""Mask pictures: what the context encoder sees and what the predictor must fill in, on real clips.

The clips and masks come from the pretraining pipeline itself (make_pretrain_dataset with the configured mask
generators and seed), so the picture shows the first batch the run trains on. Each token of the (T', H', W') grid is
one of three kinds for each generator: context (drawn untouched), target (tinted with the generator's colour), or
neither (dimmed): the tokens the fixed-count truncation drops (masks.py, the one deliberate deviation).
"""
from __future__ import annotations

import math
import tempfile

import numpy as np
from absl import logging

from jepa_jax.visualize import render

CONTEXT, TARGET, DROPPED = 0, 1, 2
# One tint per mask generator (RGB, 0..255); context is never tinted. Colour-blind-safe Okabe-Ito hues.
GENERATOR_COLOURS = ((230, 159, 0), (0, 114, 178), (0, 158, 115), (204, 121, 167), (213, 94, 0), (86, 180, 233))
TINT_ALPHA = 0.6
DROPPED_BRIGHTNESS = 0.25


def token_labels(context: np.ndarray, target: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
  """int8 [T', H', W']: CONTEXT / TARGET / DROPPED per token, from one sample's flat (t, h, w) indices."""
  labels = np.full(math.prod(grid), DROPPED, np.int8)
  labels[np.asarray(context)] = CONTEXT
  labels[np.asarray(target)] = TARGET
  return labels.reshape(grid)


def overlay(frames: np.ndarray, labels: np.ndarray, colour) -> np.ndarray:
  """uint8 [T', H, W, 3]: one frame per tubelet step with its tokens tinted by kind (before any plotting).

  frames: uint8 [T', H, W, 3]; labels: [T', H', W'] from token_labels. Target pixels are blended with `colour`,
  dropped pixels dimmed, context pixels unchanged: the tinted pixel count is num_target x patch area.
  """
  t, h, w, _ = frames.shape
  patch = h // labels.shape[1]
  if labels.shape[0] != t or labels.shape[1] * patch != h or labels.shape[2] * patch != w:
    raise ValueError(f"labels {labels.shape} do not tile frames {frames.shape}")
  per_pixel = labels.repeat(patch, axis=1).repeat(patch, axis=2)
  out = frames.astype(np.float32)
  tint = np.asarray(colour, np.float32)
  target = per_pixel == TARGET
  out[target] = (1 - TINT_ALPHA) * out[target] + TINT_ALPHA * tint
  dropped = per_pixel == DROPPED
  out[dropped] *= DROPPED_BRIGHTNESS
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def first_batch(config, *, workdir=None, num_clips: int = 3, num_devices: int | None = None):
  """(clips uint8 [n, T, H, W, 3], masks dict, specs) of the first training batch of this config.

  Synthetic-data configs write (or reuse) their videos in WORKDIR/data; without a workdir, in a temporary folder.
  The mask counts are derived for the per-device batch of `num_devices` (default: this host's devices), as the
  training run on them would.
  """
  import jax
  from input_pipeline import masks as masks_lib
  from input_pipeline import pipeline
  from jepa_jax import config_validation
  from jepa_jax import synthetic_data

  config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
  if config.data.synthetic_videos > 0:
    if workdir is None:
      workdir = tempfile.mkdtemp(prefix="jepa_masks_")
      logging.info("No --workdir for the synthetic videos; writing them to %s", workdir)
    config.data.datasets = tuple(synthetic_data.ensure_synthetic_videos(config, workdir, is_primary=True))
  per_device_batch = config_validation.validate_batch(config, num_devices or jax.device_count())
  specs = masks_lib.mask_specs_from_config(config, per_device_batch)
  m = config.model
  generator = masks_lib.MultiBlockMaskGenerator(specs, crop_size=m.crop_size, num_frames=m.num_frames,
                                                patch_size=m.patch_size, tubelet_size=m.tubelet_size)
  dataset = pipeline.make_pretrain_dataset(config, mask_fn=generator, global_batch_size=config.data.batch_size,
                                           num_workers=0)
  batch = next(iter(dataset))
  n = min(num_clips, batch["clips"].shape[0])
  masks = {k: tuple(np.asarray(x[:n]) for x in batch[k]) for k in ("context_masks", "target_masks")}
  return np.asarray(batch["clips"][:n]), masks, specs


def mask_rows(clips, masks, *, patch_size: int, tubelet_size: int):
  """[(clip index, generator index, overlay uint8 [T', H, W, 3], counts dict)], one per (clip, generator)."""
  _, t, h, w, _ = clips.shape
  grid = (t // tubelet_size, h // patch_size, w // patch_size)
  rows = []
  for c in range(clips.shape[0]):
    frames = clips[c, ::tubelet_size]  # the first frame of each tubelet
    for g, (context, target) in enumerate(zip(masks["context_masks"], masks["target_masks"])):
      labels = token_labels(context[c], target[c], grid)
      counts = {"context": int((labels == CONTEXT).sum()), "target": int((labels == TARGET).sum()),
                "dropped": int((labels == DROPPED).sum())}
      rows.append((c, g, overlay(frames, labels, GENERATOR_COLOURS[g % len(GENERATOR_COLOURS)]), counts))
  return rows


def draw_masks(config, out: str, *, workdir=None, num_clips: int = 3, title: str = "") -> str:
  """Writes the mask grid of the first training batch to `out` (PNG); returns the path."""
  clips, masks, specs = first_batch(config, workdir=workdir, num_clips=num_clips)
  m = config.model
  rows = mask_rows(clips, masks, patch_size=m.patch_size, tubelet_size=m.tubelet_size)
  grid = (m.num_frames // m.tubelet_size, m.crop_size // m.patch_size, m.crop_size // m.patch_size)
  labels = [f"clip {c}, generator {g}\n{n['context']} context\n{n['target']} target"
            + (f"\n{n['dropped']} dropped" if n["dropped"] else "") for c, g, _, n in rows]
  head = "\n".join(
      f"generator {i} ({s.num_blocks} blocks of {s.spatial_scale[1]:.0%} area): {s.num_context} context, "
      f"{s.num_target} target tokens" for i, s in enumerate(specs))
  legend = [(GENERATOR_COLOURS[i % len(GENERATOR_COLOURS)], f"generator {i} targets") for i in range(len(specs))]
  legend.append((tuple(int(DROPPED_BRIGHTNESS * 255) for _ in range(3)), "dropped by the fixed counts"))
  title = (title or "Masks of the first training batch") + (
      f" ({math.prod(grid)} tokens, grid {grid[0]}x{grid[1]}x{grid[2]}, one column per tubelet)\n{head}")
  fig = render.strip_grid([r[2] for r in rows], labels, grid_cells=grid[1:], title=title, legend=legend)
  return render.save(fig, out)
