"""The probe's data: video and image splits, and the fixed-size padded batches the probe steps take.

Videos (docs/reference.md §6.2): every example gives num_segments clips x num_views views (one view in training),
decoded by input_pipeline/pipeline.py's eval stream. An unreadable or too-short video is not replaced by another one
(that would count a video twice) but dropped: a warning naming the file and why, counted per split, a stop
(DataPipelineError) past config.eval.max_failure_fraction. Accuracies are then over the videos that could be read,
and the loops report how many could not.

Batches are padded to a fixed size with zero-weight rows, so one compile serves uneven last batches, dropped
videos and hosts with fewer examples.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import grain
import jax
import ml_collections
import numpy as np

from input_pipeline import eval_transforms
from input_pipeline import pipeline
from jepa_jax import sharding
from jepa_jax.evaluation.eval_config import list_labels


def _data_shim(config) -> ml_collections.ConfigDict:
  """The config.data fields pipeline.make_eval_dataset reads, from config.eval (docs/reference.md §6.2)."""
  e = config.eval
  return ml_collections.ConfigDict({"seed": int(config.seed), "data": {
      "datasets": ("",), "frames_per_clip": int(e.frames), "frame_step": int(e.frame_step), "num_clips": 1,
      "filter_short_videos": False, "clip_duration": 0.0, "fps": 0.0, "num_workers": int(e.num_workers),
      "prefetch_buffer": 2, "max_failure_fraction": float(e.get("max_failure_fraction", 0.5))}})


class _ImageTransform(grain.transforms.RandomMap):
  """{'image', 'label'} -> {'clips': uint8 [crop, crop, 3], 'labels'}: timm train or torchvision val transform."""

  def __init__(self, crop_size: int, training: bool, reprob: float, auto_augment: bool):
    self.crop_size, self.training, self.reprob = int(crop_size), bool(training), float(reprob)
    self.auto_augment = eval_transforms.AutoAugment() if auto_augment else None

  def random_map(self, element, rng):
    if self.training:
      image = eval_transforms.image_train_transform(element["image"], rng, crop_size=self.crop_size,
                                                    reprob=self.reprob, auto_augment=self.auto_augment)
    else:
      image = eval_transforms.image_eval_transform(element["image"], crop_size=self.crop_size)
    return {"clips": image, "labels": np.int32(element["label"])}


def _image_dataset(source, config, *, local_batch, training, seed):
  e = config.eval
  ds = grain.MapDataset.source(source)
  if training:
    ds = ds.shuffle(seed=seed)
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.random_map(_ImageTransform(e.resolution, training, e.reprob, e.auto_augment), seed=seed + 1)
  ds = ds.batch(local_batch, drop_remainder=False)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  if int(e.num_workers) > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(e.num_workers)))
  return ds


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's data: an iterator factory per epoch, its size (examples listed), the static per-example clip
  shape, and (videos) the tally of the videos that could not be read in this process."""
  num_examples: int
  make_iter: Callable[[int], Any]
  example_shape: tuple
  failures: pipeline.DecodeFailures | None = None


def make_split(config, inputs: dict, split: str, *, local_batch: int) -> Split:
  e = config.eval
  training = split == "train"
  res = int(e.resolution)
  if e.task == "image":
    source = inputs[split]
    make_iter = lambda epoch: iter(_image_dataset(source, config, local_batch=local_batch, training=training,
                                                  seed=int(config.seed) * 1000 + epoch))
    return Split(len(source), make_iter, (res, res, 3))
  path = inputs[split]
  views = 1 if training else int(e.num_views)
  transform = eval_transforms.VideoEvalTransform(
      crop_size=res, training=training, num_views=views, reprob=float(e.reprob),
      auto_augment=bool(e.auto_augment), scale=tuple(e.random_resize_scale))
  shim = _data_shim(config)
  failures = pipeline.DecodeFailures(shim.data.max_failure_fraction, where=f"the {split} list {path}")

  def make_iter(epoch):
    return iter(pipeline.make_eval_dataset(
        shim, batch_size=local_batch, num_segments=int(e.num_segments), training=training,
        process_index=jax.process_index(), process_count=jax.process_count(),
        seed=int(config.seed) + (epoch if training else 0), shuffle=training, repeat=False, transform=transform,
        drop_remainder=False, datasets=(path,), failures=failures))

  return Split(len(list_labels(path)), make_iter, (int(e.num_segments), views, int(e.frames), res, res, 3),
               failures)


def padded_batches(split: Split, epoch: int, *, local_batch: int, padded_local: int, steps: int):
  """`steps` host batches {'clips', 'labels', 'weights'} of exactly padded_local rows; rows past the data weigh 0.

  Every process runs the same number of steps (a process with fewer examples, or whose videos could not all be
  read, feeds padding), so the global arrays and the jitted steps line up across hosts. At the end of the pass the
  split's failure fraction is checked once more over everything read so far.
  """
  it = split.make_iter(epoch)
  for _ in range(steps):
    batch = next(it, None) if it is not None else None
    clips = np.zeros((padded_local,) + split.example_shape, np.uint8)
    labels = np.zeros((padded_local,), np.int32)
    if batch is None:
      it = None
      n = 0
    else:
      n = len(batch["labels"])
      clips[:n] = batch["clips"]
      labels[:n] = batch["labels"]
    weights = (np.arange(padded_local) < n).astype(np.float32)
    yield {"clips": clips, "labels": labels, "weights": weights}
  if it is not None:  # run the stream to its end, so every video of the pass is tallied before the check
    for _ in it:
      pass
  if split.failures is not None:
    split.failures.check(final=True)


def batch_geometry(global_batch: int, num_examples: int, mesh) -> tuple[int, int, int]:
  """(local batch, padded local batch, steps per epoch) for a split of num_examples (official drop_last=False)."""
  processes = jax.process_count()
  local = global_batch // processes
  unit = math.lcm(sharding.data_parallel_size(mesh), processes)
  padded_local = math.ceil(global_batch / unit) * unit // processes
  steps = math.ceil(math.ceil(num_examples / processes) / local)
  return local, padded_local, steps
