"""Official V-JEPA PyTorch checkpoint -> orbax checkpoint that `python -m jepa_jax.main` resumes or evaluates from.

  python -m jepa_jax.import_torch --checkpoint=FILE.pth.tar|FILE.safetensors --config=configs/X.py --workdir=DIR
      [--only_target] [--config.x=y ...]

The file is read with torch.load(weights_only=True) (or safetensors), 'module.' and 'backbone.' prefixes are
stripped, and every key and shape is checked against the model the config builds. 'epoch' sets the train step to
epoch * ipe so the lr / wd / EMA schedules continue where the PyTorch run stopped (the official resume fast-forwards
its schedulers the same way, §4.6); 'opt' (AdamW state, 4 groups, §4.1) fills our Adam moments, else the optimizer
starts fresh. --only_target: an encoder-only file (released eval checkpoints; 'target_encoder' or 'encoder'), used
as both encoder and target encoder, with a freshly initialised predictor.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jepa_jax import checkpointing, export, optim, torch_layout, train_state
from jepa_jax.models import MODEL_SIZES


class CheckpointFormatError(ValueError):
  """The file is not a V-JEPA checkpoint this config can use; the message says why and what it holds."""




def describe_encoder(sd: Mapping[str, Any]) -> str:
  """'width 1024, depth 24, 1568 tokens (vit_large)' from the keys and shapes of an encoder state_dict."""
  width = tuple(sd["patch_embed.proj.weight"].shape)[0] if "patch_embed.proj.weight" in sd else None
  depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
  tokens = tuple(sd["pos_embed"].shape)[1] if "pos_embed" in sd else None
  names = [n for n, size in MODEL_SIZES.items() if (size.embed_dim, size.depth) == (width, depth)]
  return (f"width {width}, depth {depth}" + (f", {tokens} tokens" if tokens else "")
          + (f" ({' or '.join(names)})" if names else " (no zoo model has these dimensions)"))


def strip_prefixes(sd: Mapping[str, Any]) -> dict:
  """Removes the DDP 'module.' and wrapper 'backbone.' prefixes, as the official eval loader does."""
  out = {}
  for k, v in sd.items():
    for prefix in ("module.", "backbone."):
      if k.startswith(prefix):
        k = k[len(prefix):]
    out[k] = v
  return out


def read_file(path: str) -> dict:
  """The checkpoint dict: {'encoder', 'predictor', 'target_encoder', 'opt', 'epoch', ...} (whatever it holds).

  A .safetensors file is one module's state_dict; FILE.<module>.safetensors siblings written by export are read
  together.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint file {path}")
  if path.endswith(".safetensors"):
    from safetensors import safe_open
    base = path[:-len(".safetensors")]
    stem, _, module = base.rpartition(".")
    if module not in export.MODULES:
      stem, module = base, "target_encoder"
    ckpt = {}
    for m in export.MODULES:
      p = f"{stem}.{m}.safetensors" if m != module else path
      if not os.path.exists(p):
        continue
      try:
        with safe_open(p, framework="np") as f:
          ckpt[m] = {k: f.get_tensor(k) for k in f.keys()}
          meta = f.metadata() or {}
      except Exception as e:
        raise CheckpointFormatError(f"{p} cannot be read as safetensors (truncated or corrupt?): {e}") from e
      if "epoch" in meta:
        ckpt["epoch"] = int(meta["epoch"])
    return ckpt
  import torch
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise CheckpointFormatError(
        f"{path} cannot be read by torch.load(weights_only=True) (truncated or corrupt download, or not a "
        f"PyTorch checkpoint): {type(e).__name__}: {str(e)[:300]}") from e
  if not isinstance(ckpt, Mapping):
    raise CheckpointFormatError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
  return dict(ckpt)


def _check_backbone_file(path: str, ckpt: Mapping[str, Any], only_target: bool) -> None:
  from jepa_jax.evaluation import probe_files
  if probe_files.is_probe_checkpoint(ckpt) and not any(m in ckpt for m in export.MODULES):
    raise CheckpointFormatError(
        f"{path} is an attentive-probe checkpoint, not a backbone: "
        f"{probe_files.describe_checkpoint(ckpt, path)}, and no encoder (official issue #43). Pass the pretrained "
        "backbone file (e.g. vitl16.pth.tar, vitl.pt) instead; to evaluate these probes, give the file as "
        "--config.eval.probe_checkpoint of an eval config.")
  wanted = ("target_encoder", "encoder") if only_target else export.MODULES
  have = [m for m in wanted if isinstance(ckpt.get(m), Mapping)]
  if (only_target and not have) or (not only_target and len(have) != len(wanted)):
    hint = "" if only_target or not any(isinstance(ckpt.get(m), Mapping) for m in ("encoder", "target_encoder")) \
        else "; for an encoder-only file pass --only_target"
    raise CheckpointFormatError(
        f"{path} lacks {sorted(set(wanted) - set(have))} (it has keys {sorted(ckpt)}){hint}")


def _convert(sd: Mapping[str, Any], template, *, scanned: bool, what: str, config) -> dict:
  """One state_dict -> our pure dict; a file from another model size gets a message naming both sizes."""
  if what != "predictor":
    want = tuple(template["patch_embed"]["proj"]["kernel"].shape)[-1]
    depth = len(template["blocks"]) if not scanned else next(iter(jax.tree.leaves(template["blocks"]))).shape[0]
    got_w = tuple(sd["patch_embed.proj.weight"].shape)[0] if "patch_embed.proj.weight" in sd else None
    got_d = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if (got_w, got_d) != (want, depth):
      raise CheckpointFormatError(
          f"the file's {what} is {describe_encoder(sd)}, but the config builds {config.model.name} with width "
          f"{want}, depth {depth}. Use the config of the file's model size (e.g. configs/vitl16.py for vit_large, "
          "configs/vith16.py for vit_huge) or set --config.model.name.")
  try:
    return torch_layout.from_torch_state_dict(sd, template, scanned=scanned)
  except ValueError as e:
    raise CheckpointFormatError(f"{what}: {e}") from e


def _with_counts(opt_state, step: int, adam_count: int):
  """Every optimizer counter set to `step` (schedules, clipping switch), Adam's bias-correction count to
  `adam_count` (0 for fresh moments, as a fresh torch AdamW)."""
  import optax
  adam = export.adam_state(opt_state)

  def fix(s):
    if s is adam:
      return s._replace(count=jnp.asarray(adam_count, s.count.dtype))
    if hasattr(s, "_replace") and hasattr(s, "count"):
      return s._replace(count=jnp.asarray(step, s.count.dtype))
    return s

  return jax.tree.map(fix, opt_state, is_leaf=lambda s: hasattr(s, "_fields") or isinstance(s, optax.EmptyState))


def moments_from_torch(opt: Mapping[str, Any], params: Mapping[str, Any], *, scanned: bool):
  """The official AdamW state_dict -> (mu, nu, step) in our params layout (same mapping as torch_optimizer_state)."""
  flat = {m: torch_layout.to_torch_state_dict(params[m], scanned=scanned) for m in ("encoder", "predictor")}
  ndims = {m: {k: v.ndim for k, v in flat[m].items()} for m in flat}
  ndims["encoder"]["pos_embed"] = ndims["predictor"]["predictor_pos_embed"] = 3
  groups = export.param_groups(ndims["encoder"], ndims["predictor"])
  saved = opt.get("param_groups", [])
  expected = [len(g) for g in groups]
  if [len(g.get("params", ())) for g in saved] != expected:
    raise CheckpointFormatError(
        f"'opt' has param groups of sizes {[len(g.get('params', ())) for g in saved]}, the official AdamW groups "
        f"of this model have {expected}")
  mu = {"encoder": {}, "predictor": {}}
  nu = {"encoder": {}, "predictor": {}}
  steps = set()
  state = opt["state"]
  for group, members in zip(saved, groups):
    for index, (module, key) in zip(group["params"], members):
      if key in torch_layout.POS_EMBED_KEYS:
        continue
      if index not in state:
        raise CheckpointFormatError(f"'opt' has no state for parameter {index} ({module}.{key})")
      entry = state[index]
      mu[module][key], nu[module][key] = entry["exp_avg"], entry["exp_avg_sq"]
      steps.add(int(float(entry["step"])))
  if len(steps) > 1:
    logging.warning("AdamW steps differ between parameters (%s); using the largest.", sorted(steps))
  convert = lambda d, m: torch_layout.from_torch_state_dict(d, params[m], scanned=scanned)
  return ({m: convert(mu[m], m) for m in mu}, {m: convert(nu[m], m) for m in nu}, max(steps) if steps else 0)


def import_checkpoint(path: str, config, workdir: str, *, only_target: bool = False) -> dict:
  """Converts `path` and writes WORKDIR/checkpoints/<step> and WORKDIR/config.json; returns the train state."""
  ckpt = read_file(path)
  _check_backbone_file(path, ckpt, only_target)
  scanned = bool(config.model.scan_layers)
  defs = train_state.model_defs(config)
  template = train_state.abstract_param_shapes(defs)
  tx = optim.make_optimizer(config.optim)

  if only_target:
    source = "target_encoder" if isinstance(ckpt.get("target_encoder"), Mapping) else "encoder"
    encoder = _convert(strip_prefixes(ckpt[source]), template["encoder"], scanned=scanned, what=source, config=config)
    predictor = train_state.init_params(config, int(config.seed))["predictor"]
    logging.warning("Import: --only_target: '%s' is used as encoder and target encoder; the predictor is freshly "
                    "initialised (seed %d) and the optimizer starts fresh.", source, config.seed)
    params = {"encoder": encoder, "predictor": jax.tree.map(np.asarray, predictor)}
    target = jax.tree.map(np.copy, encoder)
  else:
    params = {m: _convert(strip_prefixes(ckpt[m]), template[m], scanned=scanned, what=m, config=config)
              for m in ("encoder", "predictor")}
    target = _convert(strip_prefixes(ckpt["target_encoder"]), template["encoder"], scanned=scanned, what="target_encoder",
                      config=config)

  epoch = ckpt.get("epoch")
  step = int(epoch) * int(config.optim.ipe) if epoch is not None else 0
  if epoch is None:
    logging.warning("Import: the file has no 'epoch'; the run starts at step 0 (schedules from the start).")
  else:
    logging.info("Import: epoch %d -> step %d (ipe %d); schedules continue from there.", epoch, step,
                 config.optim.ipe)

  params = jax.tree.map(jnp.asarray, params)
  opt_state = tx.init(params)
  opt = ckpt.get("opt")
  if opt and not only_target:
    mu, nu, adam_step = moments_from_torch(opt, params, scanned=scanned)
    adam = export.adam_state(opt_state)
    new_adam = adam._replace(mu=jax.tree.map(jnp.asarray, mu), nu=jax.tree.map(jnp.asarray, nu))
    opt_state = jax.tree.map(lambda s: new_adam if s is adam else s, opt_state,
                             is_leaf=lambda s: s is adam)
    opt_state = _with_counts(opt_state, step, adam_step)
    logging.info("Import: AdamW moments imported (AdamW step %d).", adam_step)
  else:
    opt_state = _with_counts(opt_state, step, 0)
    logging.warning("Import: no optimizer state in the file%s; the optimizer starts fresh (zero moments).",
                    " used (--only_target)" if only_target and opt else "")

  state = train_state.state_from_params(params, tx, target_encoder=jax.tree.map(jnp.asarray, target),
                                        opt_state=opt_state, step=step)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with checkpointing.Checkpointer(workdir, async_save=False) as ckptr:
    if step in ckptr.all_steps():
      raise FileExistsError(f"{ckptr.directory} already has step {step}; use an empty --workdir")
    ckptr.save(step, state, config=config, force=True)
  logging.info("Import: wrote %s/checkpoints/%d. Continue with: python -m jepa_jax.main --config=... --workdir=%s",
               workdir, step, workdir)
  return state


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  import_checkpoint(f.checkpoint, f.config, f.workdir, only_target=f.only_target)


if __name__ == "__main__":
  from absl import flags
  from jepa_jax import config_files
  sys.argv = [a.replace("--only-target", "--only_target") for a in sys.argv]
  config_files.DEFINE_config("config", "Config file or shipped config name (e.g. vitl16) of the model in the file.")
  flags.DEFINE_string("checkpoint", None, "Official .pth.tar (or .safetensors) file.")
  flags.DEFINE_string("workdir", None, "Run folder to create (checkpoints/ and config.json).")
  flags.DEFINE_bool("only_target", False, "Encoder-only file: encoder = target = its target_encoder (or encoder); "
                    "predictor freshly initialised.")
  flags.mark_flags_as_required(["checkpoint", "config", "workdir"])
  from jepa_jax import cli
  cli.run(main)
