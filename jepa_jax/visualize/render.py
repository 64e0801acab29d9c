"""Figure helpers shared by the pictures: rows of frames at a fixed pixel layout, saved with matplotlib's Agg.

Figures are matplotlib.figure.Figure objects on an Agg canvas, never pyplot: no global state, no GUI backend, safe
to call from the training loop. Sizes are in pixels so a picture's size follows from its content.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

DPI = 100


def figure(width_px: int, height_px: int) -> Figure:
  fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def size_px(fig: Figure) -> tuple[int, int]:
  """(width, height) of the PNG that save() writes for this figure."""
  w, h = fig.get_size_inches() * fig.dpi
  return int(round(w)), int(round(h))


def save(fig: Figure, out: str) -> str:
  """Writes the figure (PNG, or anything matplotlib infers from the suffix) at exactly size_px(fig)."""
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  fig.savefig(out, dpi=fig.dpi)
  return out


def strip_grid(strips, row_labels, *, title: str, grid_cells=None, legend=(), col_labels=None,
               cell_px: int = 112) -> Figure:
  """One row per strip (uint8 [cols, H, W, 3]), a label left of each row, optional token grid lines.

  grid_cells: (H', W') draws faint lines at the patch borders. legend: [(rgb 0..255, text)] under the rows.
  """
  rows, cols = len(strips), max(s.shape[0] for s in strips)
  # Text widths estimated at ~6.5 px per character of 9-10 pt DejaVu Sans, so labels and titles are never cut.
  label_w = 16 + int(6.5 * max(len(line) for label in row_labels for line in label.split("\n")))
  gap, row_gap, right = 4, 10, 10
  title_h = 28 + 16 * title.count("\n") + (16 if col_labels else 0)
  legend_h = 34 if legend else 8
  content_w = label_w + cols * cell_px + (cols - 1) * gap + right
  width = max(content_w, 24 + int(8.5 * max(len(line) for line in title.split("\n"))),
              40 + sum(40 + int(6.5 * len(text)) for _, text in legend))
  height = title_h + rows * cell_px + (rows - 1) * row_gap + legend_h
  x0 = (width - content_w) // 2  # a long title widens the figure: centre the rows under it
  fig = figure(width, height)
  fig.text(0.5, 1 - 6 / height, title, ha="center", va="top", fontsize=10)
  for r, (strip, label) in enumerate(zip(strips, row_labels)):
    top = title_h + r * (cell_px + row_gap)
    fig.text((x0 + label_w - 8) / width, 1 - (top + cell_px / 2) / height, label, ha="right", va="center", fontsize=9)
    for c in range(strip.shape[0]):
      left = x0 + label_w + c * (cell_px + gap)
      ax = fig.add_axes((left / width, 1 - (top + cell_px) / height, cell_px / width, cell_px / height))
      ax.imshow(strip[c], interpolation="nearest")
      if grid_cells is not None:
        h, w = strip.shape[1:3]
        ax.vlines(np.arange(1, grid_cells[1]) * w / grid_cells[1] - 0.5, -0.5, h - 0.5, colors="white",
                  linewidths=0.5, alpha=0.4)
        ax.hlines(np.arange(1, grid_cells[0]) * h / grid_cells[0] - 0.5, -0.5, w - 0.5, colors="white",
                  linewidths=0.5, alpha=0.4)
      ax.set_axis_off()
      if r == 0 and col_labels:
        ax.set_title(col_labels[c], fontsize=8, pad=2)
  if legend:
    fig.legend(handles=[Patch(facecolor=np.asarray(rgb) / 255, edgecolor="black", label=text) for rgb, text in legend],
               loc="lower center", ncol=len(legend), fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
  return fig
