"""Frozen encoder features for videos or arrays, for users' own downstream work.

  python -m jepa_jax.extract --source=RUN_OR_FILE --videos=LIST.csv --out=FEATURES.npz [--pooled] [--batch_size=8]
  python -m jepa_jax.extract --source=RUN_OR_FILE --clips=ARRAY.npy --out=FEATURES.npz [--pooled]

RUN_OR_FILE is anything jepa_jax.load_encoder reads (jepa_jax/loading.py): a pretraining run of ours (--step
picks a checkpoint), an official V-JEPA 1 .pth.tar or our safetensors (--config names the model where the file
does not). --workdir is the old name of --source. The encoder is the target encoder unless --which=encoder.
Videos: one clip per video, frames_per_clip frames at the pretraining frame_step (a file's model: its num_frames,
step 4, or --frames / --frame_step) centred by the official index rule (no random offset), the short side resized
to the resolution (the model's crop size unless --resolution) and the centre square cropped: the middle one of
the official 3-view test crops (docs/reference.md §6.2). Arrays: uint8 [N, T, H, W, 3] given the same resize and centre
crop when their frames are not already square at the resolution.

Unreadable or too-short videos are skipped as training skips them: a warning naming each file and why, and a stop
(DataPipelineError) past data.max_failure_fraction of the list (0.5 for a file's model).

FEATURES.npz holds 'features' float32 [N, tokens, D] (or [N, D] mean-pooled over tokens with --pooled), 'labels'
int64 [N] (from the list; -1 for arrays unless --labels=LABELS.npy) and, for videos, 'paths' of the N videos read
and 'skipped' / 'skipped_reasons' of those that could not be. Batches run on every local device; the last one is
padded and the padding dropped (Encoder.encode).
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import jax
import numpy as np

from input_pipeline import eval_transforms
from input_pipeline import pipeline
from input_pipeline import sources
from input_pipeline import video
from jepa_jax.loading import load_encoder

OFFICIAL_FRAME_STEP = 4  # official eval frame step, for a file's model that carries no data config


def centre_view(clip: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [T, H, W, 3] -> [T, res, res, 3]: short side to res, centre crop (the middle official test view)."""
  clip = eval_transforms.resize_short_side(clip, resolution)
  _, h, w, _ = clip.shape
  top, left = (h - resolution) // 2, (w - resolution) // 2
  return np.ascontiguousarray(clip[:, top:top + resolution, left:left + resolution])


def video_clips(paths: Iterable[str], *, frames: int, frame_step: int, resolution: int,
                failures: pipeline.DecodeFailures, read: list[int]) -> Iterator[np.ndarray]:
  """One deterministic clip per readable video, preprocessed by centre_view; appends the index of each video read
  to `read`. Unusable videos go to `failures` (warning, count, stop past its limit; checked once more at the end)."""
  sampling = video.ClipSampling(frames_per_clip=frames, frame_step=frame_step, num_clips=1,
                                random_clip_sampling=False, allow_clip_overlap=True)
  for i, p in enumerate(paths):
    try:
      clips, _ = video.load_clips(p, sampling, np.random.default_rng(0))
    except video.VideoDecodeError as e:
      failures.failed(e.path, e.reason)
      continue
    failures.succeeded()
    read.append(i)
    yield centre_view(clips[0], resolution)
  failures.check(final=True)


def run(source: str, out: str, *, videos: str = "", clips: str = "", labels: str = "", pooled: bool = False,
        batch_size: int = 8, which: str = "target", resolution: int = 0, frames: int = 0, frame_step: int = 0,
        config=None, step: int | None = None) -> dict:
  """The command line's work; returns what was written to `out`."""
  if bool(videos) == bool(clips):
    raise ValueError("give exactly one of --videos=LIST.csv and --clips=ARRAY.npy")
  encoder = load_encoder(source, config=config, which=which, step=step)
  model, data = encoder.config.model, encoder.config.get("data")
  res = int(resolution or model.crop_size)
  result = {}
  if videos:
    paths, list_labels = sources.read_file_list(videos)
    failures = pipeline.DecodeFailures(float(data.get("max_failure_fraction", 0.5)) if data is not None else 0.5,
                                       where=videos)
    read: list[int] = []
    stream = video_clips(
        paths, frames=int(frames or (data.frames_per_clip if data is not None else model.num_frames)),
        frame_step=int(frame_step or (data.frame_step if data is not None else OFFICIAL_FRAME_STEP)), resolution=res,
        failures=failures, read=read)
    result["features"] = encoder.encode(stream, pooled=pooled, batch_size=batch_size)
    result["labels"] = np.asarray(list_labels, np.int64)[read]
    result["paths"] = np.asarray(paths)[read]
    result["skipped"] = np.asarray(list(failures.skipped), dtype=str)
    result["skipped_reasons"] = np.asarray(list(failures.skipped.values()), dtype=str)
  else:
    array = np.load(clips, mmap_mode="r")
    if array.dtype != np.uint8 or array.ndim not in (4, 5) or array.shape[-1] != 3:
      raise ValueError(f"{clips}: expected uint8 [N, T, H, W, 3] (or images [N, H, W, 3]), got {array.dtype} "
                       f"{array.shape}")
    square = array.shape[-3] == res and array.shape[-2] == res
    if array.ndim == 4:
      stream = (a if square else centre_view(np.asarray(a)[None], res)[0] for a in array)
    else:
      stream = (a if square else centre_view(np.asarray(a), res) for a in array)
    result["features"] = encoder.encode(stream, pooled=pooled, batch_size=batch_size)
    result["labels"] = np.load(labels).astype(np.int64) if labels else np.full((len(array),), -1, np.int64)
  if len(result["labels"]) != len(result["features"]):
    raise ValueError(f"{len(result['labels'])} labels for {len(result['features'])} clips")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **result)
  return result


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  result = run(f.source, f.out, videos=f.videos, clips=f.clips, labels=f.labels, pooled=f.pooled,
               batch_size=f.batch_size, which=f.which, resolution=f.resolution, frames=f.frames,
               frame_step=f.frame_step, config=f.config or None, step=f.step)
  skipped = len(result.get("skipped", ()))
  print(f"wrote {f.out}: features {result['features'].shape}, labels {result['labels'].shape}"
        + (f"; {skipped} unreadable videos skipped (their paths are in 'skipped')" if skipped else ""))


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("source", None, "A pretraining run folder of ours, an official .pth.tar or a .safetensors.")
  flags.DEFINE_alias("workdir", "source")
  flags.DEFINE_integer("step", None, "Checkpoint step of a run (default: the latest complete one).")
  flags.DEFINE_string("config", "", "Config file or shipped config name of the model, for a file that does not say "
                      "it.")
  flags.DEFINE_string("videos", "", "Official-format list ('path label' per line).")
  flags.DEFINE_string("clips", "", "uint8 .npy array [N, T, H, W, 3] (or images [N, H, W, 3]).")
  flags.DEFINE_string("labels", "", "Optional int .npy [N] saved as the labels of --clips.")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_bool("pooled", False, "Mean-pool over tokens: [N, D] instead of [N, tokens, D].")
  flags.DEFINE_integer("batch_size", 8, "Clips per forward pass (padded up to a multiple of the devices).")
  flags.DEFINE_string("which", "target", "'target' (the EMA target encoder) or 'encoder' (the context encoder).")
  flags.DEFINE_alias("checkpoint_key", "which")
  flags.DEFINE_integer("resolution", 0, "Crop size; 0: the model's crop size.")
  flags.DEFINE_integer("frames", 0, "Frames per clip; 0: the run's data.frames_per_clip (a file: the model's).")
  flags.DEFINE_integer("frame_step", 0, "Frame step; 0: the run's data.frame_step (a file: 4, the official one).")
  flags.mark_flags_as_required(["source", "out"])
  from jepa_jax import cli
  cli.run(main)
