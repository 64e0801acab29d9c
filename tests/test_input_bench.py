"""bench/input_pipeline.py runs on any list of files and prints its tables (no timings are asserted)."""
import re

import av
import numpy as np

from bench import input_pipeline as bench


def _write(path, n=80, h=48, w=64, gop=250):
  rng = np.random.default_rng(0)
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.height, stream.width, stream.pix_fmt = h, w, "yuv420p"
    stream.codec_context.gop_size = gop
    for _ in range(n):
      frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def test_file_table_and_pipeline_scaling_on_given_files(tmp_path, capsys):
  path = _write(str(tmp_path / "clip.mp4"))
  # The checkout itself as the "before" side: the loader that imports another input_pipeline by path works.
  loaders = bench.make_loaders(str(bench.os.path.dirname(bench.os.path.dirname(bench.__file__))))
  assert [l.label for l in loaders][:2] == ["ours", "before"]
  bench.file_table([path], loaders, clips=1, rounds=1, step_clips=24)
  bench.worker_scaling([path], [0], batch=2, batches=1, step_clips=24)
  out = capsys.readouterr().out
  row = next(line for line in out.splitlines() if line.startswith("| clip.mp4"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1:4] == ["h264 (B)", "64x48", "80 (1)"]
  rates = [float(c) for c in cells[5:6 + 3 * len(loaders)]]  # decode, augment, both per loader; libavcodec alone
  assert all(r > 0 for r in rates)
  parts = [line for line in out.splitlines() if line.startswith("| clip.mp4")][1]
  plain, skipping = (float(c) for c in parts.strip("|").split("|")[-2:])
  assert 16 <= skipping <= plain  # at least the wanted frames; skipping never decodes more
  assert re.search(r"\| 0 \(main process, 2 read threads\) \| \d+\.\d \| \d+\.\d \| \d+\.\d \|", out)


def test_libavcodec_alone_decodes_every_wanted_frame_across_keyframes(tmp_path):
  """The lower bound decodes the clip's frames for real, with a jump past a keyframe as the loader seeks."""
  path = _write(str(tmp_path / "gops.mp4"), n=200, gop=20)
  for seed in range(5):
    assert bench.libavcodec_seconds(path, np.random.default_rng(seed)) > 0


def test_describe_and_vp9_reencode_keep_frames_and_rate(tmp_path):
  src = _write(str(tmp_path / "src.mp4"), n=30)
  dst = bench.reencode_vp9(src, str(tmp_path / "out.webm"))
  info = bench.describe(dst)
  assert (info["codec"], info["size"], info["frames"]) == ("vp9", "64x48", 30)
  with av.open(dst) as c:
    assert float(c.streams.video[0].average_rate) == 25.0
