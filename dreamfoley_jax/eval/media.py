"""Reading audio files and the video inputs of the metric models (PyAV + PIL)."""
from __future__ import annotations

import math
import pathlib

import numpy as np

from dreamfoley_jax.video import preprocess as vpre

AUDIO_EXTS = (".wav", ".flac")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
CLIP_MEAN = np.array(vpre.OPENAI_CLIP_MEAN)   # float64, as the ImageBind reference normalises
CLIP_STD = np.array(vpre.OPENAI_CLIP_STD)


def load_audio(path) -> tuple[np.ndarray, int]:
  """(channels, samples) float64 and the sample rate, from a wav/flac file or a video's audio track."""
  path = pathlib.Path(path)
  if path.suffix.lower() in AUDIO_EXTS:
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float64", always_2d=True)
    return data.T, int(sr)
  import av

  try:
    with av.open(str(path)) as c:
      if not c.streams.audio:
        raise ValueError(f"{path}: has no audio stream")
      stream = c.streams.audio[0]
      sr = stream.codec_context.sample_rate
      res = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=sr)
      chunks = []
      for frame in c.decode(stream):
        for f in res.resample(frame):
          chunks.append(f.to_ndarray())
      for f in res.resample(None):
        chunks.append(f.to_ndarray())
  except av.error.FFmpegError as e:
    raise ValueError(f"{path}: cannot decode audio ({getattr(e, 'strerror', None) or e})") from e
  if not chunks:
    raise ValueError(f"{path}: audio stream is empty")
  return np.concatenate(chunks, axis=1).astype(np.float64), int(sr)


def sample_frames(path, fps: float, count: int) -> np.ndarray:
  """`count` RGB frames (count, H, W, 3) uint8 at `fps` from the start, like ffmpeg's fps filter.

  Output frame n is the last decoded frame whose timestamp is below (n + 0.5) / fps (round-to-nearest
  frame-rate conversion). Raises if the video is shorter than `count` frames at that rate.
  """
  import av

  out = []
  last = None
  n = 0
  end_t = 0.0
  with av.open(str(path)) as c:
    if not c.streams.video:
      raise ValueError(f"{path}: has no video stream")
    s = c.streams.video[0]
    frame_dur = 1.0 / float(s.average_rate) if s.average_rate else 0.0
    for frame in c.decode(s):
      t = float(frame.pts * s.time_base) if frame.pts is not None else frame.time
      while n < count and t >= (n + 0.5) / fps:
        if last is None:
          last = frame.to_ndarray(format="rgb24")
        out.append(last)
        n += 1
      if n >= count:
        break
      last = frame.to_ndarray(format="rgb24")
      end_t = t + frame_dur
  # Slots after the last frame's timestamp but before the stream ends repeat the last frame.
  while n < count and last is not None and (n + 0.5) / fps <= end_t + 1e-6:
    out.append(last)
    n += 1
  if n < count:
    raise ValueError(f"{path}: video too short: needs {count} frames at {fps:g} fps "
                     f"({count / fps:g} s), got {n}")
  return np.stack(out)


def three_crops(frames_NxHxWx3, size: int) -> np.ndarray:
  """ImageBind SpatialCrop(size, 3): left/centre/right (landscape) or top/centre/bottom (portrait)."""
  h, w = frames_NxHxWx3.shape[1:3]
  out = []
  for idx in range(3):
    y = int(math.ceil((h - size) / 2))
    x = int(math.ceil((w - size) / 2))
    if h > w:
      y = 0 if idx == 0 else (h - size if idx == 2 else y)
    else:
      x = 0 if idx == 0 else (w - size if idx == 2 else x)
    out.append(frames_NxHxWx3[:, y:y + size, x:x + size])
  return np.stack(out)


def sync_video_input(path, duration_s: float) -> np.ndarray:
  """(T, 3, 224, 224) float32 in [-1, 1] at 25 fps: resize short side 224, centre crop (Synchformer)."""
  f = np.stack([vpre.resize_crop(x, 224) for x in sample_frames(path, 25.0, int(25.0 * duration_s))])
  return vpre.sync_normalize(f).transpose(0, 3, 1, 2)


def imagebind_video_input(path, duration_s: float) -> np.ndarray:
  """(3 crops, T, 3, 224, 224) CLIP-normalised frames at 0.5 fps (ImageBind vision)."""
  f = sample_frames(path, 0.5, int(0.5 * duration_s))
  f = np.stack([vpre.resize_short_side(x, 224) for x in f]).astype(np.float32) / 255.0
  f = ((f - CLIP_MEAN) / CLIP_STD).astype(np.float32)
  return three_crops(f, 224).transpose(0, 1, 4, 2, 3)
