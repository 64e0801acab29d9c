"""Probe files: the official attentive-probe checkpoint layouts, read (to evaluate a released probe) and written
(python -m jepa_jax.export of a probe run).

  V-JEPA 2 (evals/video_classification_frozen/eval.py save_checkpoint; docs/reference.md §9.5, §9.7):
    {'classifiers': [one state_dict per head, of DDP(AttentiveClassifier): keys 'module.pooler.query_tokens', ...],
     'opt': [one torch AdamW state_dict per head], 'scaler': [one GradScaler state_dict per head] or None,
     'epoch', 'batch_size' (per GPU), 'world_size'}
    The heads are in multihead_kwargs order; the file does not say which head was best, nor their settings (those
    are in the AdamW param groups, when 'opt' is there).
  V-JEPA 1 (docs/reference.md §6.1): {'classifier': one state_dict (keys 'module.'...), 'opt', 'scaler', 'epoch', ...}:
    read as one head.

Our probe runs (evaluation/loops.py) keep every head in WORKDIR/probe_latest (params and AdamW moments, stacked
[K, ...]) and the best one in WORKDIR/probe_best; export writes probe_latest in the V-JEPA 2 layout. Parameter names
are the official ones (models/probe.py), so a state_dict is our pure dict through torch_layout's leaf renaming.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from etils import epath

from jepa_jax import torch_layout
from jepa_jax.evaluation.eval_config import EvalConfigError, probe_heads
from jepa_jax.evaluation.probe_optim import head_hparams, lr_at, wd_at

PREFIX = "module."  # the DDP wrapper of every official probe
HEADS_ENTRY = "classifiers"  # V-JEPA 2: a list of heads; also our probe_latest entry (stacked)
ONE_HEAD_ENTRY = "classifier"  # V-JEPA 1: one head; also our probe_best entry
OPT_ENTRY = "opt"
LATEST, BEST = "probe_latest", "probe_best"

# torch.cuda.amp.GradScaler().state_dict() of a fresh scaler: we train without loss scaling (bfloat16 or float32),
# so a resumed official run starts its scaler from scratch.
_FRESH_GRAD_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                      "_growth_tracker": 0}


class ProbeFileError(ValueError):
  """A probe file or folder that cannot be read, or does not fit the eval config; the message says why."""


def is_probe_checkpoint(ckpt: Mapping) -> bool:
  """Whether a checkpoint dict is an official probe file (V-JEPA 1 'classifier' or V-JEPA 2 'classifiers')."""
  return ONE_HEAD_ENTRY in ckpt or HEADS_ENTRY in ckpt


def _numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor; bf16 has no numpy dtype, so go through float32
    x = x.detach().cpu()
    return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
  return np.asarray(x)


def _strip(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {(k[len(PREFIX):] if k.startswith(PREFIX) else k): _numpy(v) for k, v in sd.items()}


@dataclasses.dataclass(frozen=True)
class SavedProbes:
  """The heads of a probe file or probe run: official state_dicts (no 'module.' prefix), in file order."""
  state_dicts: list
  epoch: int | None
  source: str

  @property
  def num_heads(self) -> int:
    return len(self.state_dicts)

  @property
  def num_probe_blocks(self) -> int:
    """1 + the self-attention blocks before the cross-attention block (official num_probe_blocks)."""
    sd = self.state_dicts[0]
    return 1 + len({k.split(".")[2] for k in sd if k.startswith("pooler.blocks.")})

  @property
  def embed_dim(self) -> int:
    return int(np.shape(self.state_dicts[0]["pooler.query_tokens"])[-1])

  @property
  def num_classes(self) -> int:
    return int(np.shape(self.state_dicts[0]["linear.weight"])[0])

  @property
  def description(self) -> str:
    return describe(self.state_dicts, self.epoch, self.source)


def describe(state_dicts, epoch, source: str) -> str:
  """'PATH: 20 attentive probes (num_probe_blocks 4, width 1024, 174 classes), epoch 20' for messages."""
  sd = state_dicts[0]
  if "pooler.query_tokens" not in sd or "linear.weight" not in sd:
    return f"{source}: {len(state_dicts)} state_dict(s) without pooler.query_tokens / linear.weight"
  blocks = 1 + len({k.split(".")[2] for k in sd if k.startswith("pooler.blocks.")})
  n = len(state_dicts)
  return (f"{source}: {n} attentive probe{'s' if n > 1 else ''} (num_probe_blocks {blocks}, width "
          f"{np.shape(sd['pooler.query_tokens'])[-1]}, {np.shape(sd['linear.weight'])[0]} classes)"
          + (f", epoch {epoch}" if epoch is not None else ""))


def describe_checkpoint(ckpt: Mapping, source: str) -> str:
  """describe() of an official probe checkpoint dict (for the 'this is a probe, not a backbone' errors)."""
  heads = ckpt[HEADS_ENTRY] if HEADS_ENTRY in ckpt else [ckpt[ONE_HEAD_ENTRY]]
  try:
    return describe([_strip(sd) for sd in heads], ckpt.get("epoch"), source)
  except Exception:  # pylint: disable=broad-except  (a malformed file still gets named as a probe file)
    return f"{source}: a probe file (keys {sorted(ckpt)})"


# ============================================================================================== reading

def read_probes(source: str) -> SavedProbes:
  """The heads of an official probe file (.pt / .pth.tar), or of a probe run of ours (WORKDIR: its probe_latest;
  or WORKDIR/probe_latest, WORKDIR/probe_best)."""
  path = epath.Path(source)
  if path.is_dir():
    return _read_run_probes(path)
  from jepa_jax import import_torch
  ckpt = import_torch.read_file(os.fspath(source))
  if not is_probe_checkpoint(ckpt):
    raise ProbeFileError(f"{source} is not a probe file: it has no 'classifiers' (V-JEPA 2) or 'classifier' "
                         f"(V-JEPA 1), only {sorted(ckpt)}")
  heads = ckpt[HEADS_ENTRY] if HEADS_ENTRY in ckpt else [ckpt[ONE_HEAD_ENTRY]]
  return SavedProbes([_strip(sd) for sd in heads], ckpt.get("epoch"), os.fspath(source))


def _restore_on_host(directory: epath.Path) -> dict:
  """An orbax StandardSave folder, every array restored as numpy on this host (whatever mesh saved it)."""
  import orbax.checkpoint as ocp
  host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.fspath(directory))
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=host), meta)
    return jax.tree.map(np.asarray, ckptr.restore(os.fspath(directory), target))


def _read_run_probes(path: epath.Path) -> SavedProbes:
  directory = path / LATEST if (path / LATEST).is_dir() else path
  if not (directory.name in (LATEST, BEST) and directory.is_dir()):
    raise ProbeFileError(f"{path} is neither a probe file nor a probe run of ours (no {LATEST}/ inside)")
  tree = _restore_on_host(directory)
  meta_path = epath.Path(os.fspath(directory) + ".json")
  meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
  if HEADS_ENTRY in tree:
    stacked = tree[HEADS_ENTRY]
    k = len(jax.tree.leaves(stacked)[0])
    heads = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(k)]
  else:
    heads = [tree[ONE_HEAD_ENTRY]]
  return SavedProbes([torch_layout.to_torch_state_dict(h) for h in heads], meta.get("epoch"), os.fspath(directory))


def check_fits(saved: SavedProbes, config, embed_dim: int) -> None:
  """EvalConfigError naming the config field when the saved probes cannot run on this config and encoder."""
  e = config.eval
  problems = []
  if saved.num_probe_blocks != int(e.get("num_probe_blocks", 1)):
    problems.append(f"config.eval.num_probe_blocks={e.get('num_probe_blocks', 1)} but the probes have "
                    f"{saved.num_probe_blocks}")
  if saved.num_classes != int(e.num_classes):
    problems.append(f"config.eval.num_classes={e.num_classes} but the probes have {saved.num_classes}")
  if saved.embed_dim != int(embed_dim):
    problems.append(f"the encoder's width is {embed_dim} but the probes take {saved.embed_dim}")
  if problems:
    raise EvalConfigError(f"config.eval.probe_checkpoint={e.probe_checkpoint!r} ({saved.description}) does not fit: "
                          + "; ".join(problems))


def stacked_params(saved: SavedProbes, template):
  """The saved heads as probe params stacked [K, ...], strictly checked against and placed like `template`."""
  one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), template)
  try:
    heads = [torch_layout.from_torch_state_dict(sd, one) for sd in saved.state_dicts]
  except ValueError as e:
    raise ProbeFileError(f"{saved.description}: {e}") from None
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *heads)
  return jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), stacked, template)


# ============================================================================================== writing

def official_param_order(keys) -> list[str]:
  """Probe keys in the official named_parameters() order, which numbers the AdamW state: query_tokens, the
  cross-attention block (norm1, xattn.q, xattn.kv[, xattn.proj], norm2, mlp), then pooler.blocks.{i} (registered
  after it in AttentivePooler), then linear."""
  cross = ("norm1", "xattn.q", "xattn.kv", "xattn.proj", "norm2", "mlp.fc1", "mlp.fc2")
  block = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

  def rank(key: str):
    module, leaf = key.rsplit(".", 1)
    leaf_rank = ("weight", "bias").index(leaf) if leaf in ("weight", "bias") else 0
    if key == "pooler.query_tokens":
      return (0, 0, 0, 0)
    if module.startswith("pooler.cross_attention_block."):
      return (1, 0, cross.index(module[len("pooler.cross_attention_block."):]), leaf_rank)
    if module.startswith("pooler.blocks."):
      _, _, index, sub = module.split(".", 3)
      return (2, int(index), block.index(sub), leaf_rank)
    if module == "linear":
      return (3, 0, 0, leaf_rank)
    raise ValueError(f"not a probe parameter: {key}")

  return sorted(keys, key=rank)


def _torch_adamw_state(sd_mu, sd_nu, count: int, head: Mapping, steps_per_epoch: int, total_steps: int,
                       to_tensor) -> dict:
  """One head's AdamW state_dict as the official V-JEPA 2 eval saves it: one param group holding the mc_* schedule
  values its WarmupCosineLRSchedule / CosineWDSchedule read, lr and weight_decay at the last step."""
  import torch
  keys = official_param_order(sd_mu)
  group = dict(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).state_dict()["param_groups"][0])
  h = head_hparams(head, steps_per_epoch)
  last = max(count - 1, 0)
  group.update({"lr": float(lr_at(h, last, total_steps)), "weight_decay": float(wd_at(h, last, total_steps)),
                "mc_warmup_steps": int(float(head["warmup"]) * steps_per_epoch), "mc_start_lr": head["start_lr"],
                "mc_ref_lr": head["lr"], "mc_final_lr": head["final_lr"], "mc_ref_wd": head["weight_decay"],
                "mc_final_wd": head["final_weight_decay"], "params": list(range(len(keys)))})
  state = {i: {"step": torch.tensor(float(count)), "exp_avg": to_tensor(sd_mu[k]),
               "exp_avg_sq": to_tensor(sd_nu[k])} for i, k in enumerate(keys)}
  return {"state": state, "param_groups": [group]}


def is_probe_run(workdir) -> bool:
  """A probe workdir of ours (probe_latest/ inside, no pretraining checkpoints/)."""
  path = epath.Path(workdir)
  return (path / LATEST).is_dir() and not (path / "checkpoints").is_dir()


def export_probe_run(workdir: str, out: str, *, dtype: str = "float32", with_optimizer: bool = False,
                     world_size: int = 0) -> dict:
  """Writes WORKDIR/probe_latest as an official probe file `out`; returns the dict written.

  V-JEPA 2 probes (num_probe_blocks > 1) or several heads: every head, in config order, under 'classifiers'
  (strict-loadable into the official V-JEPA 2 AttentiveClassifier wrapped in DDP); with with_optimizer also 'opt'
  (one AdamW state_dict per head, with the mc_* schedule values the official schedulers read) and 'scaler' (fresh
  GradScaler states: we do not scale losses), else both None. One V-JEPA 1 probe (num_probe_blocks 1): the V-JEPA 1
  layout, 'classifier' (its state_dict keeps the unused xattn.proj, as the released V-JEPA 1 probes), 'lr', and no
  optimizer state.
  """
  import ml_collections
  from jepa_jax import export
  workdir = epath.Path(workdir)
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  meta = json.loads(epath.Path(os.fspath(workdir / LATEST) + ".json").read_text())
  tree = _restore_on_host(workdir / LATEST)
  params = tree[HEADS_ENTRY]
  num_heads = len(jax.tree.leaves(params)[0])
  heads = [dict(h) for h in meta.get("heads") or probe_heads(config)]
  if len(heads) != num_heads:
    raise ProbeFileError(f"{workdir / LATEST} holds {num_heads} heads but its settings list {len(heads)}")
  to_tensor = lambda x: export._to_tensor(x, dtype)
  head = lambda tree_, i: torch_layout.to_torch_state_dict(jax.tree.map(lambda x: x[i], tree_))
  classifiers = []
  for i in range(num_heads):
    sd = head(params, i)
    classifiers.append({PREFIX + k: to_tensor(sd[k]) for k in official_param_order(sd)})
  ws = export._world_size(config, world_size)
  common = {"epoch": int(meta["epoch"]), "batch_size": int(config.eval.batch_size) // ws, "world_size": ws}
  if num_heads == 1 and not any(".blocks." in k for k in classifiers[0]):
    if with_optimizer:
      raise ProbeFileError(f"{workdir} is a V-JEPA 1 probe (num_probe_blocks 1): its file is written without the "
                           "optimizer state (the two-group V-JEPA 1 AdamW layout is not exported); leave out "
                           "--with_optimizer")
    ckpt = {ONE_HEAD_ENTRY: classifiers[0], OPT_ENTRY: None, "scaler": None, **common, "lr": heads[0]["lr"]}
    return _save_torch(ckpt, out, f"one V-JEPA 1 probe of {workdir}, epoch {common['epoch']}, {dtype}")
  opt = scaler = None
  if with_optimizer:
    steps_per_epoch = int(meta["steps_per_epoch"])
    total = steps_per_epoch * int(config.eval.epochs)
    moments = tree[OPT_ENTRY]
    opt = [_torch_adamw_state(head(moments["mu"], i), head(moments["nu"], i), int(moments["count"][i]), heads[i],
                              steps_per_epoch, total, to_tensor) for i in range(num_heads)]
    scaler = [dict(_FRESH_GRAD_SCALER) for _ in range(num_heads)]
  ckpt = {HEADS_ENTRY: classifiers, OPT_ENTRY: opt, "scaler": scaler, **common}
  return _save_torch(ckpt, out, f"{num_heads} probe heads of {workdir}, epoch {common['epoch']}, {dtype}"
                     + (", with AdamW state" if with_optimizer else ""))


def _save_torch(ckpt: dict, out: str, what: str) -> dict:
  import torch
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  torch.save(ckpt, out)
  logging.info("Export: wrote %s (%s).", out, what)
  return ckpt
