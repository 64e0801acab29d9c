"""Pictures of a run: masks of the first batch, PCA maps of the target encoder's features, training curves.

Commands (python -m jepa_jax.visualize, see __main__.py):
  masks     --config=configs/X.py [--workdir=DIR] --out=masks.png
  features  --workdir=DIR --video=FILE|LIST --out=features.png|.gif|.mp4
  curves    --workdir=DIR --out=curves.png
The training loop calls write_curves(workdir) at each checkpoint and write_run_pictures(workdir, config) at the end
of a run with config.visualize_at_end.
"""
from __future__ import annotations

import os

from absl import logging

from jepa_jax.visualize.curves import draw_curves, read_log, write_curves
from jepa_jax.visualize.features import draw_features, pca_rgb, token_map_to_frames
from jepa_jax.visualize.masks import draw_masks, mask_rows, overlay, token_labels

__all__ = ["draw_curves", "draw_features", "draw_masks", "mask_rows", "overlay", "pca_rgb", "read_log",
           "token_labels", "token_map_to_frames", "write_curves", "write_run_pictures"]


def first_list(config) -> str:
  """The first pretraining list (config.data.datasets, official 'path label' lists): its first readable video is
  the one drawn."""
  lists = [p for p in config.data.datasets if p]
  if not lists:
    raise ValueError("config.data.datasets is empty: no video to draw features of")
  return lists[0]


def write_run_pictures(workdir, config) -> dict[str, str]:
  """Writes masks.png, features.png and curves.png into workdir; returns {name: path} of those written.

  Call after the last checkpoint is saved, with the run's config (config.data.datasets pointing at real lists, as
  the loop sets them for synthetic data). Process 0 only.
  """
  workdir = os.fspath(workdir)
  pictures = {
      "masks": draw_masks(config, os.path.join(workdir, "masks.png"), workdir=workdir),
      "features": draw_features(workdir, first_list(config), os.path.join(workdir, "features.png")),
  }
  curves = write_curves(workdir)
  if curves:
    pictures["curves"] = curves
  for name, path in pictures.items():
    logging.info("Wrote the %s picture: %s", name, path)
  return pictures
