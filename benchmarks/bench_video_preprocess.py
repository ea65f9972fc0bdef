r"""Throughput of the video front end: decode + sample (4 and 25 fps) + resize/crop to 224.

Writes a synthetic h264 clip (default 10 s, 1280x720, 30 fps) to a temp dir and times
dreamfoley_jax.video.load_video_frames on it, next to a decode-only pass (PyAV decode + rgb24 of every
frame, the floor of any PyAV pipeline). Then times the per-frame resize + crop side by side: our numpy
port of torch's uint8 kernel (method="torch"), Pillow (method="pil"), and the reference itself,
torch.nn.functional.interpolate(uint8, bicubic, antialias=True) + crop (if torch is installed). Example:

  python benchmarks/bench_video_preprocess.py --seconds 10 --height 720 --width 1280 --repeats 3
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import av
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dreamfoley_jax.video import load_video_frames  # noqa: E402


def write_clip(path, seconds, h, w, fps):
  rng = np.random.default_rng(0)
  base = (rng.random((h // 8, w // 8, 3)) * 255).astype(np.uint8)
  base = np.repeat(np.repeat(base, 8, 0), 8, 1)
  with av.open(str(path), "w") as out:
    s = out.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    s.options = {"preset": "ultrafast"}
    for k in range(int(seconds * fps)):
      img = np.roll(base, 4 * k, axis=1)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        out.mux(p)
    for p in s.encode():
      out.mux(p)


def decode_only(path):
  n = 0
  with av.open(str(path)) as c:
    c.streams.video[0].thread_type = "AUTO"
    for f in c.decode(video=0):
      f.to_ndarray(format="rgb24")
      n += 1
  return n


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seconds", type=float, default=10.0)
  ap.add_argument("--height", type=int, default=720)
  ap.add_argument("--width", type=int, default=1280)
  ap.add_argument("--fps", type=int, default=30)
  ap.add_argument("--repeats", type=int, default=3)
  a = ap.parse_args()
  with tempfile.TemporaryDirectory() as d:
    p = pathlib.Path(d) / "bench.mp4"
    write_clip(p, a.seconds, a.height, a.width, a.fps)
    t_dec, t_full = [], []
    for _ in range(a.repeats):
      t = time.perf_counter()
      n = decode_only(p)
      t_dec.append(time.perf_counter() - t)
      t = time.perf_counter()
      v = load_video_frames(p)
      t_full.append(time.perf_counter() - t)
    dec, full = min(t_dec), min(t_full)
    print(f"clip {a.seconds:g} s {a.width}x{a.height} @{a.fps} fps ({n} frames), best of {a.repeats}")
    print(f"decode+rgb24 only:            {dec:.3f} s  ({n / dec:.0f} source frames/s)")
    print(f"load_video_frames (4+25 fps): {full:.3f} s  ({v.sync_u8.shape[0]} sync + {v.clip_u8.shape[0]} "
          f"clip frames; {a.seconds / full:.1f}x real time; overhead over decode {full / dec:.2f}x)")
  bench_resize(a.height, a.width, a.repeats)


def bench_resize(h, w, repeats, n=20):
  from dreamfoley_jax.video import preprocess as vpre

  rng = np.random.default_rng(0)
  frames = (rng.random((n, h, w, 3)) * 255).astype(np.uint8)

  def best(fn):
    fn(frames[0])
    ts = []
    for _ in range(repeats):
      t = time.perf_counter()
      for f in frames:
        fn(f)
      ts.append((time.perf_counter() - t) / n * 1e3)
    return min(ts)

  ours = best(lambda f: vpre.resize_crop(f, method="torch"))
  pil = best(lambda f: vpre.resize_crop(f, method="pil"))
  print(f"resize+crop {w}x{h} -> 224, ms/frame: ours(torch-exact numpy) {ours:.2f}, ours(Pillow) {pil:.2f}",
        end="")
  try:
    import torch
  except ImportError:
    print("  (torch not installed: no reference timing)")
    return
  torch.set_num_threads(1)   # our numpy path is single-threaded too
  nh, nw = vpre.short_side_size(h, w, 224)
  top, left = vpre.center_crop_offsets(nh, nw, 224)

  def ref(f):
    t = torch.from_numpy(f[None]).permute(0, 3, 1, 2)
    y = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bicubic", antialias=True)
    return y[..., top:top + 224, left:left + 224]

  r = best(ref)
  print(f", reference torch uint8 kernel {r:.2f} (1 thread); ours/reference = {ours / r:.2f}x")


if __name__ == "__main__":
  main()
