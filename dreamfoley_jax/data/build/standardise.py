"""Standardisation (paper 4.1): any container PyAV reads -> fixed-length clips with separated streams.

For one source file:
  probe      container, streams, codecs, rate, layout, rotation; no video / no audio / unreadable -> rejection
  audio      decoded at its own rate and layout, down-mixed (ITU-R BS.775: centre and surrounds at -3 dB,
             LFE dropped, gains normalised so a full-scale input cannot clip) to `audio_channels`, then
             resampled to `audio_rate` with the project's windowed-sinc resampler (audio/resample.py)
  video      frames sampled at a constant `fps` by their timestamps (video/io.py, ffmpeg's fps-filter rule,
             so variable-frame-rate and odd-rate sources come out at exactly `fps`), the display matrix
             applied (rotated phone video comes out upright), resized to `short_side` px on the short side
             keeping the aspect (long side rounded down to even, as H.264 needs), streamed chunk by chunk
             into H.264 mp4s (no audio track) so a long file never sits decoded in memory
  alignment  time 0 is the first video frame; the audio is cut at the same times (zero-padded where the
             audio stream starts late), and the usable length ends where the shorter stream ends
  chunking   clips of `clip_seconds`; the tail is kept as a shorter clip when it lasts >= `min_clip_seconds`,
             else dropped as a `short_tail` rejection; a file shorter than `min_clip_seconds` is `too_short`
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import io
import math
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build.clip import Clip, FileSummary, Rejection
from dreamfoley_jax.video import io as vio
from dreamfoley_jax.video import preprocess as vpre

STAGE = "standardise"


@dataclasses.dataclass(frozen=True)
class StandardiseConfig:
  clip_seconds: float = 10.0        # paper 4.1
  min_clip_seconds: float = 2.0     # OUR CHOICE: the trainer's shortest crop (data.crop_min_s)
  fps: int = 25                     # the Synchformer rate; CLIP's 4 fps is sampled from it
  short_side: int = 360             # paper 4.1
  audio_rate: int = 44100           # paper 4.1
  audio_channels: int = 1           # 1 (mono) or 2 (stereo)
  crf: int = 18                     # H.264 quality of the standardised video (an intermediate: near lossless)
  preset: str = "superfast"
  max_source_seconds: float = 3600.0  # longer sources: the rest is ignored (noted in the report)

  def __post_init__(self):
    if self.audio_channels not in (1, 2):
      raise ValueError(f"audio_channels={self.audio_channels}: 1 (mono) or 2 (stereo)")
    if self.clip_seconds <= 0 or abs(self.clip_seconds * self.fps - round(self.clip_seconds * self.fps)) > 1e-6:
      raise ValueError(f"clip_seconds={self.clip_seconds}: must be a positive whole number of frames at {self.fps} fps")
    if not 0 < self.min_clip_seconds <= self.clip_seconds:
      raise ValueError(f"min_clip_seconds={self.min_clip_seconds}: need 0 < min_clip_seconds <= clip_seconds")
    if self.short_side < 16 or self.short_side % 2:
      raise ValueError(f"short_side={self.short_side}: an even number >= 16")

  @property
  def clip_frames(self) -> int:
    return int(round(self.clip_seconds * self.fps))


# ----------------------------------------------------------------------------------------------- inputs

@dataclasses.dataclass(frozen=True)
class InputItem:
  path: str
  caption: str = ""
  source_id: str = ""     # clips are named <source_id>-000, -001, ...


def safe_id(name: str) -> str:
  s = re.sub(r"[^A-Za-z0-9._=+-]", "_", name).strip("._")
  return s or "clip"


def _glob_base(pattern: str) -> str:
  parts = re.split(r"[*?\[]", pattern, maxsplit=1)
  return parts[0].rsplit("/", 1)[0] if "/" in parts[0] else ""


def _match(pattern: str) -> list[str]:
  if "://" in pattern:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
  return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


def read_csv(path: str) -> list[InputItem]:
  """CSV rows path[,caption][,id], with or without a header (path|video, caption, id|clip_id)."""
  import csv

  with open(path, newline="") as f:
    rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  if not rows:
    raise ValueError(f"{path}: empty CSV (rows: path[,caption][,id])")
  cols, first = ["path", "caption", "id"], 1
  head = [c.strip().lower() for c in rows[0]]
  if {"path", "video", "file"} & set(head):   # a header row names the columns
    names = {"video": "path", "file": "path", "clip_id": "id"}
    cols, first = [names.get(c, c) for c in head], 2
    rows = rows[1:]
  base = os.path.dirname(os.path.abspath(path))
  items = []
  for n, r in enumerate(rows, start=first):
    d = dict(zip(cols, (c.strip() for c in r)))
    p = d.get("path", "")
    if not p:
      raise ValueError(f"{path}:{n}: empty path")
    if "://" not in p and not os.path.isabs(p):
      p = os.path.join(base, p)
    items.append(InputItem(p, d.get("caption", ""), safe_id(d.get("id") or pathlib.Path(p).stem)))
  return items


def list_inputs(spec: str) -> list[InputItem]:
  """A glob ('videos/**/*.mp4', gs:// too), a folder (every video file below it) or a .csv/.tsv manifest.

  Ids default to the path below the glob's fixed prefix without its suffix; captions to a sidecar
  <video>.txt when present. Duplicate ids are an error naming them.
  """
  if spec.lower().endswith((".csv", ".tsv")) and "*" not in spec:
    if not os.path.isfile(spec):
      raise FileNotFoundError(f"--input {spec}: no such CSV file")
    items = read_csv(spec)
  else:
    folder = "://" not in spec and os.path.isdir(spec)
    pattern = os.path.join(spec, "**", "*") if folder else spec
    paths = [p for p in _match(pattern) if not folder or p.lower().endswith(vio.VIDEO_EXTENSIONS)]
    if not paths:
      raise FileNotFoundError(f"--input {spec!r} matches no files")
    stems = {os.path.splitext(p)[0] for p in paths if not p.endswith(".txt")}
    paths = [p for p in paths if not (p.endswith(".txt") and os.path.splitext(p)[0] in stems)]  # sidecars
    base = _glob_base(pattern)
    rels = [p[len(base):].lstrip("/") if base and p.startswith(base) else os.path.basename(p) for p in paths]
    n_stem = collections.Counter(os.path.splitext(r)[0] for r in rels)
    items = []
    for p, rel in zip(paths, rels):   # a.mp4 + a.mkv: the ids keep their extensions
      side = os.path.splitext(p)[0] + ".txt"
      cap = open(side).read().strip() if "://" not in p and os.path.isfile(side) else ""
      stem = os.path.splitext(rel)[0]
      items.append(InputItem(p, cap, safe_id(stem if n_stem[stem] == 1 else rel)))
  seen: dict[str, str] = {}
  dups = []
  for it in items:
    if it.source_id in seen:
      dups.append(f"{it.source_id!r} ({seen[it.source_id]}, {it.path})")
    seen[it.source_id] = it.path
  if dups:
    raise ValueError(f"--input {spec}: duplicate ids {'; '.join(dups[:5])} (give an id column in a CSV)")
  return items


def content_hash(path: str) -> str:
  """sha256 of the file's bytes (local or any Beam filesystem), hex."""
  import hashlib

  h = hashlib.sha256()
  if "://" in path:
    from apache_beam.io.filesystems import FileSystems

    f = FileSystems.open(path)
  else:
    f = open(path, "rb")
  with f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _Localised:
  """A local path for PyAV: the path itself, or a temporary copy of a remote object."""

  def __init__(self, path: str):
    self.path, self.tmp = path, None

  def __enter__(self) -> str:
    if "://" not in self.path:
      return self.path
    from apache_beam.io.filesystems import FileSystems

    fd, self.tmp = tempfile.mkstemp(suffix=os.path.splitext(self.path)[1])
    with os.fdopen(fd, "wb") as out, FileSystems.open(self.path) as src:
      shutil.copyfileobj(src, out, 1 << 20)
    return self.tmp

  def __exit__(self, *exc):
    if self.tmp:
      os.unlink(self.tmp)


# ------------------------------------------------------------------------------------------------ audio

_LEFT, _RIGHT = ("FL", "FLC", "SL", "BL", "TFL", "TBL", "WL"), ("FR", "FRC", "SR", "BR", "TFR", "TBR", "WR")
_SURROUND = ("SL", "SR", "BL", "BR", "TFL", "TFR", "TBL", "TBR")


def downmix_matrix(channel_names: Sequence[str], out_channels: int) -> np.ndarray:
  """(out_channels, in) gains: ITU-R BS.775 fold-down (centre and surrounds at -3 dB, LFE dropped), each
  output row normalised to sum 1 so a full-scale input stays in [-1, 1]; mono = the mean of that stereo;
  mono in -> copied to every output; a layout with no named left/right channel is averaged."""
  names = [str(c).upper() for c in channel_names]
  n = len(names)
  if n == out_channels and (n == 1 or names == ["FL", "FR"]):
    return np.eye(n)
  if n == 1:
    return np.ones((out_channels, 1))
  g = 1 / math.sqrt(2)
  left, right = np.zeros(n), np.zeros(n)
  for i, c in enumerate(names):
    w = g if c in _SURROUND else 1.0
    if c in _LEFT:
      left[i] = w
    elif c in _RIGHT:
      right[i] = w
    elif c in ("FC", "TC", "BC"):
      left[i] = right[i] = g
  if not left.any() or not right.any():
    return np.full((out_channels, n), 1.0 / n)
  stereo = np.stack([left / left.sum(), right / right.sum()])
  return stereo if out_channels == 2 else stereo.mean(axis=0, keepdims=True)


def decode_audio(path: str, stream_index: int = 0, max_seconds: float | None = None):
  """(float32 (C, n) at the stream's rate, rate, start seconds, channel names); raises av errors.
  Stops after `max_seconds` of audio (the rest of a very long file is not held in memory)."""
  import av

  with av.open(path) as container:
    stream = container.streams.audio[stream_index]
    chunks, start, rate, names, total = [], None, None, None, 0
    for frame in container.decode(stream):
      if start is None:
        start = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
        rate = frame.sample_rate
        names = [c.name for c in frame.layout.channels]
      a = frame.to_ndarray()
      if frame.format.is_planar:
        a = a.reshape(len(frame.layout.channels), -1)
      else:   # packed: (1, n * C)
        a = a.reshape(-1, len(frame.layout.channels)).T
      if a.dtype == np.uint8:   # offset binary
        a = (a.astype(np.float32) - 128.0) / 128.0
      elif a.dtype.kind == "i":
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max + 1)
      chunks.append(a.astype(np.float32))
      total += a.shape[1]
      if max_seconds is not None and total >= max_seconds * rate:
        break
  if not chunks:
    return np.zeros((1, 0), np.float32), int(stream.rate or 0), 0.0, ["FC"]
  return np.concatenate(chunks, axis=1), int(rate), float(start), names


# ------------------------------------------------------------------------------------------------ video

def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(h, w): the short side -> short_side (vpre.short_side_size), the long side rounded down to even."""
  nh, nw = vpre.short_side_size(height, width, short_side)
  return nh - nh % 2, nw - nw % 2


class _ChunkEncoder:
  """Receives standardised frames one by one; every `clip_frames` frames closes one H.264 mp4 (bytes)."""

  def __init__(self, cfg: StandardiseConfig):
    self.cfg = cfg
    self.chunks: list[tuple[bytes, int]] = []    # (mp4 bytes, frames)
    self._out = self._stream = self._buf = None
    self._n = 0
    self.size = None

  def _open(self, h, w):
    import av

    self._buf = io.BytesIO()
    self._out = av.open(self._buf, "w", format="mp4")
    s = self._out.add_stream("libx264", rate=self.cfg.fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    # x264's macroblock-tree lookahead gave different bytes run to run for identical frames of some widths
    # (84, 88, 478 px; asm=0 cures it too, so a SIMD path): off, for bit-identical records. One thread:
    # Beam already runs a process per core.
    s.options = {"crf": str(self.cfg.crf), "preset": self.cfg.preset, "threads": "1",
                 "x264-params": "no-mbtree=1:rc-lookahead=0"}
    self._stream, self._n = s, 0

  def __call__(self, img_HxWx3: np.ndarray):
    import av

    if self.size is None:
      self.size = resized_size(*img_HxWx3.shape[:2], self.cfg.short_side)
    h, w = self.size
    if self._out is None:
      self._open(h, w)
    f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img_HxWx3), format="rgb24")
    # libswscale's bicubic resize + YUV conversion in one pass (Pillow's resize was 4x the encode time)
    f = f.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC")
    f.pts = self._n
    for p in self._stream.encode(f):
      self._out.mux(p)
    self._n += 1
    if self._n == self.cfg.clip_frames:
      self.close()

  def close(self):
    if self._out is None:
      return
    for p in self._stream.encode():
      self._out.mux(p)
    self._out.close()
    self.chunks.append((self._buf.getvalue(), self._n))
    self._out = None


# --------------------------------------------------------------------------------------------- the stage

def _probe(path: str) -> dict[str, Any] | str:
  """Stream facts for the report, or a string saying why the file cannot be used."""
  import av

  try:
    c = av.open(path)
  except (av.FFmpegError, OSError, ValueError) as e:
    return f"unreadable:{type(e).__name__}: {e}"
  with c:
    info: dict[str, Any] = {"format": c.format.name,
                            "duration_sec": None if c.duration is None else round(c.duration / 1e6, 3)}
    if c.streams.video:
      v = c.streams.video[0]
      rate = v.average_rate or v.guessed_rate
      info["video"] = {"codec": v.codec_context.name, "width": v.codec_context.width,
                       "height": v.codec_context.height, "fps": None if rate is None else round(float(rate), 3),
                       "frames": v.frames or None}
      try:   # frame intervals from the packets' timestamps (demuxing only: no decoding)
        pts = sorted(float(pk.pts * pk.time_base) for _, pk in zip(range(3000), c.demux(v)) if pk.pts is not None)
      except (av.FFmpegError, ValueError):
        pts = []
      iv = np.diff(pts)
      if iv.size >= 4:
        lo, med, hi = np.percentile(iv, [5, 50, 95])
        info["video"]["interval_ms"] = [round(1000 * lo, 1), round(1000 * med, 1), round(1000 * hi, 1)]
        info["video"]["vfr"] = bool(med > 0 and (hi - lo) / med > 0.2)
    if c.streams.audio:
      a = c.streams.audio[0]
      info["audio"] = {"codec": a.codec_context.name, "rate": a.rate, "channels": a.channels,
                       "layout": a.layout.name}
  return info


def standardise(item: InputItem, file_key: str, cfg: StandardiseConfig
                ) -> tuple[list[Clip], list[Rejection], FileSummary | None]:
  """One source file -> (clips, rejections, summary). A file-level failure is one rejection, no clip."""
  import av

  def reject(reason, value=None, detail="", clip_id=None):
    return Rejection(STAGE, reason, value, item.path, file_key, clip_id, detail)

  with _Localised(item.path) as local:
    if os.path.getsize(local) == 0:
      return [], [reject("unreadable", 0.0, "zero-length file (0 bytes)")], None
    info = _probe(local)
    if isinstance(info, str):
      return [], [reject("unreadable", None, info.split(":", 1)[1])], None
    if "video" not in info:
      return [], [reject("no_video", None, f"no video stream ({info['format']})")], None
    if "audio" not in info:
      return [], [reject("no_audio", None, f"no audio stream ({info['format']})")], None
    notes = []
    # audio
    try:
      raw, rate, a_start, names = decode_audio(local, max_seconds=cfg.max_source_seconds + 1.0)
    except av.FFmpegError as e:
      return [], [reject("decode_error", None, f"audio stream: {e}")], None
    if raw.shape[1] == 0:
      return [], [reject("no_audio", 0.0, "the audio stream decodes to 0 samples")], None
    if not np.all(np.isfinite(raw)):
      return [], [reject("decode_error", None, "audio has NaN/Inf samples")], None
    if raw.shape[0] != cfg.audio_channels:
      notes.append(f"audio {raw.shape[0]} ch ({info['audio']['layout']}) -> {cfg.audio_channels} ch")
    mix = downmix_matrix(names, cfg.audio_channels)
    audio = (mix.astype(np.float32) @ raw).astype(np.float32)
    if rate != cfg.audio_rate:
      notes.append(f"audio {rate} Hz -> {cfg.audio_rate} Hz")
      audio = resample_np(audio, rate, cfg.audio_rate)
    # video: streamed into chunk encoders
    enc = _ChunkEncoder(cfg)
    try:
      (n_frames,), meta = vio.sample_frames(local, [cfg.fps], max_duration_sec=cfg.max_source_seconds,
                                            sinks=[enc])
      enc.close()
    except vio.VideoError as e:
      reason = "no_video" if "no decodable frames" in str(e) else "decode_error"
      return [], [reject(reason, None, str(e).split(": ", 1)[-1])], None
    except NotImplementedError as e:   # a display matrix that is not a multiple of 90 degrees
      return [], [reject("unsupported_rotation", None, str(e))], None
  src_fps = info["video"]["fps"]
  if meta.rotation or meta.flipped:
    notes.append(f"rotation {meta.rotation} deg{' + mirror' if meta.flipped else ''} applied")
  if src_fps and abs(src_fps - cfg.fps) > 1e-3:
    notes.append(f"video {src_fps:g} fps -> {cfg.fps} fps")
  if info["video"].get("vfr"):
    lo, _, hi = info["video"]["interval_ms"]
    notes.append(f"variable frame rate (frame intervals {lo:g}-{hi:g} ms), sampled at {cfg.fps} fps by timestamp")
  if info["duration_sec"] and info["duration_sec"] > cfg.max_source_seconds:
    notes.append(f"only the first {cfg.max_source_seconds:g} s used")
  elif info["duration_sec"] and meta.duration_sec < info["duration_sec"] - 0.5:
    notes.append(f"truncated? {meta.duration_sec:.2f} s of video decoded, the container announces "
                 f"{info['duration_sec']:.2f} s")
  notes.append(f"video {meta.width}x{meta.height} -> {enc.size[1]}x{enc.size[0]}" if enc.size else "")
  notes = [n for n in notes if n]
  # alignment: time 0 = first video frame; clip where both streams exist
  offset = a_start - meta.start_sec
  if abs(offset) > 0.1:
    notes.append(f"audio starts {offset:+.2f} s from the video")
  audio_end = offset + audio.shape[1] / cfg.audio_rate
  usable = min(n_frames, int(math.floor(audio_end * cfg.fps + 1e-6)))
  if usable < n_frames - cfg.fps * 0.5:
    notes.append(f"audio ends {(n_frames - usable) / cfg.fps:.2f} s before the video")
  summary = FileSummary(item.path, file_key, probe=info, notes=tuple(notes))
  if usable < cfg.min_clip_seconds * cfg.fps:
    sec = max(usable, 0) / cfg.fps
    return [], [reject("too_short", round(sec, 4), f"{sec:.2f} s usable < min_clip_seconds "
                       f"{cfg.min_clip_seconds:g}")], summary
  clips, rejections = [], []
  L = cfg.clip_frames
  for k, (mp4, nf) in enumerate(enc.chunks):
    nf = min(nf, usable - k * L)
    if nf <= 0:
      break
    cid = f"{item.source_id}-{k:03d}"
    if nf < cfg.min_clip_seconds * cfg.fps:
      rejections.append(reject("short_tail", round(nf / cfg.fps, 4), f"tail {nf / cfg.fps:.2f} s < "
                               f"min_clip_seconds {cfg.min_clip_seconds:g}", cid))
      continue
    if nf < enc.chunks[k][1]:   # the audio ends inside this chunk: re-cut the video to the usable frames
      mp4 = _truncate_mp4(mp4, nf, cfg)
    n_audio = int(round(nf / cfg.fps * cfg.audio_rate))
    i0 = int(round((k * L / cfg.fps - offset) * cfg.audio_rate))
    a = np.zeros((cfg.audio_channels, n_audio), np.float32)
    lo, hi = max(i0, 0), min(i0 + n_audio, audio.shape[1])
    if hi > lo:
      a[:, lo - i0:hi - i0] = audio[:, lo:hi]
    clips.append(Clip(clip_id=cid, file_key=file_key, source=item.path, index=k, start_sec=k * L / cfg.fps,
                      duration_sec=nf / cfg.fps, caption=item.caption, video_mp4=mp4, audio=a,
                      audio_rate=cfg.audio_rate, fps=cfg.fps))
  summary = dataclasses.replace(summary, clips=len(clips), duration_sec=round(usable / cfg.fps, 4))
  return clips, rejections, summary


def _truncate_mp4(mp4: bytes, frames: int, cfg: StandardiseConfig) -> bytes:
  """The first `frames` frames of a standardised chunk, re-encoded (rare: audio shorter than video)."""
  enc = _ChunkEncoder(dataclasses.replace(cfg, clip_seconds=frames / cfg.fps, min_clip_seconds=frames / cfg.fps))
  for img in decode_mp4_frames(mp4)[:frames]:
    enc(img)
  enc.close()
  return enc.chunks[0][0]


def decode_mp4_frames(mp4: bytes) -> np.ndarray:
  """All frames of a standardised chunk, (T, H, W, 3) uint8."""
  import av

  with av.open(io.BytesIO(mp4)) as c:
    return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


class MediaFile:
  """A standardised chunk as a temporary mp4 path (video/io.py and the encoders read paths)."""

  def __init__(self, mp4: bytes):
    self.mp4, self.path = mp4, None

  def __enter__(self) -> str:
    fd, self.path = tempfile.mkstemp(suffix=".mp4")
    with os.fdopen(fd, "wb") as f:
      f.write(self.mp4)
    return self.path

  def __exit__(self, *exc):
    os.unlink(self.path)

