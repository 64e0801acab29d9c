"""Host input pipeline throughput: clips/s per worker process and per core, against a decord loader.

Encodes its own files (h264 mp4 and vp9 webm at 320x240, 640x360 and 1280x720, 10 s at 30 fps, keyframe every
60 frames, B-frames for h264) into a temp dir, then for each file times, in this one process with one decoder
thread (so clips/s per process = clips/s per core):
  ours    input_pipeline.video.load_clips (official indices, seek, decode to the last wanted frame, convert only
          wanted frames) + transforms.pretrain_augment to 16x224x224
  decord  decord.VideoReader(num_threads=1) + get_batch(official indices), as the official loader, + the same
          augment (skipped with a message when decord is not installed: `pip install decord`)
and splits our time into frame table (packet headers), decode, RGB conversion and augment. Then the mask time per
batch and the cores one accelerator needs at the ViT-L step rate.

  python -m bench.input_pipeline [--clips 6] [--step-clips 24] [--step-seconds 1.0] [--sizes 320x240,...]
"""
import argparse
import os
import tempfile
import time

import av
import numpy as np

from input_pipeline import transforms
from input_pipeline import video


def encode(path, width, height, codec, *, seconds=10, fps=30, gop=60):
  """A textured scene panning and changing, so the bitrate and the decoder's work look like real footage."""
  rng = np.random.default_rng(0)
  # Smooth 32-px blocks plus mild grain: about 1-4 Mb/s for h264, like web video (pure noise would be 20 Mb/s).
  texture = rng.integers(30, 226, (height // 32 + 10, width // 32 + 10, 3), dtype=np.uint8)
  texture = np.repeat(np.repeat(texture, 32, 0), 32, 1)
  texture = (texture + rng.integers(0, 12, texture.shape, dtype=np.uint8)).astype(np.uint8)
  container = av.open(path, "w")
  stream = container.add_stream(codec, rate=fps)
  stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
  stream.codec_context.gop_size = gop
  if codec == "libx264":
    stream.options = {"preset": "veryfast", "crf": "23", "bf": "3", "keyint": str(gop)}
  else:
    stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0", "g": str(gop)}
  for t in range(seconds * fps):
    y, x = (2 * t) % 256, (3 * t) % 256
    frame = texture[y:y + height, x:x + width] if y + height <= texture.shape[0] else texture[:height, :width]
    frame = np.ascontiguousarray(frame)
    frame[:, :, t % 3] //= 2
    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  container.close()


def time_ours(path, sampling, clips, crop):
  """Clip rate of our loader and where the time goes (a second, instrumented pass)."""
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  for _ in range(clips):
    (clip,), _ = video.load_clips(path, sampling, rng)
    transforms.pretrain_augment(clip, rng, crop_size=crop)
  total = time.perf_counter() - t0

  parts = dict(table=0.0, decode=0.0, rgb=0.0, augment=0.0)
  rng = np.random.default_rng(0)
  orig_rgb = video._to_rgb
  def timed_rgb(frame):
    s = time.perf_counter()
    out = orig_rgb(frame)
    parts["rgb"] += time.perf_counter() - s
    return out
  video._to_rgb = timed_rgb
  try:
    for _ in range(clips):
      s = time.perf_counter()
      container, stream = video._open(path, 1)
      table = video._frame_table(path, container, stream)
      parts["table"] += time.perf_counter() - s
      (idx,) = video.clip_indices(len(table.pts), sampling, rng, table.avg_fps)
      s = time.perf_counter()
      frames = video._decode_at(path, container, stream, table, idx)
      parts["decode"] += time.perf_counter() - s
      container.close()
      s = time.perf_counter()
      transforms.pretrain_augment(np.stack([frames[int(i)] for i in idx]), rng, crop_size=crop)
      parts["augment"] += time.perf_counter() - s
  finally:
    video._to_rgb = orig_rgb
  parts["decode"] -= parts["rgb"]
  return clips / total, {k: 1e3 * v / clips for k, v in parts.items()}


def time_decord(path, sampling, clips, crop):
  import decord  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  decode = 0.0
  for _ in range(clips):
    s = time.perf_counter()
    vr = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    (idx,) = video.clip_indices(len(vr), sampling, rng, vr.get_avg_fps())
    vr.seek(0)
    clip = vr.get_batch(list(idx)).asnumpy()
    decode += time.perf_counter() - s
    transforms.pretrain_augment(clip, rng, crop_size=crop)
  total = time.perf_counter() - t0
  return clips / total, 1e3 * decode / clips


def time_masks(batch):
  try:
    from jepa_jax.configs import default  # pylint: disable=g-import-not-at-top
    from input_pipeline import masks  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  config = default.get_config()
  specs = masks.mask_specs_from_config(config, batch)
  gen = masks.MultiBlockMaskGenerator(specs, crop_size=224, num_frames=16, patch_size=16, tubelet_size=2)
  rng = np.random.default_rng(0)
  gen(batch, rng)
  t0 = time.perf_counter()
  for _ in range(10):
    gen(batch, rng)
  return 1e3 * (time.perf_counter() - t0) / 10


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--clips", type=int, default=6, help="clips timed per file and loader")
  parser.add_argument("--sizes", default="320x240,640x360,1280x720")
  parser.add_argument("--codecs", default="h264,vp9")
  parser.add_argument("--step-clips", type=int, default=24, help="clips per accelerator per ViT-L step")
  parser.add_argument("--step-seconds", type=float, default=1.0, help="ViT-L step time")
  args = parser.parse_args()
  sampling = video.ClipSampling()  # 16 frames, frame_step 4, the pretraining rule
  try:
    import decord  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    have_decord = True
  except ImportError:
    have_decord = False
    print("decord not installed (pip install decord): skipping the side-by-side loader")
  print(f"cores: {os.cpu_count()}  one process, one decoder thread: clips/s per process = per core")
  need = args.step_clips / args.step_seconds
  rates = []
  with tempfile.TemporaryDirectory() as tmp:
    for codec in args.codecs.split(","):
      for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        ext, enc = ("mp4", "libx264") if codec == "h264" else ("webm", "libvpx-vp9")
        path = os.path.join(tmp, f"{codec}_{size}.{ext}")
        s = time.perf_counter()
        encode(path, w, h, enc)
        enc_s = time.perf_counter() - s
        ours, parts = time_ours(path, sampling, args.clips, 224)
        line = (f"{codec:4s} {size:9s} {os.path.getsize(path) / 1e6:5.1f} MB  ours {ours:6.2f} clips/s/core "
                f"[table {parts['table']:.0f} ms, decode {parts['decode']:.0f} ms, rgb {parts['rgb']:.0f} ms, "
                f"augment {parts['augment']:.0f} ms]")
        if have_decord:
          theirs, dec_ms = time_decord(path, sampling, args.clips, 224)
          line += f"  decord {theirs:6.2f} clips/s/core [decode {dec_ms:.0f} ms]  ratio {ours / theirs:4.2f}x"
        print(line + f"  (encode {enc_s:.0f} s)", flush=True)
        rates.append((codec, size, ours))
  print(f"ViT-L step: {args.step_clips} clips per {args.step_seconds} s per accelerator = {need:.0f} clips/s")
  for codec, size, rate in rates:
    print(f"  {codec} {size}: {need / rate:5.1f} cores per accelerator")
  mask_ms = time_masks(args.step_clips)
  if mask_ms is None:
    print("input_pipeline.masks not available: mask time skipped")
  else:
    print(f"masks (ViT-L/16 config, 2 generators) per batch of {args.step_clips}: {mask_ms:.1f} ms")


if __name__ == "__main__":
  main()
