"""The V-JEPA 2 protocol: K probes trained together on one frozen forward pass per batch (evaluation/probe_step.py,
loops.py), the V-JEPA 2 eval configs (configs/eval/vjepa2/), and probe files out and back in
(evaluation/probe_files.py). The probe's numerics and optimizer against torch are in test_probe.py.
"""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import bad_videos
import tiny
import jepa_jax
from jepa_jax import checkpointing, export, import_torch, loading, sharding, train_state
from jepa_jax.configs.eval import base
from jepa_jax.configs.eval.vjepa2 import common as vjepa2
from jepa_jax.encoder import Encoder
from jepa_jax.evaluation import data as probe_data
from jepa_jax.evaluation import demo_report
from jepa_jax.evaluation import eval_config as eval_checks
from jepa_jax.evaluation import loops, probe_files, probe_step
from tests.torch_reference import rel_error
from tests.torch_reference_v2 import AttentiveClassifierV2

torch.set_num_threads(1)
WIDTH, PROBE_HEADS, CLASSES = 32, 4, 4  # the tiny encoder's width; 4 attention heads of 8 channels
# Three probes: two of a grid and one with a warmup, as IN1K's (warmup in epochs).
HEADS = vjepa2.head_grid(lrs=(3e-3, 1e-3), weight_decays=(0.01,)) + (
    vjepa2.head(2e-3, 0.4, start_lr=1e-4, warmup=1.0),)


def make_pretrained_workdir(path, seed=0, **model_overrides):
  """A pretraining workdir as train.py leaves it (checkpoints/<step>, config.json), from the tiny model's init."""
  config = tiny.tiny_config(**{f"model.{k}": v for k, v in model_overrides.items()})
  config.data.synthetic_videos = 0
  params = train_state.init_params(config, seed)
  state = {"step": jnp.asarray(1, jnp.int32), "params": params, "target_encoder": params["encoder"]}
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with checkpointing.Checkpointer(path, async_save=False) as ckpt:
    ckpt.save(1, state, config=config, force=True)
  return config


def v2_config(pretrained="unused", videos=None, heads=HEADS, **eval_overrides):
  """A V-JEPA 2 eval config (configs/eval/vjepa2/common.py's probe and protocol) at the tiny model's size."""
  config = base.get("vitl16", "ssv2")
  pretrain = tiny.tiny_config()
  config.model, config.mesh = pretrain.model, pretrain.mesh
  config.pretrained = str(pretrained)
  vjepa2.set_probe(config)
  e = config.eval
  e.probe_num_heads = PROBE_HEADS
  e.heads = tuple(heads)
  if videos is not None:
    e.train, e.val = str(videos / "motion_train.csv"), str(videos / "motion_val.csv")
  e.num_classes, e.num_segments, e.num_views = CLASSES, 1, 2
  e.frames, e.frame_step, e.resolution = 4, 2, 32
  e.batch_size, e.epochs, e.num_workers = 6, 2, 0
  e.random_resize_scale = (0.3, 1.0)
  for k, v in eval_overrides.items():
    e[k] = v
  return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from input_pipeline import synthetic
  root = tmp_path_factory.mktemp("probe_heads")
  synthetic.write_dataset(str(root / "videos"), 20, num_frames=24)  # 16 train, 4 val
  make_pretrained_workdir(str(root / "pretrain"))
  return root


def _mesh_rules(config):
  return sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)


def _tiny_features(num_batches, batch=8, seed=0):
  """Probe inputs [B, 1, N, D] from the tiny encoder (random init) on random clips, and random labels."""
  cfg = tiny.tiny_config().model
  cfg.num_frames, cfg.crop_size = 4, 32
  encoder = Encoder.init(cfg, seed=3)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num_batches):
    clips = rng.integers(0, 256, (batch, 4, 32, 32, 3), dtype=np.uint8)
    tokens = encoder.feature_fn(encoder.params, jnp.asarray(clips))[:, None]
    out.append((tokens, jnp.asarray(rng.integers(0, CLASSES, batch), jnp.int32), jnp.ones((batch,), jnp.float32)))
  return out


# ----------------------------------------------------------------------------------------------- the protocol

def test_k_heads_trained_together_equal_k_separate_single_head_runs():
  from jepa_jax.evaluation.probe_optim import stack_hparams
  config = v2_config(epochs=2)
  mesh, rules = _mesh_rules(config)
  batches = _tiny_features(4)  # 2 steps per epoch x 2 epochs: the warmup head warms up over the first epoch
  with jax.set_mesh(mesh):
    probe, params, opt_state = probe_step.build_probe(config, WIDTH, 2, 2, mesh, rules, seed=5)
    assert probe.num_heads == 3 and jax.tree.leaves(params)[0].shape[0] == 3
    init = jax.tree.map(jnp.copy, params)
    together = []
    for tokens, labels, weights in batches:
      params, opt_state, m = probe.train_step(params, opt_state, tokens, labels, weights)
      together.append(np.asarray(m["loss_sum"]))
    # A single-head run of head 2: its init is head 2 of the stacked init (seed + 2: its own draw, as the official
    # heads), its optimizer state holds its own schedule values.
    single, p2, o2 = probe_step.build_probe(config, WIDTH, 2, 2, mesh, rules, seed=7, heads=[HEADS[2]])
    for a, b in zip(jax.tree.leaves((p2, o2.hparams)),
                    jax.tree.leaves((jax.tree.map(lambda x: x[2:3], init), stack_hparams([HEADS[2]], 2)))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Every head alone (one compiled single-head step: the schedule values are data in the optimizer state).
    init_opt = jax.jit(jax.vmap(single.tx.init))
    for i, head in enumerate(HEADS):
      p = jax.tree.map(lambda x, i=i: x[i:i + 1], init)
      o = init_opt(p, stack_hparams([head], 2))
      for step, (tokens, labels, weights) in enumerate(batches):
        p, o, m = single.train_step(p, o, tokens, labels, weights)
        assert abs(float(m["loss_sum"][0]) - together[step][i]) <= 1e-5 * abs(together[step][i]), (i, step)
      # Parameters compared as one vector per head: a vmapped matmul sums in another order, and Adam's normalised
      # step amplifies that rounding in near-zero leaves (zero-init biases reach ~1e-4 relative on their own).
      flat = lambda tree: np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tree)])
      assert rel_error(flat(probe_step.head_params(params, i)), flat(p)) <= 1e-5, i
      loss_after = lambda q: float(single.eval_step(q, *batches[0])["loss_sum"][0])
      assert abs(loss_after(p) - loss_after(jax.tree.map(lambda x, i=i: x[i:i + 1], params))) <= 1e-5 * loss_after(p)
  # The heads really differ (their lr, wd and warmup reach the update): the final losses are not all alike.
  assert len({round(float(v), 4) for v in together[-1]}) == 3


def _fake_split(num_examples, example_shape, seed=0):
  """A probe_data.Split of random uint8 clips (no decoding), labels in 0..CLASSES-1."""
  def make_iter(epoch):
    rng = np.random.default_rng([seed, epoch])
    for start in range(0, num_examples, 6):
      n = min(6, num_examples - start)
      yield {"clips": rng.integers(0, 256, (n,) + example_shape, dtype=np.uint8),
             "labels": rng.integers(0, CLASSES, n).astype(np.int32)}
  return probe_data.Split(num_examples, make_iter, example_shape)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_the_encoder_runs_once_per_batch_whatever_the_number_of_heads(num_heads):
  heads = vjepa2.head_grid(lrs=(1e-3, 3e-4), weight_decays=(0.01, 0.1))[:num_heads]
  config = v2_config(heads=heads)
  mesh, rules = _mesh_rules(config)
  cfg = tiny.tiny_config().model
  cfg.num_frames, cfg.crop_size = 4, 32
  encoder = Encoder.init(cfg, seed=3)
  calls = []

  def counting_feature_fn(params, clips):
    calls.append(clips.shape)
    return encoder.feature_fn(params, clips)

  split = _fake_split(16, (1, 2, 4, 32, 32, 3))  # 1 segment x 2 views
  geometry = probe_data.batch_geometry(6, split.num_examples, mesh)
  with jax.set_mesh(mesh):
    probe, params, opt_state = probe_step.build_probe(config, WIDTH, 2, geometry[2], mesh, rules, seed=0)
    batches = loops.token_batches(split, 0, geometry, mesh, counting_feature_fn, encoder.params, True)
    _, _, metrics = loops.run_epoch_train(probe, params, opt_state, batches)
  assert geometry[2] == 3 and len(calls) == 3  # one encoder pass per batch, for every head at once
  assert calls[0][0] == geometry[1] * 2  # all clips of the batch (its segments x views) in that one pass
  assert metrics["train_acc"].shape == metrics["loss"].shape == (num_heads,)
  assert metrics["num_train_examples"] == 16


# ----------------------------------------------------------------------------------------------- end to end

def _int_keys(tree):
  """orbax gives back nnx.List indices as strings; the module wants ints."""
  if isinstance(tree, dict):
    return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v) for k, v in tree.items()}
  return jnp.asarray(tree)


def _head_logits_ours(config, head_pure, tokens):
  make = probe_step.classifier_factory(config, WIDTH, 2)
  with nnx.use_eager_sharding(False):
    model = make(0)
    nnx.update(model, nnx.State(_int_keys(head_pure)))
  return np.asarray(model(jnp.asarray(tokens)))


@pytest.mark.slow
def test_v2_protocol_end_to_end_then_export_and_evaluate_the_file(data, tmp_path):
  bad = bad_videos.write_bad_videos(str(tmp_path / "bad"))
  config = v2_config(data / "pretrain", data / "videos")
  config.eval.train = bad_videos.list_with(str(tmp_path / "train.csv"), str(data / "videos" / "motion_train.csv"),
                                           [bad["truncated"]], label=1)
  workdir = tmp_path / "probe"
  report = loops.probe_and_evaluate(config, str(workdir))

  # The CSV: a row per epoch, the best head's figures, every head's val top-1, the unreadable videos.
  with open(workdir / "probe_r0.csv") as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == loops.csv_columns(3)
  assert tuple(rows[0])[-4:] == ("best_head", "val_acc_top1_head0", "val_acc_top1_head1", "val_acc_top1_head2")
  for row, hist in zip(rows, report["history"]):
    per_head = [float(row[f"val_acc_top1_head{i}"]) for i in range(3)]
    assert int(row["best_head"]) == int(np.argmax(per_head)) == hist["head"]
    assert float(row["val_acc_top1"]) == pytest.approx(max(per_head), abs=1e-4)
    assert row["skipped"] == "1"  # the truncated training video, with every head
  # The best probe: the best (epoch, head) of the run, with its settings.
  best = max(report["history"], key=lambda r: (r["val_acc_top1"], -r["epoch"]))
  meta = json.loads((workdir / "probe_best.json").read_text())
  assert (meta["epoch"], meta["head"]) == (report["best_epoch"], report["best_head"]) == (best["epoch"], best["head"])
  assert meta["settings"] == HEADS[meta["head"]]
  assert report["final_val_acc_top1_per_head"] == report["history"][-1]["val_acc_top1_per_head"]

  # Export: the official V-JEPA 2 probe file, every head in config order, strict-loadable into the torch reference.
  out = str(tmp_path / "probe.pt")
  export.export_checkpoint(str(workdir), out, with_optimizer=True)
  ckpt = torch.load(out, weights_only=True)
  assert set(ckpt) == {"classifiers", "opt", "scaler", "epoch", "batch_size", "world_size"}
  assert len(ckpt["classifiers"]) == 3 and ckpt["epoch"] == 2
  saved = probe_files._restore_on_host(workdir / "probe_latest")
  tokens = np.random.default_rng(7).normal(size=(3, 40, WIDTH)).astype(np.float32)
  steps = 2 * probe_data.batch_geometry(6, 17, sharding.make_mesh(config.mesh))[2]
  for i, (sd, opt) in enumerate(zip(ckpt["classifiers"], ckpt["opt"])):
    wrapper = torch.nn.Module()  # the official DDP wrapper's 'module.' prefix
    wrapper.module = AttentiveClassifierV2(WIDTH, PROBE_HEADS, CLASSES, depth=4)
    wrapper.load_state_dict(sd, strict=True)
    assert list(sd) == ["module." + k for k, _ in wrapper.module.named_parameters()]  # the official order
    with torch.no_grad():
      theirs = wrapper.module(torch.from_numpy(tokens)).numpy()
    head = jax.tree.map(lambda x, i=i: x[i], saved[probe_files.HEADS_ENTRY])
    assert rel_error(_head_logits_ours(config, head, tokens), theirs) <= 1e-5
    # The AdamW state loads into the official optimizer: one group with the schedule values, moments by index.
    adamw = torch.optim.AdamW(wrapper.module.parameters())
    adamw.load_state_dict(opt)
    group = adamw.param_groups[0]
    assert (group["mc_ref_lr"], group["mc_ref_wd"], group["mc_start_lr"]) == (
        HEADS[i]["lr"], HEADS[i]["weight_decay"], HEADS[i]["start_lr"])
    linear = list(dict(wrapper.module.named_parameters())).index("linear.weight")
    np.testing.assert_array_equal(opt["state"][linear]["exp_avg"].numpy(),
                                  saved[probe_files.OPT_ENTRY]["mu"]["linear"]["kernel"][i].T)
    assert float(opt["state"][linear]["step"]) == steps

  # The file imports back: validation only, the same per-head accuracies as the run's last epoch.
  for source in (out, str(workdir)):
    val_only = v2_config(data / "pretrain", data / "videos", probe_checkpoint=source)
    val_only.eval.train = ""  # validation only: no train list needed
    again = loops.probe_and_evaluate(val_only, str(tmp_path / "val_only"))
    assert again["final_val_acc_top1_per_head"] == report["final_val_acc_top1_per_head"]
    assert again["num_val_examples"] == report["num_val_examples"]
  with open(tmp_path / "val_only" / "probe_r0.csv") as f:
    assert [r["epoch"] for r in csv.DictReader(f)] == ["0"]


def test_a_v1_probe_run_exports_the_v1_layout_and_imports_back(tmp_path):
  from tests.torch_probe_reference import AttentiveClassifier as TorchAttentiveClassifierV1
  config = base.get("vitl16", "ssv2")  # the V-JEPA 1 probe: one block, one head
  pretrain = tiny.tiny_config()
  config.model, config.mesh = pretrain.model, pretrain.mesh
  config.eval.num_classes = CLASSES
  mesh, rules = _mesh_rules(config)
  workdir = tmp_path / "v1probe"
  os.makedirs(workdir)
  (workdir / "config.json").write_text(config.to_json_best_effort())
  with jax.set_mesh(mesh):
    probe, params, opt_state = probe_step.build_probe(config, WIDTH, 2, 3, mesh, rules, seed=1)
    loops.save_heads(str(workdir / "probe_latest"), params, opt_state,
                     {"epoch": 7, "heads": list(probe.heads), "steps_per_epoch": 3})
  out = str(tmp_path / "v1probe.pth.tar")
  with pytest.raises(probe_files.ProbeFileError, match="V-JEPA 1 probe.*leave out --with_optimizer"):
    export.export_checkpoint(str(workdir), out, with_optimizer=True)
  ckpt = export.export_checkpoint(str(workdir), out)
  assert set(ckpt) == {"classifier", "opt", "scaler", "epoch", "batch_size", "world_size", "lr"}
  assert (ckpt["epoch"], ckpt["lr"], ckpt["opt"]) == (7, 1e-3, None)
  wrapper = torch.nn.Module()
  wrapper.module = TorchAttentiveClassifierV1(WIDTH, 2, CLASSES)
  wrapper.load_state_dict(torch.load(out, weights_only=True)["classifier"], strict=True)  # xattn.proj included
  tokens = np.random.default_rng(8).normal(size=(2, 30, WIDTH)).astype(np.float32)
  with torch.no_grad():
    theirs = wrapper.module(torch.from_numpy(tokens)).numpy()
  assert rel_error(_head_logits_ours(config, probe_step.head_params(params, 0), tokens), theirs) <= 1e-5
  saved = probe_files.read_probes(out)
  assert (saved.num_heads, saved.num_probe_blocks, saved.epoch) == (1, 1, 7)
  back = probe_files.stacked_params(saved, params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_probe_file_that_does_not_fit_the_config_is_a_clear_error(data, tmp_path):
  path = str(tmp_path / "probe.pt")
  sd = {"module." + k: v for k, v in AttentiveClassifierV2(WIDTH, PROBE_HEADS, 7, depth=2).state_dict().items()}
  torch.save({"classifiers": [sd], "opt": None, "scaler": None, "epoch": 4}, path)
  config = v2_config(data / "pretrain", data / "videos", probe_checkpoint=path)
  with pytest.raises(eval_checks.EvalConfigError, match=r"num_probe_blocks=4 but the probes have 2; "
                     r"config.eval.num_classes=4 but the probes have 7"):
    loops.probe_and_evaluate(config, str(tmp_path / "run"))


def test_a_probe_file_given_as_a_backbone_says_what_it_holds(tmp_path):
  sd = {"module." + k: v for k, v in AttentiveClassifierV2(WIDTH, PROBE_HEADS, 5, depth=4).state_dict().items()}
  v2_file, v1_file = str(tmp_path / "ssv2-vitl-16x2x3.pt"), str(tmp_path / "v1_probe.pth.tar")
  torch.save({"classifiers": [sd, sd], "opt": None, "scaler": None, "epoch": 3, "batch_size": 4,
              "world_size": 64}, v2_file)
  v1_sd = {"module.pooler.query_tokens": torch.zeros(1, 1, 16), "module.linear.weight": torch.zeros(9, 16),
           "module.linear.bias": torch.zeros(9)}
  torch.save({"classifier": v1_sd, "epoch": 1}, v1_file)
  v2_says = (r"attentive-probe checkpoint, not a backbone: .*2 attentive probes \(num_probe_blocks 4, width 32, "
             r"5 classes\), epoch 3")
  with pytest.raises(loading.EncoderSourceError, match=v2_says):
    jepa_jax.load_encoder(v2_file)
  with pytest.raises(import_torch.CheckpointFormatError, match=v2_says + ".*issue #43"):
    import_torch.import_checkpoint(v2_file, tiny.tiny_config(), str(tmp_path / "w"))
  with pytest.raises(loading.EncoderSourceError, match=r"1 attentive probe \(num_probe_blocks 1, width 16, 9 "
                     r"classes\), epoch 1"):
    jepa_jax.load_encoder(v1_file)


def test_the_demo_report_runs_the_v2_probe_and_a_v2_run_selects_it(data, tmp_path):
  config = v2_config(data / "pretrain", data / "videos", epochs=1,
                     heads=vjepa2.head_grid(lrs=(1e-3, 3e-4), weight_decays=(0.01,)))
  results = demo_report.demo_probe_report(str(data / "pretrain"), config, seed=0)
  for top1 in results.values():  # the best of 2 heads on 4 val videos: a multiple of 25%
    assert top1 in (0.0, 25.0, 50.0, 75.0, 100.0)
  assert demo_report.demo_config_for_run(str(data / "pretrain")).eval.num_probe_blocks == 1
  make_pretrained_workdir(str(tmp_path / "v2run"), pos_embed="rope")
  chosen = demo_report.demo_config_for_run(str(tmp_path / "v2run"))
  assert chosen.eval.num_probe_blocks == 4 and len(chosen.eval.heads) == 4 and chosen.model.pos_embed == "rope"
  assert (chosen.eval.frames, chosen.eval.resolution) == (4, 64)  # the run's clips, not the demo's


# ----------------------------------------------------------------------------------------------- configs

# The official configs/eval/{vitl,vitg-384}/*.yaml of facebookresearch/vjepa2 (docs/reference.md §9.6):
# name -> (model_name, resolution, frames, frame step, segments, views, classes, global batch, epochs, heads)
OFFICIAL = {
    "vitl16_ssv2": ("vit_large", 256, 16, 4, 2, 3, 174, 4 * 64, 20, 20),
    "vitl16_k400": ("vit_large", 256, 16, 4, 8, 3, 400, 4 * 64, 20, 20),
    "vitl16_diving48": ("vit_large", 256, 32, 2, 4, 3, 48, 2 * 64, 100, 3),
    "vitl16_in1k": ("vit_large", 256, 16, None, 1, 1, 1000, 16 * 64, 20, 21),
    "vitg16_384_ssv2": ("vit_giant_xformers", 384, 64, 2, 2, 3, 174, 2 * 128, 20, 20),
    "vitg16_384_k400": ("vit_giant_xformers", 384, 16, 4, 8, 3, 400, 1 * 256, 20, 20),
    "vitg16_384_diving48": ("vit_giant_xformers", 384, 32, 2, 4, 3, 48, 2 * 64, 100, 3),
    "vitg16_384_in1k": ("vit_giant_xformers", 384, 18, None, 1, 1, 1000, 8 * 128, 20, 21),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_v2_eval_configs_carry_the_official_values(name):
  from jepa_jax import config_files
  config = config_files.load(f"eval/vjepa2/{name}")
  model_name, res, frames, step, segments, views, classes, batch, epochs, num_heads = OFFICIAL[name]
  m, e = config.model, config.eval
  assert (m.name, m.pos_embed, m.crop_size, e.resolution) == (model_name, "rope", res, res)
  assert config.checkpoint_key == "target_encoder"
  assert (e.num_probe_blocks, e.probe_num_heads, e.clip_grad, e.decay_all_params, e.probe_remat) == (
      4, 16, 0.0, True, True)
  assert (e.num_segments, e.num_views, e.num_classes, e.batch_size, e.epochs) == (segments, views, classes, batch,
                                                                                 epochs)
  if e.task == "video":
    assert (e.frames, e.frame_step, m.num_frames) == (frames, step, frames)
  else:
    assert m.num_frames == frames  # the image repeated along time (official img_as_video_nframes)
  heads = eval_checks.probe_heads(config)
  assert len(heads) == num_heads
  assert "lr" not in e and "weight_decay" not in e  # per head only: an override of these would do nothing
  if num_heads == 20:  # weight decay outer, lr inner, as the yaml lists them; lr cosine to 0, wd constant
    assert [(h["lr"], h["weight_decay"]) for h in heads[:6]] == [
        (5e-3, 0.01), (3e-3, 0.01), (1e-3, 0.01), (3e-4, 0.01), (1e-4, 0.01), (5e-3, 0.1)]
    assert (heads[-1]["lr"], heads[-1]["weight_decay"]) == (1e-4, 0.8)
    assert all(h["final_lr"] == 0 and h["warmup"] == 0 and h["start_lr"] == h["lr"]
               and h["final_weight_decay"] == h["weight_decay"] for h in heads)
  elif num_heads == 3:
    assert [(h["lr"], h["weight_decay"], h["final_weight_decay"]) for h in heads] == [
        (1e-3, 0.8, 0.8), (3e-4, 0.8, 0.8), (1e-4, 0.8, 0.8)]
    assert e.out_layers == ((17, 19, 21, 23) if model_name == "vit_large" else (24, 29, 34, 39))
  else:  # IN1K: the no-warmup head first, then lr outer x wd inner with a 5-epoch warmup from 2e-4
    assert heads[0] == {"lr": 1e-3, "start_lr": 1e-3, "final_lr": 0.0, "warmup": 0.0, "weight_decay": 1e-3,
                        "final_weight_decay": 0.0}
    assert heads[1] == {"lr": 5e-4, "start_lr": 2e-4, "final_lr": 0.0, "warmup": 5.0, "weight_decay": 8e-3,
                        "final_weight_decay": 8e-3}
    assert [(h["lr"], h["weight_decay"]) for h in heads[5:7]] == [(5e-4, 5e-4), (1e-3, 8e-3)]
    assert (heads[-1]["lr"], heads[-1]["weight_decay"]) == (2e-3, 5e-4)
  if num_heads != 3:
    assert e.out_layers == ()


def test_v1_eval_configs_keep_the_v1_probe_and_optimizer():
  e = base.get("vitl16", "ssv2").eval
  assert (e.num_probe_blocks, e.heads, e.clip_grad, e.decay_all_params, e.out_layers, e.probe_remat) == (
      1, (), 1.0, False, (), False)
  heads = eval_checks.probe_heads(base.get("vith16", "in1k"))
  assert heads == ({"lr": 1e-3, "start_lr": 1e-3, "final_lr": 0.0, "warmup": 0.0, "weight_decay": 0.001,
                    "final_weight_decay": 1e-6},)


def test_bad_head_settings_and_out_layers_are_clear_errors(data):
  config = v2_config(data / "pretrain", data / "videos", heads=[{"lr": 1e-3, "wd": 0.1}])
  with pytest.raises(eval_checks.EvalConfigError, match=r"config.eval.heads\[0\].*unknown fields \['wd'\]; "
                     r"missing \['weight_decay'\]"):
    eval_checks.validate_eval_config(config)
  config = v2_config(data / "pretrain", data / "videos", heads=[vjepa2.head(1e-3, 0.1, warmup=2.0)])
  with pytest.raises(eval_checks.EvalConfigError, match="warmup 2.0 epochs, not shorter than config.eval.epochs=2"):
    eval_checks.validate_eval_config(config)
  config = v2_config(data / "pretrain", data / "videos", out_layers=(0, 2))
  with pytest.raises(eval_checks.EvalConfigError, match=r"config.eval.out_layers=\(0, 2\).*0..1 \(vit_tiny has 2"):
    eval_checks.validate_eval_config(config)
  config = v2_config(data / "pretrain", data / "videos", probe_checkpoint=str(data / "nowhere.pt"))
  with pytest.raises(eval_checks.EvalConfigError, match="config.eval.probe_checkpoint=.*does not exist"):
    eval_checks.validate_eval_config(config)
