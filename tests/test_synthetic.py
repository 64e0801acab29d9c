"""Synthetic moving-shape videos: real files, two label sets, deterministic."""
import hashlib
import subprocess
import sys

import numpy as np

from input_pipeline import sources
from input_pipeline import synthetic
from input_pipeline import video


def _md5(path):
  return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_cli_writes_decodable_videos_and_official_lists(tmp_path):
  subprocess.run([sys.executable, "-m", "input_pipeline.synthetic", "--out", str(tmp_path), "--num-videos", "5"],
                 check=True, capture_output=True)
  train = sources.ClipIndex([str(tmp_path / "motion_train.csv")])
  val = sources.ClipIndex([str(tmp_path / "motion_val.csv")])
  assert len(train) == 4 and len(val) == 1
  assert [train[i]["label"] for i in range(4)] == [0, 1, 2, 3]
  n, fps = video.video_info(train[0]["path"])
  assert n == 48 and abs(fps - 25) < 1e-6
  clips, _ = video.load_clips(train[0]["path"], video.ClipSampling(frame_step=2), np.random.default_rng(0))
  assert clips[0].shape == (16, 64, 64, 3)


def test_same_seed_same_bytes_other_seed_other_video(tmp_path):
  a = synthetic.write_dataset(str(tmp_path / "a"), 2, seed=1)
  b = synthetic.write_dataset(str(tmp_path / "b"), 2, seed=1)
  c = synthetic.write_dataset(str(tmp_path / "c"), 2, seed=2)
  pa, pb, pc = (sources.ClipIndex([x["motion_train"]])[0]["path"] for x in (a, b, c))
  assert _md5(pa) == _md5(pb) != _md5(pc)


def test_motion_label_is_the_direction_and_appearance_the_colour():
  for motion in range(4):
    for colour in range(4):
      frames = synthetic.render_video(np.random.default_rng(motion * 4 + colour), motion, colour, size=64,
                                      num_frames=12).astype(int)
      mask = (np.abs(frames - synthetic._RGB[colour]).sum(-1) == 0)
      ys, xs = np.nonzero(mask[0])
      assert len(ys) > 0
      # Shift between frames 0 and 8 (with wrap-around) along the labelled axis, in the labelled sign.
      dy, dx = synthetic._VELOCITY[motion]
      best = max(range(-16, 17), key=lambda s: (np.roll(mask[0], (s * dy, s * dx), (0, 1)) & mask[8]).sum())
      assert best >= 5, (motion, colour, best)
