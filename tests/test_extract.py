"""Feature extraction: shapes, labels, pooling, determinism, independence from the batch size and padding, and
unreadable videos skipped, named and listed."""
import os
import subprocess
import sys

import numpy as np
import pytest

import bad_videos
from test_evaluate import make_pretrained_workdir
from input_pipeline.pipeline import DataPipelineError
from input_pipeline import sources
from jepa_jax import extract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  from input_pipeline import synthetic
  root = tmp_path_factory.mktemp("extract")
  synthetic.write_dataset(str(root / "videos"), 5, num_frames=24)
  make_pretrained_workdir(str(root / "pretrain"))
  return root


def test_video_features_have_one_row_per_listed_video_and_are_deterministic(workdir):
  out = workdir / "f.npz"
  lst = str(workdir / "videos" / "motion_train.csv")  # 4 videos
  result = extract.run(str(workdir / "pretrain"), str(out), videos=lst, batch_size=3)
  # tiny model: 4 frames / tubelet 2 x (64 / 16)^2 = 32 tokens of width 32
  assert result["features"].shape == (4, 32, 32) and result["features"].dtype == np.float32
  saved = np.load(out)
  np.testing.assert_array_equal(saved["labels"], [0, 1, 2, 3])
  assert len(saved["paths"]) == 4
  again = extract.run(str(workdir / "pretrain"), str(workdir / "g.npz"), videos=lst, batch_size=4, pooled=True)
  assert again["features"].shape == (4, 32)
  np.testing.assert_allclose(again["features"], result["features"].mean(1), rtol=1e-5, atol=1e-6)


def test_array_features_do_not_depend_on_the_batch_size_or_padding(workdir):
  clips = np.random.default_rng(0).integers(0, 256, (5, 4, 64, 64, 3), dtype=np.uint8)
  np.save(workdir / "clips.npy", clips)
  a = extract.run(str(workdir / "pretrain"), str(workdir / "a.npz"), clips=str(workdir / "clips.npy"), batch_size=2)
  b = extract.run(str(workdir / "pretrain"), str(workdir / "b.npz"), clips=str(workdir / "clips.npy"), batch_size=5)
  assert a["features"].shape == (5, 32, 32)
  np.testing.assert_allclose(a["features"], b["features"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(a["labels"], [-1] * 5)


def test_arrays_of_another_size_get_the_centre_view(workdir):
  clips = np.random.default_rng(1).integers(0, 256, (2, 4, 64, 96, 3), dtype=np.uint8)
  np.save(workdir / "wide.npy", clips)
  got = extract.run(str(workdir / "pretrain"), str(workdir / "w.npz"), clips=str(workdir / "wide.npy"))
  centre = np.ascontiguousarray(clips[:, :, :, 16:80])
  np.save(workdir / "centre.npy", centre)
  want = extract.run(str(workdir / "pretrain"), str(workdir / "c.npz"), clips=str(workdir / "centre.npy"))
  np.testing.assert_allclose(got["features"], want["features"], rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_clear_errors(workdir):
  with pytest.raises(ValueError, match="exactly one of"):
    extract.run(str(workdir / "pretrain"), str(workdir / "x.npz"))
  np.save(workdir / "float.npy", np.zeros((2, 4, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match="expected uint8"):
    extract.run(str(workdir / "pretrain"), str(workdir / "x.npz"), clips=str(workdir / "float.npy"))


def test_command_line(workdir):
  clips = np.zeros((3, 4, 64, 64, 3), np.uint8)
  np.save(workdir / "cli.npy", clips)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "jepa_jax.extract", f"--workdir={workdir / 'pretrain'}",
       f"--clips={workdir / 'cli.npy'}", f"--out={workdir / 'cli.npz'}", "--pooled"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert np.load(workdir / "cli.npz")["features"].shape == (3, 32)


def test_unreadable_and_too_short_videos_are_skipped_named_and_listed(workdir, caplog):
  bad = bad_videos.write_bad_videos(str(workdir / "bad"))
  good_list = str(workdir / "videos" / "motion_train.csv")  # 4 videos, labels 0..3
  mixed = bad_videos.list_with(str(workdir / "mixed.csv"), good_list, list(bad.values()), label=3)
  with caplog.at_level("WARNING"):
    result = extract.run(str(workdir / "pretrain"), str(workdir / "mixed.npz"), videos=mixed, batch_size=3)
  clean = extract.run(str(workdir / "pretrain"), str(workdir / "clean.npz"), videos=good_list, batch_size=3)
  np.testing.assert_allclose(result["features"], clean["features"], rtol=1e-5, atol=1e-5)  # the good ones, in order
  saved = np.load(workdir / "mixed.npz")
  np.testing.assert_array_equal(saved["labels"], [0, 1, 2, 3])
  assert list(saved["paths"]) == sources.read_file_list(good_list)[0]
  assert list(saved["skipped"]) == list(bad.values())
  reasons = dict(zip(saved["skipped"], saved["skipped_reasons"]))
  assert reasons[bad["empty"]].startswith("file too small") and reasons[bad["too_short"]].startswith("too short")
  for path in bad.values():
    assert f"skipping video {path}" in caplog.text


def test_a_list_of_mostly_unreadable_videos_stops_with_a_clear_error(workdir):
  bad = bad_videos.write_bad_videos(str(workdir / "bad2"))
  mostly_bad = bad_videos.list_with(str(workdir / "mostly_bad.csv"), str(workdir / "videos" / "motion_val.csv"),
                                    list(bad.values()))
  with pytest.raises(DataPipelineError, match=r"3 of 4 video decodes failed .*max_failure_fraction=0.5"):
    extract.run(str(workdir / "pretrain"), str(workdir / "x.npz"), videos=mostly_bad)
