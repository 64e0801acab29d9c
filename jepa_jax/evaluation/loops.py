"""The probe run, read top to bottom: config check -> mesh -> frozen encoder -> probes and optimizers -> epochs of
(train, evaluate, CSV row, best probe, all probes) -> final report line.

K probes (config.eval.heads; K = 1 for V-JEPA 1) are trained together on ONE frozen forward pass per batch: the
encoder's feature function runs once per batch, then probe_step's vmapped step updates every head (V-JEPA 2 protocol,
docs/reference.md §9.5). Outputs in the workdir:
  {write_tag}_r0.csv   one row per epoch: epoch, train_acc, val_acc_top1, val_acc_top5, loss, skipped (the figures of
                       the epoch's best head by val top-1); with K > 1 also best_head and val_acc_top1_head{i} for
                       every head i (config order)
  probe_best/          the best probe (over epochs and heads, by val top-1): one head's params (probe_best.json: its
                       epoch, head index, settings and accuracies)
  probe_latest/        every head's params and AdamW moments after the last epoch (probe_latest.json: epoch, heads);
                       python -m jepa_jax.export writes them as the official probe file
  config.json          the probe run's config
With config.eval.probe_checkpoint (a probe file or a probe workdir) nothing is trained: its probes are evaluated on
the val split once (the official val_only), one CSV row with epoch 0.

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
import numpy as np
from absl import logging
from flax import nnx

from jepa_jax import loading
from jepa_jax import sharding
from jepa_jax.evaluation import probe_files
from jepa_jax.evaluation.data import batch_geometry, make_split, padded_batches
from jepa_jax.evaluation.eval_config import EvalConfigError, probe_heads, probe_model_config, validate_eval_config
from jepa_jax.evaluation.probe_optim import probe_lr_schedule
from jepa_jax.evaluation.probe_step import Probe, build_probe, head_params
from jepa_jax.progress import ProgressBar

# The official columns, then the videos of the epoch (train and val) that could not be read.
CSV_COLUMNS = ("epoch", "train_acc", "val_acc_top1", "val_acc_top5", "loss", "skipped")


def csv_columns(num_heads: int) -> tuple[str, ...]:
  """CSV_COLUMNS; with several heads also the epoch's best head and every head's val top-1."""
  if num_heads == 1:
    return CSV_COLUMNS
  return CSV_COLUMNS + ("best_head",) + tuple(f"val_acc_top1_head{i}" for i in range(num_heads))


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
  """Trains every head over (tokens, labels, weights) batches; returns params, opt_state, {'loss': [K],
  'train_acc': [K] (%), 'num_train_examples'} (examples that weighed: padding and unreadable videos do not)."""
  totals = None
  for tokens, labels, weights in token_batches_:
    params, opt_state, m = probe.train_step(params, opt_state, tokens, labels, weights)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
    if progress is not None:
      progress()
  totals = jax.device_get(totals)
  count = max(float(totals["count"][0]), 1.0)  # the same examples weigh for every head
  return params, opt_state, {"loss": np.asarray(totals["loss_sum"], np.float64) / count,
                             "train_acc": 100.0 * np.asarray(totals["correct"], np.float64) / count,
                             "num_train_examples": int(totals["count"][0])}


def run_eval(probe: Probe, params, token_batches_) -> dict:
  """Per head [K]: top-1 / top-5 (%) and loss over every example of the split that could be read (global counts,
  one division at the end); and the number of those examples."""
  totals = None
  for tokens, labels, weights in token_batches_:
    m = probe.eval_step(params, tokens, labels, weights)
    totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  count = max(float(totals["count"][0]), 1.0)
  per_head = lambda k: np.asarray(totals[k], np.float64) / count
  return {"val_acc_top1": 100.0 * per_head("top1"), "val_acc_top5": 100.0 * per_head("top5"),
          "val_loss": per_head("loss_sum"), "num_examples": int(totals["count"][0])}


def save_probe(directory: str, params, meta: dict) -> None:
  """One probe's params (official probe names, pure dict) with an orbax StandardSave; meta as JSON beside them."""
  _save(directory, {"classifier": params}, meta)


def load_probe(directory: str, params_like):
  """The classifier params saved by save_probe, laid out like params_like."""
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(directory), {"classifier": params_like})["classifier"]


def save_heads(directory: str, params, opt_state, meta: dict) -> None:
  """Every head's params and AdamW moments ([K, ...], config order): what export writes as the official probe file
  (probe_files.HEADS_ENTRY / OPT_ENTRY)."""
  opt = {"count": opt_state.count, "mu": opt_state.mu, "nu": opt_state.nu}
  _save(directory, {probe_files.HEADS_ENTRY: params, probe_files.OPT_ENTRY: opt}, meta)


def _save(directory: str, tree, meta: dict) -> None:
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(directory, tree, force=True)
  ckptr.wait_until_finished()
  ckptr.close()
  if jax.process_index() == 0:
    with open(directory + ".json", "w") as f:
      json.dump(meta, f, indent=2)


def _epoch_row(epoch, train_m, val_m, skipped, skipped_val) -> dict:
  """The epoch's figures: those of its best head by val top-1 (the first on ties), and every head's val top-1."""
  h = int(np.argmax(val_m["val_acc_top1"]))
  return {"epoch": epoch, "head": h, "train_acc": float(train_m["train_acc"][h]),
          "val_acc_top1": float(val_m["val_acc_top1"][h]), "val_acc_top5": float(val_m["val_acc_top5"][h]),
          "loss": float(train_m["loss"][h]), "num_examples": val_m["num_examples"],
          "num_train_examples": train_m["num_train_examples"], "skipped": skipped, "skipped_val": skipped_val,
          "val_acc_top1_per_head": [float(v) for v in val_m["val_acc_top1"]],
          "train_acc_per_head": [float(v) for v in train_m["train_acc"]]}


def _csv_row(row: dict, num_heads: int) -> list:
  values = [row["epoch"]] + [f"{row[k]:.5f}" for k in CSV_COLUMNS[1:-1]] + [row["skipped"]]
  if num_heads > 1:
    values += [row["head"]] + [f"{v:.5f}" for v in row["val_acc_top1_per_head"]]
  return values


def _head_label(heads, h: int) -> str:
  head = heads[h]
  return (f"head {h} (lr {head['lr']:g}, wd {head['weight_decay']:g}"
          + (f", warmup {head['warmup']:g} epochs" if head["warmup"] else "") + ")")


def probe_and_evaluate(config, workdir: str) -> dict:
  """Trains the attentive probes on the frozen encoder and evaluates them every epoch; returns the final report."""
  is_primary = jax.process_index() == 0
  # --- Config check: before anything is loaded or compiled ---
  inputs = validate_eval_config(config)
  e = config.eval
  os.makedirs(workdir, exist_ok=True)
  if is_primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # --- Mesh, frozen encoder ---
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  encoder, enc_params = frozen_encoder(config, mesh, rules)
  logging.info("Frozen encoder %s (%s) from %s.", encoder.config.model.name, config.checkpoint_key,
               config.pretrained)

  # --- Data ---
  probe_batch = int(e.batch_size)
  val_split = make_split(config, inputs, "val", local_batch=probe_batch // jax.process_count())
  val_geo = batch_geometry(probe_batch, val_split.num_examples, mesh)
  attend = bool(e.attend_across_segments)
  feature_fn = encoder.feature_fn
  val_batches = lambda: token_batches(val_split, 0, val_geo, mesh, feature_fn, enc_params, attend)
  if e.get("probe_checkpoint", ""):
    return _evaluate_saved_probes(config, workdir, encoder, mesh, rules, val_split, val_batches)
  train_split = make_split(config, inputs, "train", local_batch=probe_batch // jax.process_count())
  train_geo = batch_geometry(probe_batch, train_split.num_examples, mesh)
  logging.info("Probe: %d train / %d val examples, %d / %d steps per epoch, %d epochs.", train_split.num_examples,
               val_split.num_examples, train_geo[2], val_geo[2], e.epochs)

  # --- Probes, optimizers ---
  probe, params, opt_state = build_probe(config, encoder.embed_dim, encoder.num_heads, train_geo[2], mesh, rules,
                                         seed=int(config.seed))
  heads, num_heads = probe.heads, probe.num_heads
  logging.info("%d probe%s (num_probe_blocks %d) trained together on one encoder pass per batch.", num_heads,
               "s" if num_heads > 1 else "", int(e.get("num_probe_blocks", 1)))

  # --- Epochs ---
  csv_path = os.path.join(workdir, f"{config.get('write_tag', 'probe')}_r0.csv")
  if is_primary:
    with open(csv_path, "w", newline="") as f:
      csv.writer(f).writerow(csv_columns(num_heads))
  total_steps = train_geo[2] * int(e.epochs)
  progress = ProgressBar(total=total_steps, enabled=is_primary, desc="probe")
  best, history, step = None, [], 0
  # The progress bar shows the lr of the leading head (head 0, then the best of the last epoch) and the previous
  # epoch's mean loss: no per-step host sync.
  lr_of = lambda h: probe_lr_schedule(heads[h]["lr"], heads[h]["final_lr"], total_steps, heads[h]["start_lr"],
                                      int(heads[h]["warmup"] * train_geo[2]))
  lr_at, last_loss = lr_of(0), float("nan")
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
        val_m = run_eval(probe, params, val_batches())
        # Every listed video is visited once per pass on some host, so what did not weigh could not be read.
        skipped_val = val_split.num_examples - val_m["num_examples"]
        skipped = train_split.num_examples - train_m["num_train_examples"] + skipped_val
        row = _epoch_row(epoch + 1, train_m, val_m, skipped, skipped_val)
        history.append(row)
        lr_at, last_loss = lr_of(row["head"]), row["loss"]
        progress.write(f"[probe] epoch {epoch + 1}: loss {row['loss']:.4f} train {row['train_acc']:.2f}% "
                       f"val top-1 {row['val_acc_top1']:.2f}% top-5 {row['val_acc_top5']:.2f}%"
                       + (f" (best of {num_heads}: {_head_label(heads, row['head'])})" if num_heads > 1 else "")
                       + (f" ({skipped} unreadable videos skipped)" if skipped else ""))
        if is_primary:
          with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow(_csv_row(row, num_heads))
        if best is None or row["val_acc_top1"] > best["val_acc_top1"]:
          best = row
          save_probe(os.path.join(workdir, "probe_best"), head_params(params, row["head"]),
                     {"epoch": row["epoch"], "head": row["head"], "settings": heads[row["head"]],
                      "val_acc_top1": row["val_acc_top1"], "val_acc_top5": row["val_acc_top5"]})
        save_heads(os.path.join(workdir, "probe_latest"), params, opt_state,
                   {"epoch": epoch + 1, "heads": list(heads), "steps_per_epoch": train_geo[2],
                    "val_acc_top1_per_head": row["val_acc_top1_per_head"]})
  finally:
    progress.close()
  last = history[-1]
  report = {"best_epoch": best["epoch"], "best_head": best["head"], "best_val_acc_top1": best["val_acc_top1"],
            "best_val_acc_top5": best["val_acc_top5"], "final_head": last["head"],
            "final_val_acc_top1": last["val_acc_top1"], "final_val_acc_top5": last["val_acc_top5"],
            "final_train_acc": last["train_acc"], "final_val_acc_top1_per_head": last["val_acc_top1_per_head"],
            "heads": list(heads), "num_val_examples": last["num_examples"], "num_val_skipped": last["skipped_val"],
            "history": history}
  unreadable = f" ({last['skipped_val']} unreadable, skipped)" if last["skipped_val"] else ""
  of_heads = (f" ({_head_label(heads, last['head'])}, the best of {num_heads}; best overall: "
              f"{_head_label(heads, best['head'])})") if num_heads > 1 else ""
  line = (f"probe {config.get('tag', '')}: val top-1 {report['final_val_acc_top1']:.2f}% top-5 "
          f"{report['final_val_acc_top5']:.2f}% after {e.epochs} epochs{of_heads} (best top-1 "
          f"{best['val_acc_top1']:.2f}% at epoch {best['epoch']}) on {report['num_val_examples']} val "
          f"examples{unreadable}; {config.pretrained} [{config.checkpoint_key}]")
  logging.info("%s", line)
  if is_primary:
    print(line, flush=True)
  return report


def _evaluate_saved_probes(config, workdir, encoder, mesh, rules, val_split, val_batches) -> dict:
  """Validation only (the official val_only): the probes of config.eval.probe_checkpoint on the val split."""
  e = config.eval
  is_primary = jax.process_index() == 0
  saved = probe_files.read_probes(e.probe_checkpoint)
  probe_files.check_fits(saved, config, encoder.embed_dim)
  heads = probe_heads(config)
  if len(heads) != saved.num_heads:  # the settings only matter for training; keep the count of the file
    heads = heads[:1] * saved.num_heads
  probe, template, _ = build_probe(config, encoder.embed_dim, encoder.num_heads, 1, mesh, rules,
                                   seed=int(config.seed), heads=heads)  # no training: the schedules do not matter
  params = probe_files.stacked_params(saved, template)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    val_m = run_eval(probe, params, val_batches())
  skipped_val = val_split.num_examples - val_m["num_examples"]
  nan = np.full(saved.num_heads, np.nan)
  row = _epoch_row(0, {"train_acc": nan, "loss": nan, "num_train_examples": 0}, val_m, skipped_val, skipped_val)
  if is_primary:
    with open(os.path.join(workdir, f"{config.get('write_tag', 'probe')}_r0.csv"), "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(csv_columns(saved.num_heads))
      writer.writerow(_csv_row(row, saved.num_heads))
  report = {"final_head": row["head"], "final_val_acc_top1": row["val_acc_top1"],
            "final_val_acc_top5": row["val_acc_top5"], "final_val_acc_top1_per_head": row["val_acc_top1_per_head"],
            "num_val_examples": val_m["num_examples"], "num_val_skipped": skipped_val, "history": [row]}
  line = (f"probe {config.get('tag', '')} (validation only, {saved.description}): val top-1 "
          f"{row['val_acc_top1']:.2f}% top-5 {row['val_acc_top5']:.2f}%"
          + (f" (head {row['head']}, the best of {saved.num_heads})" if saved.num_heads > 1 else "")
          + f" on {val_m['num_examples']} val examples; {config.pretrained} [{config.checkpoint_key}]")
  logging.info("%s", line)
  if is_primary:
    print(line, flush=True)
  return report
