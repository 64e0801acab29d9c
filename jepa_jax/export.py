"""Orbax checkpoint -> official V-JEPA PyTorch checkpoint (docs/reference.md §2.4, §4.1, §4.6).

  python -m jepa_jax.export --workdir=DIR [--step=N] --out=FILE.pth.tar [--safetensors] [--dtype=bfloat16]
      [--with_optimizer] [--world_size=W]

A probe run's workdir (python -m jepa_jax.main with an eval config) gives the official probe file instead: every
head under 'classifiers' (evaluation/probe_files.py).

The file is the dict the official code saves at the end of an epoch: 'encoder', 'predictor', 'target_encoder'
(state_dicts of DDP(MultiMaskWrapper(...)), so every key starts with 'module.backbone.'), 'opt', 'scaler',
'epoch', 'loss', 'batch_size', 'world_size', 'lr'. The official training resume (strict load of the three
state_dicts, then opt/scaler/epoch) and the official eval loader (target_encoder + epoch) both accept it.
A V-JEPA 2 run (config.model.pos_embed 'rope') is written in the V-JEPA 2 layout: the same keys without position
tables, as the official V-JEPA 2 training writes them (the stale 'pos_embed' of the released files is left out).

The run's config and train state are read by jepa_jax/loading.py (read_run_config, read_run: the step's own copy
of the config). Only the params, the target encoder and the step are read (orbax partial restore, placed on the
host CPU); the optimizer moments are read, also on the host, only with --with_optimizer. The safetensors files
carry the run's config.model in their metadata, so jepa_jax.load_encoder needs no config for them.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from typing import Any, Mapping, Optional

import jax
import numpy as np
from absl import logging

from jepa_jax import loading, schedules, torch_layout, train_state

PREFIX = "module.backbone."
MODULES = ("encoder", "predictor", "target_encoder")

# named_parameters() order of the official modules (root Parameters first, then submodules in registration order);
# torch.optim numbers parameters in this order within each param group (docs/reference.md §4.1).
_TOP_ORDER = {
    "encoder": ("pos_embed", "patch_embed", "blocks", "norm"),
    "predictor": ("predictor_pos_embed", "predictor_embed", "mask_tokens", "predictor_blocks", "predictor_norm",
                  "predictor_proj"),
}
_IN_BLOCK_ORDER = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                   "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                   "mlp.fc2.weight", "mlp.fc2.bias")


def official_order(keys, module: str) -> list[str]:
  """Keys of an encoder or predictor state_dict in the official named_parameters() order."""
  top = _TOP_ORDER[module]

  def rank(key: str):
    head, _, rest = key.partition(".")
    if head in ("blocks", "predictor_blocks"):
      index, _, leaf = rest.partition(".")
      return (top.index(head), int(index), _IN_BLOCK_ORDER.index(leaf))
    if head == "mask_tokens":
      return (top.index(head), int(rest), 0)
    return (top.index(head), 0, ("weight", "bias", "").index(rest.rpartition(".")[2] if "." in rest else rest))

  return sorted(keys, key=rank)


def param_groups(encoder_ndims: Mapping[str, int], predictor_ndims: Mapping[str, int]) -> list[list[tuple[str, str]]]:
  """The official 4 AdamW groups as lists of (module, key), from {key: ndim} of each module's state_dict:
  [encoder decayed, predictor decayed, encoder no-decay, predictor no-decay]; no-decay = 'bias' in the name or a
  1-D tensor (LayerNorm weights), docs/reference.md §4.1. Positional tables are in the decayed groups (they are
  Parameters) but never get optimizer state (no gradient)."""
  groups = []
  for decayed in (True, False):
    for module, ndims in (("encoder", encoder_ndims), ("predictor", predictor_ndims)):
      no_decay = lambda k: "bias" in k or ndims[k] == 1  # pylint: disable=cell-var-from-loop
      groups.append([(module, k) for k in official_order(ndims, module) if no_decay(k) != decayed])
  return groups


def uses_rope(config) -> bool:
  """A V-JEPA 2 run (config.model.pos_embed 'rope'): no position tables in its modules or optimizer groups."""
  return config.model.get("pos_embed", "sincos") == "rope"


def _to_tensor(x: np.ndarray, dtype: str):
  import torch
  t = torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C"))  # bf16 goes through float32.
  return t.to(torch.bfloat16) if dtype == "bfloat16" else t


def _abstract_model(config, which: str):
  from flax import nnx
  from jepa_jax.models import build_encoder, build_predictor
  if which == "encoder":
    return nnx.eval_shape(lambda: build_encoder(config.model, nnx.Rngs(0)))
  return nnx.eval_shape(lambda: build_predictor(
      config.model, num_mask_tokens=train_state.num_mask_tokens(config), rngs=nnx.Rngs(0)))


def _last_logged_loss(workdir: str, write_tag: str) -> Optional[float]:
  path = os.path.join(workdir, f"{write_tag}_r0.csv")
  if not os.path.exists(path):
    return None
  last = None
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      if row.get("loss"):
        last = row["loss"]
  return float(last) if last is not None else None


def _world_size(config, override: int) -> int:
  if override > 0:
    return override
  shape = tuple(config.mesh.shape)
  return math.prod(shape) if all(s > 0 for s in shape) else 1


def adam_state(opt_state):
  """The optax ScaleByAdamState inside our optimizer chain (optim.make_optimizer)."""
  import optax
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  if len(found) != 1:
    raise ValueError(f"expected one Adam state in the optimizer state, found {len(found)}")
  return found[0]


def torch_optimizer_state(config, opt_state, step: int, dtype: str = "float32") -> dict:
  """Our AdamW moments in the official torch.optim.AdamW state_dict layout (4 groups, integer param indices)."""
  import torch
  scanned = bool(config.model.scan_layers)
  adam = adam_state(opt_state)
  mu = {m: torch_layout.to_torch_state_dict(adam.mu[m], scanned=scanned) for m in ("encoder", "predictor")}
  nu = {m: torch_layout.to_torch_state_dict(adam.nu[m], scanned=scanned) for m in ("encoder", "predictor")}
  ndims = {m: {k: v.ndim for k, v in mu[m].items()} for m in mu}
  if not uses_rope(config):  # V-JEPA 1's frozen tables are Parameters, so they hold places in the groups
    ndims["encoder"]["pos_embed"] = ndims["predictor"]["predictor_pos_embed"] = 3
  adam_step = float(np.asarray(adam.count))
  lr = float(schedules.learning_rate_schedule(config.optim)(step))
  wd = float(schedules.weight_decay_schedule(config.optim)(step))
  b1, b2 = (float(b) for b in config.optim.betas)
  state, groups, index = {}, [], 0
  for g, members in enumerate(param_groups(ndims["encoder"], ndims["predictor"])):
    ids = []
    for module, key in members:
      if key not in torch_layout.POS_EMBED_KEYS:  # frozen tables get no gradient, hence no state
        state[index] = {"step": torch.tensor(adam_step), "exp_avg": _to_tensor(mu[module][key], dtype),
                        "exp_avg_sq": _to_tensor(nu[module][key], dtype)}
      ids.append(index)
      index += 1
    group = {"lr": lr, "betas": (b1, b2), "eps": float(config.optim.eps), "weight_decay": wd if g < 2 else 0.0,
             "amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
             "fused": None, "params": ids}
    if g >= 2:
      group["WD_exclude"] = True
    groups.append(group)
  return {"state": state, "param_groups": groups}


def export_checkpoint(workdir: str, out: str, *, step: Optional[int] = None, dtype: str = "float32",
                      write_safetensors: bool = False, with_optimizer: bool = False, world_size: int = 0) -> dict:
  """Writes the official checkpoint dict to `out` (and FILE.<module>.safetensors); returns the dict written."""
  import torch
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
  from jepa_jax.evaluation import probe_files
  if probe_files.is_probe_run(workdir):  # a probe run: the official probe file (evaluation/probe_files.py)
    if write_safetensors:
      raise ValueError(f"{workdir} is a probe run: its file is the official probe layout; leave out --safetensors")
    return probe_files.export_probe_run(workdir, out, dtype=dtype, with_optimizer=with_optimizer,
                                        world_size=world_size)
  config, step = loading.read_run_config(workdir, step)
  logging.info("Export: reading %s (step %d) of a %s model; optimizer state %s.", workdir, step,
               config.model.name, "included" if with_optimizer else "skipped")
  entries = ("step", "encoder", "predictor", "target_encoder") + (("opt_state",) if with_optimizer else ())
  # Read on the host CPU: the file is written from host memory, and the accelerators may be busy or absent.
  host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  _, _, restored = loading.read_run(workdir, entries, step=step, config=config, sharding=host)
  at_step = int(np.asarray(restored["step"]))
  scanned = bool(config.model.scan_layers)

  if uses_rope(config):
    # [quirk docs/reference.md §9.7] The released V-JEPA 2 files carry a stale pos_embed their RoPE models do not
    # have; the official training writes none. We write none: the file loads strictly into the official modules.
    tables = {"encoder": {}, "predictor": {}}
  else:
    tables = {"encoder": torch_layout.pos_embed_entries(_abstract_model(config, "encoder")),
              "predictor": torch_layout.pos_embed_entries(_abstract_model(config, "predictor"))}
  pures = {"encoder": restored["params"]["encoder"], "predictor": restored["params"]["predictor"],
           "target_encoder": restored["target_encoder"]}
  state_dicts = {}
  for module in MODULES:
    kind = "predictor" if module == "predictor" else "encoder"
    sd = torch_layout.to_torch_state_dict(pures[module], scanned=scanned)
    sd.update(tables[kind])
    state_dicts[module] = {k: sd[k] for k in official_order(sd, kind)}
    logging.info("Export: %s, %d tensors.", module, len(sd))

  ws = _world_size(config, world_size)
  loss = _last_logged_loss(workdir, config.get("write_tag", "jepa"))
  ckpt = {m: {PREFIX + k: _to_tensor(v, dtype) for k, v in sd.items()} for m, sd in state_dicts.items()}
  ckpt.update({
      "opt": (torch_optimizer_state(config, restored["opt_state"], at_step, dtype)
              if with_optimizer else None),
      "scaler": None,
      "epoch": at_step // int(config.optim.ipe),
      "loss": float("nan") if loss is None else loss,
      "batch_size": int(config.data.batch_size) // ws,
      "world_size": ws,
      "lr": float(config.optim.lr),
  })
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  torch.save(ckpt, out)
  logging.info("Export: wrote %s (step %d = epoch %d, %s).", out, at_step, ckpt["epoch"], dtype)
  if write_safetensors:
    from safetensors.torch import save_file
    for module in MODULES:
      path = safetensors_path(out, module)
      # The model config in the metadata lets jepa_jax.load_encoder build the model without a config file.
      save_file({k: _to_tensor(v, dtype) for k, v in state_dicts[module].items()}, path,
                metadata={"module": module, "epoch": str(ckpt["epoch"]), "step": str(at_step),
                          loading.SAFETENSORS_MODEL_KEY: config.model.to_json()})
      logging.info("Export: wrote %s.", path)
  return ckpt


def safetensors_path(out: str, module: str) -> str:
  """FILE.pth.tar -> FILE.<module>.safetensors (keys without the 'module.backbone.' prefix)."""
  base = out[:-len(".pth.tar")] if out.endswith(".pth.tar") else os.path.splitext(out)[0]
  return f"{base}.{module}.safetensors"


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  export_checkpoint(f.workdir, f.out, step=None if f.step < 0 else f.step, dtype=f.dtype,
                    write_safetensors=f.safetensors, with_optimizer=f.with_optimizer, world_size=f.world_size)


if __name__ == "__main__":
  from absl import flags
  sys.argv = [a.replace("--with-optimizer", "--with_optimizer") for a in sys.argv]
  flags.DEFINE_string("workdir", None, "Run folder holding checkpoints/ (and config.json).")
  flags.DEFINE_integer("step", -1, "Checkpoint step; -1: the latest complete one.")
  flags.DEFINE_string("out", None, "Output file, e.g. vitl16.pth.tar.")
  flags.DEFINE_bool("safetensors", False, "Also write FILE.{encoder,predictor,target_encoder}.safetensors.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Tensor dtype in the file.")
  flags.DEFINE_bool("with_optimizer", False, "Include the AdamW moments ('opt') for an official training resume.")
  flags.DEFINE_integer("world_size", 0, "GPUs of the official run ('world_size'; batch_size = global / this); "
                       "0: the mesh size when the config fixes it, else 1.")
  flags.mark_flags_as_required(["workdir", "out"])
  from jepa_jax import cli
  cli.run(main)
