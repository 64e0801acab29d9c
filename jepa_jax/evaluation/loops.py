"""The probe run, read top to bottom: config check -> mesh -> frozen encoder -> probe and optimizer -> epochs of
(train, evaluate, CSV row, best probe checkpoint) -> final report line.

Per batch, every segment x view clip goes through the frozen encoder independently (its jitted feature function,
never differentiated); with attend_across_segments the token sets of all segments of one view are concatenated
([B, V, S*N, D]), otherwise each clip is its own probe input. The steps and their averaging are probe_step.py's.
"""
from __future__ import annotations

import csv
import json
import os
import time

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from jepa_jax import loading
from jepa_jax import sharding
from jepa_jax.evaluation.data import batch_geometry, make_split, padded_batches
from jepa_jax.evaluation.eval_config import EvalConfigError, probe_model_config, validate_eval_config
from jepa_jax.evaluation.probe_optim import probe_lr_schedule
from jepa_jax.evaluation.probe_step import Probe, build_probe
from jepa_jax.progress import ProgressBar

# The official columns, then the videos of the epoch (train and val) that could not be read.
CSV_COLUMNS = ("epoch", "train_acc", "val_acc_top1", "val_acc_top5", "loss", "skipped")


def frozen_encoder(config, mesh, rules):
  """(Encoder, its params placed on the mesh by the logical rules): config.pretrained's config.checkpoint_key
  through jepa_jax.load_encoder, built as config.model at the eval resolution."""
  try:
    encoder = loading.load_encoder(config.pretrained, config=probe_model_config(config),
                                   which=config.checkpoint_key)
  except loading.EncoderSourceError as e:
    raise EvalConfigError(f"config.pretrained={config.pretrained!r}: {e}") from None
  # Every process read the same values; from the host they go onto the (possibly multi-host) mesh by the rules.
  params = jax.device_put(jax.device_get(encoder.params), encoder.param_shardings(mesh, rules))
  return encoder, params


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


def token_batches(split, epoch, geometry, mesh, feature_fn, enc_params, attend):
  """(probe inputs, labels, weights) per padded global batch of the split."""
  local, padded_local, steps = geometry
  for batch in padded_batches(split, epoch, local_batch=local, padded_local=padded_local, steps=steps):
    batch = sharding.host_local_batch_to_global(batch, mesh)
    tokens = encode_batch(feature_fn, enc_params, batch["clips"], attend_across_segments=attend)
    yield tokens, batch["labels"], batch["weights"]


def run_epoch_train(probe: Probe, params, opt_state, token_batches_, progress=None):
  """Trains over (tokens, labels, weights) batches; returns params, opt_state, {'loss', 'train_acc',
  'num_train_examples'} (examples that weighed: padding and unreadable videos do not)."""
  totals = None
  for tokens, labels, weights in token_batches_:
    params, opt_state, m = probe.train_step(params, opt_state, tokens, labels, weights)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    if progress is not None:
      progress()
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return params, opt_state, {"loss": float(totals["loss_sum"]) / count,
                             "train_acc": 100.0 * float(totals["correct"]) / count,
                             "num_train_examples": int(totals["count"])}


def run_eval(probe: Probe, params, token_batches_) -> dict:
  """Top-1 / top-5 (%) and loss over every example of the split that could be read: global counts, one division
  at the end."""
  totals = None
  for tokens, labels, weights in token_batches_:
    m = probe.eval_step(params, tokens, labels, weights)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  return {"val_acc_top1": 100.0 * float(totals["top1"]) / count,
          "val_acc_top5": 100.0 * float(totals["top5"]) / count,
          "val_loss": float(totals["loss_sum"]) / count, "num_examples": int(totals["count"])}


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
  encoder, enc_params = frozen_encoder(config, mesh, rules)
  logging.info("Frozen encoder %s (%s) from %s.", encoder.config.model.name, config.checkpoint_key,
               config.pretrained)

  # --- Data ---
  probe_batch = int(e.batch_size)
  train_split = make_split(config, inputs, "train", local_batch=probe_batch // jax.process_count())
  val_split = make_split(config, inputs, "val", local_batch=probe_batch // jax.process_count())
  train_geo = batch_geometry(probe_batch, train_split.num_examples, mesh)
  val_geo = batch_geometry(probe_batch, val_split.num_examples, mesh)
  logging.info("Probe: %d train / %d val examples, %d / %d steps per epoch, %d epochs.", train_split.num_examples,
               val_split.num_examples, train_geo[2], val_geo[2], e.epochs)

  # --- Probe, optimizer ---
  probe, params, opt_state = build_probe(config, encoder.embed_dim, encoder.num_heads, train_geo[2] * int(e.epochs),
                                         mesh, rules, seed=int(config.seed))
  attend = bool(e.attend_across_segments)
  feature_fn = encoder.feature_fn

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
            token_batches(train_split, epoch, train_geo, mesh, feature_fn, enc_params, attend), tick)
        val_m = run_eval(probe, params, token_batches(val_split, 0, val_geo, mesh, feature_fn, enc_params, attend))
        last_loss = train_m["loss"]
        # Every listed video is visited once per pass on some host, so what did not weigh could not be read.
        skipped_val = val_split.num_examples - val_m["num_examples"]
        skipped = train_split.num_examples - train_m["num_train_examples"] + skipped_val
        row = {"epoch": epoch + 1, **train_m, **val_m, "skipped": skipped, "skipped_val": skipped_val}
        history.append(row)
        progress.write(f"[probe] epoch {epoch + 1}: loss {train_m['loss']:.4f} train {train_m['train_acc']:.2f}% "
                       f"val top-1 {val_m['val_acc_top1']:.2f}% top-5 {val_m['val_acc_top5']:.2f}%"
                       + (f" ({skipped} unreadable videos skipped)" if skipped else ""))
        if is_primary:
          with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1] + [f"{row[k]:.5f}" for k in CSV_COLUMNS[1:-1]] + [skipped])
        if best is None or val_m["val_acc_top1"] > best["val_acc_top1"]:
          best = row
          save_probe(os.path.join(workdir, "probe_best"), params,
                     {k: row[k] for k in ("epoch", "val_acc_top1", "val_acc_top5")})
  finally:
    progress.close()
  last = history[-1]
  report = {"best_epoch": best["epoch"], "best_val_acc_top1": best["val_acc_top1"],
            "best_val_acc_top5": best["val_acc_top5"], "final_val_acc_top1": last["val_acc_top1"],
            "final_val_acc_top5": last["val_acc_top5"], "final_train_acc": last["train_acc"],
            "num_val_examples": last["num_examples"], "num_val_skipped": last["skipped_val"], "history": history}
  unreadable = f" ({last['skipped_val']} unreadable, skipped)" if last["skipped_val"] else ""
  line = (f"probe {config.get('tag', '')}: val top-1 {report['final_val_acc_top1']:.2f}% top-5 "
          f"{report['final_val_acc_top5']:.2f}% after {e.epochs} epochs (best top-1 {best['val_acc_top1']:.2f}% at "
          f"epoch {best['epoch']}) on {report['num_val_examples']} val examples{unreadable}; {config.pretrained} "
          f"[{config.checkpoint_key}]")
  logging.info("%s", line)
  if is_primary:
    print(line, flush=True)
  return report
