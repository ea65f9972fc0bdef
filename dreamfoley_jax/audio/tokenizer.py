"""Batched higgs-audio-v2 encode/decode for data preparation.

Clips of any length are zero-padded into a few fixed length buckets, so the jitted encoder compiles
once per bucket (not per clip length); the model masks the padding so each item's valid codes equal an
unpadded encode of that clip. Clips longer than the largest bucket go through `encode_long`, which cuts
them into overlapping windows (context on both sides) and keeps each window's centre frames.

Input policy (checked on the host, before anything reaches XLA):
- not 1-D, empty, shorter than one frame (hop = 960 samples = 40 ms at 24 kHz), NaN or Inf -> ValueError
  naming the clip's index (pass ``pad_short=True`` to zero-pad short clips to one frame instead);
- silence is valid input: it encodes to the codes of silence;
- samples beyond [-1, 1] (clipped or hot float audio) are passed through unchanged, as the reference does
  (``on_clipping="clip"`` clamps them, ``"error"`` rejects the clip).

Example:
  tok = AudioTokenizer(params, HiggsTokenizerConfig.real())
  codes = tok.encode([clip_a, clip_b])          # list of (8, T_i) int32
  audio = tok.decode(codes)                     # list of (T_i * 960,) float32
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable, Optional, Sequence

import jax
import numpy as np

from dreamfoley_jax.audio.higgs import HiggsAudioV2Tokenizer, HiggsTokenizerConfig

DEFAULT_BUCKETS_S = (2.0, 5.0, 10.0, 20.0, 30.0)


def check_clip(x, index: int, cfg: HiggsTokenizerConfig, *, pad_short: bool = False,
               on_clipping: str = "pass") -> np.ndarray:
  """Validates one clip; returns float32 1-D audio (possibly padded/clamped per the policy)."""
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"clip {index}: expected mono 1-D audio, got shape {x.shape} "
                     f"(mix channels down first, e.g. dreamfoley_jax.audio.io.load_audio)")
  if x.size == 0:
    raise ValueError(f"clip {index}: empty audio (0 samples)")
  x = x.astype(np.float32, copy=False)
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"clip {index}: {bad} NaN/Inf samples of {x.size}")
  if x.size < cfg.min_samples():
    if not pad_short:
      raise ValueError(f"clip {index}: {x.size} samples is shorter than one code frame ({cfg.min_samples()} "
                       f"samples = {1000 * cfg.min_samples() / cfg.sample_rate:.0f} ms); pass pad_short=True "
                       f"to zero-pad it to one frame")
    x = np.pad(x, (0, cfg.min_samples() - x.size))
  if on_clipping not in ("pass", "clip", "error"):
    raise ValueError(f"on_clipping={on_clipping!r}: expected 'pass', 'clip' or 'error'")
  if on_clipping != "pass" and np.max(np.abs(x)) > 1.0:
    if on_clipping == "error":
      raise ValueError(f"clip {index}: samples outside [-1, 1] (peak {np.max(np.abs(x)):.3f})")
    x = np.clip(x, -1.0, 1.0)
  return x


class AudioTokenizer:
  """Host-side batching around jitted `HiggsAudioV2Tokenizer.encode/decode` with length buckets."""

  def __init__(self, params, cfg: HiggsTokenizerConfig, *, buckets_s: Sequence[float] = DEFAULT_BUCKETS_S,
               batch_size: int = 8, long_chunk_s: float = 30.0, long_context_s: float = 2.0,
               pad_short: bool = False, on_clipping: str = "pass"):
    self.cfg = cfg
    self.params = params
    self.model = HiggsAudioV2Tokenizer(cfg)
    hop = cfg.hop_length
    # bucket lengths are whole frames so that frame boundaries line up across buckets
    self.buckets = sorted({max(1, math.ceil(s * cfg.sample_rate / hop)) * hop for s in buckets_s})
    self.batch_size = int(batch_size)
    self.long_chunk_frames = max(1, int(round(long_chunk_s * cfg.frame_rate)))
    self.long_context_frames = max(0, int(round(long_context_s * cfg.frame_rate)))
    self.pad_short, self.on_clipping = pad_short, on_clipping
    m = self.model

    def enc(p, x, n):
      codes, aux = m.apply({"params": p}, x, n, method=m.encode)
      return codes, aux["frames"]

    def dec(p, c, f):
      audio, _ = m.apply({"params": p}, c, f, method=m.decode)
      return audio

    self._encode = jax.jit(enc)
    self._decode = jax.jit(dec)

  # ---------------------------------------------------------------------------------------------
  def compiled_shapes(self) -> dict[str, int]:
    """How many executables each jitted function holds (one per bucket used)."""
    return {"encode": self._encode._cache_size(), "decode": self._decode._cache_size()}

  def bucket_for(self, n: int) -> Optional[int]:
    i = bisect.bisect_left(self.buckets, n)
    return self.buckets[i] if i < len(self.buckets) else None

  def encode_batch(self, clips: Sequence[np.ndarray], bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to batch_size validated clips, each <= bucket samples -> (codes (B, K, T), frames (B,))."""
    b = len(clips)
    if not 0 < b <= self.batch_size:
      raise ValueError(f"encode_batch takes 1..{self.batch_size} clips, got {b}")
    x = np.zeros((self.batch_size, bucket), np.float32)
    n = np.full((self.batch_size,), self.cfg.min_samples(), np.int32)  # filler rows: one frame of zeros
    for i, c in enumerate(clips):
      x[i, :c.size] = c
      n[i] = c.size
    codes, frames = jax.device_get(self._encode(self.params, x, n))
    return codes[:b], frames[:b]

  def encode(self, clips: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Clips (1-D float, 24 kHz) -> list of (K, T_i) int32 codes, in input order."""
    clips = [check_clip(c, i, self.cfg, pad_short=self.pad_short, on_clipping=self.on_clipping)
             for i, c in enumerate(clips)]
    out: list[Optional[np.ndarray]] = [None] * len(clips)
    by_bucket: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
      bk = self.bucket_for(c.size)
      if bk is None:
        out[i] = self._encode_long_checked(c)
      else:
        by_bucket.setdefault(bk, []).append(i)
    for bk, idx in sorted(by_bucket.items()):
      for s in range(0, len(idx), self.batch_size):
        part = idx[s:s + self.batch_size]
        codes, frames = self.encode_batch([clips[i] for i in part], bk)
        for j, i in enumerate(part):
          out[i] = np.ascontiguousarray(codes[j, :, :frames[j]])
    return out  # type: ignore[return-value]

  def encode_long(self, audio: np.ndarray) -> np.ndarray:
    """Chunked encode of one long clip: windows of chunk + 2 x context frames, centre frames kept.

    Frames within `long_context_s` of a window edge see less context than a whole-clip encode would
    (HuBERT attends globally), so codes there can differ from encoding the clip in one piece.
    """
    return self._encode_long_checked(check_clip(audio, 0, self.cfg, pad_short=self.pad_short,
                                                on_clipping=self.on_clipping))

  def _encode_long_checked(self, x: np.ndarray) -> np.ndarray:
    cfg, hop = self.cfg, self.cfg.hop_length
    total = cfg.num_frames(x.size)
    chunk, ctx = self.long_chunk_frames, self.long_context_frames
    win = self.bucket_for((chunk + 2 * ctx) * hop)
    if win is None:
      raise ValueError(f"long_chunk_s + 2 * long_context_s = {(chunk + 2 * ctx) / cfg.frame_rate:.1f} s does not "
                       f"fit the largest bucket ({self.buckets[-1] / cfg.sample_rate:.1f} s)")
    jobs = []  # (window samples, frames to keep [k0, k1) within the window)
    for f0 in range(0, total, chunk):
      f1 = min(total, f0 + chunk)
      w0 = max(0, f0 - ctx)
      w1 = min(total, f1 + ctx)
      seg = x[w0 * hop:min(x.size, w1 * hop)]
      if seg.size < cfg.min_samples():
        seg = np.pad(seg, (0, cfg.min_samples() - seg.size))
      jobs.append((seg, f0 - w0, f1 - w0))
    pieces = []
    for s in range(0, len(jobs), self.batch_size):
      part = jobs[s:s + self.batch_size]
      codes, frames = self.encode_batch([j[0] for j in part], win)
      for (seg, k0, k1), c, fr in zip(part, codes, frames):
        pieces.append(c[:, k0:min(k1, int(fr))])
    return np.concatenate(pieces, axis=1)

  # ---------------------------------------------------------------------------------------------
  def decode(self, codes: Iterable[np.ndarray]) -> list[np.ndarray]:
    """List of (k, T_i) codes -> list of (T_i * hop,) float32 audio (buckets by frame count). k < K decodes
    with the first k residual levels (the RVQ's coarser prefix: Table 4's 1- and 4-codebook ablations)."""
    codes = [np.asarray(c) for c in codes]
    hop, k_all = self.cfg.hop_length, self.cfg.num_quantizers
    k_used = {c.shape[0] for c in codes if c.ndim == 2}
    for i, c in enumerate(codes):
      if c.ndim != 2 or not 1 <= c.shape[0] <= k_all or c.shape[1] == 0:
        raise ValueError(f"codes {i}: expected (k, T>0) codes with 1 <= k <= {k_all}, got shape {c.shape}")
      if len(k_used) > 1:
        raise ValueError(f"codes: one number of levels per call, got {sorted(k_used)}")
      if c.min() < 0 or c.max() >= self.cfg.codebook_size:
        raise ValueError(f"codes {i}: values must be in [0, {self.cfg.codebook_size}), got "
                         f"[{c.min()}, {c.max()}]")
    out: list[Optional[np.ndarray]] = [None] * len(codes)
    frame_buckets = [b // hop for b in self.buckets]
    by_bucket: dict[int, list[int]] = {}
    for i, c in enumerate(codes):
      j = bisect.bisect_left(frame_buckets, c.shape[1])
      fb = frame_buckets[j] if j < len(frame_buckets) else c.shape[1]  # longer than every bucket: own shape
      by_bucket.setdefault(fb, []).append(i)
    for fb, idx in sorted(by_bucket.items()):
      for s in range(0, len(idx), self.batch_size):
        part = idx[s:s + self.batch_size]
        c = np.zeros((self.batch_size, codes[idx[0]].shape[0], fb), np.int32)
        f = np.ones((self.batch_size,), np.int32)
        for j, i in enumerate(part):
          c[j, :, :codes[i].shape[1]] = codes[i]
          f[j] = codes[i].shape[1]
        audio = jax.device_get(self._decode(self.params, c, f))
        for j, i in enumerate(part):
          out[i] = np.ascontiguousarray(audio[j, :f[j] * hop])
    return out  # type: ignore[return-value]


class HiggsCodec:
  """The higgs-audio-v2 tokenizer (converted orbax checkpoint) behind the codec interface."""

  def __init__(self, path):
    from dreamfoley_jax.convert import higgs as convert_higgs

    cfg, params = convert_higgs.load_orbax(path)
    self.tok = AudioTokenizer(params, cfg)
    self.path = str(path)
    self.sample_rate = int(cfg.sample_rate)
    self.frame_rate = float(cfg.frame_rate)
    self.num_codebooks = int(cfg.num_quantizers)
    self.codebook_size = int(cfg.codebook_size)

  def encode(self, audio_N):
    """(N,) float at sample_rate -> (K, T) int32 codes."""
    return self.tok.encode([np.asarray(audio_N, np.float32).reshape(-1)])[0]

  def encode_many(self, audios):
    """Batched (bucketed) encode of many clips: list of (K, T_i)."""
    return self.tok.encode([np.asarray(a, np.float32).reshape(-1) for a in audios])

  def decode(self, codes_KxT):
    return np.asarray(self.tok.decode([np.asarray(codes_KxT)])[0], np.float32).reshape(-1)
