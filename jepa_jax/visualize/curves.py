"""Training curves from the run's CSV (WORKDIR/<write_tag>_r0.csv, metrics.py columns) against the optimizer step.

The CSV holds the official (epoch, itr) columns; the step is (epoch - 1) * ipe + itr + 1 (metrics.MetricsWriter).
A resumed run appends rows and may log a step twice (it restarts from its last checkpoint): the last row wins.
"""
from __future__ import annotations

import csv
import json
import os

import numpy as np

from jepa_jax.visualize import render

# (panel title, CSV columns); columns absent or empty in the CSV are skipped.
PANELS = (
    ("loss", ("loss", "loss-jepa", "reg-loss", "target-std")),
    ("learning rate", ("lr",)),
    ("weight decay", ("wd",)),
    ("EMA momentum", ("ema-momentum",)),
    ("gradient norm", ("enc-grad-norm", "pred-grad-norm")),
    ("throughput (clips/s)", ("clips/s",)),
)


def _run_settings(workdir: str) -> tuple[int | None, str]:
  """(ipe, write_tag) from WORKDIR/config.json when present."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None, "jepa"
  with open(path) as f:
    config = json.load(f)
  return config.get("optim", {}).get("ipe"), config.get("write_tag", "jepa")


def read_log(csv_path: str, ipe: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{column: (steps int [n], values float [n])} sorted by step, empty cells and 'n/a' left out.

  Without ipe (no config.json), it is taken as the largest itr + 1, exact once an epoch has been logged to its end.
  """
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  rows = [r for r in rows if r.get("epoch") and r.get("itr")]
  if not rows:
    return {}
  if not ipe:
    ipe = max(int(r["itr"]) for r in rows) + 1
  by_step = {(int(r["epoch"]) - 1) * ipe + int(r["itr"]) + 1: r for r in rows}  # last row of a step wins
  steps = sorted(by_step)
  out = {}
  for column in rows[0]:
    if column in ("epoch", "itr"):
      continue
    pairs = [(s, float(by_step[s][column])) for s in steps if _is_number(by_step[s].get(column))]
    if pairs:
      s, v = zip(*pairs)
      out[column] = (np.asarray(s, np.int64), np.asarray(v, np.float64))
  return out


def _is_number(text) -> bool:
  try:
    return text not in (None, "") and np.isfinite(float(text))
  except ValueError:
    return False


def draw_curves(log: dict, out: str, *, title: str = "") -> str:
  """Writes a 2 x 3 grid of the PANELS (1200 x 700 px PNG)."""
  fig = render.figure(1200, 700)
  axes = fig.subplots(2, 3)
  for ax, (name, columns) in zip(axes.flat, PANELS):
    drawn = False
    for column in columns:
      if column in log:
        steps, values = log[column]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=column, linewidth=1.2)
        drawn = True
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if drawn and "grad-norm" in columns[0] and all((log[c][1] > 0).all() for c in columns if c in log):
      ax.set_yscale("log")  # the encoder's and the predictor's norms differ by orders of magnitude
    if len(columns) > 1 and drawn:
      ax.legend(fontsize=8)
    if not drawn:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
  fig.suptitle(title or "Training curves", fontsize=11)
  fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.25, hspace=0.4)
  return render.save(fig, out)


def write_curves(workdir, out: str | None = None) -> str | None:
  """Draws WORKDIR/curves.png (or `out`) from the run's CSV; None, writing nothing, while the CSV has no rows."""
  workdir = os.fspath(workdir)
  ipe, tag = _run_settings(workdir)
  path = os.path.join(workdir, f"{tag}_r0.csv")
  log = read_log(path, ipe) if os.path.exists(path) else {}
  if not log:
    return None
  last = max(int(s[-1]) for s, _ in log.values())
  return draw_curves(log, out or os.path.join(workdir, "curves.png"),
                     title=f"Training curves: {os.path.basename(os.path.normpath(workdir))}, step {last}")
