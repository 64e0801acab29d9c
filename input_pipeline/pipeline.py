"""grain assembly of the host input pipeline (docs/reference.md §5, §10).

  MapDataset.source(ClipIndex).shuffle(seed).repeat()      (or WeightedOrder with mixture weights)
    .random_map(DecodeClip)                                 PyAV, official frame indices; bad files replaced
    .random_map(Augment)                                    random resized crop + flip, uint8
    .batch(local_batch, drop_remainder=True)
    [process_index::process_count]                          this process's rows of each global batch
    .random_map(AddMasks(mask_fn))                          int32 token indices per mask generator
    .to_iter_dataset() .mp_prefetch(num_workers)            decoding and masks in worker processes
    .map(count_skips)                                       main process: skipped-file counter for the logs

Everything random uses grain's per-element generators, seeded from (seed, stage) and the element's position in
the global stream, so the stream is a function of (seed, position): a restored iterator state yields exactly the
same following batches, and the global batch is the same whatever the number of processes (global batch i is the
chunks i*P .. i*P+P-1 of local size; masks are drawn for the whole global batch and each process keeps its rows).

A batch is {'clips': uint8 [B, T, H, W, 3], 'labels': int32 [B]} plus what mask_fn returns (e.g. 'context_masks'
and 'target_masks', tuples of int32 [B, K]).
"""
import logging
from typing import Any, Callable

import grain
import numpy as np

from input_pipeline import sources
from input_pipeline import transforms
from input_pipeline import video

log = logging.getLogger(__name__)

MaskFn = Callable[[int, np.random.Generator], dict]

# Files skipped so far in this process's pipelines (counted in the main process, after the worker processes).
_SKIPPED = {"files": 0}


def skipped_files() -> int:
  """Number of unusable files skipped (and replaced) by the pipelines of this process so far, for the logs."""
  return _SKIPPED["files"]


class DataPipelineError(RuntimeError):
  """Too many files fail to decode: the data lists or the storage are broken, so retrying would loop."""


def _seed(seed: int, process_index: int, stage: int) -> int:
  """A 32-bit seed per (run seed, process, stage): processes must not repeat each other's random draws."""
  return int(np.random.SeedSequence([seed, process_index, stage]).generate_state(1)[0])


class DecodeFailures:
  """The skip policy of every video reader (training, the probe, extract, pictures): a warning naming each unusable
  file and why (once per file), a count, and a stop when too many fail.

  Past `max_failure_fraction` of the decodes (checked once `min_attempts` were made, or at the end of a pass with
  check(final=True)) or after `max_consecutive` failures in a row, failed() / check() raise DataPipelineError: a
  broken list or storage must stop the run, not loop over it.
  """

  def __init__(self, max_failure_fraction: float = 0.5, *, min_attempts: int = 16, max_consecutive: int = 64,
               where: str = "this worker"):
    self.max_failure_fraction = float(max_failure_fraction)
    self.min_attempts = int(min_attempts)
    self.max_consecutive = int(max_consecutive)
    self.where = where
    self.attempts = 0
    self.failures = 0
    self.consecutive = 0
    self.skipped: dict[str, str] = {}  # path -> reason, each unusable file once, in the order met
    self._last = ("", "")

  def succeeded(self) -> None:
    self.attempts += 1
    self.consecutive = 0

  def failed(self, path: str, reason: str) -> None:
    self.attempts += 1
    self.failures += 1
    self.consecutive += 1
    if path not in self.skipped:
      self.skipped[path] = reason
      log.warning("skipping video %s: %s (%d of %d decodes failed so far in %s)", path, reason, self.failures,
                  self.attempts, self.where)
    self._last = (path, reason)
    self.check()

  def check(self, final: bool = False) -> None:
    """Raises DataPipelineError past the limits; final=True applies the fraction whatever the number of attempts."""
    too_many = ((final or self.attempts >= self.min_attempts)
                and self.failures > self.max_failure_fraction * self.attempts)
    if too_many or self.consecutive >= self.max_consecutive:
      path, reason = self._last
      raise DataPipelineError(
          f"{self.failures} of {self.attempts} video decodes failed ({self.consecutive} in a row; limit "
          f"data.max_failure_fraction={self.max_failure_fraction}); last: {path}: {reason}. "
          "Check the file lists and the storage.")


class DecodeClip(grain.transforms.RandomMap):
  """Decodes a record's clips; an unusable file is skipped with a warning and replaced by a random other record.

  [official] The replacement is a uniformly random other index (docs/reference.md §5.3); ours comes from the element's
  generator, so it is reproducible. DecodeFailures (one per worker) warns, counts and stops past the limits.
  """

  def __init__(self, index: sources.ClipIndex, sampling: video.ClipSampling, *, max_failure_fraction: float = 0.5,
               min_attempts: int = 16, max_consecutive: int = 64, threads: int = 1):
    self.index = index
    self.sampling = sampling
    self.failures = DecodeFailures(max_failure_fraction, min_attempts=min_attempts, max_consecutive=max_consecutive)
    self.threads = threads

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    skipped = 0
    while True:
      try:
        clips, indices = video.load_clips(record["path"], self.sampling, rng, threads=self.threads)
      except video.VideoDecodeError as e:
        self.failures.failed(e.path, e.reason)
        skipped += 1
        record = self.index[int(rng.integers(len(self.index)))]
        continue
      self.failures.succeeded()
      return {"clips": clips, "labels": np.int32(record["label"]), "indices": indices, "skipped": np.int32(skipped)}


class DecodeOrMark(grain.transforms.RandomMap):
  """Evaluation decoding: an unusable file is not replaced (that would count another video twice) but marked
  {'unreadable': reason, 'path', 'labels'}; the main process tallies and drops it (make_eval_dataset)."""

  def __init__(self, sampling: video.ClipSampling, threads: int = 1):
    self.sampling = sampling
    self.threads = threads

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    try:
      clips, indices = video.load_clips(record["path"], self.sampling, rng, threads=self.threads)
    except video.VideoDecodeError as e:
      return {"unreadable": e.reason, "path": e.path, "labels": np.int32(record["label"])}
    return {"clips": clips, "labels": np.int32(record["label"]), "indices": indices}


class _Tally:
  """Main process: counts each element as a decode that worked or failed (warning, stop past the limits)."""

  def __init__(self, failures: DecodeFailures):
    self.failures = failures

  def __call__(self, element: dict) -> dict:
    if "unreadable" in element:
      self.failures.failed(element["path"], element["unreadable"])
    else:
      self.failures.succeeded()
    return element


def _readable(element: dict) -> bool:
  return "unreadable" not in element


class Augment(grain.transforms.RandomMap):
  """The official pretraining transform on the single clip of an element (docs/reference.md §5.4)."""

  def __init__(self, crop_size: int, scale, ratio, horizontal_flip: bool):
    self.crop_size = int(crop_size)
    self.scale = tuple(scale)
    self.ratio = tuple(ratio)
    self.horizontal_flip = bool(horizontal_flip)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    clip = transforms.pretrain_augment(element["clips"][0], rng, crop_size=self.crop_size, scale=self.scale,
                                       ratio=self.ratio, horizontal_flip=self.horizontal_flip)
    return {"clips": clip, "labels": element["labels"], "skipped": element["skipped"]}


class AddMasks(grain.transforms.RandomMap):
  """Merges this process's rows of mask_fn(global_batch, rng)'s int32 index arrays into the batch.

  The masks are drawn for the whole global batch (one block shape per batch and generator, as the official
  collator) from a generator every process seeds alike, so a multi-process run trains on exactly the masks of a
  single-process run. Drawing them is cheap next to decoding.
  """

  def __init__(self, mask_fn: MaskFn, global_batch_size: int, local_batch_size: int, process_index: int):
    self.mask_fn = mask_fn
    self.global_batch_size = global_batch_size
    self.rows = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)

  def random_map(self, batch: dict, rng: np.random.Generator) -> dict:
    masks = self.mask_fn(self.global_batch_size, rng)
    return {**batch, **{k: tuple(m[self.rows] for m in v) if isinstance(v, tuple) else v[self.rows]
                        for k, v in masks.items()}}


class _EvalTransform(grain.transforms.RandomMap):
  """Applies the eval views to an element's clips (a class, not a lambda: worker processes pickle it)."""

  def __init__(self, transform):
    self.transform = transform

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if "unreadable" in element:
      return element
    return {**element, "clips": self.transform(element["clips"], rng)}


def _count_skips(batch: dict) -> dict:
  """Runs in the main process: moves the per-sample skip counts out of the batch into the counter."""
  batch = dict(batch)
  _SKIPPED["files"] += int(np.sum(batch.pop("skipped")))
  return batch


def _to_iter(ds: grain.MapDataset, num_workers: int, buffer: int) -> grain.IterDataset:
  """Threads and buffer sized for video batches: grain's defaults (16 threads, 500 elements) would hold
  hundreds of decoded batches in memory. Worker processes each read with one thread."""
  buffer = max(1, buffer)
  read = grain.ReadOptions(num_threads=1 if num_workers > 0 else 2, prefetch_buffer_size=buffer)
  ds = ds.to_iter_dataset(read)
  if num_workers <= 0:
    return ds
  from absl import flags  # grain's mp_prefetch reads an absl flag; unparsed, it raises
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  from input_pipeline import worker_lifetime
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=buffer),
                        worker_init_fn=worker_lifetime.exit_with_parent)


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
  return global_batch_size // process_count


def sharded_records(index: sources.ClipIndex, *, seed: int, process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
  """This process's endless stream of records: one global order per epoch, positions p::process_count.

  Uniform: a fresh permutation per epoch (the official DistributedSampler). Weighted: WeightedOrder.
  """
  if index.sample_weights is not None:
    ds = grain.MapDataset.source(sources.WeightedOrder(index, seed))
  else:
    ds = grain.MapDataset.source(index).shuffle(seed=seed).repeat()
  return ds[process_index::process_count]


def make_pretrain_dataset(config, *, mask_fn: MaskFn, global_batch_size: int | None = None,
                          process_index: int = 0, process_count: int = 1, seed: int | None = None,
                          num_workers: int | None = None) -> grain.IterDataset:
  """The pretraining stream of this process: endless batches of global_batch_size / process_count clips.

  config: the run config (reads config.data and config.model.crop_size). global_batch_size defaults to
  config.data.batch_size, seed to config.seed, num_workers to config.data.num_workers.
  """
  data = config.data
  global_batch_size = int(global_batch_size or data.batch_size)
  seed = int(config.seed if seed is None else seed) % 2**32
  num_workers = int(data.num_workers if num_workers is None else num_workers)
  local_batch = _local_batch(global_batch_size, process_count)
  sampling = video.ClipSampling.from_config(data, allow_clip_overlap=False)
  if sampling.num_clips != 1:
    raise ValueError("pretraining takes one clip per video (data.num_clips=1)")

  index = sources.ClipIndex(data.datasets, data.datasets_weights)
  ds = sharded_records(index, seed=seed)
  ds = ds.random_map(DecodeClip(index, sampling, max_failure_fraction=float(data.max_failure_fraction)),
                     seed=_seed(seed, 0, 1))
  ds = ds.random_map(Augment(config.model.crop_size, data.random_resize_scale, data.random_resize_aspect_ratio,
                             data.horizontal_flip), seed=_seed(seed, 0, 2))
  # Local-size chunks of the global stream; process k takes chunks k, k + P, ...: rows k*b .. (k+1)*b - 1 of each
  # global batch. Lazy: a process decodes only its own chunks.
  ds = ds.batch(local_batch, drop_remainder=True)[process_index::process_count]
  ds = ds.random_map(AddMasks(mask_fn, global_batch_size, local_batch, process_index), seed=_seed(seed, 0, 3))
  ds = _to_iter(ds, num_workers, int(data.get("prefetch_buffer", 2)))
  return ds.map(_count_skips)


def make_eval_dataset(config, *, batch_size: int, num_segments: int = 1, training: bool = False,
                      process_index: int = 0, process_count: int = 1, seed: int | None = None,
                      shuffle: bool = False, repeat: bool = False, transform: Callable[[np.ndarray, Any], np.ndarray]
                      | None = None, drop_remainder: bool = False, num_workers: int | None = None,
                      datasets=None, failures: DecodeFailures | None = None) -> grain.IterDataset:
  """Labeled multi-clip decoding for the frozen evaluations (docs/reference.md §6.2): no masks, no pretraining crop.

  Each video gives num_segments clips by the eval rule (allow_clip_overlap=True; random clip ends only when
  `training`). `transform(clips uint8 [S, T, H, W, 3], rng) -> array` is where the eval views go (a later issue);
  without one the raw clips are batched, which needs videos of one size. Elements: {'clips': [B, S, ...],
  'labels': int32 [B], 'indices': int64 [B, S, T]}. With drop_remainder False the last batch may be smaller.

  failures: unusable videos are dropped instead of replaced (an evaluation must see each listed video once, and
  report over those that could be read); each is warned about and counted in `failures`, in this process, which
  stops the pass past data.max_failure_fraction. Batches are then formed after the drop, in the main process.
  """
  data = config.data
  seed = int(config.seed if seed is None else seed) % 2**32
  num_workers = int(data.num_workers if num_workers is None else num_workers)
  sampling = video.ClipSampling.from_config(data, allow_clip_overlap=True, num_clips=int(num_segments),
                                            random_clip_sampling=bool(training))
  index = sources.ClipIndex(datasets if datasets is not None else data.datasets)
  ds = grain.MapDataset.source(index)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat()
  ds = ds[process_index::process_count]
  if failures is None:
    decode = DecodeClip(index, sampling, max_failure_fraction=float(data.max_failure_fraction))
  else:
    decode = DecodeOrMark(sampling)
  ds = ds.random_map(decode, seed=_seed(seed, process_index, 1))
  if transform is not None:
    ds = ds.random_map(_EvalTransform(transform), seed=_seed(seed, process_index, 2))
  if failures is not None:
    ds = _to_iter(ds, num_workers, int(data.get("prefetch_buffer", 2)) * batch_size)
    return ds.map(_Tally(failures)).filter(_readable).batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = _to_iter(ds, num_workers, int(data.get("prefetch_buffer", 2)))
  return ds.map(_count_skips)
