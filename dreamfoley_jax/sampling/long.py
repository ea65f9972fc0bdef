"""Long clips: windowed continuation over `sample`.

Legend: B clips, K codebooks, T frames (25 Hz), W window frames, C context frames, Tv video frames at the
sync rate, Dv fused video width.
"""
from __future__ import annotations

import numpy as np

from dreamfoley_jax.models import foley
from dreamfoley_jax.sampling.config import SampleConfig
from dreamfoley_jax.sampling.placement import place_params
from dreamfoley_jax.sampling.sampler import sample


def _window(x: np.ndarray, start: int, n: int) -> np.ndarray:
  """x[:, start:start + n] zero-padded to n along axis 1: a video shorter than the audio (text-to-audio,
  --allow_longer) is padded one window at a time, never for the whole clip."""
  w = x[:, start:start + n]
  pad = n - w.shape[1]
  return np.pad(w, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)) if pad > 0 else w


def frames_windower(cfg: foley.FoleyConfig, batch: dict, total: int, window: int, context: int):
  """frames mode: (start, window lengths) -> the window's uint8 frame batch (25 fps and 4 fps).

  Window starts are whole seconds so the 4 fps frames stay aligned with the 25 fps ones.
  """
  per_s = int(cfg.sync_rate)
  if window % per_s or context % per_s:
    raise ValueError(f"frames-mode windows must be whole seconds: window={window}, context={context} frames")
  out = {}
  for key, rate in (("frames_sync", cfg.sync_rate), ("frames_clip", cfg.clip_rate)):
    if key not in batch:
      continue
    x = np.asarray(batch[key])
    out[key] = (x, np.asarray(batch.get(f"{key}_mask", np.ones(x.shape[:2], bool)), bool), rate)

  def window_batch(start: int, wl) -> dict:
    wb = {}
    for key, (x, m, rate) in out.items():
      a = start * int(rate) // per_s
      n = int(np.ceil(window * rate / cfg.sync_rate))
      keep = np.arange(n)[None] < np.ceil(np.asarray(wl)[:, None] * rate / cfg.sync_rate)
      wb[key], wb[f"{key}_mask"] = _window(x, a, n), _window(m, a, n) & keep
    return wb

  return window_batch


def fused_video(cfg: foley.FoleyConfig, batch: dict) -> tuple[np.ndarray, np.ndarray]:
  """Whole-clip fused video features at the sync rate (B, Tv, Dv) and mask (B, Tv)."""
  if "video_feats" in batch:
    v = np.asarray(batch["video_feats"], np.float32)
  else:
    if "video_mask" in batch:
      Tv = np.asarray(batch["video_mask"]).shape[1]
    elif cfg.use_sync:
      Tv = np.asarray(batch["sync_feats"]).shape[1]
    else:
      Tv = int(np.ceil(np.asarray(batch["clip_feats"]).shape[1] * cfg.sync_rate / cfg.clip_rate))
    v = np.asarray(foley.fuse_video(cfg, batch.get("sync_feats"), batch.get("clip_feats"), Tv))
  m = np.asarray(batch.get("video_mask", np.ones(v.shape[:2], bool)), bool)
  return v, m


def window_plan(total_frames: int, window: int, context: int) -> list[int]:
  """Start frames of the windows covering [0, total_frames): each new window re-reads `context` frames."""
  if not 0 <= context < window:
    raise ValueError(f"context ({context}) must be in [0, window={window})")
  starts = [0]
  while starts[-1] + window < total_frames:
    starts.append(starts[-1] + window - context)
  return starts


def sample_long(cfg: foley.FoleyConfig, params, batch: dict, lengths, *, window_frames: int = 250,
                context_frames: int = 75, sample_cfg: SampleConfig = SampleConfig(), seed: int = 0,
                item_seeds=None, progress=None, **kw) -> dict:
  """Clips of any length: windows of `window_frames` (the trained length, 10 s) that overlap by
  `context_frames` (3 s). Window w>0 re-prefills [text | video frames [s, s+W) | the last C generated
  frames as a delayed prefix] and continues; the seam is at token level (no crossfade).

  batch holds whole-clip video (25 Hz sync feats / 4 fps clip feats, or fused video_feats) and text;
  lengths (B,) total frames. Video frame f and audio frame f share the time f / 25 s. Returns
  {"codes" (B,K,max(lengths)), "lengths", "windows": [{"start", "lengths", "video_start", "prefix"}]}.
  `progress(n)` (optional) is called with the number of frames each window adds.
  """
  lengths = np.asarray(lengths, np.int64).reshape(-1)
  B, K = lengths.shape[0], cfg.num_codebooks
  if kw.get("mesh") is not None:     # once, not in every window's sample call
    params = place_params(cfg, params, kw["mesh"])
  total = int(lengths.max())
  starts = window_plan(total, window_frames, context_frames)
  frames_mode = cfg.vision_mode == "frames"
  if frames_mode:
    video_window = frames_windower(cfg, batch, starts[-1] + window_frames, window_frames, context_frames)
  else:
    feats, vmask = fused_video(cfg, batch)
  text = {k: batch[k] for k in ("text_ids", "text_mask") if k in batch}
  out = np.zeros((B, K, total), np.int32)
  windows = []
  seeds = np.arange(B) if item_seeds is None else np.asarray(item_seeds)
  for w, start in enumerate(starts):
    C = 0 if w == 0 else context_frames
    # Items already complete get a dummy length (C + 1) and their output is ignored.
    active = lengths > start + C
    wl = np.where(active, np.minimum(lengths - start, window_frames), C + 1).astype(np.int32)
    if frames_mode:
      wb = dict(text, **video_window(start, wl))
    else:
      vm = _window(vmask, start, window_frames) & (np.arange(window_frames)[None] < wl[:, None])
      wb = dict(text, video_feats=_window(feats, start, window_frames), video_mask=vm)
    prefix = out[:, :, start:start + C].copy() if C else None
    res = sample(cfg, params, wb, wl, sample_cfg=sample_cfg, seed=seed + 7919 * w, item_seeds=seeds,
                 max_frames=window_frames, prefix_codes=prefix, **kw)
    for i in np.nonzero(active)[0]:
      out[i, :, start + C:start + wl[i]] = res["codes"][i, :, C:wl[i]]
    windows.append({"start": start, "lengths": wl, "active": active, "video_start": start, "prefix": prefix,
                    "codes": res["codes"]})
    if progress is not None:
      progress(int(np.sum(np.where(active, wl - C, 0))))
  return {"codes": out, "lengths": lengths.astype(np.int32), "windows": windows}
