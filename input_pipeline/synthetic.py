"""Real mp4 files of moving shapes with two label sets, for the demo and the tests.

Each video shows one shape (square, disc or triangle) of one colour sliding across a fixed textured background,
wrapping at the borders. Two labels per video:
  - motion: the direction of movement (0 right, 1 left, 2 down, 3 up). No single frame tells it: a probe must use
    time, which is what a video model should learn and an image model cannot.
  - appearance: the colour (0 red, 1 green, 2 blue, 3 yellow). One frame tells it.
The files are encoded with PyAV (h264, yuv420p, keyframe every 12 frames, B-frames), so they exercise the real
decoder, seeking included. Everything is deterministic from (seed, video number).

  python -m input_pipeline.synthetic --out DIR --num-videos N [--size 64] [--num-frames 48] [--seed 0]

writes DIR/videos/*.mp4 and the official-format lists DIR/{motion,appearance}_{train,val}.csv (`path label`).

A write killed midway (kill -9 of the demo's first run) leaves nothing that counts as data: each file is written
under a temporary name and renamed when complete, and the lists come last. Rerun with the same arguments, it keeps
the videos already complete (their bytes are deterministic) and writes the rest.
"""
import argparse
import json
import os

import av
import numpy as np

from input_pipeline import sources

MOTIONS = ("right", "left", "down", "up")
COLOURS = ("red", "green", "blue", "yellow")
_RGB = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]], np.uint8)
_VELOCITY = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}  # (dy, dx) per frame, before the speed factor


def _shape_mask(kind: int, size: int) -> np.ndarray:
  yy, xx = np.mgrid[:size, :size]
  if kind == 0:
    return np.ones((size, size), bool)
  if kind == 1:
    c = (size - 1) / 2
    return (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
  return np.abs(xx - (size - 1) / 2) <= yy / 2  # triangle, apex up


def render_video(rng: np.random.Generator, motion: int, colour: int, *, size: int, num_frames: int) -> np.ndarray:
  """uint8 [num_frames, size, size, 3]: the shape moving in direction `motion`, wrapping around the frame."""
  background = rng.integers(60, 140, size=(size // 4, size // 4, 3)).astype(np.uint8)
  background = np.repeat(np.repeat(background, 4, 0), 4, 1)  # coarse texture: survives compression, > 1 KB files
  shape = _shape_mask(int(rng.integers(3)), size // 5)
  speed = float(rng.uniform(0.75, 1.5))
  y0, x0 = rng.integers(0, size, size=2)
  dy, dx = _VELOCITY[motion]
  frames = np.empty((num_frames, size, size, 3), np.uint8)
  ys, xs = np.nonzero(shape)
  for t in range(num_frames):
    frame = background.copy()
    y = (ys + int(round(y0 + dy * speed * t))) % size
    x = (xs + int(round(x0 + dx * speed * t))) % size
    frame[y, x] = _RGB[colour]
    frames[t] = frame
  return frames


_PARTIAL = ".partial"  # suffix of a file being written; renamed away when complete
_PARAMS = "synthetic_params.json"


def _replace_when_written(path: str, write) -> None:
  """write(temporary path), then an atomic rename to `path`: a reader (or a rerun) never sees half a file."""
  partial = path + _PARTIAL
  write(partial)
  os.replace(partial, path)


def write_mp4(path: str, frames: np.ndarray, *, fps: int = 25, gop: int = 12) -> None:
  """h264 in mp4 with a fixed keyframe interval and B-frames, one encoder thread (deterministic bytes)."""
  container = av.open(path, "w", format="mp4")
  stream = container.add_stream("libx264", rate=fps)
  stream.height, stream.width = frames.shape[1:3]
  stream.pix_fmt = "yuv420p"
  stream.codec_context.gop_size = gop
  stream.codec_context.thread_count = 1
  stream.options = {"keyint": str(gop), "min-keyint": str(gop), "scenecut": "0", "bf": "2", "crf": "20"}
  for frame in frames:
    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  container.close()


def write_dataset(out: str, num_videos: int, *, size: int = 64, num_frames: int = 48, seed: int = 0,
                  val_fraction: float = 0.2) -> dict:
  """Writes the videos and the lists; returns {list name: path}. Motion and colour cycle so classes balance.

  Videos already complete from an interrupted call with the same arguments are kept; others are (re)written.
  """
  video_dir = os.path.join(out, "videos")
  os.makedirs(video_dir, exist_ok=True)
  _start_or_resume(out, video_dir, dict(num_videos=num_videos, size=size, num_frames=num_frames, seed=seed))
  paths, motions, colours = [], [], []
  for i in range(num_videos):
    motion, colour = i % len(MOTIONS), (i // len(MOTIONS) + i) % len(COLOURS)
    path = os.path.join(video_dir, f"video_{i:05d}.mp4")
    if not os.path.exists(path):
      frames = render_video(np.random.default_rng([seed, i]), motion, colour, size=size, num_frames=num_frames)
      _replace_when_written(path, lambda p, frames=frames: write_mp4(p, frames))
    paths.append(os.path.abspath(path))
    motions.append(motion)
    colours.append(colour)
  num_val = int(round(num_videos * val_fraction)) if num_videos > 1 else 0
  split = num_videos - num_val
  lists = {}
  for name, labels in (("motion", motions), ("appearance", colours)):
    for part, sl in (("train", slice(0, split)), ("val", slice(split, None))):
      lists[f"{name}_{part}"] = p = os.path.join(out, f"{name}_{part}.csv")
      _replace_when_written(
          p, lambda tmp, sl=sl, labels=labels: sources.write_file_list(tmp, paths[sl], labels[sl]))
  return lists


def _start_or_resume(out: str, video_dir: str, params: dict) -> None:
  """Removes what an interrupted write left half-done; keeps its complete videos only if made the same way."""
  for name in os.listdir(video_dir):
    if name.endswith(_PARTIAL):
      os.remove(os.path.join(video_dir, name))
  for name in os.listdir(out):
    if name.endswith(_PARTIAL):
      os.remove(os.path.join(out, name))
  params_path = os.path.join(out, _PARAMS)
  previous = None
  if os.path.exists(params_path):
    with open(params_path) as f:
      try:
        previous = json.load(f)
      except ValueError:
        previous = None
  if previous != params:  # other arguments (or no record of them): nothing already there can be reused
    for name in os.listdir(video_dir):
      if name.startswith("video_") and name.endswith(".mp4"):
        os.remove(os.path.join(video_dir, name))
    _replace_when_written(params_path, lambda p: _write_json(p, params))


def _write_json(path: str, data: dict) -> None:
  with open(path, "w") as f:
    json.dump(data, f)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num-videos", type=int, required=True)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--num-frames", type=int, default=48)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  lists = write_dataset(args.out, args.num_videos, size=args.size, num_frames=args.num_frames, seed=args.seed)
  for name, path in lists.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  main()
