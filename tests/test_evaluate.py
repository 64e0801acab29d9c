"""The frozen evaluation: multi-view averaging, image repeat, global top-k counts, bad inputs, a tiny end-to-end run.

The probe's numerics against the torch reference are in test_probe.py.
"""
import csv
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bad_videos
import tiny
from input_pipeline import sources
from input_pipeline.pipeline import DataPipelineError
from jepa_jax.configs.eval import base
from jepa_jax import checkpointing
from jepa_jax import sharding
from jepa_jax import train_state
from jepa_jax.encoder import Encoder
from jepa_jax.evaluation import data as probe_data
from jepa_jax.evaluation import eval_config as eval_checks
from jepa_jax.evaluation import loops
from jepa_jax.evaluation import probe_step


def make_pretrained_workdir(path, seed=0):
  """A pretraining workdir as train.py leaves it (checkpoints/<step>, config.json), from the tiny model's init."""
  config = tiny.tiny_config()
  config.data.synthetic_videos = 0
  params = train_state.init_params(config, seed)
  state = {"step": jnp.asarray(1, jnp.int32), "params": params,
           "target_encoder": jax.tree.map(lambda x: x * 1.5, params["encoder"])}
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  with checkpointing.Checkpointer(path, async_save=False) as ckpt:
    ckpt.save(1, state, config=config, force=True)
  return config, state


def eval_config(pretrained, videos, **eval_overrides):
  config = base.get("vitl16", "ssv2")
  pretrain = tiny.tiny_config()
  config.model = pretrain.model
  config.mesh = pretrain.mesh
  config.pretrained = str(pretrained)
  e = config.eval
  e.train, e.val = str(videos / "motion_train.csv"), str(videos / "motion_val.csv")
  e.num_classes, e.num_segments, e.num_views = 4, 2, 2
  e.frames, e.frame_step, e.resolution = 4, 2, 32
  e.batch_size, e.epochs, e.num_workers = 6, 2, 0
  e.random_resize_scale = (0.3, 1.0)
  for k, v in eval_overrides.items():
    e[k] = v
  return config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from input_pipeline import synthetic
  root = tmp_path_factory.mktemp("probe")
  synthetic.write_dataset(str(root / "videos"), 20, num_frames=24)  # 16 train, 4 val
  make_pretrained_workdir(str(root / "pretrain"))
  return root


def tiny_encoder(frames=4, crop=32):
  cfg = tiny.tiny_config().model
  cfg.num_frames, cfg.crop_size = frames, crop
  mesh = sharding.make_mesh(tiny.tiny_config().mesh)
  rules = sharding.logical_rules(tiny.tiny_config().mesh)
  encoder = Encoder.init(cfg, seed=3)
  return encoder.feature_fn, jax.device_put(jax.device_get(encoder.params), encoder.param_shardings(mesh, rules)), mesh


# ----------------------------------------------------------------------------------------------- numerics

def test_multi_view_prediction_is_the_mean_of_softmax_over_views():
  logits = np.random.default_rng(0).normal(size=(5, 3, 7)).astype(np.float32) * 3
  e = np.exp(logits - logits.max(-1, keepdims=True))
  expected = (e / e.sum(-1, keepdims=True)).mean(1)
  np.testing.assert_allclose(probe_step.view_averaged_probs(jnp.asarray(logits)), expected, rtol=1e-5, atol=1e-7)
  # Not the softmax of the mean logits: the two differ for these logits.
  assert not np.allclose(expected, jax.nn.softmax(logits.mean(1)), atol=1e-3)


def test_topk_counts_ignore_padding_rows_and_cap_k_at_the_class_count():
  rng = np.random.default_rng(1)
  probs = rng.random((10, 6)).astype(np.float32)
  labels = rng.integers(0, 6, 10).astype(np.int32)
  weights = np.array([1] * 7 + [0] * 3, np.float32)
  top1, top5 = probe_step.topk_correct(jnp.asarray(probs), jnp.asarray(labels), jnp.asarray(weights))
  order = np.argsort(-probs, axis=1)
  assert float(top1) == np.sum((order[:7, 0] == labels[:7]))
  assert float(top5) == np.sum([labels[i] in order[i, :5] for i in range(7)])
  small = probe_step.topk_correct(jnp.asarray(probs[:, :3]), jnp.asarray(labels % 3), jnp.asarray(weights))
  assert float(small[1]) == 7.0  # top-5 of 3 classes: always right


def test_accuracy_is_counted_over_the_whole_set_not_averaged_over_uneven_batches():
  config = eval_config("unused", pathlib.Path("/unused"))
  config.eval.num_classes = 5
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.mesh)
  with jax.set_mesh(mesh):
    probe, params, _ = probe_step.build_probe(config, 32, 2, 10, mesh, rules, seed=0)
    rng = np.random.default_rng(2)
    tokens = rng.normal(size=(19, 2, 6, 32)).astype(np.float32)
    labels = rng.integers(0, 5, 19).astype(np.int32)
    # The expected figures from one pass over all 19 examples.
    full = probe.eval_step(params, jnp.asarray(np.pad(tokens, ((0, 5), (0, 0), (0, 0), (0, 0)))),
                           jnp.asarray(np.pad(labels, (0, 5))), jnp.asarray((np.arange(24) < 19).astype(np.float32)))
    batches = []
    for start in (0, 8, 16):  # 8, 8, 3 real rows, each padded to 8
      n = min(8, 19 - start)
      t = np.zeros((8, 2, 6, 32), np.float32)
      t[:n] = tokens[start:start + n]
      lab = np.zeros(8, np.int32)
      lab[:n] = labels[start:start + n]
      batches.append((jnp.asarray(t), jnp.asarray(lab), jnp.asarray((np.arange(8) < n).astype(np.float32))))
    got = loops.run_eval(probe, params, batches)
  assert got["num_examples"] == 19
  # One head (V-JEPA 1): every figure is an array over the heads, of length 1.
  assert got["val_acc_top1"].shape == (1,)
  np.testing.assert_allclose(got["val_acc_top1"], 100 * np.asarray(full["top1"]) / 19, rtol=1e-6)
  np.testing.assert_allclose(got["val_acc_top5"], 100 * np.asarray(full["top5"]) / 19, rtol=1e-6)


def test_batch_geometry_pads_to_the_devices_and_covers_every_example():
  mesh = sharding.make_mesh(tiny.tiny_config().mesh)  # 8 devices
  local, padded, steps = probe_data.batch_geometry(6, 19, mesh)
  assert (local, padded, steps) == (6, 8, 4)
  split = probe_data.Split(19, lambda epoch: iter([{"clips": np.ones((n, 2, 2, 3), np.uint8),
                                                  "labels": np.arange(n, dtype=np.int32)} for n in (6, 6, 6, 1)]),
                         (2, 2, 3))
  batches = list(probe_data.padded_batches(split, 0, local_batch=local, padded_local=padded, steps=steps))
  assert [b["clips"].shape[0] for b in batches] == [8] * 4
  assert sum(float(b["weights"].sum()) for b in batches) == 19
  assert batches[-1]["clips"][1:].sum() == 0


# ----------------------------------------------------------------------------------------------- tokens

def test_an_image_is_encoded_as_the_image_repeated_along_time():
  feature_fn, params, mesh = tiny_encoder()
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  with jax.set_mesh(mesh):
    from_images = loops.encode_batch(feature_fn, params, jnp.asarray(images), attend_across_segments=True)
    clips = np.repeat(images[:, None, None, None], 4, axis=3)  # [B, S=1, V=1, T=4, H, W, 3]
    from_clips = loops.encode_batch(feature_fn, params, jnp.asarray(clips), attend_across_segments=True)
  assert from_images.shape == (8, 1, 2 * 2 * 2, 32)
  np.testing.assert_allclose(from_images, from_clips, rtol=1e-5, atol=1e-5)


def test_segments_are_concatenated_per_view_when_attending_across_segments():
  feature_fn, params, mesh = tiny_encoder()
  clips = np.random.default_rng(1).integers(0, 256, (8, 3, 2, 4, 32, 32, 3), dtype=np.uint8)  # S=3, V=2
  with jax.set_mesh(mesh):
    across = np.asarray(loops.encode_batch(feature_fn, params, jnp.asarray(clips), attend_across_segments=True))
    apart = np.asarray(loops.encode_batch(feature_fn, params, jnp.asarray(clips), attend_across_segments=False))
    one = np.asarray(feature_fn(params, jnp.asarray(clips[:, 2, 1])))  # segment 2, view 1
  n = one.shape[1]
  assert across.shape == (8, 2, 3 * n, 32) and apart.shape == (8, 6, n, 32)
  np.testing.assert_allclose(across[:, 1, 2 * n:3 * n], one, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(apart[:, 2 * 2 + 1], one, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- bad inputs

def test_missing_pretrained_path_is_a_clear_error(data):
  with pytest.raises(eval_checks.EvalConfigError, match="config.pretrained is empty"):
    eval_checks.validate_eval_config(eval_config("", data / "videos"))
  with pytest.raises(eval_checks.EvalConfigError, match="does not exist"):
    eval_checks.validate_eval_config(eval_config(data / "nowhere", data / "videos"))


def test_num_classes_below_the_labels_found_is_a_clear_error(data):
  config = eval_config(data / "pretrain", data / "videos", num_classes=2)
  with pytest.raises(eval_checks.EvalConfigError, match="num_classes=4"):
    eval_checks.validate_eval_config(config)


def test_missing_list_is_a_clear_error(data):
  config = eval_config(data / "pretrain", data / "videos", val=str(data / "videos" / "nope.csv"))
  with pytest.raises(eval_checks.EvalConfigError, match="config.eval.val="):
    eval_checks.validate_eval_config(config)


def test_a_probe_checkpoint_passed_as_pretrained_is_a_clear_error(data, tmp_path):
  torch = pytest.importorskip("torch")
  probe_file = tmp_path / "probe.pth.tar"
  torch.save({"classifier": {"module.linear.weight": torch.zeros(4, 32)}, "epoch": 3}, str(probe_file))
  config = eval_config(probe_file, data / "videos")
  mesh = sharding.make_mesh(config.mesh)
  with pytest.raises(eval_checks.EvalConfigError, match="attentive-probe checkpoint"):
    loops.frozen_encoder(config, mesh, sharding.logical_rules(config.mesh))
  probe_dir = tmp_path / "probe_run"
  (probe_dir / "probe_best").mkdir(parents=True)
  with pytest.raises(eval_checks.EvalConfigError, match="attentive-probe checkpoint"):
    loops.frozen_encoder(eval_config(probe_dir, data / "videos"), mesh, sharding.logical_rules(config.mesh))


def test_an_encoder_of_another_size_is_a_clear_error(data):
  config = eval_config(data / "pretrain", data / "videos")
  config.model.depth = 3
  mesh = sharding.make_mesh(config.mesh)
  with pytest.raises(eval_checks.EvalConfigError,
                     match=r"config.model.depth=3 gives depth 3 but the run .*pretrain has 2"):
    loops.frozen_encoder(config, mesh, sharding.logical_rules(config.mesh))


def test_the_target_encoder_is_loaded_by_default_and_the_encoder_on_request(data):
  _, state = make_pretrained_workdir(str(data / "pretrain_keys"), seed=5)
  mesh = sharding.make_mesh(tiny.tiny_config().mesh)
  rules = sharding.logical_rules(tiny.tiny_config().mesh)
  config = eval_config(data / "pretrain_keys", data / "videos")
  config.eval.resolution = 64
  _, target = loops.frozen_encoder(config, mesh, rules)
  config.checkpoint_key = "encoder"
  _, encoder = loops.frozen_encoder(config, mesh, rules)
  leaf = lambda t: np.asarray(t["norm"]["scale"])
  np.testing.assert_allclose(leaf(target), leaf(state["target_encoder"]))
  np.testing.assert_allclose(leaf(encoder), leaf(state["params"]["encoder"]))


# ----------------------------------------------------------------------------------------------- end to end

def test_probe_run_end_to_end_writes_csv_best_probe_and_report(data, tmp_path):
  config = eval_config(data / "pretrain", data / "videos")
  report = loops.probe_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "probe_r0.csv") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(loops.CSV_COLUMNS)
  assert [int(r["epoch"]) for r in rows] == [1, 2]
  assert report["num_val_examples"] == 4  # every val video once, none padded in
  for r in rows:
    assert 0 <= float(r["val_acc_top1"]) <= float(r["val_acc_top5"]) <= 100
    assert np.isfinite(float(r["loss"]))
  assert float(rows[-1]["val_acc_top1"]) == pytest.approx(report["final_val_acc_top1"], abs=1e-4)
  assert (tmp_path / "probe_best").is_dir() and (tmp_path / "probe_best.json").exists()
  # The saved probe has the official probe names and reloads.
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh):
    _, params, _ = probe_step.build_probe(config, 32, 2, 4, mesh, sharding.logical_rules(config.mesh), seed=0)
  restored = loops.load_probe(str(tmp_path / "probe_best"), probe_step.head_params(params, 0))
  assert set(restored) == {"pooler", "linear"}
  assert restored["pooler"]["query_tokens"].shape == (1, 1, 32)


def test_image_probe_end_to_end_on_an_image_folder(tmp_path, data):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (("train", 3), ("val", 2)):
    for cls in ("cat", "dog"):
      (tmp_path / "images" / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / "images" / split / cls / f"{i}.png")
  config = eval_config(data / "pretrain", data / "videos", task="image", image_folder=str(tmp_path / "images"),
                       num_classes=3, epochs=1, batch_size=4)
  with pytest.raises(eval_checks.EvalConfigError, match="2 classes"):
    eval_checks.validate_eval_config(config)
  config.eval.num_classes = 2
  report = loops.probe_and_evaluate(config, str(tmp_path / "run"))
  assert report["num_val_examples"] == 4
  assert 0 <= report["final_val_acc_top1"] <= 100 and report["final_val_acc_top5"] == 100.0


def test_the_demo_report_trains_the_same_probe_on_the_pretrained_and_a_random_encoder(data):
  from jepa_jax.evaluation import demo_report
  config = eval_config(data / "pretrain", data / "videos", epochs=1, num_segments=1, num_views=1)
  results = demo_report.demo_probe_report(str(data / "pretrain"), config, seed=0)
  assert set(results) == {"pretrained", "random"}
  for top1 in results.values():  # 4 val videos: a multiple of 25%
    assert top1 in (0.0, 25.0, 50.0, 75.0, 100.0)


# ----------------------------------------------------------------------------------------------- bad videos

def test_unreadable_videos_are_dropped_counted_and_reported_by_the_probe(data, tmp_path, caplog):
  bad = bad_videos.write_bad_videos(str(tmp_path / "bad"))
  videos = data / "videos"
  config = eval_config(data / "pretrain", videos, epochs=1)
  config.eval.train = bad_videos.list_with(str(tmp_path / "train.csv"), str(videos / "motion_train.csv"),
                                           [bad["truncated"], bad["too_short"]], label=1)
  config.eval.val = bad_videos.list_with(str(tmp_path / "val.csv"), str(videos / "motion_val.csv"), [bad["empty"]],
                                         label=2)
  with caplog.at_level("WARNING"):
    report = loops.probe_and_evaluate(config, str(tmp_path / "probe"))
  assert report["num_val_examples"] == 4 and report["num_val_skipped"] == 1  # accuracy over the 4 readable ones
  with open(tmp_path / "probe" / "probe_r0.csv") as f:
    rows = list(csv.DictReader(f))
  assert rows[0]["skipped"] == "3"  # 2 train + 1 val
  for path in bad.values():
    assert f"skipping video {path}" in caplog.text


def test_a_split_of_mostly_unreadable_videos_stops_with_a_clear_error(data, tmp_path):
  bad = bad_videos.write_bad_videos(str(tmp_path / "bad"))
  one_good = sources.read_file_list(str(data / "videos" / "motion_val.csv"))[0][:1]
  sources.write_file_list(str(tmp_path / "val.csv"), one_good + list(bad.values()), [0, 1, 2, 3])
  config = eval_config(data / "pretrain", data / "videos")
  config.eval.val = str(tmp_path / "val.csv")
  inputs = eval_checks.validate_eval_config(config)
  mesh = sharding.make_mesh(config.mesh)
  split = probe_data.make_split(config, inputs, "val", local_batch=6)
  local, padded, steps = probe_data.batch_geometry(6, split.num_examples, mesh)
  with pytest.raises(DataPipelineError, match=r"3 of 4 video decodes failed"):
    list(probe_data.padded_batches(split, 0, local_batch=local, padded_local=padded, steps=steps))
