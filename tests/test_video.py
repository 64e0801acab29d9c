"""Decoding and the official frame-index rule (docs/reference.md §5.3)."""
import dataclasses
import fractions
import os

import av
import numpy as np
import pytest

from input_pipeline import video


def _encode(path, frames, codec="libx264", fps=25, gop=12, pix_fmt="yuv420p", options=None, rotation=0,
            muxer_options=None):
  container = av.open(path, "w", options=dict(muxer_options or {}))
  stream = container.add_stream(codec, rate=fps)
  stream.height, stream.width = frames.shape[1:3]
  stream.pix_fmt = pix_fmt
  stream.codec_context.gop_size = gop
  stream.options = dict(options or {})
  if rotation:
    stream.set_display_rotation(rotation)
  for f in frames:
    for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
      container.mux(p)
  for p in stream.encode():
    container.mux(p)
  container.close()
  return path


def _frames(n, h=48, w=64, seed=0):
  """Frames that differ strongly from one another (a bright bar moving one column per frame plus noise)."""
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)[:h, :w]
  out = np.repeat(base[None], n, 0)
  for t in range(n):
    out[t, :, (t * 3) % w] = 255
    out[t, (t * 2) % h, :] = 0
  return out


def _sequential(path):
  with av.open(path) as c:
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# --- the official rule, written independently of the implementation, from docs/reference.md §5.3
def _official(num_frames, fpc, fstp, num_clips, allow_overlap, ends):
  clip_len = fpc * fstp
  part = num_frames // num_clips
  out = []
  for i in range(num_clips):
    if part > clip_len:
      end = ends[i]
      start = end - clip_len
      idx = np.clip(np.linspace(start, end, num=fpc), start, end - 1).astype(np.int64) + i * part
    elif not allow_overlap:
      idx = np.linspace(0, part, num=part // fstp)
      idx = np.concatenate((idx, np.ones(fpc - part // fstp) * part))
      idx = np.clip(idx, 0, part - 1).astype(np.int64) + i * part
    else:
      sl = min(clip_len, num_frames) - 1
      idx = np.linspace(0, sl, num=sl // fstp)
      idx = np.concatenate((idx, np.ones(fpc - sl // fstp) * sl))
      idx = np.clip(idx, 0, sl - 1).astype(np.int64)
      step = (num_frames - clip_len) // (num_clips - 1) if num_frames > clip_len else 0
      idx = idx + i * step
    out.append(idx)
  return out


def test_index_rule_example_from_the_reference():
  s = video.ClipSampling(random_clip_sampling=False)
  (idx,) = video.clip_indices(300, s, np.random.default_rng(0))
  np.testing.assert_array_equal(idx, [0, 4, 8, 12, 17, 21, 25, 29, 34, 38, 42, 46, 51, 55, 59, 63])


@pytest.mark.parametrize("allow_overlap", [False, True])
@pytest.mark.parametrize("num_clips", [1, 2, 3])
@pytest.mark.parametrize("fstp", [1, 2, 4])
def test_index_rule_matches_the_official_rule(allow_overlap, num_clips, fstp):
  fpc = 16
  for num_frames in [5, 17, 40, 63, 64, 65, 100, 129, 200, 301, 1000]:
    if num_frames // num_clips == 0:
      continue
    s = video.ClipSampling(frames_per_clip=fpc, frame_step=fstp, num_clips=num_clips,
                           allow_clip_overlap=allow_overlap)
    rng = np.random.default_rng(num_frames)
    got = video.clip_indices(num_frames, s, rng)
    # Replay the same random ends: one rng.integers(clip_len, partition_len) per clip, only when partition > clip.
    rng = np.random.default_rng(num_frames)
    part, clip_len = num_frames // num_clips, fpc * fstp
    ends = [int(rng.integers(clip_len, part)) if part > clip_len else None for _ in range(num_clips)]
    want = _official(num_frames, fpc, fstp, num_clips, allow_overlap, ends)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w, err_msg=f"{num_frames=}")
      assert g.shape == (fpc,) and g.min() >= 0 and g.max() < num_frames


def test_eval_rule_quirk_short_video_segments_repeat_and_last_frame_is_excluded():
  s = video.ClipSampling(num_clips=3, allow_clip_overlap=True)
  clips = video.clip_indices(40, s, np.random.default_rng(0))
  for c in clips[1:]:
    np.testing.assert_array_equal(c, clips[0])  # [quirk] identical segments
  assert clips[0].max() == 38  # clipped to sample_len - 1 = 38, frame 39 never used


def test_random_clip_end_covers_the_official_range_and_is_reproducible():
  s = video.ClipSampling()
  starts = {int(video.clip_indices(100, s, np.random.default_rng(k))[0][0]) for k in range(400)}
  assert starts == set(range(0, 100 - 1 - 64 + 1))  # end ~ randint(64, 100) -> start in [0, 35]
  a = video.clip_indices(1000, s, np.random.default_rng(7))[0]
  b = video.clip_indices(1000, s, np.random.default_rng(7))[0]
  np.testing.assert_array_equal(a, b)


def test_filter_short_videos_and_frame_step_rules():
  with pytest.raises(ValueError, match="too short"):
    video.clip_indices(63, video.ClipSampling(filter_short_videos=True), np.random.default_rng(0))
  # clip_duration: fstp = int(duration * fps / fpc) = int(3 * 30 / 16) = 5.
  assert video.effective_frame_step(video.ClipSampling(clip_duration=3.0), 30.0) == 5
  # V-JEPA 2: ceil(29.97) // 4 = 7.
  assert video.effective_frame_step(video.ClipSampling(fps=4.0), 29.97) == 7
  assert video.effective_frame_step(video.ClipSampling(), 29.97) == 4


@pytest.mark.parametrize("codec,ext,options", [
    ("libx264", "mp4", {"bf": "2", "keyint": "12", "min-keyint": "12", "scenecut": "0"}),
    ("libvpx-vp9", "webm", {"g": "12"}),
    ("mpeg4", "avi", {}),
])
def test_seeking_decodes_the_same_frames_as_sequential_decoding(tmp_path, codec, ext, options):
  path = _encode(str(tmp_path / f"v.{ext}"), _frames(90), codec=codec, options=options)
  full = _sequential(path)
  assert len(full) == 90
  assert video.video_info(path)[0] == 90
  idx = [70, 3, 3, 13, 89, 0, 25, 26, 48, 60]  # out of order, repeated, across several keyframes
  np.testing.assert_array_equal(video.decode_frames(path, idx), full[idx])
  s = video.ClipSampling(frame_step=2, num_clips=2)
  clips, indices = video.load_clips(path, s, np.random.default_rng(3))
  # One array, as the pipeline batches it: [num_clips, T, H, W, 3] and [num_clips, T].
  assert clips.shape == (2, 16, 48, 64, 3) and clips.flags.c_contiguous and indices.shape == (2, 16)
  for c, i in zip(clips, indices):
    assert c.dtype == np.uint8 and c.shape == (16, 48, 64, 3)
    np.testing.assert_array_equal(c, full[i])


def test_odd_size_other_pixel_format_and_rotation(tmp_path):
  frames = _frames(20, h=37, w=51)
  path = _encode(str(tmp_path / "odd.mp4"), frames, pix_fmt="yuv444p",
                 options={"bf": "0"}, rotation=90)
  got = video.decode_frames(path, [0, 19])
  assert got.shape == (2, 51, 37, 3)  # rotated by the display matrix
  ref = np.rot90(_sequential(path)[[0, 19]], k=1, axes=(1, 2))
  np.testing.assert_array_equal(got, ref)


def test_variable_frame_rate_uses_presentation_order(tmp_path):
  path = str(tmp_path / "vfr.mp4")
  frames = _frames(30)
  container = av.open(path, "w")
  stream = container.add_stream("libx264", rate=1000)
  stream.height, stream.width = frames.shape[1:3]
  stream.pix_fmt = "yuv420p"
  stream.codec_context.time_base = fractions.Fraction(1, 1000)
  t = 0
  for i, f in enumerate(frames):
    vf = av.VideoFrame.from_ndarray(f, format="rgb24")
    vf.pts = t
    vf.time_base = stream.codec_context.time_base
    t += 20 if i % 3 else 70  # irregular gaps
    for p in stream.encode(vf):
      container.mux(p)
  for p in stream.encode():
    container.mux(p)
  container.close()
  full = _sequential(path)
  np.testing.assert_array_equal(video.decode_frames(path, [0, 7, 29, 15]), full[[0, 7, 29, 15]])


def _bad_files(tmp_path):
  good = _encode(str(tmp_path / "good.mp4"), _frames(40), options={"keyint": "10"})
  data = open(good, "rb").read()
  out = {"missing": str(tmp_path / "nope.mp4")}
  out["empty"] = str(tmp_path / "empty.mp4")
  open(out["empty"], "wb").close()
  out["truncated"] = str(tmp_path / "truncated.mp4")
  open(out["truncated"], "wb").write(data[: len(data) // 2])
  out["corrupt"] = str(tmp_path / "corrupt.mp4")
  open(out["corrupt"], "wb").write(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
  out["audio_only"] = str(tmp_path / "audio.m4a")
  c = av.open(out["audio_only"], "w")
  a = c.add_stream("aac", rate=16000)
  for i in range(40):
    fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    fr.sample_rate, fr.pts = 16000, i * 1024
    for p in a.encode(fr):
      c.mux(p)
  for p in a.encode():
    c.mux(p)
  c.close()
  return good, out


def test_every_kind_of_bad_file_raises_video_decode_error(tmp_path):
  good, bad = _bad_files(tmp_path)
  s = video.ClipSampling(frame_step=2)
  assert video.load_clips(good, s, np.random.default_rng(0))[0][0].shape == (16, 48, 64, 3)
  for kind, path in bad.items():
    with pytest.raises(video.VideoDecodeError) as e:
      video.load_clips(path, s, np.random.default_rng(0))
    assert e.value.path == path and e.value.reason, kind
  with pytest.raises(video.VideoDecodeError, match="too short"):
    video.load_clips(good, video.ClipSampling(filter_short_videos=True), np.random.default_rng(0))
  assert os.path.getsize(bad["audio_only"]) >= video.MIN_FILE_BYTES


# --- decoding less: skipped non-reference frames and one conversion per frame, checked against full decoding -------
_SKIP_CASES = [
    # h264 with 3 B-frames and a B-pyramid: the middle B of each group is a reference, the others are not.
    ("libx264", "mp4", "yuv420p", {"bf": "3", "keyint": "24", "min-keyint": "24", "scenecut": "0",
                                   "x264-params": "b-pyramid=normal"}),
    # x264's open GOP in Matroska: keyframes that are not IDR, B-frames around them in presentation order.
    ("libx264", "mkv", "yuv420p", {"x264-params": "open-gop=1:keyint=20:min-keyint=20:bframes=3:scenecut=0"}),
    # vp9 at libvpx's 'good' quality with look-ahead: every frame refreshes a reference, so nothing is skipped.
    ("libvpx-vp9", "webm", "yuv420p", {"g": "24", "lag-in-frames": "12", "auto-alt-ref": "1", "deadline": "good",
                                       "cpu-used": "8"}),
    ("mjpeg", "avi", "yuvj420p", {}),
]


def _count_decoded(monkeypatch):
  """Counts the frames the decoder hands back (skipped non-reference frames never come out)."""
  count = {"frames": 0}
  original = video._decoded_frames

  def counting(*args):
    for frame in original(*args):
      count["frames"] += 1
      yield frame
  monkeypatch.setattr(video, "_decoded_frames", counting)
  return count


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("codec,ext,pix_fmt,options", _SKIP_CASES, ids=lambda c: c if isinstance(c, str) else None)
def test_clips_equal_full_decoding_with_skipped_frames(tmp_path, monkeypatch, codec, ext, pix_fmt, options, threads):
  path = _encode(str(tmp_path / f"v.{ext}"), _frames(120, seed=1), codec=codec, pix_fmt=pix_fmt, options=options)
  full = _sequential(path)
  assert len(full) == 120
  count = _count_decoded(monkeypatch)
  for frame_step in (1, 2, 4, 7):
    for seed in range(4):
      s = video.ClipSampling(frames_per_clip=8, frame_step=frame_step, num_clips=2)
      clips, indices = video.load_clips(path, s, np.random.default_rng(seed), threads=threads)
      for c, i in zip(clips, indices):
        np.testing.assert_array_equal(c, full[i], err_msg=f"{frame_step=} {seed=} {i}")
  # Adjacent frames, repeats and out-of-order indices around every keyframe position.
  idx = [0, 1, 2, 3, 19, 20, 21, 22, 23, 24, 25, 41, 40, 39, 119, 118, 60, 60, 97]
  np.testing.assert_array_equal(video.decode_frames(path, idx, threads=threads), full[idx])
  assert count["frames"] > 0


def test_unwanted_non_reference_frames_are_not_decoded(tmp_path, monkeypatch):
  codec, ext, pix_fmt, options = _SKIP_CASES[0]
  path = _encode(str(tmp_path / f"v.{ext}"), _frames(96, seed=2), codec=codec, pix_fmt=pix_fmt, options=options)
  full = _sequential(path)
  count = _count_decoded(monkeypatch)
  idx = list(range(24, 88, 4))  # every 4th frame, the pretraining step
  with video._open(path, 1) as (container, stream):
    table = video._frame_table(path, container, stream)
    skipped = video._decode_at(path, container, stream, table, idx, skip_unwanted=True)
    with_skip = count["frames"]
    count["frames"] = 0
    plain = video._decode_at(path, container, stream, table, idx, skip_unwanted=False)
    without = count["frames"]
  np.testing.assert_array_equal(skipped, full[idx])
  np.testing.assert_array_equal(plain, full[idx])
  assert without >= len(idx) + 24  # unwanted frames from each keyframe reached on (seeks jump the other gaps)
  # x264's B-pyramid leaves 2 of every 4 frames unreferenced; most of them lie between wanted frames.
  assert with_skip <= 0.8 * without


def test_the_decoder_is_drained_once_the_last_wanted_packet_is_in(tmp_path, monkeypatch):
  """x264's B-pyramid gives the decoder a reorder delay of 2: without the drain, 2 packets past the last wanted one
  would be decoded only to push the wanted frames out."""
  options = {"bf": "3", "g": "250", "keyint_min": "250", "sc_threshold": "0", "x264-params": "b-pyramid=normal"}
  path = _encode(str(tmp_path / "v.mp4"), _frames(48, seed=4), options=options, gop=250)
  full = _sequential(path)
  with av.open(path) as c:
    packets = [(p.pts, p.is_keyframe) for p in c.demux(video=0) if p.size]
  decode_order, presentation = [pts for pts, _ in packets], sorted(pts for pts, _ in packets)
  assert [pts for pts, key in packets if key] == [0]  # one keyframe: every clip below is one seek and one pass
  original = video._decoded_frames
  pulled = []

  def counting(packets, *args):
    def counted():
      for packet in packets:
        pulled.append(packet.pts)
        yield packet
    return original(counted(), *args)
  monkeypatch.setattr(video, "_decoded_frames", counting)
  for idx in ([0], [1, 3], [4, 8, 12], [13, 14, 15, 16], [30, 47]):
    pulled.clear()
    np.testing.assert_array_equal(video.decode_frames(path, idx), full[idx])
    last = max(decode_order.index(presentation[i]) for i in idx)
    assert pulled == decode_order[:last + 1], idx  # exactly the packets up to the last wanted one


def test_a_frame_size_change_inside_a_clip_is_a_clear_error(tmp_path):
  """Two h264 streams of different sizes, one after the other in one MPEG-TS stream (as a cut-together broadcast or
  camera stream can be; the decoder switches size at the second part's in-band SPS)."""
  parts = [_encode(str(tmp_path / f"{i}.ts"), _frames(24, h=h, w=w, seed=i), options={"bf": "0"})
           for i, (h, w) in enumerate([(48, 64), (32, 48)])]
  joined = str(tmp_path / "joined.ts")
  with av.open(joined, "w") as out:
    shift = 0
    for part in parts:
      with av.open(part) as inp:
        source = inp.streams.video[0]
        if not out.streams.video:
          stream = out.add_stream_from_template(source)
        for packet in inp.demux(source):
          if packet.size:
            packet.pts, packet.dts, packet.stream = packet.pts + shift, packet.dts + shift, stream
            out.mux(packet)
        shift += 24 * int(1 / (source.average_rate * source.time_base))
  assert video.decode_frames(str(joined), [0, 5, 10]).shape == (3, 48, 64, 3)
  with pytest.raises(video.VideoDecodeError, match="frame size changes within the clip"):
    video.decode_frames(str(joined), [10, 20, 30])


_CONTAINER_CASES = [case + ({},) for case in _SKIP_CASES] + [
    ("libx264", "mp4", "yuv420p", {"bf": "0"}, {}),  # no B-frames: what probing decodes 7 frames to confirm
    # Fragmented MP4 (DASH segments, some recorders): the samples are described in the fragments, not the header.
    ("libx264", "mp4", "yuv420p", {"bf": "3"}, {"movflags": "frag_keyframe+empty_moov"}),
    ("mpeg4", "avi", "yuv420p", {"bf": "2"}, {}),
    ("libx264", "ts", "yuv420p", {"bf": "3"}, {}),  # MPEG-TS: no frame rate in the header, so probed
]


@pytest.mark.parametrize("codec,ext,pix_fmt,options,muxer_options", _CONTAINER_CASES,
                         ids=lambda c: c if isinstance(c, str) else None)
def test_opening_without_stream_probing_changes_no_table_and_no_frame(tmp_path, monkeypatch, codec, ext, pix_fmt,
                                                                        options, muxer_options):
  path = _encode(str(tmp_path / f"v.{ext}"), _frames(60, seed=7), codec=codec, pix_fmt=pix_fmt, options=options,
                 muxer_options=muxer_options)
  opened = []
  original = video._open

  def recording(*args, **kwargs):
    opened.append(kwargs.get("probe_streams", True))
    return original(*args, **kwargs)
  monkeypatch.setattr(video, "_open", recording)
  with video._open_indexed(path, 1) as (_, _, table), original(path, 1) as (container, stream):
    probed = video._frame_table(path, container, stream)
  np.testing.assert_array_equal(table.pts, probed.pts)
  assert (table.key_pts, table.avg_fps, table.reordered) == (probed.key_pts, probed.avg_fps, probed.reordered)
  assert opened == ([False, True] if ext == "ts" else [False])  # the header sufficed everywhere but in MPEG-TS
  full = _sequential(path)
  for seed in range(3):
    (clip,), (idx,) = video.load_clips(path, video.ClipSampling(frames_per_clip=8, frame_step=3),
                                       np.random.default_rng(seed))
    np.testing.assert_array_equal(clip, full[idx])


def test_reordered_frames_need_a_reorder_delay_from_the_header(tmp_path):
  """An h264 stream with B-frames whose SPS gave no delay would be probed: the rule, on a real unprobed stream."""
  path = _encode(str(tmp_path / "v.mp4"), _frames(12, seed=8), options={"bf": "0"})
  with video._open(path, 1, probe_streams=False) as (container, stream):
    table = video._frame_table(path, container, stream)
    assert not table.reordered and not stream.codec_context.has_b_frames
    assert video._header_suffices(stream, table)
    assert not video._header_suffices(stream, dataclasses.replace(table, reordered=True))


def test_a_wanted_frame_lost_to_skipping_falls_back_to_decoding_everything(tmp_path, monkeypatch):
  codec, ext, pix_fmt, options = _SKIP_CASES[0]
  path = _encode(str(tmp_path / f"v.{ext}"), _frames(48, seed=3), codec=codec, pix_fmt=pix_fmt, options=options)
  full = _sequential(path)
  original = video._decoded_frames
  passes = []

  def packets_not_naming_frames(packets, codec, wanted_pts, skip_unwanted):
    """A file whose packet timestamps would not name its frames: no packet is known as wanted, so the skipping pass
    loses the wanted B-frames."""
    passes.append(skip_unwanted)
    return original(packets, codec, frozenset(pts + 1 for pts in wanted_pts), skip_unwanted)
  monkeypatch.setattr(video, "_decoded_frames", packets_not_naming_frames)
  idx = [1, 2, 3, 5, 6, 7, 30]
  np.testing.assert_array_equal(video.decode_frames(path, idx), full[idx])
  assert passes[0] and not passes[-1]  # the skipping pass failed, the full pass gave the frames


def test_one_converter_per_clip_gives_the_pixels_of_to_ndarray(tmp_path):
  from av.video.reformatter import VideoReformatter
  path = _encode(str(tmp_path / "c.mp4"), _frames(6, h=37 * 2, w=51 * 2), options={"bf": "0"})
  reformatter = VideoReformatter()
  with av.open(path) as c:
    for frame in c.decode(video=0):
      np.testing.assert_array_equal(video._to_rgb(frame, reformatter), frame.to_ndarray(format="rgb24"))
