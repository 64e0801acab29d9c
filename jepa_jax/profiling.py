"""An optional profiler trace of a few steps (config.profile_steps = (start, stop)), for TensorBoard's profile tab."""
from __future__ import annotations

import jax
from absl import logging


class ProfilerWindow:
  """Starts jax.profiler before step `start` and stops it after step `stop`; a no-op when start >= stop."""

  def __init__(self, workdir, steps, enabled: bool = True):
    self._start, self._stop = (int(s) for s in steps)
    self._dir = str(workdir / "profile")
    self._enabled = enabled and 0 <= self._start < self._stop
    self._active = False

  def maybe_start(self, step: int) -> None:
    if self._enabled and not self._active and step == self._start:
      jax.profiler.start_trace(self._dir)
      self._active = True

  def maybe_stop(self, step: int, sync) -> None:
    """Stops after `stop`; `sync` is a device value to wait on so the trace holds the whole step."""
    if self._active and step >= self._stop:
      jax.block_until_ready(sync)
      jax.profiler.stop_trace()
      self._active = False
      logging.info("Profiler trace of steps %d-%d written to %s.", self._start, self._stop, self._dir)
