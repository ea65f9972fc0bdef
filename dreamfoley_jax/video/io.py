"""Video decoding with PyAV and frame sampling at exact target rates (25 fps sync, 4 fps CLIP).

Frame times come from each frame's pts (exact rationals), so constant and variable frame rate inputs
are treated alike. Display-matrix rotation/flip metadata is applied to every returned frame.

Sampling rules (`rule=`), for target i of a stream at `fps` (target time t_i = i / fps):
  "nearest"  (default) the last frame whose time < t_i + 0.5/fps. This is ffmpeg's `fps` filter with
             its default round=near, which is what MMAudio's training extraction gets from torio's
             StreamingMediaDecoder(frame_rate=fps) (mmaudio/data/extraction/vgg_sound.py), so features
             match the reference training data; tests check it frame for frame against PyAV's ffmpeg
             `fps` filter on variable-frame-rate input.
  "before"   the last frame whose time <= t_i (sample-and-hold).
For both, the target grid is ffmpeg's: t_i = (n0 + i) / fps with n0 = round(first frame time * fps),
so sample 0 is the first frame (times are 0-based at the first frame for a stream that starts at 0).
  "mmaudio_eval" MMAudio's inference loader (mmaudio/data/av_utils.py read_frames): the first frame
             whose float `frame.time` >= the target, where the target starts at absolute time 0 and
             grows by repeated float addition of 1/fps; this accumulated rounding occasionally picks the
             next frame (six additions of 0.04 give 0.24000000000000002 > 0.24, so a 25 fps source
             gets frame 7 for target 6) and is reproduced on purpose.
Targets before the first frame take the first frame. The number of samples of a stream is
floor(duration * fps), with duration = (last frame time + its duration) - first frame time, capped by
`max_duration_sec` (MMAudio's int(fps * duration_sec)), so every sample lies inside the clip and the
count matches the 25 Hz audio frame count; ffmpeg's fps filter emits round(end * fps) -
round(start * fps), i.e. at most one more trailing frame. "mmaudio_eval" yields what its loop yields, capped the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

RULES = ("nearest", "before", "mmaudio_eval")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".ogv", ".3gp", ".ts")


class VideoError(ValueError):
  """A video that cannot be used: unreadable, corrupt, no video stream, or too short."""
  plain_message = True   # the message names the file and the problem (checks.one_line prints it alone)


@dataclasses.dataclass(frozen=True)
class VideoMeta:
  path: str
  width: int               # displayed (after rotation)
  height: int
  rotation: int            # counter-clockwise degrees from the display matrix (0 if none)
  flipped: bool            # display matrix mirrors the image
  fps: float               # container's guessed rate (informational; sampling uses pts)
  start_sec: float         # time of the first frame
  duration_sec: float      # last frame end - first frame time
  num_frames: int          # frames decoded (up to the cap)


def _fraction(x) -> Fraction:
  if isinstance(x, Fraction):
    return x
  if isinstance(x, int):
    return Fraction(x)
  return Fraction(x).limit_denominator(1_000_000)


def display_matrix_transform(matrix9) -> tuple[bool, bool, bool]:
  """(transpose, flip_x, flip_y) that turn stored pixels into displayed pixels for a 3x3 display matrix.

  ffmpeg's display matrix maps a stored pixel (p, q) to (p*a + q*c, p*b + q*d) with a=m[0], b=m[1],
  c=m[3], d=m[4] (16.16 fixed point); only multiples of 90 degrees (with flips) are supported.
  """
  m = np.asarray(matrix9, np.float64).reshape(9) / 65536.0
  a, b, c, d = m[0], m[1], m[3], m[4]
  if abs(b) < 1e-3 and abs(c) < 1e-3 and abs(a) > 1e-3 and abs(d) > 1e-3:
    return False, bool(a < 0), bool(d < 0)
  if abs(a) < 1e-3 and abs(d) < 1e-3 and abs(b) > 1e-3 and abs(c) > 1e-3:
    # new x = q*c (from the old row index), new y = p*b (from the old column index)
    return True, bool(c < 0), bool(b < 0)
  raise NotImplementedError(f"display matrix {m.tolist()} is not a multiple of 90 degrees")


def apply_display_transform(img_HxWxC: np.ndarray, transform: tuple[bool, bool, bool]) -> np.ndarray:
  """Applies (transpose, flip_x, flip_y) from `display_matrix_transform` to an (H, W, C) image."""
  transpose, flip_x, flip_y = transform
  out = img_HxWxC.transpose(1, 0, 2) if transpose else img_HxWxC
  if flip_x:
    out = out[:, ::-1]
  if flip_y:
    out = out[::-1]
  return np.ascontiguousarray(out)


def rotation_transform(degrees_ccw: int) -> tuple[bool, bool, bool]:
  """The (transpose, flip_x, flip_y) of a counter-clockwise rotation by a multiple of 90 degrees."""
  k = (int(round(degrees_ccw / 90.0)) % 4)
  return [(False, False, False), (True, False, True), (False, True, True), (True, True, False)][k]


def _frame_display_transform(frame) -> tuple[tuple[bool, bool, bool], int, bool]:
  import av

  sd = None
  try:
    sd = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
  except Exception:  # older PyAV: no typed lookup
    sd = None
  if sd is not None:
    m = np.frombuffer(bytes(sd), "<i4")
    if m.size == 9:
      t = display_matrix_transform(m)
      a, b = m[0] / 65536.0, m[1] / 65536.0
      rot = getattr(frame, "rotation", None)
      if rot is None:  # older PyAV: ffmpeg's av_display_rotation_get
        rot = int(round(-math.degrees(math.atan2(b, a)) / 90.0)) * 90
      rot = int(rot)
      flipped = (m[0] / 65536.0) * (m[4] / 65536.0) - (m[1] / 65536.0) * (m[3] / 65536.0) < 0
      rot %= 360
      return t, (rot - 360 if rot > 180 else rot), bool(flipped)
  rot = int(getattr(frame, "rotation", 0) or 0)
  return rotation_transform(rot), rot, False


@dataclasses.dataclass
class _Stream:
  fps: Fraction
  rule: str
  cap: int | None
  transform: Callable[[np.ndarray], np.ndarray] | None
  out: list = dataclasses.field(default_factory=list)
  sink: Callable[[np.ndarray], None] | None = None   # streaming: receives each sample instead of `out`
  count: int = 0            # samples emitted (into `out`, or into `pending` then `sink`)
  pending: np.ndarray | None = None   # a sink's newest sample, held back until the count is final
  acc: float = 0.0          # mmaudio_eval: float-accumulated next target time
  n0: int = 0               # grid offset: round(first frame time * fps), as ffmpeg's fps filter
  t0: Fraction = Fraction(0)

  def next_key(self) -> Fraction:
    """Time (relative to the first frame) at which the next target switches to a later frame."""
    i = self.count + self.n0
    if self.rule == "nearest":
      return (2 * i + 1) / (2 * self.fps) - self.t0
    return i / self.fps - self.t0

  def full(self) -> bool:
    return self.cap is not None and self.count >= self.cap


def sample_frames(path: str | os.PathLike, fps_list: Sequence[float], *, rule: str = "nearest",
                  max_duration_sec: float | None = None,
                  transforms: Sequence[Callable[[np.ndarray], np.ndarray] | None] | None = None,
                  sinks: Sequence[Callable[[np.ndarray], None] | None] | None = None,
                  ) -> tuple[list[np.ndarray | int], VideoMeta]:
  """Decodes `path` once and samples frames at each rate in `fps_list`.

  Returns ([frames_NxHxWx3 uint8 per rate (after its transform, if any)], meta). Each transform maps
  one displayed uint8 (H, W, 3) RGB frame to an array; applying the resize there keeps memory small.
  A rate given a sink (streaming long files) passes its samples, in order, to the sink instead, and
  its entry in the returned list is the sample count; the sink sees exactly that many.
  Raises VideoError naming the file for a missing file, no video stream, corrupt data or no frames.
  """
  import av

  path = os.fspath(path)
  if rule not in RULES:
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
  if transforms is None:
    transforms = [None] * len(fps_list)
  if sinks is None:
    sinks = [None] * len(fps_list)
  if len(transforms) != len(fps_list) or len(sinks) != len(fps_list):
    raise ValueError("transforms and sinks must match fps_list")
  if not os.path.exists(path):
    raise VideoError(f"{path}: no such file")
  cap_frac = None if max_duration_sec is None else _fraction(max_duration_sec)

  def cap_for(f):
    if cap_frac is None:
      return None
    if rule == "mmaudio_eval":   # MMAudio truncates with float arithmetic: int(25.0 * 8.04) = 200
      return int(float(f) * float(max_duration_sec))
    return math.floor(cap_frac * _fraction(f))

  streams = [_Stream(fps=_fraction(f), rule=rule, cap=cap_for(f), transform=t, sink=k)
             for f, t, k in zip(fps_list, transforms, sinks)]

  cache: dict[int, np.ndarray] = {}   # frame index -> displayed RGB (only the current and previous)
  disp = None                          # (transform, rotation, flipped), from the first frame
  t0 = None
  prev = None                          # (index, rel_time Fraction, frame)
  last_end = None
  n = 0

  def rgb(idx, frame):
    if idx not in cache:
      for k in list(cache):
        if k < idx - 1:
          del cache[k]
      cache[idx] = apply_display_transform(frame.to_ndarray(format="rgb24"), disp[0])
    return cache[idx]

  done: dict = {}   # (frame index, transform id) -> output, so shared transforms run once per frame

  def emit(s: _Stream, idx, frame):
    key = (idx, id(s.transform))
    if key not in done:
      for k in [k for k in done if k[0] < idx - 1]:
        del done[k]
      img = rgb(idx, frame)
      done[key] = img if s.transform is None else s.transform(img)
    s.count += 1
    if s.sink is None:
      s.out.append(done[key])
      return
    if s.pending is not None:   # the newest sample waits: the final count may drop it
      s.sink(s.pending)
    s.pending = done[key]

  with _open(path) as container:
    if not container.streams.video:
      raise VideoError(f"{path}: no video stream (streams: "
                       f"{[s.type for s in container.streams]})")
    vs = container.streams.video[0]
    vs.thread_type = "AUTO"
    tb = vs.time_base
    rate = vs.guessed_rate or vs.average_rate or Fraction(25)
    last_pts = None
    try:
      for frame in container.decode(vs):
        if frame.pts is not None:
          pts_t = Fraction(frame.pts) * Fraction(frame.time_base or tb)
        elif last_pts is not None:
          pts_t = last_pts + 1 / Fraction(rate)
        else:
          pts_t = Fraction(0)
        if last_pts is not None and pts_t <= last_pts:   # out-of-order/duplicate pts: skip the frame
          continue
        last_pts = pts_t
        if disp is None:
          disp = _frame_display_transform(frame)
          t0 = pts_t
          for s in streams:
            s.n0 = math.floor(t0 * s.fps + Fraction(1, 2))
            s.t0 = t0
        rel = pts_t - t0
        dur = (Fraction(frame.duration) * Fraction(frame.time_base or tb)
               if frame.duration else 1 / Fraction(rate))
        last_end = rel + dur
        idx = n
        n += 1
        for s in streams:
          if s.full():
            continue
          if rule == "mmaudio_eval":
            ftime = float(frame.time) if frame.time is not None else float(pts_t)
            while not s.full() and ftime >= s.acc:
              emit(s, idx, frame)
              s.acc += 1.0 / float(s.fps)
          elif prev is not None:
            # targets whose key falls before this frame belong to the previous frame
            while not s.full() and (s.next_key() <= rel if rule == "nearest" else s.next_key() < rel):
              emit(s, prev[0], prev[2])
        prev = (idx, rel, frame)
        if all(s.full() for s in streams):
          break
    except av.FFmpegError as e:
      raise VideoError(f"{path}: corrupt or undecodable video data after {n} frames ({e})") from e
    if prev is None:
      raise VideoError(f"{path}: the video stream has no decodable frames")
    duration = last_end
    if cap_frac is not None:
      duration = min(duration, cap_frac)
    if rule != "mmaudio_eval":
      for s in streams:
        total = math.floor(duration * s.fps)
        while s.count < total:
          emit(s, prev[0], prev[2])
        del s.out[total:]
    h, w = rgb(prev[0], prev[2]).shape[:2]
    meta = VideoMeta(path=path, width=w, height=h, rotation=disp[1], flipped=disp[2],
                     fps=float(rate), start_sec=float(t0), duration_sec=float(duration), num_frames=n)
  outs = []
  for s in streams:
    if s.sink is not None:   # at most one sample beyond floor(duration * fps) is ever emitted
      total = s.count if rule == "mmaudio_eval" else math.floor(duration * s.fps)
      if s.pending is not None and s.count <= total:
        s.sink(s.pending)
        outs.append(s.count)
      else:
        outs.append(s.count - 1)
    elif not s.out:
      outs.append(np.zeros((0, 0, 0, 3), np.uint8))
    else:
      outs.append(np.stack(s.out))
  return outs, meta


# --------------------------------------------------------------------------------------------------
# Probing and muxing
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VideoInfo:
  path: str
  duration_sec: float      # decoded: last frame end - first frame time (as sample_frames counts it)
  start_sec: float         # time of the first decodable frame
  num_frames: int          # decodable frames
  width: int               # stored (before any display rotation)
  height: int
  codec: str
  streams: tuple           # every stream's type, e.g. ("video", "audio")


def _open(path):
  import av

  path = os.fspath(path)
  if not os.path.exists(path):
    raise VideoError(f"{path}: no such file")
  if os.path.isdir(path):
    raise VideoError(f"{path}: is a directory, not a video file")
  if os.path.getsize(path) == 0:
    raise VideoError(f"{path}: empty file (0 bytes)")
  try:
    return av.open(path)
  except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
    raise VideoError(f"{path}: not a video PyAV can open ({type(e).__name__}: "
                     f"{getattr(e, 'strerror', None) or e})") from None


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Decodes every frame of the first video stream (no pixel conversion) and measures what decodes.

  The duration is the decoded one (not the container's claim): a truncated file is as long as its
  decodable frames. Raises VideoError naming the file when nothing decodes.
  """
  import av

  path = os.fspath(path)
  with _open(path) as c:
    types = tuple(s.type for s in c.streams)
    if not c.streams.video:
      raise VideoError(f"{path}: no video stream (streams: {list(types) or 'none'})")
    vs = c.streams.video[0]
    vs.thread_type = "AUTO"
    tb = vs.time_base
    rate = vs.guessed_rate or vs.average_rate or Fraction(25)
    t0 = last = end = None
    n = 0
    try:
      for frame in c.decode(vs):
        t = (Fraction(frame.pts) * Fraction(frame.time_base or tb) if frame.pts is not None
             else (last + 1 / Fraction(rate) if last is not None else Fraction(0)))
        if last is not None and t <= last:
          continue
        dur = (Fraction(frame.duration) * Fraction(frame.time_base or tb) if frame.duration
               else 1 / Fraction(rate))
        t0 = t if t0 is None else t0
        last, end, n = t, t + dur, n + 1
    except av.FFmpegError as e:
      if n == 0:
        raise VideoError(f"{path}: undecodable video data ({e})") from None
      # a damaged tail: keep what decoded (the frames before it are whole)
    if n == 0:
      raise VideoError(f"{path}: the video stream has no decodable frames")
    return VideoInfo(path=path, duration_sec=float(end - t0), start_sec=float(t0), num_frames=n,
                     width=vs.codec_context.width, height=vs.codec_context.height,
                     codec=vs.codec_context.name, streams=types)


# Video codecs ffmpeg's mp4 muxer takes as they are; others (vp8, theora, ffv1, rawvideo, ...) are
# re-encoded with libx264.
MP4_COPY_CODECS = ("h264", "hevc", "mpeg4", "av1", "vp9", "mjpeg", "mpeg1video", "mpeg2video")


@functools.lru_cache(maxsize=4096)
def _probe_cached(path: str, size: int, mtime_ns: int) -> VideoInfo:
  del size, mtime_ns   # cache key: a changed file is probed again
  return probe_video(path)


def probe_video_cached(path: str | os.PathLike) -> VideoInfo:
  """probe_video, cached per file version (path, size, mtime), so generate's repeated probes of one file
  (its checks, then its feature function) decode it once. FileNotFoundError for a missing file."""
  st = os.stat(path)
  return _probe_cached(os.fspath(path), st.st_size, st.st_mtime_ns)


def _copy_packets(vin):
  """The stream's packets in decode order with a dts each (None when a pts is missing: re-encode).

  Matroska/WebM give no dts to the first packets of a stream with B-frames (the demuxer cannot know
  the reorder delay yet); mp4 needs one, so dts_i = sorted(pts)[i] - D with the smallest D that keeps
  every dts <= its pts: increasing, and the decoder's reorder delay as ffmpeg itself would set it.
  """
  pkts = [p for p in vin.container.demux(vin) if p.size]
  if not pkts or any(p.pts is None for p in pkts):
    return None
  if any(p.dts is None for p in pkts):
    pts = [int(p.pts) for p in pkts]
    s = sorted(pts)
    if len(set(s)) != len(s):
      return None
    d = max(si - pi for si, pi in zip(s, pts))
    for p, si in zip(pkts, s):
      p.dts = si - d
  return pkts


def _encode_audio(dst, aout, audio, sr):
  import av

  n = aout.codec_context.frame_size or 1024
  pts = 0
  for s in range(0, len(audio), n):
    chunk = np.ascontiguousarray(audio[s:s + n])
    fr = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
    fr.sample_rate = sr
    fr.pts = pts
    fr.time_base = Fraction(1, sr)
    pts += len(chunk)
    for p in aout.encode(fr):
      dst.mux(p)
  for p in aout.encode(None):
    dst.mux(p)


def mux(video_path, audio: np.ndarray, sr: int, out_path, audio_codec: str = "aac") -> str:
  """Writes `out_path` (.mp4): the video of `video_path` plus `audio` (mono float) as its only audio track.

  The video stream is copied packet for packet when mp4 can hold its codec (every frame, its timing and
  its display matrix unchanged), else re-encoded with libx264 frame by frame at the same timestamps.
  Timestamps are shifted so the first frame is at 0, where the audio starts. Returns "copy" or "reencode".
  """
  import av

  audio = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
  with _open(video_path) as src:
    if not src.streams.video:
      raise VideoError(f"{video_path}: no video stream to mux")
    vin = src.streams.video[0]
    pkts = _copy_packets(vin) if vin.codec_context.name in MP4_COPY_CODECS else None
    if pkts is not None:
      try:
        with av.open(os.fspath(out_path), "w", format="mp4") as dst:
          vout = dst.add_stream_from_template(vin)
          aout = dst.add_stream(audio_codec, rate=sr, layout="mono")
          off = min(p.pts for p in pkts)   # the first frame at time 0, where the audio starts
          for p in pkts:
            p.pts, p.dts, p.stream = p.pts - off, p.dts - off, vout
            dst.mux(p)
          _encode_audio(dst, aout, audio, sr)
        return "copy"
      except av.FFmpegError:
        pass   # a codec variant the mp4 muxer refuses: re-encode instead
  _mux_reencode(video_path, audio, sr, out_path, audio_codec)
  return "reencode"


def write_mp4(path, frames_TxHxWx3: np.ndarray, audio: np.ndarray | None = None, *, fps: float = 25,
              sample_rate: int = 24000, scale: int = 1) -> str:
  """H.264 mp4 of uint8 RGB frames (upscaled `scale`x, nearest; padded to even sizes for yuv420p) with
  `audio` (mono float) as its AAC track; written to a temp name, then renamed. Returns `path`."""
  import av

  frames = np.asarray(frames_TxHxWx3, np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"write_mp4 wants frames (T, H, W, 3) uint8, got {frames.shape}")
  if scale > 1:
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
  if (h, w) != frames.shape[1:3]:                              # yuv420p needs even sizes
    frames = np.pad(frames, ((0, 0), (0, h - frames.shape[1]), (0, w - frames.shape[2]), (0, 0)))
  path = os.fspath(path)
  d, base = os.path.split(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  root, ext = os.path.splitext(base)
  tmp = os.path.join(d, f".{root}.tmp{os.getpid()}{ext}")
  try:
    with av.open(tmp, mode="w", format="mp4") as out:
      vs = out.add_stream("libx264", rate=fps)
      vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
      vs.options = {"crf": "18", "preset": "veryfast"}
      a_s = None
      if audio is not None:
        a_s = out.add_stream("aac", rate=sample_rate, layout="mono")
      for f in frames:
        for pkt in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
          out.mux(pkt)
      for pkt in vs.encode():
        out.mux(pkt)
      if a_s is not None:
        _encode_audio(out, a_s, np.clip(np.asarray(audio, np.float32).reshape(-1), -1, 1), sample_rate)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _mux_reencode(video_path, audio, sr, out_path, audio_codec):
  import av

  with av.open(os.fspath(video_path)) as src, av.open(os.fspath(out_path), "w", format="mp4") as dst:
    vin = src.streams.video[0]
    tb = vin.time_base or Fraction(1, 1000)
    rate = vin.guessed_rate or vin.average_rate or Fraction(25)
    vout = dst.add_stream("libx264", rate=rate)
    cc = vin.codec_context
    vout.width, vout.height = cc.width + cc.width % 2, cc.height + cc.height % 2   # 4:2:0 needs even sizes
    vout.pix_fmt = "yuv420p"
    vout.time_base = tb
    vout.codec_context.time_base = tb          # keeps each frame's own pts (variable frame rate)
    vout.options = {"crf": "12", "preset": "veryfast"}
    aout = dst.add_stream(audio_codec, rate=sr, layout="mono")
    t0, last, started = None, None, False
    try:
      for frame in src.decode(vin):
        if frame.pts is None or (last is not None and frame.pts <= last):
          continue
        if not started:
          sd = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
          if sd is not None:
            vout.set_display_matrix([int(x) for x in np.frombuffer(bytes(sd), "<i4")])
          t0, started = frame.pts, True
        last = frame.pts
        out = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
        out.pts, out.time_base = frame.pts - t0, tb
        for p in vout.encode(out):
          dst.mux(p)
    except av.FFmpegError:
      if not started:
        raise
    if not started:
      raise VideoError(f"{video_path}: no decodable video frames to mux")
    for p in vout.encode(None):
      dst.mux(p)
    _encode_audio(dst, aout, audio, sr)
