"""Frozen encoder features for videos or arrays, for users' own downstream work.

  python -m jepa_jax.extract --workdir=DIR --videos=LIST.csv --out=FEATURES.npz [--pooled] [--batch_size=8]
  python -m jepa_jax.extract --workdir=DIR --clips=ARRAY.npy --out=FEATURES.npz [--pooled]

DIR is a pretraining workdir of ours (checkpoints/ and config.json; an official .pth.tar is imported into one with
`python -m jepa_jax.import_torch --only_target`). The encoder is the target encoder unless --checkpoint_key=encoder.
Videos: one clip per video, frames_per_clip frames at the pretraining frame_step centred by the official index
rule (no random offset), the short side resized to the resolution (the pretraining crop size unless --resolution)
and the centre square cropped: the middle one of the official 3-view test crops (reference 6.2). Arrays: uint8
[N, T, H, W, 3] given the same resize and centre crop when their frames are not already square at the resolution.

FEATURES.npz holds 'features' float32 [N, tokens, D] (or [N, D] mean-pooled over tokens with --pooled), 'labels'
int64 [N] (from the list; -1 for arrays unless --labels=LABELS.npy) and, for videos, 'paths'. Batches run on
every local device (batch sharded over the mesh's data axes); the last one is padded and the padding dropped.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from input_pipeline import eval_transforms
from input_pipeline import sources
from input_pipeline import video
from jepa_jax import evaluate
from jepa_jax import sharding


def centre_view(clip: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [T, H, W, 3] -> [T, res, res, 3]: short side to res, centre crop (the middle official test view)."""
  clip = eval_transforms.resize_short_side(clip, resolution)
  _, h, w, _ = clip.shape
  top, left = (h - resolution) // 2, (w - resolution) // 2
  return np.ascontiguousarray(clip[:, top:top + resolution, left:left + resolution])


def load_workdir(workdir: str, checkpoint_key: str = "target_encoder"):
  """(graphdef, params on the mesh, mesh, pretraining config) of a workdir's frozen encoder."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: not a pretraining workdir of ours")
  with open(path) as f:
    pretrain = ml_collections.ConfigDict(json.load(f))
  config = ml_collections.ConfigDict({"pretrained": workdir, "checkpoint_key": checkpoint_key,
                                      "model": pretrain.model.to_dict()})
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"shape": (-1, 1, 1)}))
  rules = sharding.logical_rules(pretrain.mesh)
  graphdef, params = evaluate.load_frozen_encoder(config, mesh, rules, model_cfg=config.model)
  return graphdef, params, mesh, pretrain


def video_clips(paths: Iterable[str], *, frames: int, frame_step: int, resolution: int) -> Iterator[np.ndarray]:
  """One deterministic clip per video, preprocessed by centre_view."""
  sampling = video.ClipSampling(frames_per_clip=frames, frame_step=frame_step, num_clips=1,
                                random_clip_sampling=False, allow_clip_overlap=True)
  for p in paths:
    clips, _ = video.load_clips(p, sampling, np.random.default_rng(0))
    yield centre_view(clips[0], resolution)


def extract_features(graphdef, params, clips: Iterable[np.ndarray], mesh, *, batch_size: int = 8,
                     pooled: bool = False, dtype=jnp.float32) -> np.ndarray:
  """Frozen features of uint8 clips [T, H, W, 3] (or images [H, W, 3]): [N, tokens, D] or [N, D]."""
  feature_fn = evaluate.make_feature_fn(graphdef, dtype)
  if pooled:
    base = feature_fn
    feature_fn = jax.jit(lambda p, x: base(p, x).mean(axis=1))
  dp = sharding.data_parallel_size(mesh)
  padded = -(-batch_size // dp) * dp
  out, pending = [], []

  def flush():
    n = len(pending)
    batch = np.zeros((padded,) + pending[0].shape, np.uint8)
    batch[:n] = np.stack(pending)
    x = jax.device_put(batch, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
      out.append(np.asarray(jax.device_get(feature_fn(params, x)))[:n])
    pending.clear()

  for clip in clips:
    pending.append(np.asarray(clip, np.uint8))
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  if not out:
    raise ValueError("no clips to extract features from")
  return np.concatenate(out)


def run(workdir: str, out: str, *, videos: str = "", clips: str = "", labels: str = "", pooled: bool = False,
        batch_size: int = 8, checkpoint_key: str = "target_encoder", resolution: int = 0) -> dict:
  """The command line's work; returns what was written to `out`."""
  if bool(videos) == bool(clips):
    raise ValueError("give exactly one of --videos=LIST.csv and --clips=ARRAY.npy")
  graphdef, params, mesh, pretrain = load_workdir(workdir, checkpoint_key)
  res = int(resolution or pretrain.model.crop_size)
  dtype = jnp.dtype(pretrain.model.dtype)
  result = {}
  if videos:
    paths, list_labels = sources.read_file_list(videos)
    stream = video_clips(paths, frames=int(pretrain.data.frames_per_clip), frame_step=int(pretrain.data.frame_step),
                         resolution=res)
    result["labels"] = np.asarray(list_labels, np.int64)
    result["paths"] = np.asarray(paths)
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
    result["labels"] = np.load(labels).astype(np.int64) if labels else np.full((len(array),), -1, np.int64)
  result["features"] = extract_features(graphdef, params, stream, mesh, batch_size=batch_size, pooled=pooled,
                                        dtype=dtype)
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
  result = run(f.workdir, f.out, videos=f.videos, clips=f.clips, labels=f.labels, pooled=f.pooled,
               batch_size=f.batch_size, checkpoint_key=f.checkpoint_key, resolution=f.resolution)
  print(f"wrote {f.out}: features {result['features'].shape}, labels {result['labels'].shape}")


if __name__ == "__main__":
  from absl import flags
  flags.DEFINE_string("workdir", None, "Pretraining workdir (checkpoints/ and config.json).")
  flags.DEFINE_string("videos", "", "Official-format list ('path label' per line).")
  flags.DEFINE_string("clips", "", "uint8 .npy array [N, T, H, W, 3] (or images [N, H, W, 3]).")
  flags.DEFINE_string("labels", "", "Optional int .npy [N] saved as the labels of --clips.")
  flags.DEFINE_string("out", None, "Output .npz.")
  flags.DEFINE_bool("pooled", False, "Mean-pool over tokens: [N, D] instead of [N, tokens, D].")
  flags.DEFINE_integer("batch_size", 8, "Clips per forward pass (padded up to a multiple of the devices).")
  flags.DEFINE_string("checkpoint_key", "target_encoder", "'target_encoder' or 'encoder'.")
  flags.DEFINE_integer("resolution", 0, "Crop size; 0: the pretraining crop size.")
  flags.mark_flags_as_required(["workdir", "out"])
  from jepa_jax import cli
  cli.run(main)
