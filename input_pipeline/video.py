"""PyAV decoding with the official V-JEPA frame-index rule (docs/reference.md §5.3).

The official loader (decord) builds a frame index of the whole file and then reads `get_batch(indices)`. We do the
same with PyAV, but decode only what the clip needs: the packet headers give every frame's presentation time and the
keyframes, so we seek to the keyframe before the first wanted frame, decode forward (the decoder skips the
non-reference frames that are not wanted: most B-frames between wanted frames), convert only the wanted frames to
RGB, written straight into the clip, and drain the decoder once the last wanted packet is in. Frame i is the i-th
frame in presentation order, as in decord, which keeps the index rule exact for B-frames and variable frame rates;
the pixels are decord's (bench/input_pipeline.py checks it on natural footage). Where the container's header says
all that FFmpeg's stream probing would learn, the file is opened without probing (`_open_indexed`).

Paths may be URLs (gs://...): such files are read through a seekable file object
(input_pipeline.storage.open_read).

Every way a file can be unusable raises `VideoDecodeError(path, reason)`, so the pipeline can skip it, count it and
draw another sample instead of crashing or looping.
"""
import bisect
import contextlib
import dataclasses
import math
from typing import Iterable, Sequence

import av
from av.video.reformatter import VideoReformatter
import numpy as np

from input_pipeline import storage

MIN_FILE_BYTES = 1024  # official: smaller files are rejected ("avoid hanging issue"), docs/reference.md §5.3.
MAX_FILE_BYTES = 10**9  # official filter_long_videos default.


class VideoDecodeError(Exception):
  """A video that cannot give a clip; `reason` says why, in words fit for a warning."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ClipSampling:
  """How clips are cut from a video: the arguments of the official `VideoDataset` (docs/reference.md §5.3).

  allow_clip_overlap is False in pretraining and True in the evaluations. `fps` > 0 replaces frame_step by the
  V-JEPA 2 rule; `clip_duration` > 0 by the V-JEPA 1 duration rule.
  """
  frames_per_clip: int = 16
  frame_step: int = 4
  num_clips: int = 1
  random_clip_sampling: bool = True
  allow_clip_overlap: bool = False
  filter_short_videos: bool = False
  filter_long_videos: int = MAX_FILE_BYTES
  clip_duration: float = 0.0
  fps: float = 0.0

  @classmethod
  def from_config(cls, data, **overrides) -> "ClipSampling":
    """Reads the config.data field names; evaluation passes allow_clip_overlap=True and its num_clips."""
    kwargs = dict(
        frames_per_clip=int(data.frames_per_clip), frame_step=int(data.frame_step),
        num_clips=int(data.num_clips), filter_short_videos=bool(data.filter_short_videos),
        clip_duration=float(data.clip_duration or 0.0), fps=float(data.get("fps", 0.0) or 0.0))
    kwargs.update(overrides)
    return cls(**kwargs)


def effective_frame_step(sampling: ClipSampling, avg_fps: float | None) -> int:
  """The frame step after the duration (V-JEPA 1) or fps (V-JEPA 2) rules; both need the video's average fps."""
  if sampling.fps > 0 and avg_fps:
    # V-JEPA 2 (docs/reference.md §9): frame_step = ceil(video_fps) // fps.
    return max(1, int(math.ceil(avg_fps) // sampling.fps))
  if sampling.clip_duration > 0 and avg_fps:
    # Official: fstp = int(duration * avg_fps / fpc), truncation (docs/reference.md §5.3).
    # Can be 0 for short durations; we keep at least 1 so the clip is well defined.
    return max(1, int(sampling.clip_duration * avg_fps / sampling.frames_per_clip))
  return sampling.frame_step


def clip_indices(num_frames: int, sampling: ClipSampling, rng: np.random.Generator,
                 avg_fps: float | None = None) -> list[np.ndarray]:
  """Frame indices of each clip, exactly the official rule (docs/reference.md §5.3), int64 [frames_per_clip] each.

  The random clip end comes from `rng` (grain's per-element generator) instead of the global numpy state.
  Raises ValueError when filter_short_videos rejects the video (the caller turns it into a VideoDecodeError).
  """
  fpc = sampling.frames_per_clip
  fstp = effective_frame_step(sampling, avg_fps)
  clip_len = int(fpc * fstp)
  if sampling.filter_short_videos and num_frames < clip_len:
    raise ValueError(f"too short: {num_frames} frames < clip length {clip_len}")
  partition_len = num_frames // sampling.num_clips
  clips = []
  for i in range(sampling.num_clips):
    if partition_len > clip_len:
      end = clip_len
      if sampling.random_clip_sampling:
        end = int(rng.integers(clip_len, partition_len))  # np.random.randint(clip_len, partition_len)
      start = end - clip_len
      # [code≠paper] linspace over clip_len+1 points' span: stride 64/15, last index end-1 (docs/reference.md §5.3).
      idx = np.linspace(start, end, num=fpc)
      idx = np.clip(idx, start, end - 1).astype(np.int64) + i * partition_len
    elif not sampling.allow_clip_overlap:
      # Short partition in pretraining: spread over the partition, pad with its last frame (docs/reference.md §5.3).
      n = partition_len // fstp
      idx = np.concatenate([np.linspace(0, partition_len, num=n), np.full(fpc - n, float(partition_len))])
      idx = np.clip(idx, 0, partition_len - 1).astype(np.int64) + i * partition_len
    else:
      # Evals: [quirk] clipped to sample_len-1 (not sample_len), and every segment of a short video gets the same
      # frames (clip_step 0), docs/reference.md §5.3.
      sample_len = min(clip_len, num_frames) - 1
      n = sample_len // fstp
      idx = np.concatenate([np.linspace(0, sample_len, num=n), np.full(fpc - n, float(sample_len))])
      idx = np.clip(idx, 0, sample_len - 1).astype(np.int64)
      clip_step = 0
      if num_frames > clip_len:
        clip_step = (num_frames - clip_len) // (sampling.num_clips - 1)
      idx = idx + i * clip_step
    clips.append(idx)
  return clips


@dataclasses.dataclass
class _FrameTable:
  """Presentation timestamps of all frames (sorted) and the timestamps of the keyframes (sorted)."""
  pts: np.ndarray
  key_pts: list
  avg_fps: float | None
  reordered: bool = False  # some packet came before an earlier-presented one (B-frames)


def _check_file(path: str, max_bytes: int) -> None:
  size = storage.file_size(path)
  if size is None:
    raise VideoDecodeError(path, "missing file")
  if size < MIN_FILE_BYTES:
    raise VideoDecodeError(path, f"file too small ({size} bytes)")
  if size > max_bytes:
    raise VideoDecodeError(path, f"file too large ({size} bytes)")


@contextlib.contextmanager
def _open(path: str, threads: int, *, probe_streams: bool = True):
  """(container, stream), closed on exit. URLs (gs://...) are read through a file object; local paths by FFmpeg.

  probe_streams=False opens without FFmpeg's stream probing (avformat_find_stream_info), which decodes frames to
  learn what the header may already say: an h264 stream without B-frames costs 7 decoded frames at every open (15
  ms of bigbuckbunny.mp4's ~300 ms per clip). `_open_indexed` decides whether the header was enough.
  """
  file = None
  try:
    if storage.is_remote(path):
      file = storage.open_read(path)
    options = {} if probe_streams else {"probesize": "32"}  # FFmpeg's minimum: stop probing at once
    container = av.open(file if file is not None else path, metadata_errors="ignore", options=options)
  except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
    if file is not None:
      file.close()
    raise VideoDecodeError(path, f"cannot open: {e}") from None
  try:
    if not container.streams.video:
      raise VideoDecodeError(path, "no video stream (audio-only?)")
    stream = container.streams.video[0]
    # Frame threads help a lone reader; one thread per worker process is cheaper when every core has a worker.
    stream.codec_context.thread_count = threads
    stream.codec_context.thread_type = "FRAME" if threads != 1 else "SLICE"
    yield container, stream
  finally:
    container.close()
    if file is not None:
      file.close()


def _frame_table(path, container, stream) -> _FrameTable:
  """Demuxes packet headers only (no decoding) to learn every frame's timestamp, like decord's index."""
  pts, key_pts = [], []
  reordered = False
  try:
    for packet in container.demux(stream):
      if packet.size == 0:
        continue
      t = packet.pts if packet.pts is not None else packet.dts
      if t is None:
        raise VideoDecodeError(path, "packets without timestamps")
      reordered = reordered or (bool(pts) and t < pts[-1])
      pts.append(t)
      if packet.is_keyframe:
        key_pts.append(t)
  except av.FFmpegError as e:
    if not pts:
      raise VideoDecodeError(path, f"cannot demux: {e}") from None
    # A truncated tail: keep the frames before it, as decord does.
  if not pts:
    raise VideoDecodeError(path, "no video frames")
  avg = stream.average_rate or stream.guessed_rate
  avg_fps = float(avg) if avg else None
  if not avg_fps and len(pts) > 1 and stream.time_base:
    avg_fps = (len(pts) - 1) / float((max(pts) - min(pts)) * stream.time_base)
  return _FrameTable(np.sort(np.asarray(pts, np.int64)), sorted(key_pts) or [int(min(pts))], avg_fps, reordered)


def _header_suffices(stream, table: _FrameTable) -> bool:
  """Whether a container opened without stream probing tells the decode all that probing would have.

  Probing fills in what a header may lack: the average frame rate (the fps and duration rules use it, as decord
  reads it; MP4 and Matroska headers carry it, and probing never overrides a header's value), the frame size, and
  for h264 the decoder's reorder delay, which an SPS without bitstream restrictions leaves unknown and probing
  guesses by decoding frames. Without reordering (presentation order equals decode order, as the packet table
  shows) the delay is 0 and needs no guess; with reordering the decoder must already know a delay from the header.
  """
  codec = stream.codec_context
  if not codec.width or not stream.average_rate:
    return False
  return not table.reordered or bool(codec.has_b_frames)


@contextlib.contextmanager
def _open_indexed(path: str, threads: int):
  """(container, stream, frame table): opened without stream probing where the header suffices, else probed."""
  with contextlib.ExitStack() as stack:
    try:
      container, stream = stack.enter_context(_open(path, threads, probe_streams=False))
      table = _frame_table(path, container, stream)
      trusted = _header_suffices(stream, table)
    except VideoDecodeError:
      trusted = False  # e.g. streams that only probing finds: the probed open below says what is wrong
    if not trusted:
      stack.close()
      container, stream = stack.enter_context(_open(path, threads))
      table = _frame_table(path, container, stream)
    yield container, stream, table


def _to_rgb(frame, reformatter: VideoReformatter) -> np.ndarray:
  """uint8 [H, W, 3]: one swscale call on one thread, through a converter kept for the whole clip.

  A frame's own to_ndarray(format='rgb24') sets up a new scaler per frame with a thread per core (PyAV's default),
  which under load costs more than the conversion; the pixels are the same. The array is a view of the converted
  frame's buffer; the caller copies it into the clip.
  """
  rgb = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
  rotation = int(getattr(frame, "rotation", 0) or 0) % 360
  if rotation:
    # Display matrix rotation is counter-clockwise in degrees; show the frame as a player would.
    rgb = np.rot90(rgb, k=rotation // 90)
  return rgb


def _decoded_frames(packets: Iterable, codec, wanted_pts: frozenset, skip_unwanted: bool):
  """Decoded frames from the current position, in presentation order, leaving out skippable non-reference frames.

  The decoder's skip_frame is set per packet, before the packet goes in: NONREF when the packet's own frame is not
  wanted (and skip_unwanted), DEFAULT otherwise. NONREF drops only frames no other frame refers to (the B-frames
  between wanted frames, at frame_step 4 most of them), so every frame still decoded is exact; a wanted frame is
  never skipped because its own packet is decoded with DEFAULT. Packets without a pts are never skipped (their
  frame cannot be named before decoding).

  Once the packet of every wanted frame has gone in, the decoder is drained (an empty packet) instead of being fed
  more: a decoder with a reorder delay (h264 with B-frames holds back 2 frames on x264's defaults) keeps the last
  wanted frames until further packets arrive, and those packets would be decoded only to push them out.
  """
  unsent = set(wanted_pts)
  for packet in packets:
    pts = packet.pts
    skip = skip_unwanted and pts is not None and pts not in wanted_pts
    codec.skip_frame = "NONREF" if skip else "DEFAULT"
    yield from codec.decode(packet)
    unsent.discard(pts)
    if not unsent:
      yield from codec.decode(None)
      return


def _decode_at(path, container, stream, table: _FrameTable, wanted: Sequence[int], *,
               skip_unwanted: bool = True) -> np.ndarray:
  """The frames with the given indices (repeats and any order allowed), uint8 [len(wanted), H, W, 3].

  Each wanted frame is converted once and written straight into the clip array (no list of frames to stack).
  """
  positions = {}  # pts of a wanted frame -> where it goes in the output
  index_at = {}  # pts of a wanted frame -> its frame index, for the errors
  for position, index in enumerate(wanted):
    pts = int(table.pts[int(index)])
    positions.setdefault(pts, []).append(position)
    index_at[pts] = int(index)
  targets = sorted(positions)
  reformatter = VideoReformatter()
  out = None
  frames = None
  last_pts = None  # presentation time of the last decoded frame
  t = 0
  while t < len(targets):
    target = targets[t]
    k = bisect.bisect_right(table.key_pts, target) - 1
    key = table.key_pts[max(k, 0)]
    # Seek only when the next wanted frame lies past a keyframe we have not reached; otherwise decode on.
    if frames is None or last_pts is None or key > last_pts:
      container.seek(key, stream=stream, backward=True, any_frame=False)
      stream.codec_context.flush_buffers()  # no frame from before the seek, and out of a drained state
      frames = _decoded_frames(container.demux(stream), stream.codec_context, frozenset(targets[t:]), skip_unwanted)
      last_pts = None
    try:
      frame = next(frames)
    except StopIteration:
      raise VideoDecodeError(path, f"truncated: frame {index_at[target]} not decodable") from None
    except av.FFmpegError as e:
      raise VideoDecodeError(path, f"corrupt data: {e}") from None
    fpts = frame.pts if frame.pts is not None else frame.dts
    if fpts is None:
      raise VideoDecodeError(path, "decoded frames without timestamps")
    if last_pts is None and fpts > target:
      # Open GOP: the seek landed after the wanted frame; step one keyframe back and try again.
      if k <= 0:
        raise VideoDecodeError(path, f"cannot reach frame {index_at[target]}")
      table.key_pts = table.key_pts[:k] + table.key_pts[k + 1:]
      frames = None
      continue
    last_pts = fpts
    if targets[t] < fpts:  # the decoder skipped a wanted frame (corrupt data)
      raise VideoDecodeError(path, f"frame {index_at[targets[t]]} missing from the decoded stream")
    if fpts == targets[t]:
      rgb = _to_rgb(frame, reformatter)
      if out is None:
        out = np.empty((len(wanted),) + rgb.shape, np.uint8)
      elif rgb.shape != out.shape[1:]:
        raise VideoDecodeError(path, f"frame size changes within the clip ({out.shape[1:3]} -> {rgb.shape[:2]})")
      for position in positions[fpts]:
        out[position] = rgb
      t += 1
  return out


def _decode_wanted(path, container, stream, table: _FrameTable, wanted: Sequence[int]) -> np.ndarray:
  """_decode_at with non-reference frames skipped; should a file's packet timestamps not name its frames (so that
  a wanted frame went missing), decodes again without skipping before giving up."""
  try:
    return _decode_at(path, container, stream, table, wanted, skip_unwanted=True)
  except VideoDecodeError:
    return _decode_at(path, container, stream, table, wanted, skip_unwanted=False)


def video_info(path: str) -> tuple[int, float | None]:
  """(number of frames, average fps) from packet headers; raises VideoDecodeError for unusable files."""
  _check_file(path, MAX_FILE_BYTES)
  with _open_indexed(path, 1) as (_, _, table):
    return len(table.pts), table.avg_fps


def decode_frames(path: str, indices: Sequence[int], *, threads: int = 1) -> np.ndarray:
  """Frames at the given presentation-order indices (repeats allowed), uint8 [len(indices), H, W, 3] RGB."""
  _check_file(path, MAX_FILE_BYTES)
  with _open_indexed(path, threads) as (container, stream, table):
    bad = [i for i in indices if not 0 <= int(i) < len(table.pts)]
    if bad:
      raise VideoDecodeError(path, f"frame index {bad[0]} outside [0, {len(table.pts)})")
    return _decode_wanted(path, container, stream, table, indices)


def load_clips(path: str, sampling: ClipSampling, rng: np.random.Generator, *,
               threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """The official `loadvideo_decord`: clips uint8 [num_clips, T, H, W, 3] and their frame indices [num_clips, T].

  Opens the file once: the packet headers give the frame count and fps for the index rule, then only the frames
  of the clips are decoded, straight into the returned array (the pipeline batches it as it is, no stacking copy).
  """
  _check_file(path, sampling.filter_long_videos)
  with _open_indexed(path, threads) as (container, stream, table):
    try:
      indices = clip_indices(len(table.pts), sampling, rng, table.avg_fps)
    except ValueError as e:
      raise VideoDecodeError(path, str(e)) from None
    flat = np.concatenate(indices)
    if flat.min() < 0:
      raise VideoDecodeError(path, f"too short: {len(table.pts)} frames for {sampling.num_clips} clips")
    frames = _decode_wanted(path, container, stream, table, flat)
  return frames.reshape((len(indices), -1) + frames.shape[1:]), np.stack(indices)
