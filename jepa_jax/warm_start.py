"""config.init_from: the first state of a run taken from another run or a checkpoint file (the V-JEPA 2 cooldown).

The official cooldown (is_anneal, docs/reference.md §9.4) loads encoder, predictor, target encoder and the optimizer
state from a pretraining checkpoint (anneal_ckpt), starts at epoch 0 and does not fast-forward any schedule: the
linear decay starts at the peak lr, the AdamW moments and their step count carry over. Here:

- a run of ours (a workdir, local or gs://; its latest complete step): params, target encoder and AdamW moments as
  saved, blocks re-laid out when scan_layers differs; the optimizer's schedule counters and the train step start at
  0, Adam's bias-correction count keeps the source's value (as torch's per-parameter 'step' does);
- a file (official .pt / .pth.tar, our export, a Hugging Face safetensors): jepa_jax/import_torch.py with the step
  at 0 (a file without 'opt' starts the moments at zero, without 'target_encoder' the target from its encoder).

Only a workdir without checkpoints starts this way: every later start of the run, e.g. after a preemption, resumes
from its own latest checkpoint like any run (the official resume_anneal), and init_from is not read again.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from etils import epath

from jepa_jax import export, import_torch, loading, torch_layout, train_state


class InitFromError(ValueError):
  """config.init_from names nothing usable, or a run of another network; the message says which field to change."""


def initial_state(config, tx, shardings) -> dict:
  """The train state config.init_from gives, placed with `shardings` (train_state.state_shardings)."""
  source = os.fspath(config.init_from)
  if os.path.isfile(source):
    try:
      state = import_torch.state_from_file(source, config, start_step=0)
    except import_torch.CheckpointFormatError as e:
      raise InitFromError(f"config.init_from={source!r}: {e}") from None
  else:
    try:
      run = loading.find_run(source) if epath.Path(source).exists() else None
    except loading.EncoderSourceError as e:
      raise InitFromError(f"config.init_from={source!r}: {e}") from None
    if run is None:
      raise InitFromError(f"config.init_from={source!r} is neither a run of ours (a folder with checkpoints/) nor "
                          "a checkpoint file; give the pretraining workdir or its file (e.g. vitl.pt).")
    state = state_from_run(os.fspath(run[0]), config, tx, step=run[1])
  logging.info("Started from %s (config.init_from): step 0, Adam step %d.", source,
               int(np.asarray(export.adam_state(state["opt_state"]).count)))
  return jax.device_put(state, shardings)


def _check_same_networks(config, source_config, source: str) -> None:
  try:
    loading.check_same_network(config.model, source_config.model, f"the run {source}")
  except loading.EncoderSourceError as e:
    raise InitFromError(f"config.init_from: {e}") from None
  fields = ("pred_embed_dim", "pred_depth", "pred_num_heads")
  ours, theirs = loading.models.model_dims(config.model), loading.models.model_dims(source_config.model)
  diff = [f"config.model.{f}: {getattr(ours, f)} here, {getattr(theirs, f)} in {source}" for f in fields
          if getattr(ours, f) != getattr(theirs, f)]
  tokens, source_tokens = train_state.num_mask_tokens(config), train_state.num_mask_tokens(source_config)
  if tokens != source_tokens:
    diff.append(f"config.model.num_mask_tokens: {tokens} here, {source_tokens} in {source}")
  if diff:
    raise InitFromError("config.init_from names a run whose predictor differs: " + "; ".join(diff))


def _relayout(tree, *, saved_scanned: bool, scanned: bool):
  if saved_scanned == scanned:
    return tree
  return torch_layout.stack_layers(tree) if scanned else torch_layout.unstack_layers(tree)


def state_from_run(workdir: str, config, tx, step: int | None = None) -> dict:
  """A run's state at `step` (default: its latest complete one) as the first state of this run (module doc); host
  arrays."""
  try:
    source_config, step = loading.read_run_config(workdir, step)
  except loading.EncoderSourceError as e:
    raise InitFromError(f"config.init_from: {e}") from None
  source_config.model = loading.with_model_defaults(source_config.model)
  _check_same_networks(config, source_config, workdir)
  host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  entries = ("encoder", "predictor", "target_encoder", "opt_state")
  _, _, saved = loading.read_run(workdir, entries, step=step, config=source_config, sharding=host)
  layout = dict(saved_scanned=bool(source_config.model.scan_layers), scanned=bool(config.model.scan_layers))
  relayout = lambda tree: jax.tree.map(np.asarray, _relayout(jax.device_get(tree), **layout))
  params = {m: relayout(saved["params"][m]) for m in ("encoder", "predictor")}
  target = relayout(saved["target_encoder"])
  saved_adam = export.adam_state(saved["opt_state"])
  opt_state = tx.init(params)
  adam = export.adam_state(opt_state)
  moments = adam._replace(mu={m: relayout(saved_adam.mu[m]) for m in params},
                          nu={m: relayout(saved_adam.nu[m]) for m in params})
  opt_state = jax.tree.map(lambda s: moments if s is adam else s, opt_state, is_leaf=lambda s: s is adam)
  # The schedules restart at 0; Adam's count continues (the official anneal loads torch's per-parameter 'step').
  opt_state = import_torch.with_counts(opt_state, 0, int(np.asarray(saved_adam.count)))
  logging.info("config.init_from: read step %d of %s (%s).", step, workdir, source_config.model.name)
  return train_state.state_from_params(params, tx, target_encoder=target, opt_state=opt_state, step=0)
