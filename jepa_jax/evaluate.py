"""Frozen evaluation (reference 6): an attentive probe trained on a frozen encoder, multi-view testing.

  python -m jepa_jax.main --config=configs/eval/vitl16_k400.py --workdir=DIR --config.pretrained=PATH

Read top to bottom: config check -> mesh -> frozen encoder (our workdir or an official .pth.tar) -> probe and
optimizer -> epochs of (train, evaluate, CSV row, best probe checkpoint) -> final report line.

Per batch, every segment x view clip goes through the frozen encoder independently (a jitted feature function,
never differentiated); with attend_across_segments the token sets of all segments of one view are concatenated
([B, V, S*N, D]), otherwise each clip is its own probe input. Training: 1 view, loss = mean CE over the probe
inputs of an example. Test: prediction = mean of the softmax over views (and segments when not attending across
them); top-1 and top-5 are counts of correct examples over the whole validation set, summed on the devices of
every host, divided by the number of examples once at the end (the official code averages per-batch means).

Batches are padded to a fixed size with zero-weight rows, so one compile serves uneven last batches and hosts
with fewer examples.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from input_pipeline import eval_transforms
from input_pipeline import images
from input_pipeline import pipeline
from input_pipeline import sources
from jepa_jax import checkpointing
from jepa_jax import import_torch
from jepa_jax import sharding
from jepa_jax import torch_layout
from jepa_jax.models import build_encoder
from jepa_jax.models.probe import AttentiveClassifier
from jepa_jax.probe_optim import make_probe_optimizer, probe_lr_schedule
from jepa_jax.progress import ProgressBar
from jepa_jax.train_step import normalize_clips

CSV_COLUMNS = ("epoch", "train_acc", "val_acc_top1", "val_acc_top5", "loss")
_MODEL_DIMS = ("name", "embed_dim", "depth", "num_heads", "patch_size", "tubelet_size")
_KEYS = ("target_encoder", "encoder")


class EvalConfigError(ValueError):
  """The eval config or its inputs cannot work; the message says what to change."""


# ============================================================================================== config check

def _list_labels(path: str) -> list[int]:
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


def validate_eval_config(config) -> dict:
  """Checks everything that can be checked before loading or compiling; returns resolve_inputs(config)."""
  e, m = config.eval, config.model
  if config.mode != "probe":
    raise EvalConfigError(f"config.mode={config.mode!r}; an eval config has mode='probe'")
  if not config.pretrained:
    raise EvalConfigError("config.pretrained is empty: pass --config.pretrained=PATH, a pretraining workdir of ours "
                          "or an official checkpoint file (e.g. vitl16.pth.tar)")
  if not os.path.exists(config.pretrained):
    raise EvalConfigError(f"config.pretrained={config.pretrained!r} does not exist")
  if config.checkpoint_key not in _KEYS:
    raise EvalConfigError(f"config.checkpoint_key={config.checkpoint_key!r}; use one of {_KEYS}")
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
  inputs = resolve_inputs(config)
  if e.task == "video":
    for split, path in inputs.items():
      if not path:
        raise EvalConfigError(f"config.eval.{split} is empty: give an official-format list ('path label' per "
                              "line)")
      if not os.path.exists(path):
        raise EvalConfigError(f"config.eval.{split}={path!r} does not exist")
      labels = _list_labels(path)
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


# ============================================================================================== frozen encoder

def _model_config(config) -> ml_collections.ConfigDict:
  """config.model with the eval resolution (official: vit(img_size=resolution, num_frames=16))."""
  model = ml_collections.ConfigDict(config.model.to_dict())
  if "eval" in config:
    model.crop_size = int(config.eval.resolution)
  return model


def encoder_template(model_cfg):
  """(graphdef, abstract NNX state with logical axes) of the encoder, nothing allocated."""
  with nnx.use_eager_sharding(False):
    encoder = nnx.eval_shape(lambda: build_encoder(model_cfg, nnx.Rngs(0)))
  return nnx.split(encoder)


def encoder_dims(model_cfg) -> tuple[int, int]:
  """(embed_dim, num_heads) of the configured encoder, from a one-block abstract build."""
  module = build_encoder(model_cfg, nnx.Rngs(0), abstract_depth=1)
  return module.embed_dim, module.num_heads


def _sds(abstract) -> dict:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))


def _read_pretrain_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _from_workdir(path: str, key: str, model_cfg, template: dict, shardings) -> dict:
  ckpt_dir = path if os.path.basename(os.path.normpath(path)) == "checkpoints" else os.path.join(path, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    if os.path.basename(os.path.normpath(path)) == "probe_best" or os.path.isdir(os.path.join(path, "probe_best")):
      raise EvalConfigError(
          f"config.pretrained={path!r} holds an attentive-probe checkpoint (probe_best), not a pretrained encoder "
          "(the official eval fails the same way with KeyError 'target_encoder', issue #43). Pass the pretraining "
          "workdir (the folder with checkpoints/ and config.json) or an official backbone .pth.tar.")
    raise EvalConfigError(f"config.pretrained={path!r} is a folder without checkpoints/: not a pretraining workdir")
  workdir = os.path.dirname(os.path.normpath(ckpt_dir))
  scanned = bool(model_cfg.scan_layers)
  pretrain = _read_pretrain_config(workdir)
  if pretrain is not None:
    theirs = pretrain.get("model", {})
    diff = {k: (theirs.get(k), model_cfg.get(k)) for k in _MODEL_DIMS if k in theirs and theirs[k] != model_cfg[k]}
    if diff:
      raise EvalConfigError(
          f"the encoder in {workdir} was pretrained with a different model: " +
          ", ".join(f"config.model.{k}={b!r} but the workdir has {a!r}" for k, (a, b) in diff.items()) +
          ". Use the eval config of that model size or set those --config.model fields.")
    scanned = bool(theirs.get("scan_layers", scanned))
  if scanned != bool(model_cfg.scan_layers):  # restore in the saved layout, convert to ours
    saved_template = torch_layout.stack_layers(template) if scanned else torch_layout.unstack_layers(template)
    subset = saved_template
  else:
    subset = jax.tree.map(lambda t, s: jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=s), template, shardings)
  wanted = {"target_encoder": subset} if key == "target_encoder" else {"params": {"encoder": subset}}
  try:
    restored = checkpointing.restore_params_only(ckpt_dir, wanted)
  except FileNotFoundError as e:
    raise EvalConfigError(f"config.pretrained={path!r}: {e}") from None
  params = restored["target_encoder"] if key == "target_encoder" else restored["params"]["encoder"]
  if scanned != bool(model_cfg.scan_layers):
    params = torch_layout.unstack_layers(params) if scanned else torch_layout.stack_layers(params)
  return params


def _from_torch_file(path: str, key: str, model_cfg, template: dict) -> dict:
  from jepa_jax import import_torch
  try:
    ckpt = import_torch.read_file(path)
  except import_torch.CheckpointFormatError as e:
    raise EvalConfigError(str(e)) from None
  if key not in ckpt:
    if "classifier" in ckpt:
      raise EvalConfigError(
          f"{path} is an attentive-probe checkpoint (keys {sorted(ckpt)}): it holds the 'classifier' but no encoder "
          "(official issue #43, KeyError 'target_encoder'). Pass the pretrained backbone file (e.g. vitl16.pth.tar).")
    raise EvalConfigError(f"{path} has no {key!r} (keys {sorted(ckpt)}); set config.checkpoint_key to the "
                          "encoder it holds")
  sd = import_torch.strip_prefixes(ckpt[key])
  try:
    return torch_layout.from_torch_state_dict(sd, template, scanned=bool(model_cfg.scan_layers))
  except ValueError as e:
    raise EvalConfigError(
        f"{path}[{key!r}] is {import_torch.describe_encoder(sd)}; config.model builds {model_cfg.name} "
        f"(embed_dim {model_cfg.embed_dim or 'zoo'}, depth {model_cfg.depth or 'zoo'}).\n{e}") from None


def load_frozen_encoder(config, mesh, rules, *, model_cfg=None):
  """(graphdef, params placed on the mesh by the logical rules) of the encoder named by config.pretrained and
  config.checkpoint_key."""
  model_cfg = model_cfg or _model_config(config)
  graphdef, abstract = encoder_template(model_cfg)
  with jax.set_mesh(mesh):
    shardings = sharding.param_shardings(abstract, mesh, rules)
  template = _sds(abstract)
  path = config.pretrained
  if os.path.isdir(path):
    params = _from_workdir(path, config.checkpoint_key, model_cfg, template, shardings)
  else:
    params = _from_torch_file(path, config.checkpoint_key, model_cfg, template)
  return graphdef, jax.device_put(params, shardings)


def random_encoder(model_cfg, mesh, rules, seed: int):
  """A freshly initialised encoder (official init) of the configured size: the baseline of the demo report."""
  graphdef, abstract = encoder_template(model_cfg)
  with jax.set_mesh(mesh):
    shardings = sharding.param_shardings(abstract, mesh, rules)
  with nnx.use_eager_sharding(False):
    params = nnx.to_pure_dict(nnx.state(build_encoder(model_cfg, nnx.Rngs(seed))))
  return graphdef, jax.device_put(params, shardings)


def make_feature_fn(graphdef, dtype) -> Callable:
  """jit(params, uint8 clips [M, T, H, W, 3] or images [M, H, W, 3]) -> float32 tokens [M, N, D]; no gradient."""
  def features(params, clips):
    encoder = nnx.merge(graphdef, jax.lax.stop_gradient(params))
    return jax.lax.stop_gradient(encoder(normalize_clips(clips, dtype)))
  return jax.jit(features)


def encode_batch(feature_fn, params, clips, *, attend_across_segments: bool) -> jax.Array:
  """Clips [B, S, V, T, H, W, 3] (or images [B, H, W, 3]) -> probe inputs [B, G, L, D].

  attend_across_segments: G = V views, each the S segments' tokens concatenated (L = S*N, official
  ClipAggregation); otherwise G = S*V independent clips of N tokens.
  """
  if clips.ndim == 4:
    return feature_fn(params, clips)[:, None]
  b, s, v = clips.shape[:3]
  tokens = feature_fn(params, clips.reshape((b * s * v,) + clips.shape[3:]))
  n, d = tokens.shape[1:]
  tokens = tokens.reshape(b, s, v, n, d)
  if attend_across_segments:
    return tokens.transpose(0, 2, 1, 3, 4).reshape(b, v, s * n, d)
  return tokens.reshape(b, s * v, n, d)


# ============================================================================================== probe

def view_averaged_probs(logits: jax.Array) -> jax.Array:
  """logits [B, G, C] -> mean over the G views (and segments) of softmax: the official multi-view prediction."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).mean(axis=1)


def topk_correct(probs: jax.Array, labels: jax.Array, weights: jax.Array, ks=(1, 5)) -> list[jax.Array]:
  """Number of (weighted: padding rows weigh 0) examples whose label is among the k most probable classes.

  k is capped at the number of classes. Ties count as the label ranking first only when strictly fewer than k
  classes beat it (jax.lax.top_k semantics up to ties, which do not occur with softmax outputs in practice).
  """
  rank = jnp.sum(probs > jnp.take_along_axis(probs, labels[:, None], axis=1), axis=1)
  return [jnp.sum(weights * (rank < min(k, probs.shape[-1]))) for k in ks]


@dataclasses.dataclass(frozen=True)
class Probe:
  """The probe's graph and its jitted steps (pure functions of pytrees)."""
  graphdef: Any
  tx: optax.GradientTransformation
  train_step: Callable
  eval_step: Callable


def build_probe(config, embed_dim: int, encoder_heads: int, total_steps: int, mesh, rules, seed: int):
  """(Probe, params, opt_state): official AttentiveClassifier and optimizer, params sharded by the rules."""
  e = config.eval
  dtype = jnp.dtype(config.model.dtype)
  heads = int(e.get("probe_num_heads", 0) or encoder_heads)
  # The probe's cross-attention (one query token) stays on jax.nn's kernels; splash tiles self-attention.
  impl = config.model.attention_impl if config.model.attention_impl in ("xla", "cudnn") else None
  make = lambda s: AttentiveClassifier(embed_dim, heads, int(e.num_classes), dtype=dtype, implementation=impl,
                                       rngs=nnx.Rngs(s))
  with nnx.use_eager_sharding(False), nnx.logical_axis_rules(rules):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make(0)))
    params = nnx.to_pure_dict(nnx.state(make(seed)))
  with jax.set_mesh(mesh):
    shardings = sharding.param_shardings(abstract, mesh, rules)
  params = jax.device_put(params, shardings)
  tx = make_probe_optimizer(lr=float(e.lr), final_lr=float(e.get("final_lr", 0.0)),
                            weight_decay=float(e.weight_decay),
                            final_weight_decay=float(e.get("final_weight_decay", 1e-6)),
                            total_steps=int(total_steps), clip=float(e.get("clip_grad", 1.0)))

  def logits_fn(p, tokens):
    probe = nnx.merge(graphdef, p)
    b, g, l, d = tokens.shape
    return probe(tokens.reshape(b * g, l, d)).reshape(b, g, -1)

  def loss_fn(p, tokens, labels, weights):
    logits = logits_fn(p, tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, None]).mean(axis=1)  # over views
    loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (logits, jnp.sum(ce * weights))

  def train_step(p, opt_state, tokens, labels, weights):
    (_, (logits, loss_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens, labels, weights)
    updates, opt_state = tx.update(grads, opt_state, p)
    p = optax.apply_updates(p, updates)
    top1, = topk_correct(view_averaged_probs(logits), labels, weights, ks=(1,))
    return p, opt_state, {"loss_sum": loss_sum, "correct": top1, "count": jnp.sum(weights)}

  def eval_step(p, tokens, labels, weights):
    logits = logits_fn(p, tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, None]).mean(axis=1)
    top1, top5 = topk_correct(view_averaged_probs(logits), labels, weights)
    return {"loss_sum": jnp.sum(ce * weights), "top1": top1, "top5": top5, "count": jnp.sum(weights)}

  opt_state = jax.jit(tx.init)(params)
  probe = Probe(graphdef, tx, jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step))
  return probe, params, opt_state


# ============================================================================================== data

def _data_shim(config) -> ml_collections.ConfigDict:
  """The config.data fields pipeline.make_eval_dataset reads, from config.eval (reference 6.2)."""
  e = config.eval
  return ml_collections.ConfigDict({"seed": int(config.seed), "data": {
      "datasets": ("",), "frames_per_clip": int(e.frames), "frame_step": int(e.frame_step), "num_clips": 1,
      "filter_short_videos": False, "clip_duration": 0.0, "fps": 0.0, "num_workers": int(e.num_workers),
      "prefetch_buffer": 2, "max_failure_fraction": 0.5}})


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
  """One split's data: an iterator factory per epoch, its size, and the static per-example clip shape."""
  num_examples: int
  make_iter: Callable[[int], Any]
  example_shape: tuple


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

  def make_iter(epoch):
    return iter(pipeline.make_eval_dataset(
        shim, batch_size=local_batch, num_segments=int(e.num_segments), training=training,
        process_index=jax.process_index(), process_count=jax.process_count(),
        seed=int(config.seed) + (epoch if training else 0), shuffle=training, repeat=False, transform=transform,
        drop_remainder=False, datasets=(path,)))

  return Split(len(_list_labels(path)), make_iter, (int(e.num_segments), views, int(e.frames), res, res, 3))


def padded_batches(split: Split, epoch: int, *, local_batch: int, padded_local: int, steps: int):
  """`steps` host batches {'clips', 'labels', 'weights'} of exactly padded_local rows; rows past the data weigh 0.

  Every process runs the same number of steps (a process with fewer examples feeds all-padding batches), so the
  global arrays and the jitted steps line up across hosts.
  """
  it = split.make_iter(epoch)
  for _ in range(steps):
    batch = next(it, None) if it is not None else None
    if batch is None:
      it = None
      n = 0
      clips = np.zeros((padded_local,) + split.example_shape, np.uint8)
      labels = np.zeros((padded_local,), np.int32)
    else:
      n = len(batch["labels"])
      clips = np.zeros((padded_local,) + split.example_shape, np.uint8)
      clips[:n] = batch["clips"]
      labels = np.zeros((padded_local,), np.int32)
      labels[:n] = batch["labels"]
    weights = (np.arange(padded_local) < n).astype(np.float32)
    yield {"clips": clips, "labels": labels, "weights": weights}


def batch_geometry(global_batch: int, num_examples: int, mesh) -> tuple[int, int, int]:
  """(local batch, padded local batch, steps per epoch) for a split of num_examples (official drop_last=False)."""
  processes = jax.process_count()
  local = global_batch // processes
  unit = math.lcm(sharding.data_parallel_size(mesh), processes)
  padded_local = math.ceil(global_batch / unit) * unit // processes
  steps = math.ceil(math.ceil(num_examples / processes) / local)
  return local, padded_local, steps


# ============================================================================================== loops

def _to_global(batch, mesh):
  return sharding.host_local_batch_to_global(batch, mesh)


def run_epoch_train(probe: Probe, params, opt_state, token_batches, progress=None):
  """Trains over (tokens, labels, weights) batches; returns params, opt_state, {'loss', 'train_acc'}."""
  totals = None
  for tokens, labels, weights in token_batches:
    params, opt_state, m = probe.train_step(params, opt_state, tokens, labels, weights)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    if progress is not None:
      progress()
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return params, opt_state, {"loss": float(totals["loss_sum"]) / count,
                             "train_acc": 100.0 * float(totals["correct"]) / count}


def run_eval(probe: Probe, params, token_batches) -> dict:
  """Top-1 / top-5 (%) and loss over every example of the split: global counts, one division at the end."""
  totals = None
  for tokens, labels, weights in token_batches:
    m = probe.eval_step(params, tokens, labels, weights)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return {"val_acc_top1": 100.0 * float(totals["top1"]) / count,
          "val_acc_top5": 100.0 * float(totals["top5"]) / count,
          "val_loss": float(totals["loss_sum"]) / count, "num_examples": int(totals["count"])}


def _token_batches(split, epoch, geometry, mesh, feature_fn, enc_params, attend):
  local, padded_local, steps = geometry
  for batch in padded_batches(split, epoch, local_batch=local, padded_local=padded_local, steps=steps):
    batch = _to_global(batch, mesh)
    tokens = encode_batch(feature_fn, enc_params, batch["clips"], attend_across_segments=attend)
    yield tokens, batch["labels"], batch["weights"]


def save_probe(directory: str, params, meta: dict) -> None:
  """The probe params (official probe names, pure dict) with an orbax StandardSave; meta as JSON beside them."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(directory, {"classifier": params}, force=True)
  ckptr.wait_until_finished()
  ckptr.close()
  if jax.process_index() == 0:
    with open(directory + ".json", "w") as f:
      json.dump(meta, f, indent=2)


def load_probe(directory: str, params_like):
  """The classifier params saved by save_probe, laid out like params_like."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(directory), {"classifier": params_like})["classifier"]


def probe_and_evaluate(config, workdir: str) -> dict:
  """Trains the attentive probe on the frozen encoder and evaluates it every epoch; returns the final report."""
  is_primary = jax.process_index() == 0
  # --- Config check: before anything is loaded or compiled ---
  inputs = validate_eval_config(config)
  e = config.eval
  os.makedirs(workdir, exist_ok=True)

  # --- Mesh, frozen encoder ---
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  model_cfg = _model_config(config)
  graphdef, enc_params = load_frozen_encoder(config, mesh, rules, model_cfg=model_cfg)
  embed_dim, encoder_heads = encoder_dims(model_cfg)
  feature_fn = make_feature_fn(graphdef, jnp.dtype(model_cfg.dtype))
  logging.info("Frozen encoder %s (%s) from %s.", model_cfg.name, config.checkpoint_key, config.pretrained)

  # --- Data ---
  probe_batch = int(e.batch_size)
  train_split = make_split(config, inputs, "train", local_batch=probe_batch // jax.process_count())
  val_split = make_split(config, inputs, "val", local_batch=probe_batch // jax.process_count())
  train_geo = batch_geometry(probe_batch, train_split.num_examples, mesh)
  val_geo = batch_geometry(probe_batch, val_split.num_examples, mesh)
  logging.info("Probe: %d train / %d val examples, %d / %d steps per epoch, %d epochs.", train_split.num_examples,
               val_split.num_examples, train_geo[2], val_geo[2], e.epochs)

  # --- Probe, optimizer ---
  probe, params, opt_state = build_probe(config, embed_dim, encoder_heads, train_geo[2] * int(e.epochs), mesh,
                                         rules, seed=int(config.seed))
  attend = bool(e.attend_across_segments)

  # --- Epochs ---
  csv_path = os.path.join(workdir, f"{config.get('write_tag', 'probe')}_r0.csv")
  if is_primary:
    with open(csv_path, "w", newline="") as f:
      csv.writer(f).writerow(CSV_COLUMNS)
  progress = ProgressBar(total=train_geo[2] * int(e.epochs), enabled=is_primary, desc="probe")
  best, history, step = None, [], 0
  lr_at = probe_lr_schedule(float(e.lr), float(e.get("final_lr", 0.0)), train_geo[2] * int(e.epochs))
  last_loss = float("nan")  # the progress bar shows the previous epoch's mean loss: no per-step host sync
  t0 = time.perf_counter()
  try:
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      for epoch in range(int(e.epochs)):
        def tick():
          nonlocal step
          progress.update(step + 1, {"loss": last_loss, "lr": float(lr_at(step)),
                                     "clips_per_s": (step + 1) * probe_batch / max(time.perf_counter() - t0, 1e-9)})
          step += 1
        params, opt_state, train_m = run_epoch_train(
            probe, params, opt_state,
            _token_batches(train_split, epoch, train_geo, mesh, feature_fn, enc_params, attend), tick)
        val_m = run_eval(probe, params,
                         _token_batches(val_split, 0, val_geo, mesh, feature_fn, enc_params, attend))
        last_loss = train_m["loss"]
        row = {"epoch": epoch + 1, **train_m, **val_m}
        history.append(row)
        progress.write(f"[probe] epoch {epoch + 1}: loss {train_m['loss']:.4f} train {train_m['train_acc']:.2f}% "
                       f"val top-1 {val_m['val_acc_top1']:.2f}% top-5 {val_m['val_acc_top5']:.2f}%")
        if is_primary:
          with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1] + [f"{row[k]:.5f}" for k in CSV_COLUMNS[1:]])
        if best is None or val_m["val_acc_top1"] > best["val_acc_top1"]:
          best = row
          save_probe(os.path.join(workdir, "probe_best"), params,
                     {k: row[k] for k in ("epoch", "val_acc_top1", "val_acc_top5")})
  finally:
    progress.close()
  report = {"best_epoch": best["epoch"], "best_val_acc_top1": best["val_acc_top1"],
            "best_val_acc_top5": best["val_acc_top5"], "final_val_acc_top1": history[-1]["val_acc_top1"],
            "final_val_acc_top5": history[-1]["val_acc_top5"], "final_train_acc": history[-1]["train_acc"],
            "num_val_examples": history[-1]["num_examples"], "history": history}
  line = (f"probe {config.get('tag', '')}: val top-1 {report['final_val_acc_top1']:.2f}% top-5 "
          f"{report['final_val_acc_top5']:.2f}% after {e.epochs} epochs (best top-1 {best['val_acc_top1']:.2f}% at "
          f"epoch {best['epoch']}) on {report['num_val_examples']} val examples; {config.pretrained} "
          f"[{config.checkpoint_key}]")
  logging.info("%s", line)
  if is_primary:
    print(line, flush=True)
  return report


# ============================================================================================== demo report

def demo_probe_report(pretrain_workdir: str, config=None, *, epochs: int | None = None, seed: int = 0) -> dict:
  """{'pretrained': top-1 %, 'random': top-1 %}: the same probe budget on the demo's motion task, on the demo's
  pretrained target encoder and on a randomly initialised encoder of the same size.

  Both probes see the same batches (one decode per batch feeds both encoders). The val tokens are computed once
  per encoder (the test transform is deterministic); the train tokens per epoch (the training transform is
  random).
  """
  if config is None:
    from configs.eval import demo_motion
    config = demo_motion.get_config()
  config = ml_collections.ConfigDict(config.to_dict())
  config.pretrained = str(pretrain_workdir)
  if epochs is not None:
    config.eval.epochs = int(epochs)
  inputs = validate_eval_config(config)
  e = config.eval
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  model_cfg = _model_config(config)
  encoders = {"pretrained": load_frozen_encoder(config, mesh, rules, model_cfg=model_cfg),
              "random": random_encoder(model_cfg, mesh, rules, seed=seed + 1)}
  embed_dim, encoder_heads = encoder_dims(model_cfg)
  # One compiled feature function and one probe serve both encoders (same graph, same probe init).
  feature_fn = make_feature_fn(encoders["pretrained"][0], jnp.dtype(model_cfg.dtype))
  batch = int(e.batch_size)
  train_split = make_split(config, inputs, "train", local_batch=batch // jax.process_count())
  val_split = make_split(config, inputs, "val", local_batch=batch // jax.process_count())
  train_geo = batch_geometry(batch, train_split.num_examples, mesh)
  val_geo = batch_geometry(batch, val_split.num_examples, mesh)
  attend = bool(e.attend_across_segments)

  def encode_all(split, epoch, geo):
    cache = {k: [] for k in encoders}
    for b in padded_batches(split, epoch, local_batch=geo[0], padded_local=geo[1], steps=geo[2]):
      b = _to_global(b, mesh)
      for k, (_, enc_params) in encoders.items():
        tokens = encode_batch(feature_fn, enc_params, b["clips"], attend_across_segments=attend)
        cache[k].append((tokens, b["labels"], b["weights"]))
    return cache

  results = {}
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    probe, params, opt_state = build_probe(config, embed_dim, encoder_heads, train_geo[2] * int(e.epochs), mesh,
                                           rules, seed=seed)
    state = {k: jax.tree.map(jnp.copy, (params, opt_state)) for k in encoders}
    val_cache = encode_all(val_split, 0, val_geo)
    for epoch in range(int(e.epochs)):
      train_cache = encode_all(train_split, epoch, train_geo)
      for k in encoders:
        p, o, m = run_epoch_train(probe, *state[k], train_cache[k])
        state[k] = (p, o)
        logging.info("demo probe %s epoch %d: loss %.4f train %.1f%%", k, epoch + 1, m["loss"], m["train_acc"])
    for k in encoders:
      results[k] = run_eval(probe, state[k][0], val_cache[k])["val_acc_top1"]
  logging.info("demo probe report (motion direction, %d epochs): pretrained %.1f%%, random init %.1f%%",
               e.epochs, results["pretrained"], results["random"])
  return results
