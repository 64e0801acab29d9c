"""Pictures: mask overlays count tokens exactly, PCA finds planted structure, every command writes a valid file."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import bad_videos
import tiny
from input_pipeline import synthetic
from input_pipeline import video
from jepa_jax import checkpointing
from jepa_jax import metrics
from jepa_jax import train_state
from jepa_jax import visualize
from jepa_jax.visualize import masks as mask_pictures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_overlay_tints_target_tokens_times_patch_area():
  config = tiny.tiny_config()
  specs, generator = tiny.mask_generator(config, per_device_batch=4)
  m = config.model
  grid = (m.num_frames // m.tubelet_size, m.crop_size // m.patch_size, m.crop_size // m.patch_size)
  masks = generator(4, np.random.default_rng(0))
  frames = np.full((grid[0], m.crop_size, m.crop_size, 3), 100, np.uint8)
  area = m.patch_size ** 2
  for g, spec in enumerate(specs):
    colour = mask_pictures.GENERATOR_COLOURS[g]
    labels = visualize.token_labels(masks["context_masks"][g][1], masks["target_masks"][g][1], grid)
    out = visualize.overlay(frames, labels, colour)
    tinted = np.rint((1 - mask_pictures.TINT_ALPHA) * 100 + mask_pictures.TINT_ALPHA * np.array(colour))
    dimmed = np.rint(100 * mask_pictures.DROPPED_BRIGHTNESS)
    count = lambda value: int(np.all(out == value, axis=-1).sum())
    assert count(tinted) == spec.num_target * area
    assert count(100) == spec.num_context * area
    assert count(dimmed) == (np.prod(grid) - spec.num_context - spec.num_target) * area


def test_overlay_puts_each_token_on_its_own_patch():
  labels = np.full((2, 2, 2), mask_pictures.CONTEXT, np.int8)
  labels[1, 0, 1] = mask_pictures.TARGET  # token (t=1, h=0, w=1): frame 1, top right patch
  out = visualize.overlay(np.zeros((2, 8, 8, 3), np.uint8), labels, (255, 255, 255))
  tinted = out.any(axis=-1)
  assert tinted[1, :4, 4:].all() and tinted.sum() == 16


def test_pca_first_component_separates_planted_groups():
  rng = np.random.default_rng(0)
  d = 32
  a, b = rng.normal(size=d), rng.normal(size=d)
  grid = (2, 4, 4)
  group = np.zeros(grid, bool)
  group[:, :, 2:] = True  # right half of every frame is the "object"
  features = np.where(group[..., None], b, a) * 3 + rng.normal(size=(*grid, d)) * 0.3
  rgb, explained = visualize.pca_rgb(features)
  assert rgb.shape == (*grid, 3) and rgb.min() >= 0 and rgb.max() <= 1
  assert explained[0] > 0.8
  red_in, red_out = rgb[group][:, 0], rgb[~group][:, 0]
  assert red_in.min() > red_out.max() or red_in.max() < red_out.min()
  assert np.linalg.norm(rgb[group].mean(0) - rgb[~group].mean(0)) > 0.8
  frames = visualize.token_map_to_frames(rgb[None], patch_size=16, tubelet_size=2)
  assert frames.shape == (1, 4, 64, 64, 3) and frames.dtype == np.uint8
  assert (frames[0, 3, 16:32, 48:64] == np.rint(rgb[1, 1, 3] * 255).astype(np.uint8)).all()


def test_pca_colours_do_not_depend_on_token_order():
  """SVD signs are arbitrary; the sign fix keeps a token's colour when the tokens come in another order."""
  rng = np.random.default_rng(1)
  features = rng.normal(size=(40, 8)) * np.arange(8, 0, -1)
  perm = rng.permutation(40)
  np.testing.assert_allclose(visualize.pca_rgb(features[perm])[0], visualize.pca_rgb(features)[0][perm], atol=1e-5)


def _png_size(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.load()
    return image.size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny run's workdir: synthetic videos, config.json, a checkpoint at step 5 and a CSV of 5 steps."""
  workdir = tmp_path_factory.mktemp("run")
  lists = synthetic.write_dataset(str(workdir / "videos"), 4, num_frames=24)
  config = tiny.tiny_config()
  config.data.synthetic_videos = 0
  config.data.datasets = (lists["motion_train"],)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  # Random params of the right tree (fast: no init compile); the pictures read only the target encoder.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.02 * rng.normal(size=s.shape)).astype(s.dtype),
                        train_state.abstract_param_shapes(train_state.model_defs(config)))
  state = {"step": np.int32(5), "params": params, "target_encoder": params["encoder"]}
  with checkpointing.Checkpointer(workdir, async_save=False) as ckpt:
    ckpt.save(5, state, config=config, force=True)
  with metrics.MetricsWriter(workdir, is_primary=True, ipe=config.optim.ipe) as writer:
    for step in range(1, 6):
      writer.write(step, {"loss": 1.0 / step, "lr": 1e-3 * step, "wd": 0.04, "ema_momentum": 0.996 + step * 1e-4,
                          "enc_grad_norm": 0.1, "pred_grad_norm": 1.0, "clips_per_s": 10.0})
  return workdir, config, lists


def test_run_pictures_are_valid_pngs(run):
  workdir, config, _ = run
  pictures = visualize.write_run_pictures(workdir, config)
  assert set(pictures) == {"masks", "features", "curves"}
  m = config.model
  cols = m.num_frames // m.tubelet_size
  rows = 3 * len(config.mask.num_blocks)  # 3 clips x generators
  width, height = _png_size(pictures["masks"])
  assert width >= cols * 112 and height >= rows * 112
  width, height = _png_size(pictures["features"])
  assert width >= cols * 112 and height >= 2 * 112
  assert _png_size(pictures["curves"]) == (1200, 700)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_feature_animation_has_every_frame(run, tmp_path, suffix):
  workdir, config, lists = run
  path = visualize.draw_features(str(workdir), _first_video(lists), str(tmp_path / f"features{suffix}"),
                                 max_clips=2)
  clip_len = config.model.num_frames * config.data.frame_step  # 24-frame videos hold 2 clips of 8 frames
  expected = 2 * config.model.num_frames
  assert 24 // clip_len >= 2
  if suffix == ".gif":
    with Image.open(path) as image:
      assert image.n_frames == expected and image.size == (512, 256)  # input | features, zoomed to 256 px
  else:
    assert video.video_info(path)[0] == expected


def test_a_list_draws_its_first_readable_video_and_a_bad_video_is_a_clear_error(run, tmp_path, caplog):
  workdir, _, lists = run
  bad = bad_videos.write_bad_videos(str(tmp_path / "bad"))
  mixed = bad_videos.list_with(str(tmp_path / "mixed.csv"), lists["motion_val"], [bad["truncated"], bad["empty"]],
                               first=True)
  with caplog.at_level("WARNING"):
    path = visualize.draw_features(str(workdir), mixed, str(tmp_path / "features.png"))
  assert _png_size(path)[0] > 0
  assert f"skipping video {bad['truncated']}" in caplog.text and f"skipping video {bad['empty']}" in caplog.text
  assert "2 unreadable videos skipped before" in caplog.text and _first_video(lists) in caplog.text
  with pytest.raises(ValueError, match=r"truncated.mp4 cannot be read \(cannot open"):
    visualize.draw_features(str(workdir), bad["truncated"], str(tmp_path / "bad.png"))


def _first_video(lists):
  with open(lists["motion_val"]) as f:
    return f.readline().rsplit(" ", 1)[0]


def test_curves_read_steps_and_keep_the_last_row_of_a_resumed_step(tmp_path):
  path = tmp_path / "jepa_r0.csv"
  header = ",".join(metrics.HEADER)
  blank = "," * (len(metrics.HEADER) - 3)
  path.write_text(f"{header}\n1,0,0.9{blank}\n1,1,0.8{blank}\n2,0,0.7{blank}\n1,1,0.5{blank}\n2,0,0.4{blank}\n")
  log = visualize.read_log(str(path), ipe=2)
  np.testing.assert_array_equal(log["loss"][0], [1, 2, 3])
  np.testing.assert_allclose(log["loss"][1], [0.9, 0.5, 0.4])
  assert "lr" not in log  # empty columns are left out


def test_curves_command_line(run, tmp_path):
  workdir, _, _ = run
  out = tmp_path / "curves.png"
  subprocess.run([sys.executable, "-m", "jepa_jax.visualize", "curves", f"--workdir={workdir}", f"--out={out}"],
                 cwd=ROOT, check=True, capture_output=True, timeout=120)
  assert _png_size(out) == (1200, 700)
  bad = subprocess.run([sys.executable, "-m", "jepa_jax.visualize", "nonsense", f"--out={out}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "masks" in bad.stderr
