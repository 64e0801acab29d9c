"""Unusable videos written on purpose, for the tests of every reader's skip policy (issue 14, "bad videos")."""
import os

import numpy as np

from input_pipeline import sources
from input_pipeline import synthetic


def write_bad_videos(directory, *, size: int = 64, seed: int = 0) -> dict[str, str]:
  """{'truncated': the first half of a real mp4, 'empty': a 0-byte .mp4, 'too_short': a real one-frame mp4}."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  full = os.path.join(directory, "full.mp4")
  synthetic.write_mp4(full, synthetic.render_video(rng, 0, 0, size=size, num_frames=24))
  with open(full, "rb") as f:
    data = f.read()
  paths = {name: os.path.join(directory, f"{name}.mp4") for name in ("truncated", "empty", "too_short")}
  with open(paths["truncated"], "wb") as f:
    f.write(data[:len(data) // 2])
  open(paths["empty"], "wb").close()
  # One frame of noise: a valid video, large enough for the 1 KiB minimum, too short for any clip of the evals.
  synthetic.write_mp4(paths["too_short"], rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))
  return {name: os.path.abspath(p) for name, p in paths.items()}


def list_with(path: str, good_list: str, bad: list[str], label: int = 0, first: bool = False) -> str:
  """Writes `path`: the videos of good_list and the bad ones (label `label`), the bad first or last."""
  paths, labels = sources.read_file_list(good_list)
  bad_rows = (list(bad), [label] * len(bad))
  if first:
    paths, labels = bad_rows[0] + paths, bad_rows[1] + labels
  else:
    paths, labels = paths + bad_rows[0], labels + bad_rows[1]
  sources.write_file_list(path, paths, labels)
  return path
