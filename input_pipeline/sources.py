"""Which videos exist and how often each is drawn: the official file lists and mixture weights (docs/reference.md
§5.1-5.2).

`ClipIndex` is a grain random-access source of `{'path', 'label'}` records over one or more file lists in the
official format (space-separated `path label`, no header) or plain directories of videos (label 0). The labels are
kept: pretraining ignores them, the evaluations need them.

With mixture weights, `WeightedOrder` draws each epoch's sequence of records with p = w_d / n_d per sample and
replacement, seeded by (seed, epoch), which is V-JEPA 2's `DistributedWeightedSampler`. [quirk] The V-JEPA 1
sampler draws *without* replacement and then shuffles again in `DistributedSamplerWrapper`, which makes every epoch
a uniform permutation, so its weights change nothing (docs/reference.md §5.2); V-JEPA 1 configs have no weights anyway.
"""
import os
import sys
from typing import Sequence

from etils import epath
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


def read_file_list(path: str) -> tuple[list[str], list[int]]:
  """An official list: `path label` per line, space separated, no header (pandas read_csv(header=None, ' ')).

  A path may itself contain spaces: the label is the last field. Lines without a label get 0.
  The list and the paths in it may be on an object store (gs://...).
  """
  paths, labels = [], []
  try:
    with epath.Path(path).open() as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        head, _, tail = line.rpartition(" ")
        if head and _is_int(tail):
          paths.append(head)
          labels.append(int(tail))
        else:
          paths.append(line)
          labels.append(0)
  except UnicodeDecodeError as e:
    raise FileListError(f"{path} is not a text list of videos ('path label' per line): {e}") from None
  return paths, labels


class FileListError(ValueError):
  """A list file that cannot be read as an official list."""


def _is_int(s: str) -> bool:
  try:
    int(s)
  except ValueError:
    return False
  return True


def write_file_list(path: str, paths: Sequence[str], labels: Sequence[int]) -> None:
  with epath.Path(path).open("w") as f:
    for p, label in zip(paths, labels):
      f.write(f"{p} {int(label)}\n")


def list_directory(directory: str) -> list[str]:
  """Video files directly under `directory`, sorted so every process sees the same order."""
  names = sorted(p.name for p in epath.Path(directory).iterdir() if p.name.lower().endswith(VIDEO_EXTENSIONS))
  return [os.path.join(directory, n) for n in names]


class ClipIndex:
  """Random-access source of `{'path': str, 'label': int}` over file lists and directories, concatenated.

  `dataset_sizes` and `sample_weights` (w_d / n_d per sample, official §5.2) describe the mixture.
  """

  def __init__(self, datasets: Sequence[str], weights: Sequence[float] = ()):
    datasets = [d for d in datasets if d]
    if not datasets:
      raise ValueError("config.data.datasets is empty: give file lists ('path label' per line) or directories")
    if weights and len(weights) != len(datasets):
      raise ValueError(f"{len(weights)} datasets_weights for {len(datasets)} datasets")
    self.paths: list[str] = []
    self.labels: list[int] = []
    self.dataset_sizes: list[int] = []
    for d in datasets:
      if epath.Path(d).is_dir():
        paths = list_directory(d)
        labels = [0] * len(paths)
      elif epath.Path(d).is_file():
        paths, labels = read_file_list(d)
      else:
        raise FileNotFoundError(f"dataset {d!r} is neither a file list nor a directory")
      if not paths:
        raise ValueError(f"dataset {d!r} lists no videos")
      self.paths += paths
      self.labels += labels
      self.dataset_sizes.append(len(paths))
    self.weights = tuple(float(w) for w in weights)
    self.sample_weights = None
    if self.weights:
      self.sample_weights = np.concatenate(
          [np.full(n, w / n) for w, n in zip(self.weights, self.dataset_sizes)])

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    return {"path": self.paths[index], "label": self.labels[index]}

  def __repr__(self) -> str:
    return f"ClipIndex({len(self)} videos in {len(self.dataset_sizes)} datasets, weights={self.weights or None})"


class WeightedOrder:
  """An endless source: position i of epoch e is a draw with replacement, p ∝ sample_weights, from rng(seed, e).

  Grain slices it per process ([process_index::process_count]), so processes take disjoint positions of the same
  draw, as V-JEPA 2's sampler takes rank::world_size of one epoch's draw.
  """

  def __init__(self, index: ClipIndex, seed: int):
    if index.sample_weights is None:
      raise ValueError("WeightedOrder needs datasets_weights")
    self._index = index
    self._seed = int(seed)
    self._cdf = np.cumsum(index.sample_weights / index.sample_weights.sum())
    self._epoch = -1
    self._draws = None

  def __len__(self) -> int:
    return sys.maxsize

  def _epoch_draws(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      rng = np.random.default_rng([self._seed, epoch])
      u = rng.random(len(self._index))
      self._draws = np.minimum(np.searchsorted(self._cdf, u, side="right"), len(self._index) - 1)
      self._epoch = epoch
    return self._draws

  def __getitem__(self, position: int) -> dict:
    epoch, i = divmod(int(position), len(self._index))
    return self._index[int(self._epoch_draws(epoch)[i])]
