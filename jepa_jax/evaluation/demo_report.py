"""The demo's proof that pretraining learned something: the same probe on its encoder and on a random one.

train.py calls report_demo_probe(workdir) at the end of a run with config.probe_at_end (configs/demo.py).
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from jepa_jax import loading
from jepa_jax import sharding
from jepa_jax.encoder import Encoder
from jepa_jax.evaluation.data import batch_geometry, make_split, padded_batches
from jepa_jax.evaluation.eval_config import probe_model_config, validate_eval_config
from jepa_jax.evaluation.loops import encode_batch, frozen_encoder, run_epoch_train, run_eval
from jepa_jax.evaluation.probe_step import build_probe


def demo_config_for_run(pretrain_workdir) -> ml_collections.ConfigDict:
  """configs/eval/demo_motion.py fitted to a demo run: the run's own model and clip size, and the V-JEPA 2 probe
  (demo_motion 'vjepa2') when the run is a V-JEPA 2 one (config.model.pos_embed 'rope')."""
  from jepa_jax.configs.eval import demo_motion
  run, _ = loading.read_run_config(pretrain_workdir)
  config = demo_motion.get_config("vjepa2" if run.model.get("pos_embed", "sincos") == "rope" else "")
  config.model = loading.with_model_defaults(run.model)
  e = config.eval
  e.frames, e.frame_step = int(run.data.frames_per_clip), int(run.data.frame_step)
  e.resolution = int(run.model.crop_size)
  return config


def demo_probe_report(pretrain_workdir: str, config=None, *, epochs: int | None = None, seed: int = 0) -> dict:
  """{'pretrained': top-1 %, 'random': top-1 %}: the same probe budget on the demo's motion task, on the demo's
  pretrained target encoder and on a randomly initialised encoder of the same size.

  Both probes see the same batches (one decode per batch feeds both encoders). The val tokens are computed once
  per encoder (the test transform is deterministic); the train tokens per epoch (the training transform is
  random). The probe is the config's: configs/eval/demo_motion.py gives the V-JEPA 1 probe, and with the argument
  'vjepa2' the V-JEPA 2 one (4 blocks, a small grid of heads trained together; the best head's accuracy counts).
  """
  config = ml_collections.ConfigDict((config or demo_config_for_run(pretrain_workdir)).to_dict())
  config.pretrained = str(pretrain_workdir)
  if epochs is not None:
    config.eval.epochs = int(epochs)
  inputs = validate_eval_config(config)
  e = config.eval
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  pretrained, pretrained_params = frozen_encoder(config, mesh, rules)
  random = Encoder.init(probe_model_config(config), seed=seed + 1)
  encoders = {"pretrained": pretrained_params,
              "random": jax.device_put(jax.device_get(random.params), random.param_shardings(mesh, rules))}
  # One compiled feature function and one probe serve both encoders (same graph, same probe init).
  feature_fn = pretrained.feature_fn
  batch = int(e.batch_size)
  train_split = make_split(config, inputs, "train", local_batch=batch // jax.process_count())
  val_split = make_split(config, inputs, "val", local_batch=batch // jax.process_count())
  train_geo = batch_geometry(batch, train_split.num_examples, mesh)
  val_geo = batch_geometry(batch, val_split.num_examples, mesh)
  attend = bool(e.attend_across_segments)

  def encode_all(split, epoch, geo):
    cache = {k: [] for k in encoders}
    for b in padded_batches(split, epoch, local_batch=geo[0], padded_local=geo[1], steps=geo[2]):
      b = sharding.host_local_batch_to_global(b, mesh)
      for k, enc_params in encoders.items():
        tokens = encode_batch(feature_fn, enc_params, b["clips"], attend_across_segments=attend)
        cache[k].append((tokens, b["labels"], b["weights"]))
    return cache

  results = {}
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    probe, params, opt_state = build_probe(config, pretrained.embed_dim, pretrained.num_heads, train_geo[2], mesh,
                                           rules, seed=seed)
    state = {k: jax.tree.map(jnp.copy, (params, opt_state)) for k in encoders}
    val_cache = encode_all(val_split, 0, val_geo)
    for epoch in range(int(e.epochs)):
      train_cache = encode_all(train_split, epoch, train_geo)
      for k in encoders:
        p, o, m = run_epoch_train(probe, *state[k], train_cache[k])
        state[k] = (p, o)
        logging.info("demo probe %s epoch %d: loss %s train %s%%", k, epoch + 1, _per_head(m["loss"], 4),
                     _per_head(m["train_acc"], 1))
    for k in encoders:  # with several heads (the V-JEPA 2 protocol) the best head counts, as officially reported
      results[k] = float(np.max(run_eval(probe, state[k][0], val_cache[k])["val_acc_top1"]))
  logging.info("demo probe report (motion direction, %d epochs): pretrained %.1f%%, random init %.1f%%",
               e.epochs, results["pretrained"], results["random"])
  return results


def _per_head(values, digits: int) -> str:
  """One number per probe head, a plain number for one head."""
  values = np.atleast_1d(np.asarray(values, np.float64))
  return " ".join(f"{v:.{digits}f}" for v in values)


def report_demo_probe(workdir, seeds=(0, 1, 2), config=None) -> dict:
  """Prints and writes WORKDIR/demo_probe.json: demo_probe_report averaged over probe seeds.

  A 40-video val split moves a single probe run by several points, so the comparison is averaged over probe seeds
  (each seed: its own probe init, batch order and random encoder). config: the eval config (default:
  demo_config_for_run, so a V-JEPA 2 demo is probed the V-JEPA 2 way).
  """
  runs = [demo_probe_report(str(workdir), config, seed=s) for s in seeds]
  report = {k: float(np.mean([r[k] for r in runs])) for k in ("pretrained", "random")}
  report["per_seed"] = runs
  line = (f"motion probe, val top-1 (mean of {len(seeds)} probe seeds): pretrained encoder "
          f"{report['pretrained']:.1f}%, randomly initialised encoder {report['random']:.1f}% (4 classes; per seed "
          + ", ".join(f"{r['pretrained']:.1f} vs {r['random']:.1f}" for r in runs) + ")")
  logging.info(line)
  if jax.process_index() == 0:
    print(line)
    (epath.Path(workdir) / "demo_probe.json").write_text(json.dumps(report, indent=2))
  return report
