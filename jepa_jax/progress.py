"""The console progress bar: step, loss, lr and clips/s, updated at log steps only (no per-step host sync)."""
from __future__ import annotations

import sys

import tqdm


class ProgressBar:
  """A tqdm bar on process 0; a no-op elsewhere."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "pretrain"):
    self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                          file=sys.stderr, disable=not enabled, mininterval=1.0)
    self._position = initial

  def update(self, step: int, metrics: dict) -> None:
    self._bar.update(step - self._position)
    self._position = step
    self._bar.set_postfix(
        loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", clips_s=f"{metrics['clips_per_s']:.1f}",
        refresh=False)

  def write(self, message: str) -> None:
    self._bar.write(message)

  def close(self) -> None:
    self._bar.close()
