"""Objective quality filters (paper 4.2): silence ratio, clipping ratio, static shots. Pure numpy stages.

Definitions (all on the standardised clip: audio float32 at 44.1 kHz, 0 dBFS = amplitude 1.0):
  silence ratio   the clip is cut into non-overlapping `window_ms` windows (the last one may be shorter);
                  a window is silent when its RMS over all channels, 20 log10(rms), is below
                  `threshold_dbfs`; the ratio is the silent windows' share of the samples. Rejected when
                  > `max_ratio` (paper: 80%).
  clipping ratio  a sample (of any channel) is clipped when |x| >= 10^(level_dbfs / 20) (-0.1 dBFS:
                  0.98855); the ratio is clipped samples / all samples. Rejected when > `max_ratio`
                  (paper: 10%). The -0.1 dBFS margin keeps the ratio of a hard-clipped 48 kHz source
                  within 0.002 after resampling to 44.1 kHz (tests/test_build_dataset_stages.py).
  static shot     frames sampled at `fps` (4) from the standardised video, luma (BT.601) at `size` px on
                  the short side; d_i = mean |Y_i - Y_(i-1)| in grey levels (0-255). A pair is a cut when
                  d_i > `cut_threshold` and d_i > `cut_ratio` x the median of all d (a spike, not a fast
                  pan); cuts are left out and motion = the median of the other d_i. Rejected as static
                  when motion < `threshold` (a still image; a slideshow: stills joined by cuts).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from dreamfoley_jax.data.build.clip import Clip, Rejection


def _reject(stage: str, clip: Clip, reason: str, value: float, detail: str) -> Rejection:
  return Rejection(stage, reason, float(value), clip.source, clip.file_key, clip.clip_id, detail)


# ---------------------------------------------------------------------------------------------- silence

def silence_ratio(audio_CxN: np.ndarray, rate: int, window_ms: float = 50.0,
                  threshold_dbfs: float = -60.0) -> float:
  """Share of samples in windows whose RMS level is below threshold_dbfs (see the module docstring)."""
  x = np.asarray(audio_CxN, np.float64)
  n = x.shape[-1]
  if n == 0:
    return 1.0
  w = max(1, int(round(window_ms * rate / 1000)))
  silent = 0
  thr = 10.0 ** (threshold_dbfs / 20.0)
  for s in range(0, n, w):
    seg = x[:, s:s + w]
    if math.sqrt(float(np.mean(seg * seg))) < thr:
      silent += seg.shape[-1]
  return silent / n


@dataclasses.dataclass(frozen=True)
class SilenceConfig:
  window_ms: float = 50.0       # OUR CHOICE
  threshold_dbfs: float = -60.0  # OUR CHOICE
  max_ratio: float = 0.8        # paper 4.2


@dataclasses.dataclass(frozen=True)
class SilenceStage:
  cfg: SilenceConfig = SilenceConfig()
  name: str = "silence"

  def __call__(self, clip: Clip) -> Clip | Rejection:
    r = silence_ratio(clip.audio, clip.audio_rate, self.cfg.window_ms, self.cfg.threshold_dbfs)
    if r > self.cfg.max_ratio:
      return _reject(self.name, clip, "silence_ratio", r, f"{100 * r:.1f}% of the clip below "
                     f"{self.cfg.threshold_dbfs:g} dBFS (max {100 * self.cfg.max_ratio:g}%)")
    return clip.with_scores(silence_ratio=r)


# --------------------------------------------------------------------------------------------- clipping

def clipping_ratio(audio_CxN: np.ndarray, level_dbfs: float = -0.1) -> float:
  x = np.abs(np.asarray(audio_CxN, np.float32))
  if x.size == 0:
    return 0.0
  return float(np.count_nonzero(x >= np.float32(10.0 ** (level_dbfs / 20.0))) / x.size)


@dataclasses.dataclass(frozen=True)
class ClippingConfig:
  level_dbfs: float = -0.1      # OUR CHOICE
  max_ratio: float = 0.1        # paper 4.2


@dataclasses.dataclass(frozen=True)
class ClippingStage:
  cfg: ClippingConfig = ClippingConfig()
  name: str = "clipping"

  def __call__(self, clip: Clip) -> Clip | Rejection:
    r = clipping_ratio(clip.audio, self.cfg.level_dbfs)
    if r > self.cfg.max_ratio:
      return _reject(self.name, clip, "clipping_ratio", r, f"{100 * r:.2f}% of samples at or above "
                     f"{self.cfg.level_dbfs:g} dBFS (max {100 * self.cfg.max_ratio:g}%)")
    return clip.with_scores(clipping_ratio=r)


# ----------------------------------------------------------------------------------------- static shots

def luma_small(img_HxWx3: np.ndarray, size: int) -> np.ndarray:
  """BT.601 luma of a frame, box-downscaled (PIL) to `size` px on the short side, float32."""
  from PIL import Image

  h, w = img_HxWx3.shape[:2]
  s = size / min(h, w)
  im = Image.fromarray(np.ascontiguousarray(img_HxWx3)).convert("L")
  if s < 1:
    im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
  return np.asarray(im, np.float32)


def frame_differences(frames_luma: np.ndarray) -> np.ndarray:
  """(T, H, W) luma -> (T-1,) mean absolute differences of consecutive frames."""
  f = np.asarray(frames_luma, np.float32)
  if f.shape[0] < 2:
    return np.zeros((0,), np.float32)
  return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2))


def motion_stats(diffs: np.ndarray, cut_threshold: float, cut_ratio: float = 3.0) -> tuple[float, int]:
  """(motion = median of the non-cut differences, number of cuts)."""
  if diffs.size == 0:
    return 0.0, 0
  cuts = (diffs > cut_threshold) & (diffs > cut_ratio * np.median(diffs))
  rest = diffs[~cuts]
  return (float(np.median(rest)) if rest.size else 0.0), int(cuts.sum())


@dataclasses.dataclass(frozen=True)
class StaticConfig:
  fps: float = 4.0              # OUR CHOICE (the CLIP rate)
  size: int = 64                # OUR CHOICE: box-downscaled, which also averages codec noise away
  threshold: float = 2.0        # OUR CHOICE: grey levels per 0.25 s (a re-encoded still: <= 1.3; a 0.1 px/frame pan: 6.3+)
  cut_threshold: float = 30.0   # OUR CHOICE
  cut_ratio: float = 3.0        # OUR CHOICE


@dataclasses.dataclass(frozen=True)
class StaticStage:
  cfg: StaticConfig = StaticConfig()
  name: str = "static"

  def __call__(self, clip: Clip) -> Clip | Rejection:
    from dreamfoley_jax.data.build import standardise
    from dreamfoley_jax.video import io as vio

    tf = lambda img: luma_small(img, self.cfg.size)  # noqa: E731
    with standardise.MediaFile(clip.video_mp4) as path:
      (frames,), _ = vio.sample_frames(path, [self.cfg.fps], transforms=[tf])
    motion, cuts = motion_stats(frame_differences(frames), self.cfg.cut_threshold, self.cfg.cut_ratio)
    if motion < self.cfg.threshold:
      return _reject(self.name, clip, "static", motion, f"median frame difference {motion:.3f} grey levels "
                     f"< {self.cfg.threshold:g} ({cuts} cut{'s' if cuts != 1 else ''} left out)")
    return clip.with_scores(motion=motion, cuts=cuts)
