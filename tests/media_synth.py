"""Writes test media with PyAV (video + audio in mp4/mkv/webm, any layout) and speech with espeak-ng."""
from __future__ import annotations

import pathlib
import subprocess
from fractions import Fraction

import av
import numpy as np

CODECS = {".mp4": ("libx264", "aac"), ".mkv": ("libx264", "flac"), ".webm": ("libvpx-vp9", "libopus"),
          ".mov": ("libx264", "aac")}


def gradient_frame(k: int, h: int, w: int, shift_px: float = 0.0) -> np.ndarray:
  """A textured frame (diagonal stripes + checker) shifted right by k * shift_px (0 = a still image)."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  x = xx - k * shift_px
  img = np.stack([127 + 100 * np.sin(0.35 * x + 0.2 * yy), 127 + 100 * np.cos(0.21 * x - 0.3 * yy),
                  127 + 90 * np.sign(np.sin(0.5 * x) * np.sin(0.5 * yy))], -1)
  return np.clip(img, 0, 255).astype(np.uint8)


def tone(seconds: float, rate: int = 44100, freq: float = 440.0, amp: float = 0.3, channels: int = 1):
  """(channels, n) float32 sine; channel c at amplitude amp * (c + 1) / channels."""
  t = np.arange(int(round(seconds * rate))) / rate
  return np.stack([amp * (c + 1) / channels * np.sin(2 * np.pi * freq * t) for c in range(channels)]
                  ).astype(np.float32)


def noise(seconds: float, rate: int = 44100, amp: float = 0.1, seed: int = 0, channels: int = 1):
  rng = np.random.default_rng(seed)
  return (amp * rng.standard_normal((channels, int(round(seconds * rate))))).astype(np.float32)


def write_media(path, *, seconds: float | None = None, fps: float = 25, size=(48, 64), times=None,
                frames=None, shift_px: float = 2.0, audio=None, audio_rate: int = 44100, layout=None,
                rotation=None, video: bool = True, video_codec=None, audio_codec=None):
  """Writes `path` (container from the suffix) and returns it.

  times: explicit frame times in seconds (variable frame rate); else seconds * fps frames at 1/fps.
  frames(k) -> (H, W, 3) uint8 frame k; default: a texture panning by shift_px per frame.
  audio: (channels, n) float32 at audio_rate, or None for a file without an audio stream.
  rotation: display-matrix rotation in degrees (the pixels are stored unrotated).
  """
  path = pathlib.Path(path)
  vcodec, acodec = CODECS[path.suffix.lower()]
  vcodec, acodec = video_codec or vcodec, audio_codec or acodec
  out = av.open(str(path), "w")
  streams = []
  if video:
    h, w = size
    if times is None:
      times = [k / fps for k in range(int(round(seconds * fps)))]
    tb = Fraction(1, 1000)
    vs = out.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1001))
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    vs.time_base = tb
    vs.codec_context.time_base = tb
    vs.options = {"crf": "18", "preset": "ultrafast"} if vcodec == "libx264" else {"crf": "20", "b": "0"}
    if rotation is not None:
      vs.set_display_rotation(rotation)
    vframes = []
    for k, t in enumerate(times):
      img = frames(k) if frames is not None else gradient_frame(k, h, w, shift_px)
      f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
      f.pts, f.time_base = int(round(Fraction(t).limit_denominator(100000) / tb)), tb
      vframes.append(f)
    streams.append((vs, vframes))
  if audio is not None:
    audio = np.asarray(audio, np.float32)
    layout = layout or {1: "mono", 2: "stereo", 6: "5.1"}[audio.shape[0]]
    if acodec == "libopus":
      audio_rate = 48000
    as_ = out.add_stream(acodec, rate=audio_rate, layout=layout)
    fs = 1024 if acodec != "libopus" else 960
    fmt = "s16" if acodec == "flac" else "fltp"
    aframes = []
    for s in range(0, audio.shape[1], fs):
      chunk = np.ascontiguousarray(audio[:, s:s + fs])
      if fmt == "s16":
        chunk = np.round(np.clip(chunk, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
      f = av.AudioFrame.from_ndarray(chunk, format=fmt, layout=layout)
      f.sample_rate, f.pts = audio_rate, s
      aframes.append(f)
    streams.append((as_, aframes))
  for st, fr in streams:
    for f in fr:
      for p in st.encode(f):
        out.mux(p)
    for p in st.encode():
      out.mux(p)
  out.close()
  return path


def espeak(text: str, path, *, rate: int = 22050) -> np.ndarray:
  """Speech from espeak-ng: (n,) float32 at 22050 Hz (espeak's native rate), also written to `path`.
  Skips the calling test where espeak-ng is not installed (.ci/run installs it)."""
  import shutil

  import pytest
  import soundfile as sf

  if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")

  subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=60, capture_output=True)
  x, sr = sf.read(str(path), dtype="float32")
  assert sr == rate, sr
  return x if x.ndim == 1 else x.mean(1)
