"""The eval config check: everything that can be checked before the encoder is loaded or anything compiles.

An eval config (configs/eval/base.py) is a pretraining config's `model` and `mesh` plus `eval`, the probe recipe;
`pretrained` is anything jepa_jax.load_encoder reads and `checkpoint_key` which of its encoders.
"""
from __future__ import annotations

import os

import jax
import ml_collections
from etils import epath

from input_pipeline import images
from input_pipeline import sources
from jepa_jax import loading


class EvalConfigError(ValueError):
  """The eval config or its inputs cannot work; the message says what to change."""


def list_labels(path: str) -> list[int]:
  if os.path.isdir(path):
    return [0] * len(sources.list_directory(path))
  return sources.read_file_list(path)[1]


def resolve_inputs(config) -> dict:
  """{'train': ..., 'val': ...}: list paths (video), or sources (image); fills the demo's default lists."""
  e = config.eval
  if e.task == "video":
    train, val = e.train, e.val
    if e.get("lists_from_pretrained_data", "") and os.path.isdir(config.pretrained):
      name = e.lists_from_pretrained_data
      train = train or os.path.join(config.pretrained, "data", f"{name}_train.csv")
      val = val or os.path.join(config.pretrained, "data", f"{name}_val.csv")
    return {"train": train, "val": val}
  if e.tfds_name:
    return {split: images.tfds_source(e.tfds_name, split, e.tfds_data_dir or None) for split in ("train", "val")}
  return {split: images.ImageFolderSource(e.image_folder, split) for split in ("train", "val")}


def probe_model_config(config) -> ml_collections.ConfigDict:
  """config.model with the eval resolution (official: vit(img_size=resolution, num_frames=16))."""
  model = ml_collections.ConfigDict(config.model.to_dict())
  if "eval" in config:
    model.crop_size = int(config.eval.resolution)
  return model


def validate_eval_config(config) -> dict:
  """Checks everything that can be checked before loading or compiling; returns resolve_inputs(config)."""
  e, m = config.eval, config.model
  if config.mode != "probe":
    raise EvalConfigError(f"config.mode={config.mode!r}; an eval config has mode='probe'")
  if not config.pretrained:
    raise EvalConfigError("config.pretrained is empty: pass --config.pretrained=PATH, a pretraining workdir of ours "
                          "or an official checkpoint file (e.g. vitl16.pth.tar)")
  if not epath.Path(config.pretrained).exists():
    raise EvalConfigError(f"config.pretrained={config.pretrained!r} does not exist")
  if config.checkpoint_key not in loading.WHICH:
    raise EvalConfigError(f"config.checkpoint_key={config.checkpoint_key!r}; use one of {sorted(loading.WHICH)}")
  if e.task not in ("video", "image"):
    raise EvalConfigError(f"config.eval.task={e.task!r}; use 'video' or 'image'")
  for name, value in (("num_classes", e.num_classes), ("num_segments", e.num_segments),
                      ("num_views", e.num_views), ("batch_size", e.batch_size), ("epochs", e.epochs)):
    if int(value) < 1:
      raise EvalConfigError(f"config.eval.{name}={value} must be >= 1")
  if e.resolution % m.patch_size:
    raise EvalConfigError(f"config.eval.resolution={e.resolution} is not divisible by config.model.patch_size="
                          f"{m.patch_size}")
  frames = e.frames if e.task == "video" else m.num_frames
  if frames % m.tubelet_size:
    raise EvalConfigError(f"{frames} frames are not divisible by config.model.tubelet_size={m.tubelet_size}")
  if e.batch_size % jax.process_count():
    raise EvalConfigError(f"config.eval.batch_size={e.batch_size} is not divisible by {jax.process_count()} "
                          "processes")
  if not 0 < float(e.get("max_failure_fraction", 0.5)) <= 1:
    raise EvalConfigError(f"config.eval.max_failure_fraction={e.max_failure_fraction} must be in (0, 1]")
  inputs = resolve_inputs(config)
  if e.task == "video":
    for split, path in inputs.items():
      if not path:
        raise EvalConfigError(f"config.eval.{split} is empty: give an official-format list ('path label' per "
                              "line)")
      if not os.path.exists(path):
        raise EvalConfigError(f"config.eval.{split}={path!r} does not exist")
      labels = list_labels(path)
      if not labels:
        raise EvalConfigError(f"config.eval.{split}={path!r} lists no videos")
      if max(labels) >= e.num_classes or min(labels) < 0:
        raise EvalConfigError(
            f"{path} has labels {min(labels)}..{max(labels)} but config.eval.num_classes={e.num_classes}; set "
            f"--config.eval.num_classes={max(labels) + 1} or fix the list")
  else:
    for split, source in inputs.items():
      found = getattr(source, "num_classes", None)
      if found is not None and found != e.num_classes:
        raise EvalConfigError(f"the {split} images have {found} classes ({source!r}) but config.eval.num_classes="
                              f"{e.num_classes}")
  return inputs
