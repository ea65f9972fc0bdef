"""Writes small test videos with PyAV whose colour encodes the frame index (shared by the video tests)."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np


def index_frame(k: int, h: int, w: int) -> np.ndarray:
  """A flat frame whose R and G channels encode k: R = 10 * (k % 25), G = 10 * (k // 25)."""
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = 10 * (k % 25)
  img[..., 1] = 10 * (k // 25)
  img[..., 2] = 128
  return img


def decode_index(img: np.ndarray) -> int:
  """Inverse of index_frame on a (possibly lossy, resized) frame: reads the centre mean."""
  h, w = img.shape[:2]
  c = img[h // 4:3 * h // 4, w // 4:3 * w // 4].reshape(-1, 3).astype(np.float64).mean(0)
  return int(round(c[1] / 10.0)) * 25 + int(round(c[0] / 10.0))


def write_video(path, times_sec, *, codec="libx264", size=(48, 64), rotation=None, hflip=False,
                time_base=Fraction(1, 1000), rate=None, frames=None):
  """Writes one frame per entry of `times_sec` (explicit pts, so VFR works) and returns the path."""
  h, w = size
  out = av.open(str(path), "w")
  rate = rate or 25
  s = out.add_stream(codec, rate=rate)
  s.width, s.height = w, h
  s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
  s.time_base = time_base
  s.codec_context.time_base = time_base   # else the encoder rounds pts to 1/rate (breaks VFR)
  if codec in ("libx264", "h264"):
    s.options = {"crf": "10", "preset": "ultrafast"}
  elif codec in ("mpeg4", "mjpeg"):
    s.options = {"qmin": "1", "qmax": "4"}
  elif codec == "libvpx-vp9":
    s.options = {"crf": "10", "b": "0"}
  elif codec == "libvpx":
    s.options = {"crf": "4", "b": "2M"}
  if rotation is not None or hflip:
    s.set_display_rotation(rotation or 0, hflip=hflip)
  for k, t in enumerate(times_sec):
    img = index_frame(k, h, w) if frames is None else frames[k]
    f = av.VideoFrame.from_ndarray(img, format="rgb24")
    f.pts = int(round(Fraction(t).limit_denominator(100000) / time_base))
    f.time_base = time_base
    for p in s.encode(f):
      out.mux(p)
  for p in s.encode():
    out.mux(p)
  out.close()
  return path
