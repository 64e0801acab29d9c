"""The eval config check: everything that can be checked before the encoder is loaded or anything compiles.

An eval config (configs/eval/base.py) is a pretraining config's `model` and `mesh` plus `eval`, the probe recipe;
`pretrained` is anything jepa_jax.load_encoder reads and `checkpoint_key` which of its encoders.

The probes: config.eval.heads lists one dict per probe trained together on the same frozen features (the official
multihead_kwargs of V-JEPA 2, with its names: lr, start_lr, final_lr, warmup (epochs), weight_decay,
final_weight_decay); empty, one probe from the flat config.eval.lr / final_lr / weight_decay / final_weight_decay
(the V-JEPA 1 configs). probe_heads() gives the list every consumer reads.
"""
from __future__ import annotations

import os

import jax
import ml_collections
from etils import epath

from input_pipeline import images
from input_pipeline import sources
from jepa_jax import loading
from jepa_jax import models
from jepa_jax.evaluation.probe_optim import HEAD_FIELDS


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


def probe_heads(config) -> tuple[dict, ...]:
  """The probes' settings, complete, in config order: config.eval.heads, or the one V-JEPA 1 probe.

  A head may leave out start_lr (= lr), final_lr (0), final_weight_decay (= weight_decay: constant, as every V-JEPA 2
  head but IN1K's first) and warmup (0 epochs); lr and weight_decay are required. Unknown names are an error.
  """
  e = config.eval
  heads = tuple(e.get("heads", ()) or ())
  if not heads:
    lr = float(e.lr)
    return ({"lr": lr, "start_lr": lr, "final_lr": float(e.get("final_lr", 0.0)), "warmup": 0.0,
             "weight_decay": float(e.weight_decay), "final_weight_decay": float(e.get("final_weight_decay", 1e-6))},)
  out = []
  for i, head in enumerate(heads):
    head = dict(head)
    unknown = sorted(set(head) - set(HEAD_FIELDS))
    missing = [k for k in ("lr", "weight_decay") if k not in head]
    if unknown or missing:
      raise EvalConfigError(
          f"config.eval.heads[{i}]={head}: " + (f"unknown fields {unknown}; " if unknown else "")
          + (f"missing {missing}; " if missing else "") + f"a head has the fields {list(HEAD_FIELDS)} (lr and "
          "weight_decay required; warmup in epochs)")
    full = {"lr": float(head["lr"]), "start_lr": float(head.get("start_lr", head["lr"])),
            "final_lr": float(head.get("final_lr", 0.0)), "warmup": float(head.get("warmup", 0.0)),
            "weight_decay": float(head["weight_decay"]),
            "final_weight_decay": float(head.get("final_weight_decay", head["weight_decay"]))}
    if full["lr"] <= 0 or min(full["start_lr"], full["final_lr"], full["warmup"], full["weight_decay"],
                              full["final_weight_decay"]) < 0:
      raise EvalConfigError(f"config.eval.heads[{i}]={head}: lr must be > 0 and the other values >= 0")
    out.append(full)
  return tuple(out)


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
  if int(e.get("num_probe_blocks", 1)) < 1:
    raise EvalConfigError(f"config.eval.num_probe_blocks={e.num_probe_blocks} must be >= 1: 1 for the V-JEPA 1 "
                          "probe, 4 for the V-JEPA 2 probe")
  heads = probe_heads(config)
  warmups = [h["warmup"] for h in heads if h["warmup"] >= int(e.epochs)]
  if warmups:
    raise EvalConfigError(f"config.eval.heads has warmup {warmups[0]} epochs, not shorter than config.eval.epochs="
                          f"{e.epochs}")
  out_layers = tuple(int(i) for i in e.get("out_layers", ()) or ())
  depth = models.model_dims(m).depth
  if out_layers and (sorted(set(out_layers)) != list(out_layers) or out_layers[0] < 0 or out_layers[-1] >= depth):
    raise EvalConfigError(f"config.eval.out_layers={out_layers}: increasing block indices of the encoder, each in "
                          f"0..{depth - 1} ({m.name} has {depth} blocks)")
  if e.get("probe_checkpoint", "") and not epath.Path(e.probe_checkpoint).exists():
    raise EvalConfigError(f"config.eval.probe_checkpoint={e.probe_checkpoint!r} does not exist (give a probe file, "
                          "official layout or ours from python -m jepa_jax.export, or a probe workdir of ours)")
  if not 0 < float(e.get("max_failure_fraction", 0.5)) <= 1:
    raise EvalConfigError(f"config.eval.max_failure_fraction={e.max_failure_fraction} must be in (0, 1]")
  inputs = resolve_inputs(config)
  if e.task == "video":
    for split, path in inputs.items():
      if split == "train" and e.get("probe_checkpoint", ""):
        continue  # validation only: the train list is not read
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
