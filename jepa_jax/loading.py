"""Every source of a frozen encoder -> (config, params): the one way the package loads an encoder.

  encoder = jepa_jax.load_encoder(source, config=None, which="target", step=None)     # -> encoder.Encoder

source is one of:
- a run of ours (local or gs://): WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/<step>; `step` picks a
  checkpoint (default: the latest complete one). Only the wanted encoder is read (orbax partial restore).
- a file, read by the first entry of FILE_READERS that claims it: an official V-JEPA 1 PyTorch checkpoint
  (.pth.tar: 'encoder' / 'target_encoder' state_dicts, keys under 'module.'), an official V-JEPA 2 file (vitl.pt,
  vith.pt, vitg.pt, vitg-384.pt: the same keys, RoPE, a stale table ignored), a Hugging Face V-JEPA 2 safetensors
  (facebook/vjepa2-*: model.safetensors, config.json beside it), or the safetensors files that
  `python -m jepa_jax.export --safetensors` writes (FILE.<module>.safetensors, `which` picks the sibling).
  Another file layout is one more FileReader in that list.

Where a run's config comes from (the one rule, for every reader of a run: load_encoder, export, extract,
visualize): the checkpoint step's own copy of the config, which the Checkpointer writes into every step after every
command-line override and after the loop's own changes (e.g. the synthetic data lists); WORKDIR/config.json only
for runs whose steps carry none (runs older than that copy), with a warning.

config (a ConfigDict, a config file path, or a shipped config name such as "vitl16"; a full config or just its
.model) is the model to build. It is needed only where the source does not say the model: a run says it, our
safetensors say it (metadata), an official PyTorch file says it through its tensor shapes when exactly one zoo
model has them (jepa_jax/models/vit.py) and its positional table gives the clip size. Where the source says the
model, a given config must describe the same network (width, depth, heads, MLP, patch, tubelet, positional
encoding: checked, EncoderSourceError otherwise; a V-JEPA 2 file under a 'sincos' config, or the reverse, is refused) and its run-time fields apply: dtype, crop_size and num_frames
(the built grid; the official evaluation builds the encoder at its own resolution), scan_layers, remat, attention.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jepa_jax import checkpoint_files
from jepa_jax import checkpointing
from jepa_jax import config_files
from jepa_jax import models
from jepa_jax import torch_layout
from jepa_jax.encoder import Encoder, encoder_template, local_mesh
from jepa_jax.models import layers
from jepa_jax.models.vit import MODEL_SIZES

# which= -> the checkpoint entry (official key names; ours are the same).
WHICH = {"target": "target_encoder", "target_encoder": "target_encoder", "encoder": "encoder",
         "context": "encoder"}
# Model fields that change what an encoder computes from the same parameters (beyond the dimensions).
POSITION_FIELDS = ("uniform_power", "pos_embed")


class EncoderSourceError(ValueError):
  """The source cannot give the encoder asked for; the message says what it holds and what to pass instead."""


class ModelConfigNeeded(EncoderSourceError):
  """The file does not say which model it holds (no zoo model, or several, has its shapes): pass config=."""


# ============================================================================================== the front door

def load_encoder(source, *, config=None, which: str = "target", step: int | None = None) -> Encoder:
  """The frozen encoder in `source` (a run folder or a checkpoint file), ready to encode(). See the module doc."""
  key = checkpoint_key(which)
  wanted = with_model_defaults(model_config_of(resolve_config(config))) if config is not None else None
  source = os.fspath(source)
  run = find_run(source)
  if run is not None:
    workdir, path_step = run
    if step is not None and path_step is not None and step != path_step:
      raise EncoderSourceError(f"{source} names step {path_step} but step={step} was passed")
    run_config, params, at_step = _from_run(workdir, key, wanted, path_step if step is None else step)
    return Encoder(run_config, params, source=os.fspath(workdir), which=key, step=at_step)
  if step is not None:
    raise EncoderSourceError(f"step={step} is for run folders; {source} is a file (it holds one checkpoint)")
  model, params = _from_file(source, key, wanted)
  return Encoder(ml_collections.ConfigDict({"model": model.to_dict()}), params, source=source, which=key)


def checkpoint_key(which: str) -> str:
  if which not in WHICH:
    raise EncoderSourceError(f"which={which!r}; use 'target' (the EMA target encoder, what the official "
                             "evaluations read) or 'encoder' (the context encoder)")
  return WHICH[which]


# ============================================================================================== configs

def resolve_config(config) -> ml_collections.ConfigDict:
  """A ConfigDict from a ConfigDict or mapping, a JSON file (a run's config.json), or what --config takes: a config
  file or the name of a shipped config ("demo", "vitl16", "eval/vitl16_k400"; jepa_jax/config_files.py)."""
  if isinstance(config, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(config.to_dict())
  if isinstance(config, Mapping):
    return ml_collections.ConfigDict(dict(config))
  if not isinstance(config, (str, os.PathLike)):
    raise EncoderSourceError(f"config={config!r}: pass a ConfigDict, a config file path or a shipped config name")
  name = os.fspath(config)
  if name.endswith(".json") and os.path.isfile(name):
    with open(name) as f:
      return ml_collections.ConfigDict(json.load(f))
  try:
    return config_files.load(name)
  except ValueError as e:
    raise EncoderSourceError(f"config={name!r}: {e}") from None


def model_config_of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.model of a full config; a bare model config (it has 'name' and 'patch_size') as it is."""
  if "model" in config:
    return ml_collections.ConfigDict(config.model.to_dict())
  if "name" in config and "patch_size" in config:
    return ml_collections.ConfigDict(config.to_dict())
  raise EncoderSourceError(f"the config has neither .model nor the model fields (it has {sorted(config)})")


def default_model_config() -> ml_collections.ConfigDict:
  """The shared defaults of config.model (configs/default.py), computing in float32: the base of a model read
  from a file. float32 gives the file's numbers exactly on any chip; pass config= for bfloat16 compute."""
  model = model_config_of(config_files.load("default"))
  model.dtype = "float32"
  return model


def with_model_defaults(model) -> ml_collections.ConfigDict:
  """`model` completed by the defaults of the fields it lacks (a run saved before a field existed)."""
  full = model_config_of(config_files.load("default"))
  full.update(model.to_dict())
  return full


_NETWORK = ("embed_dim", "depth", "num_heads", "mlp_hidden", "patch_size", "tubelet_size")


def network_dims(model_cfg) -> dict:
  """What fixes an encoder's parameters and positions: width, depth, heads, MLP width, patch, tubelet
  (models.model_dims: the zoo's sizes with config.model's overrides) and the POSITION_FIELDS."""
  dims = models.model_dims(model_cfg)
  return {**{k: getattr(dims, k) for k in _NETWORK}, **{k: model_cfg.get(k) for k in POSITION_FIELDS}}


# The config.model field that sets each dimension, for messages.
_DIM_FIELDS = {"embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads", "mlp_hidden": "name",
               "patch_size": "patch_size", "tubelet_size": "tubelet_size",
               **{k: k for k in POSITION_FIELDS}}


def check_same_network(wanted, found, where: str) -> None:
  """Raises EncoderSourceError naming every config.model field whose network differs from the one `where` holds."""
  a, b = network_dims(wanted), network_dims(found)
  diff = [k for k in a if a[k] != b[k]]
  if diff:
    raise EncoderSourceError(
        f"the encoder in {where} is another model: " + "; ".join(
            f"config.model.{_DIM_FIELDS[k]}={wanted.get(_DIM_FIELDS[k])!r} gives {k} {a[k]} but {where} has "
            f"{b[k]}" for k in diff) +
        f". Use the config of that model ({found.name}) or leave config out to use the one it was trained with.")


# ============================================================================================== runs

def find_run(source) -> tuple[epath.Path, int | None] | None:
  """(workdir, step named by the path or None) when `source` is a run folder of ours, else None."""
  path = epath.Path(source)
  if path.name.isdigit() and path.parent.name == "checkpoints":
    return path.parent.parent, int(path.name)
  if path.name == "checkpoints" and path.is_dir():
    return path.parent, None
  if (path / "checkpoints").is_dir():
    return path, None
  if path.is_dir():
    if path.name == "probe_best" or (path / "probe_best").is_dir():
      raise EncoderSourceError(
          f"{source} holds an attentive-probe checkpoint (probe_best), not a pretrained encoder (the official eval "
          "fails the same way with KeyError 'target_encoder', issue #43). Pass the pretraining run (the folder with "
          "checkpoints/) or an official backbone file such as vitl16.pth.tar.")
    raise EncoderSourceError(f"{source} is a folder without checkpoints/: not a run of ours (train one with "
                             "python -m jepa_jax.main, or import a file with python -m jepa_jax.import_torch)")
  return None


def read_run_config(workdir, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
  """(config, step) of a run: the step's own copy of the config, else WORKDIR/config.json (module doc)."""
  workdir = epath.Path(workdir)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False, read_only=True)
  try:
    steps = sorted(ckpt.all_steps())
    if not steps:
      raise EncoderSourceError(f"no complete checkpoint in {ckpt.directory}: train first (python -m "
                               "jepa_jax.main --config=... --workdir=...) or pass a run that has one")
    if step is None:  # the newest step that looks whole: a damaged newer one is reported and skipped
      step = checkpointing.newest_whole_step(ckpt.directory, steps)
    elif step not in steps:
      raise EncoderSourceError(f"{ckpt.directory} has no complete checkpoint at step {step}; it has {steps}")
    try:
      return ml_collections.ConfigDict(ckpt.restore_config(step)), int(step)
    except KeyError:  # a step saved before checkpoints carried the config
      pass
  finally:
    ckpt.close()
  path = workdir / "config.json"
  if not path.exists():
    raise EncoderSourceError(f"step {step} of {workdir} carries no config and there is no {path}: cannot tell "
                             "which model it holds")
  logging.warning("%s step %d carries no copy of the config; reading %s (written at the start of the run, before "
                  "the loop's own changes).", workdir, step, path)
  return ml_collections.ConfigDict(json.loads(path.read_text())), int(step)


def run_state_template(config, entries: Sequence[str], sharding=None) -> dict:
  """Abstract leaves of the named train-state entries, laid out as the run saved them (its scan_layers).

  entries: 'step', 'encoder' and 'predictor' (under 'params'), 'target_encoder', 'opt_state'. `sharding` (one
  jax Sharding for every leaf) places the restored arrays; None: this process's first device.
  """
  from jepa_jax import optim, train_state  # the predictor and optimizer only for the entries that need them
  unknown = set(entries) - {"step", "encoder", "predictor", "target_encoder", "opt_state"}
  if unknown:
    raise ValueError(f"unknown train-state entries {sorted(unknown)}")
  sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  if {"predictor", "opt_state"} & set(entries):
    shapes = train_state.abstract_param_shapes(train_state.model_defs(config))
  else:
    shapes = {"encoder": jax.tree.map(sds, nnx.to_pure_dict(encoder_template(config.model)[1]))}
  tree: dict[str, Any] = {}
  if "step" in entries:
    tree["step"] = jax.ShapeDtypeStruct((), jnp.int32)
  params = {m: shapes[m] for m in ("encoder", "predictor") if m in entries}
  if params:
    tree["params"] = params
  if "target_encoder" in entries:
    tree["target_encoder"] = shapes["encoder"]
  if "opt_state" in entries:
    tree["opt_state"] = jax.eval_shape(optim.make_optimizer(config.optim).init, shapes)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def read_run(workdir, entries: Sequence[str] = ("target_encoder",), *, step: int | None = None, config=None,
             sharding=None) -> tuple[ml_collections.ConfigDict, int, dict]:
  """(config, step, state) of a run: the named train-state entries at `step` (latest complete by default) and the
  run's config (read_run_config unless given). Nothing else is read: no optimizer moments unless asked."""
  if config is None:
    config, step = read_run_config(workdir, step)
  elif step is None:
    step = read_run_config(workdir)[1]
  template = run_state_template(config, entries, sharding)
  try:
    state = checkpointing.restore_params_only(os.fspath(workdir), template, step=step)
  except FileNotFoundError as e:
    raise EncoderSourceError(f"{workdir}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  # a damaged step: say which, and what else to read
    raise EncoderSourceError(f"{workdir} step {step} cannot be read ({checkpointing.describe_error(e)}); pass "
                             "another step (step= / --step=)") from e
  return config, int(step), state


def _from_run(workdir, key: str, wanted, step):
  config, step = read_run_config(workdir, step)
  saved = config.model = with_model_defaults(config.model)
  if wanted is not None:
    check_same_network(wanted, saved, f"the run {workdir}")
  model = wanted if wanted is not None else saved
  entry = "target_encoder" if key == "target_encoder" else "encoder"
  replicated = NamedSharding(local_mesh(), P())
  _, step, state = read_run(workdir, (entry,), step=step, config=config, sharding=replicated)
  params = state["target_encoder"] if entry == "target_encoder" else state["params"]["encoder"]
  params = _to_layout(params, saved_scanned=bool(saved.scan_layers), scanned=bool(model.scan_layers))
  config.model = model
  logging.info("Loaded the %s of %s at step %d (%s).", key, workdir, step, model.name)
  return config, params, step


def _to_layout(params, *, saved_scanned: bool, scanned: bool):
  """Blocks stacked (scan_layers) or listed, as the model to build wants them."""
  if saved_scanned == scanned:
    return params
  return torch_layout.stack_layers(params) if scanned else torch_layout.unstack_layers(params)


# ============================================================================================== files

@dataclasses.dataclass(frozen=True)
class EncoderFile:
  """One encoder as a file reader finds it."""
  state_dict: Mapping[str, np.ndarray]  # official encoder keys ('patch_embed.proj.weight', ...), no prefixes
  model: Mapping[str, Any] | None  # config.model fields the file states; None: infer them from the tensors
  description: str  # e.g. "vitl16.pth.tar['target_encoder']", for messages
  # The positional scheme the file shows ('sincos' V-JEPA 1, 'rope' V-JEPA 2), None where it cannot tell (an
  # encoder-only file with a table: jepa_jax/checkpoint_files.py). A given config must agree with it.
  pos_embed: str | None = None
  summary: str = ""  # what the whole file holds and which configs fit it (checkpoint_files.describe_with_fits)


@dataclasses.dataclass(frozen=True)
class FileReader:
  """A checkpoint file layout: whether it claims a path, how to read an encoder from it, and how to tell the model
  from that encoder's tensors when the file does not state it."""
  name: str
  claims: Callable[[str], bool]
  read: Callable[[str, str], EncoderFile]  # (path, checkpoint key) -> EncoderFile
  infer_model: Callable[[Mapping[str, np.ndarray], str], dict]  # (state_dict, description) -> config.model fields


def _from_file(path: str, key: str, wanted):
  if not os.path.exists(path):
    raise EncoderSourceError(f"{path} does not exist (expected a run folder of ours or a checkpoint file)")
  reader = next((r for r in FILE_READERS if r.claims(path)), None)
  if reader is None:
    raise EncoderSourceError(f"{path}: no reader claims this file; readable: "
                             + "; ".join(r.name for r in FILE_READERS))
  found = reader.read(path, key)
  if wanted is not None:
    want_scheme = wanted.get("pos_embed", "sincos")
    if found.pos_embed is not None and found.pos_embed != want_scheme:
      generation = "V-JEPA 2 (RoPE)" if found.pos_embed == "rope" else "V-JEPA 1 (sin-cos table)"
      raise EncoderSourceError(
          f"{found.description} is a {generation} encoder but config.model.pos_embed={want_scheme!r}. "
          f"The file holds {found.summary or describe_state_dict(found.state_dict)}.")
    model = wanted
  else:
    model = default_model_config()
    fields = found.model if found.model is not None else reader.infer_model(found.state_dict, found.description)
    model.update(dict(fields))
    logging.info("%s holds %s (%s).", found.description, model.name,
                 ", ".join(f"{k}={v}" for k, v in sorted(fields.items()) if k != "name"))
  if model.get("pos_embed", "sincos") == "rope" and "pos_embed" in found.state_dict:
    logging.warning("%s: ignored its stale pos_embed %s: V-JEPA 2 files carry it although the RoPE model has none.",
                    found.description, list(np.shape(found.state_dict["pos_embed"])))
  _, abstract = encoder_template(model)
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract))
  try:
    params = torch_layout.from_torch_state_dict(found.state_dict, template, scanned=bool(model.scan_layers))
  except ValueError as e:
    raise EncoderSourceError(
        f"{found.description} is {describe_state_dict(found.state_dict)}, but config.model builds {model.name} "
        f"({_describe_dims(network_dims(model))}). Pass the config of the file's model.\n{e}") from None
  return model, params


def _strip_prefixes(sd: Mapping[str, Any]) -> dict:
  """Numpy arrays under the official keys: the DDP 'module.' and wrapper 'backbone.' prefixes removed."""
  return {k: checkpoint_files.to_numpy(v) for k, v in checkpoint_files.strip_prefixes(sd).items()}


# --- official V-JEPA 1 PyTorch checkpoints ----------------------------------------------------------------------

_TORCH_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")


def _claims_torch(path: str) -> bool:
  if path.endswith(_TORCH_SUFFIXES):
    return True
  with open(path, "rb") as f:
    head = f.read(4)
  return head == b"PK\x03\x04" or head[:1] == b"\x80"  # torch.save's zip archive, or a legacy pickle


def _load_torch(path: str) -> dict:
  """The checkpoint dict of a PyTorch file, memory-mapped where the format allows (only the tensors used are read)."""
  from jepa_jax import import_torch
  try:
    import torch
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception:  # pylint: disable=broad-except  (legacy formats cannot be mapped; read_file says what is wrong)
    return import_torch.read_file(path)
  if not isinstance(ckpt, Mapping):
    return import_torch.read_file(path)  # raises CheckpointFormatError naming what it holds
  return dict(ckpt)


def _read_torch(path: str, key: str) -> EncoderFile:
  from jepa_jax import import_torch
  ckpt = _load_torch(path)  # CheckpointFormatError (a ValueError) for unreadable files
  if not isinstance(ckpt.get(key), Mapping):
    message = import_torch.probe_file_message(path, ckpt)
    if message:
      raise EncoderSourceError(message)
    other = [k for k in ("target_encoder", "encoder") if isinstance(ckpt.get(k), Mapping)]
    hint = f"; pass which={'target' if other[0] == 'target_encoder' else 'encoder'!r}" if other else ""
    raise EncoderSourceError(f"{path} has no {key!r} (it holds {sorted(ckpt)}){hint}")
  if checkpoint_files.looks_vjepa2(ckpt):
    scheme = "rope"
  else:  # a table and a V-JEPA 1 predictor say V-JEPA 1; an encoder alone with a table could be either
    scheme = "sincos" if isinstance(ckpt.get("predictor"), Mapping) else None
  summary = checkpoint_files.describe_with_fits(ckpt)
  return EncoderFile(_strip_prefixes(ckpt[key]), None, f"{path}[{key!r}]", scheme, summary)


def _claims_vjepa2_torch(path: str) -> bool:
  """A PyTorch file in a V-JEPA 2 layout (no position table, or the release's 10 mask tokens)."""
  if not _claims_torch(path):
    return False
  try:
    return checkpoint_files.looks_vjepa2(_load_torch(path))
  except Exception:  # pylint: disable=broad-except  (unreadable: the V-JEPA 1 reader reports it)
    return False


# --- Hugging Face V-JEPA 2 safetensors (facebook/vjepa2-*) ------------------------------------------------------

def _read_hf(path: str, key: str) -> EncoderFile:
  """The encoder of a Hugging Face V-JEPA 2 file; its config.json (when beside it) states the model."""
  ckpt = checkpoint_files.read_hf_file(path)
  if "encoder" not in ckpt or not ckpt["encoder"]:
    raise EncoderSourceError(f"{path} has Hugging Face V-JEPA 2 keys but no encoder")
  if key == "target_encoder":
    logging.info("%s holds one encoder (the release's 'encoder'; Hugging Face files have no target encoder): "
                 "using it for which='target'.", path)
  model = None
  if "hf_config" in ckpt:
    model = _hf_model(checkpoint_files.hf_model_fields(ckpt["hf_config"]), ckpt["encoder"], path)
  return EncoderFile(ckpt["encoder"], model, f"{path} (Hugging Face)", "rope", checkpoint_files.describe(ckpt))


def _hf_model(fields: Mapping[str, Any], sd: Mapping[str, np.ndarray], path: str) -> dict:
  """config.model fields from a transformers config.json: the zoo model of those sizes, else explicit sizes."""
  dims = state_dict_dims(sd)
  names = [n for n in checkpoint_files.v2_zoo_name(checkpoint_files.zoo_names(dims))
           if MODEL_SIZES[n].num_heads == fields["num_heads"]]
  encoder = {k: fields[k] for k in ("patch_size", "tubelet_size", "num_frames", "crop_size")}
  size = ({"name": names[0]} if len(names) == 1 else
          {"name": "vit_large", "embed_dim": fields["embed_dim"], "depth": fields["depth"],
           "num_heads": fields["num_heads"]})
  if len(names) != 1 and dims["mlp_hidden"] != 4 * fields["embed_dim"]:
    raise ModelConfigNeeded(f"{path}: no zoo model has width {dims['embed_dim']}, depth {dims['depth']}, MLP "
                            f"{dims['mlp_hidden']} and {fields['num_heads']} heads; pass config=.")
  return {**size, **encoder, **_V2_FIELDS}


# --- safetensors written by python -m jepa_jax.export --safetensors ---------------------------------------------

EXPORT_MODULES = ("encoder", "predictor", "target_encoder")
SAFETENSORS_MODEL_KEY = "model"  # metadata entry: JSON of the run's config.model (written by export)


def _read_export_safetensors(path: str, key: str) -> EncoderFile:
  """FILE.<module>.safetensors of an export is one checkpoint with its siblings: `which` picks the module file; a
  file without a module suffix is a single encoder."""
  from safetensors import safe_open
  stem, _, module = path[:-len(".safetensors")].rpartition(".")
  if module in EXPORT_MODULES:
    path = f"{stem}.{key}.safetensors"
    if not os.path.exists(path):
      raise EncoderSourceError(f"{path} does not exist: the export beside it has no {key!r} file")
  try:
    with safe_open(path, framework="np") as f:
      sd = {k: f.get_tensor(k) for k in f.keys()}
      meta = dict(f.metadata() or {})
  except Exception as e:  # pylint: disable=broad-except  (safetensors raises its own untyped errors)
    raise EncoderSourceError(f"{path} cannot be read as safetensors (truncated or corrupt?): {e}") from None
  if meta.get("module") == "predictor":
    raise EncoderSourceError(f"{path} is a predictor, not an encoder")
  model = json.loads(meta[SAFETENSORS_MODEL_KEY]) if SAFETENSORS_MODEL_KEY in meta else None
  scheme = model.get("pos_embed", "sincos") if model is not None else None
  return EncoderFile(_strip_prefixes(sd), model, path, scheme)


# --- the model from a V-JEPA 1 encoder's tensors ---------------------------------------------------------------

def state_dict_dims(sd: Mapping[str, np.ndarray]) -> dict:
  """Width, depth, MLP width, patch and tubelet of an encoder state_dict (checkpoint_files.encoder_dims), or an
  EncoderSourceError saying it is not one."""
  dims = checkpoint_files.encoder_dims(sd)
  if dims is None:
    raise EncoderSourceError(f"not a V-JEPA encoder state_dict: no patch_embed.proj.weight / blocks.0.mlp.fc1.weight "
                             f"(keys {sorted(sd)[:8]}...)")
  return dims


def _describe_dims(dims: Mapping[str, Any]) -> str:
  return (f"width {dims['embed_dim']}, depth {dims['depth']}, MLP {dims['mlp_hidden']}, patch {dims['patch_size']}, "
          f"tubelet {dims['tubelet_size']}")


def describe_state_dict(sd: Mapping[str, np.ndarray]) -> str:
  """'width 1024, depth 24, MLP 4096, patch 16, tubelet 2 (vit_large)' for messages."""
  dims = state_dict_dims(sd)
  names = checkpoint_files.zoo_names(dims)
  return _describe_dims(dims) + (f" ({' or '.join(names)})" if names else " (no zoo model has these dimensions)")


def _grid_from_pos_embed(table: np.ndarray, dims: Mapping[str, int]) -> list[tuple[int, int, bool]]:
  """Every (num_frames, crop_size, uniform_power) whose sin-cos table equals the file's positional table."""
  n, width = table.shape[-2:]
  table = np.asarray(table, np.float32).reshape(n, width)
  found = []
  for t in range(1, n + 1):
    if n % t:
      continue
    side = math.isqrt(n // t)
    if side * side != n // t:
      continue
    for uniform_power in (True, False):
      ours = layers.get_3d_sincos_pos_embed(width, t, side, uniform_power)
      if np.allclose(ours, table, atol=1e-4):
        found.append((t * dims["tubelet_size"], side * dims["patch_size"], uniform_power))
  return found


def infer_v1_model(sd: Mapping[str, np.ndarray], description: str) -> dict:
  """config.model fields of a V-JEPA 1 encoder from its tensors: the zoo model with its width, depth and MLP (heads
  do not show in shapes, so exactly one zoo model must match), and the clip size whose sin-cos table is the file's
  pos_embed. Raises ModelConfigNeeded otherwise."""
  dims = state_dict_dims(sd)
  names = checkpoint_files.zoo_names(dims)
  ask = ("Pass config= naming the model: a config file, a shipped config name (e.g. 'vitl16'), or a ConfigDict "
         "with model.name (and model.embed_dim / depth / num_heads for custom sizes).")
  if len(names) != 1:
    why = "no zoo model has these dimensions" if not names else f"several zoo models do ({', '.join(names)})"
    raise ModelConfigNeeded(f"{description} holds an encoder of {_describe_dims(dims)}: {why}, and the number of "
                            f"heads does not show in the tensors. {ask}")
  if "pos_embed" not in sd:
    raise ModelConfigNeeded(f"{description} ({names[0]}) has no pos_embed to read the clip size from. {ask}")
  grids = _grid_from_pos_embed(sd["pos_embed"], dims)
  if len(grids) != 1:
    raise ModelConfigNeeded(f"{description} ({names[0]}): its pos_embed {tuple(np.shape(sd['pos_embed']))} is "
                            f"{'no' if not grids else 'more than one'} sin-cos table of a known clip size. {ask}")
  num_frames, crop_size, uniform_power = grids[0]
  return {"name": names[0], "patch_size": dims["patch_size"], "tubelet_size": dims["tubelet_size"],
          "num_frames": num_frames, "crop_size": crop_size, "uniform_power": uniform_power}


# config.model fields every V-JEPA 2 encoder has (docs/reference.md §9.1).
_V2_FIELDS = {"pos_embed": "rope", "depth_rescale_init": True}
# The official hub builds the released encoders at 64 frames (256 px, 384 for ViT-g-384); with RoPE the built size
# only sets the default clip size, any clip divisible by the patch and tubelet sizes runs.
_V2_HUB_FRAMES, _V2_HUB_CROP = 64, 256


def infer_v2_model(sd: Mapping[str, np.ndarray], description: str) -> dict:
  """config.model fields of a V-JEPA 2 encoder from its tensors: the zoo model with its width, depth and MLP
  (ViT-g is vit_giant_xformers), RoPE, and the clip size of the official hub (64 frames, 256 px) unless a stale
  table that is a sin-cos table says another. Raises ModelConfigNeeded when no single zoo model fits."""
  dims = state_dict_dims(sd)
  names = checkpoint_files.v2_zoo_name(checkpoint_files.zoo_names(dims))
  if len(names) != 1:
    why = "no zoo model has these dimensions" if not names else f"several zoo models do ({', '.join(names)})"
    raise ModelConfigNeeded(f"{description} holds a V-JEPA 2 encoder of {_describe_dims(dims)}: {why}, and the "
                            "number of heads does not show in the tensors. Pass config= naming the model (e.g. "
                            "'vjepa2/vitl16_256').")
  grid = checkpoint_files.sincos_grid(sd["pos_embed"], dims) if "pos_embed" in sd else None
  num_frames, crop_size = grid[:2] if grid else (_V2_HUB_FRAMES, _V2_HUB_CROP)
  if not grid:
    logging.info("%s: V-JEPA 2 files do not say their clip size; building %s at the hub's %d frames x %d px (RoPE "
                 "encodes any clip size; pass config= to set another default).", description, names[0], num_frames,
                 crop_size)
  return {"name": names[0], "patch_size": dims["patch_size"], "tubelet_size": dims["tubelet_size"],
          "num_frames": num_frames, "crop_size": crop_size, **_V2_FIELDS}


# The file layouts load_encoder reads, tried in order (the first whose `claims` says yes reads the file).
FILE_READERS: list[FileReader] = [
    FileReader("Hugging Face V-JEPA 2 safetensors (facebook/vjepa2-*: model.safetensors or its .index.json, "
               "config.json beside it)", checkpoint_files.is_hf_file, _read_hf, infer_v2_model),
    FileReader("safetensors of python -m jepa_jax.export --safetensors (FILE.<module>.safetensors)",
               lambda path: path.endswith(".safetensors"), _read_export_safetensors, infer_v1_model),
    FileReader("V-JEPA 2 PyTorch checkpoint (vitl.pt, vith.pt, vitg.pt, vitg-384.pt: no position table, or a "
               "predictor of 10 mask tokens)", _claims_vjepa2_torch, _read_torch, infer_v2_model),
    FileReader("V-JEPA 1 PyTorch checkpoint (.pth.tar with 'encoder' / 'target_encoder')",
               _claims_torch, _read_torch, infer_v1_model),
]
