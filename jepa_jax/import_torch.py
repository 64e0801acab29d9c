"""Official V-JEPA PyTorch checkpoint -> orbax checkpoint that `python -m jepa_jax.main` resumes or evaluates from.

  python -m jepa_jax.import_torch --checkpoint=FILE.pth.tar|FILE.pt|FILE.safetensors --config=configs/X.py
      --workdir=DIR [--only_target] [--config.x=y ...]

The file is read with torch.load(weights_only=True) (or safetensors), 'module.' and 'backbone.' prefixes are
stripped, and every key and shape is checked against the model the config builds. 'epoch' sets the train step to
epoch * ipe so the lr / wd / EMA schedules continue where the PyTorch run stopped (the official resume fast-forwards
its schedulers the same way, docs/reference.md §4.6); 'opt' (AdamW state, 4 groups, docs/reference.md §4.1) fills our
Adam moments, else the optimizer starts fresh. --only_target: an encoder-only file (released eval checkpoints;
'target_encoder' or 'encoder'), used as both encoder and target encoder, with a freshly initialised predictor.

V-JEPA 2 (a config with config.model.pos_embed='rope', e.g. configs/vjepa2/vitl16_256.py): the released vitl.pt,
vith.pt, vitg.pt, vitg-384.pt and the official training checkpoints import the same way, as do the Hugging Face
facebook/vjepa2-* safetensors (jepa_jax/checkpoint_files.py). The stale 'pos_embed' the released files carry is
ignored and reported in one line; every other key is checked. A file without 'target_encoder' starts the target as
a copy of its encoder, and says so. A file of the other generation or size is refused with one error that says what
it holds and which config fits it.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jepa_jax import checkpoint_files, checkpointing, export, models, optim, torch_layout, train_state
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


strip_prefixes = checkpoint_files.strip_prefixes


def read_file(path: str) -> dict:
  """The checkpoint dict: {'encoder', 'predictor', 'target_encoder', 'opt', 'epoch', ...} (whatever it holds).

  A .safetensors file of ours is one module's state_dict; FILE.<module>.safetensors siblings written by export are
  read together. A Hugging Face V-JEPA 2 file (model.safetensors or its .index.json) comes back as 'encoder' and
  'predictor' under the official keys (jepa_jax/checkpoint_files.py).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint file {path}")
  if checkpoint_files.is_hf_file(path):
    try:
      return checkpoint_files.read_hf_file(path)
    except ValueError as e:
      raise CheckpointFormatError(f"{path} has Hugging Face V-JEPA 2 keys but does not convert: {e}") from e
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


def probe_file_message(path: str, ckpt: Mapping[str, Any]) -> str | None:
  """The error for an attentive-probe checkpoint given where a backbone is wanted, or None for other files."""
  from jepa_jax.evaluation import probe_files
  if not probe_files.is_probe_checkpoint(ckpt) or any(isinstance(ckpt.get(m), Mapping) for m in export.MODULES):
    return None
  return (f"{path} is an attentive-probe checkpoint, not a backbone: {probe_files.describe_checkpoint(ckpt, path)}, "
          "and no encoder (the official eval fails the same way, jepa issue #43). Pass the pretrained backbone file "
          "(e.g. vitl16.pth.tar for V-JEPA 1, vitl.pt for V-JEPA 2) instead; to evaluate these probes, give the file "
          "as --config.eval.probe_checkpoint of an eval config.")


def _check_backbone_file(path: str, ckpt: Mapping[str, Any], only_target: bool) -> None:
  message = probe_file_message(path, ckpt)
  if message:
    raise CheckpointFormatError(message)
  have = [m for m in export.MODULES if isinstance(ckpt.get(m), Mapping)]
  if only_target:
    if not {"target_encoder", "encoder"} & set(have):
      raise CheckpointFormatError(f"{path} holds no encoder (it has keys {sorted(ckpt)})")
    return
  missing = sorted({"encoder", "predictor"} - set(have))
  if missing:
    hint = "; for an encoder-only file pass --only_target" if {"encoder", "target_encoder"} & set(have) else ""
    raise CheckpointFormatError(f"{path} lacks {missing} (it has keys {sorted(ckpt)}){hint}")


def check_fits(path: str, ckpt: Mapping[str, Any], config, *, modules) -> None:
  """Refuses, with one error that says what the file holds and which config fits it, a file of the other
  generation or another size: checked before any tensor is converted."""
  rope = config.model.get("pos_embed", "sincos") == "rope"
  m = config.model
  dims = models.model_dims(m)
  built = (f"config.model builds {m.name} (width {dims.embed_dim}, depth {dims.depth}, MLP {dims.mlp_hidden}, "
           f"pos_embed={m.get('pos_embed', 'sincos')!r}")
  problems = []
  for module in modules:
    sd = checkpoint_files.module_dict(ckpt, module)
    if module == "predictor":
      tokens, want = checkpoint_files.mask_token_count(sd), train_state.num_mask_tokens(config)
      if tokens != want:
        problems.append(f"its predictor has {tokens} mask tokens, the config {want} (config.model.num_mask_tokens)")
      continue
    got = checkpoint_files.encoder_dims(sd)
    if got is None:
      problems.append(f"its '{module}' is not a V-JEPA encoder (keys {sorted(sd)[:4]}...)")
    elif (got["embed_dim"], got["depth"], got["mlp_hidden"]) != (dims.embed_dim, dims.depth, dims.mlp_hidden):
      problems.append(f"its '{module}' has width {got['embed_dim']}, depth {got['depth']}, MLP {got['mlp_hidden']}")
    elif not rope and "pos_embed" not in sd:
      problems.append(f"its '{module}' has no position table: a V-JEPA 2 (RoPE) encoder, which a 'sincos' config "
                      "would run without positions")
  if not rope and checkpoint_files.looks_vjepa2(ckpt) and not problems:
    problems.append("it is a V-JEPA 2 (RoPE) file")
  if rope and not checkpoint_files.looks_vjepa2(ckpt) and "predictor" in modules and not problems:
    problems.append("it is a V-JEPA 1 (sin-cos) file")
  if problems:
    raise CheckpointFormatError(
        f"{path} does not fit the config: {'; '.join(problems)}; {built}, {train_state.num_mask_tokens(config)} "
        f"mask tokens). The file holds {checkpoint_files.describe_with_fits(ckpt)}.")


def _report_stale_tables(path: str, ckpt: Mapping[str, Any], modules, config) -> None:
  """One line for the stale position tables a V-JEPA 2 file carries (its RoPE model has none): ignored."""
  if config.model.get("pos_embed", "sincos") != "rope":
    return
  found = []
  for module in modules:
    sd = checkpoint_files.module_dict(ckpt, module)
    found += [f"{module}.{k} {list(np.shape(sd[k]))}" for k in checkpoint_files.STALE_POS_EMBED_KEYS if k in sd]
  if found:
    logging.warning("Import: ignored the stale position tables of %s (%s): V-JEPA 2 files carry them although the "
                    "RoPE model has none (the official hub loads them with strict=False).", path, ", ".join(found))


def _convert(sd: Mapping[str, Any], template, *, scanned: bool, what: str, config) -> dict:
  """One state_dict -> our pure dict (strict: every key but the position tables, every shape)."""
  del config
  try:
    return torch_layout.from_torch_state_dict(sd, template, scanned=scanned)
  except ValueError as e:
    raise CheckpointFormatError(f"{what}: {e}") from e


def with_counts(opt_state, step: int, adam_count: int):
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


def moments_from_torch(opt: Mapping[str, Any], params: Mapping[str, Any], *, scanned: bool, rope: bool = False):
  """The official AdamW state_dict -> (mu, nu, step) in our params layout (same mapping as torch_optimizer_state).

  rope: a V-JEPA 2 optimizer, whose groups hold no position tables (the RoPE modules have none). A parameter with
  no state (a V-JEPA 2 mask token that never got a gradient, docs/reference.md §9.2) gets zero moments, as it has in
  the official run.
  """
  flat = {m: torch_layout.to_torch_state_dict(params[m], scanned=scanned) for m in ("encoder", "predictor")}
  ndims = {m: {k: v.ndim for k, v in flat[m].items()} for m in flat}
  if not rope:
    ndims["encoder"]["pos_embed"] = ndims["predictor"]["predictor_pos_embed"] = 3
  groups = export.param_groups(ndims["encoder"], ndims["predictor"])
  saved = opt.get("param_groups", [])
  expected = [len(g) for g in groups]
  if [len(g.get("params", ())) for g in saved] != expected:
    raise CheckpointFormatError(
        f"'opt' has param groups of sizes {[len(g.get('params', ())) for g in saved]}, the official AdamW groups "
        f"of this model have {expected}" + ("" if rope else " (with position tables: a V-JEPA 2 optimizer has "
                                            "none, set config.model.pos_embed='rope')"))
  mu = {"encoder": {}, "predictor": {}}
  nu = {"encoder": {}, "predictor": {}}
  steps, never_updated = set(), []
  state = opt["state"]
  for group, members in zip(saved, groups):
    for index, (module, key) in zip(group["params"], members):
      if key in torch_layout.POS_EMBED_KEYS:
        continue
      if index not in state:
        never_updated.append(f"{module}.{key}")
        mu[module][key] = nu[module][key] = np.zeros_like(flat[module][key])
        continue
      entry = state[index]
      mu[module][key], nu[module][key] = entry["exp_avg"], entry["exp_avg_sq"]
      steps.add(int(float(entry["step"])))
  if never_updated:
    logging.info("Import: %d parameters have no AdamW state (never updated in the official run, e.g. unused mask "
                 "tokens): zero moments for %s.", len(never_updated), ", ".join(never_updated[:6]))
  if len(steps) > 1:
    logging.warning("AdamW steps differ between parameters (%s); using the largest.", sorted(steps))
  convert = lambda d, m: torch_layout.from_torch_state_dict(d, params[m], scanned=scanned)
  return ({m: convert(mu[m], m) for m in mu}, {m: convert(nu[m], m) for m in nu}, max(steps) if steps else 0)


def state_from_file(path: str, config, *, only_target: bool = False, start_step: int | None = None) -> dict:
  """The train state (host arrays, unsharded) that `path` holds, in the layout `config` builds.

  start_step None: the step is epoch x ipe, so the schedules continue where the PyTorch run stopped (the official
  resume). start_step 0: the schedules start from the beginning while the AdamW moments and their step count carry
  over (the official V-JEPA 2 cooldown, is_anneal, docs/reference.md §9.4). A file without 'target_encoder' (a
  Hugging Face file, an export of the context encoder only) uses its encoder as the target, and says so.
  """
  ckpt = read_file(path)
  _check_backbone_file(path, ckpt, only_target)
  rope = config.model.get("pos_embed", "sincos") == "rope"
  scanned = bool(config.model.scan_layers)
  defs = train_state.model_defs(config)
  template = train_state.abstract_param_shapes(defs)
  tx = optim.make_optimizer(config.optim)
  has = lambda m: isinstance(ckpt.get(m), Mapping)

  def convert(module: str, kind: str) -> dict:
    try:
      return _convert(strip_prefixes(ckpt[module]), template[kind], scanned=scanned, what=module, config=config)
    except CheckpointFormatError as e:
      raise CheckpointFormatError(f"{path}: {e}\nThe file holds {checkpoint_files.describe_with_fits(ckpt)}.") from e

  if only_target:
    source = "target_encoder" if has("target_encoder") else "encoder"
    check_fits(path, ckpt, config, modules=(source,))
    _report_stale_tables(path, ckpt, (source,), config)
    encoder = convert(source, "encoder")
    predictor = train_state.init_params(config, int(config.seed))["predictor"]
    logging.warning("Import: --only_target: '%s' is used as encoder and target encoder; the predictor is freshly "
                    "initialised (seed %d) and the optimizer starts fresh.", source, config.seed)
    params = {"encoder": encoder, "predictor": jax.tree.map(np.asarray, predictor)}
    target = jax.tree.map(np.copy, encoder)
  else:
    modules = ("encoder", "predictor") + (("target_encoder",) if has("target_encoder") else ())
    check_fits(path, ckpt, config, modules=modules)
    _report_stale_tables(path, ckpt, modules, config)
    params = {m: convert(m, m) for m in ("encoder", "predictor")}
    if has("target_encoder"):
      target = convert("target_encoder", "encoder")
    else:
      logging.warning("Import: %s has no 'target_encoder'; the target encoder starts as a copy of its 'encoder' (as "
                      "the official training starts it).", path)
      target = jax.tree.map(np.copy, params["encoder"])

  epoch = ckpt.get("epoch")
  if start_step is not None:
    step = int(start_step)
    logging.info("Import: the schedules start at step %d (the file's epoch %s is not fast-forwarded).", step, epoch)
  elif epoch is None:
    step = 0
    logging.warning("Import: the file has no 'epoch'; the run starts at step 0 (schedules from the start).")
  else:
    step = int(epoch) * int(config.optim.ipe)
    logging.info("Import: epoch %d -> step %d (ipe %d); schedules continue from there.", epoch, step,
                 config.optim.ipe)

  params = jax.tree.map(jnp.asarray, params)
  opt_state = tx.init(params)
  opt = ckpt.get("opt")
  if opt and not only_target:
    mu, nu, adam_step = moments_from_torch(opt, params, scanned=scanned, rope=rope)
    adam = export.adam_state(opt_state)
    new_adam = adam._replace(mu=jax.tree.map(jnp.asarray, mu), nu=jax.tree.map(jnp.asarray, nu))
    opt_state = jax.tree.map(lambda s: new_adam if s is adam else s, opt_state,
                             is_leaf=lambda s: s is adam)
    opt_state = with_counts(opt_state, step, adam_step)
    logging.info("Import: AdamW moments imported (AdamW step %d).", adam_step)
  else:
    opt_state = with_counts(opt_state, step, 0)
    logging.warning("Import: no optimizer state in the file%s; the optimizer starts fresh (zero moments).",
                    " used (--only_target)" if only_target and opt else "")
  return train_state.state_from_params(params, tx, target_encoder=jax.tree.map(jnp.asarray, target),
                                       opt_state=opt_state, step=step)


def import_checkpoint(path: str, config, workdir: str, *, only_target: bool = False) -> dict:
  """Converts `path` and writes WORKDIR/checkpoints/<step> and WORKDIR/config.json; returns the train state."""
  state = state_from_file(path, config, only_target=only_target)
  step = int(state["step"])
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
  flags.DEFINE_string("checkpoint", None, "Official .pth.tar / .pt file, our .safetensors, or a Hugging Face "
                      "V-JEPA 2 model.safetensors (or its .index.json).")
  flags.DEFINE_string("workdir", None, "Run folder to create (checkpoints/ and config.json).")
  flags.DEFINE_bool("only_target", False, "Encoder-only file: encoder = target = its target_encoder (or encoder); "
                    "predictor freshly initialised.")
  flags.mark_flags_as_required(["checkpoint", "config", "workdir"])
  from jepa_jax import cli
  cli.run(main)
