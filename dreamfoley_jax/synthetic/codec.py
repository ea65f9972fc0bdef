"""A weights-free audio codec with the Higgs-Audio-v2 tokenizer's interface: K residual codebooks, 25 Hz.

Representation: each 25 Hz code frame (hop 960 samples at 24 kHz) is described by `sub_frames` (4)
log-mel spectra on a 240-sample grid (Hann n_fft 960, 64 mel bands), flattened to one vector of
sub_frames * n_mels values. Residual vector quantisation: stage k holds `codebook_size` centroids fitted
by k-means on the residuals left by stages < k, so K = 8 stages refine the same vector coarse-to-fine.
Decoding sums the chosen centroids, undoes the log and the mel pooling (linear interpolation between
band centres) and recovers a waveform by fast Griffin-Lim (momentum 0.99) on the 240-sample grid,
whose 75% overlap keeps attacks within ~10 ms. Fitting takes seconds on 2 CPU cores (numpy BLAS).

Swappable for the higgs tokenizer: both expose sample_rate, frame_rate, hop_length, num_codebooks,
codebook_size, encode(audio (N,) or (B, N)) -> codes (K, T) or (B, K, T), decode(codes) -> audio.
Legend: N samples, T code frames, S sub-frames per code frame, M mel bands, D = S * M, K codebooks,
C codebook size, F STFT frames (= T * S), Q frequency bins.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Iterable, Sequence

import numpy as np
import scipy.fft


@dataclasses.dataclass(frozen=True)
class CodecConfig:
  """Shape of the codec and its fitting / decoding budget."""
  sample_rate: int = 24000
  hop_length: int = 960            # one code frame: 25 Hz at 24 kHz
  num_codebooks: int = 8
  codebook_size: int = 128
  sub_frames: int = 4              # spectra per code frame (STFT hop = hop_length / sub_frames)
  n_fft: int = 960
  n_mels: int = 64
  fmin: float = 0.0
  fmax: float = 12000.0
  # Band-average |X| below this is silence (one value, decoded as 0): about 10 dB above the synthetic
  # world's background noise, ~75 dB below its loudest impacts; the codebooks then spend nothing on
  # the noise's random fluctuations.
  log_floor: float = 0.02         # rms |X| per band
  kmeans_iters: int = 10
  max_fit_frames: int = 16384      # code frames sampled for k-means (more is slower, barely better)
  active_fraction: float = 0.5     # share of the fit sample drawn from frames with sound in them
  griffin_lim_iters: int = 32
  # The analysis sees the audio delayed by this many samples (decode advances it back): the last STFT
  # window of code frame t then ends before sample (t+1)*hop, so an onset at a frame boundary (every
  # synthetic impact) lands in its own code frame instead of leaking into the previous one. That keeps
  # the codes frame-aligned with the video (at least n_fft/2 + stft_hop/2 - stft_hop = 360 for the defaults; 480 = half a code frame).
  analysis_delay: int = 480
  seed: int = 0

  @property
  def stft_hop(self) -> int:
    return self.hop_length // self.sub_frames

  @property
  def dim(self) -> int:
    return self.sub_frames * self.n_mels


_CONTROLLER = []


def _one_blas_thread():
  """Context: single-threaded BLAS. The per-clip matmuls here are small; with OpenBLAS threads on a
  loaded 2-core machine they ran ~100x slower (0.2 s vs 1.4 ms to quantize a 6 s clip)."""
  import threadpoolctl
  if not _CONTROLLER:
    _CONTROLLER.append(threadpoolctl.ThreadpoolController())
  return _CONTROLLER[0].limit(limits=1, user_api="blas")


def _hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def _mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_matrices(cfg: CodecConfig) -> tuple[np.ndarray, np.ndarray]:
  """(analysis (M, Q), synthesis (Q, M)): band averages of |X|^2, and interpolation back to bins.

  Averaging power (not magnitude) keeps each band's energy when it is spread back over its bins, so
  the spectral centroid survives (a lone partial in a wide high band would otherwise lose energy).
  """
  q = cfg.n_fft // 2 + 1
  freqs = np.arange(q) * cfg.sample_rate / cfg.n_fft
  edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
  lo, ce, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  tri = np.maximum(0.0, np.minimum((freqs - lo) / (ce - lo), (hi - freqs) / (hi - ce)))  # (M, Q)
  # Narrow low bands may fall between bins: give each band at least its nearest bin.
  nearest = np.abs(freqs[None, :] - ce).argmin(axis=1)
  tri[np.arange(cfg.n_mels), nearest] = np.maximum(tri[np.arange(cfg.n_mels), nearest], 1.0)
  analysis = tri / tri.sum(axis=1, keepdims=True)
  cover = tri.sum(axis=0, keepdims=True)
  synthesis = np.where(cover > 0, tri / np.maximum(cover, 1e-12), 0.0).T  # (Q, M)
  return analysis.astype(np.float32), synthesis.astype(np.float32)


def _window(n_fft: int) -> np.ndarray:
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def stft(x_BxN: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
  """Complex64 STFT (B, F, Q), F = N / hop, frame f centred on sample f*hop + hop/2."""
  pad = n_fft // 2 - hop // 2
  x = np.pad(np.asarray(x_BxN, np.float32), ((0, 0), (pad, pad)))
  n_frames = x_BxN.shape[1] // hop
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=1)[:, ::hop][:, :n_frames]
  return scipy.fft.rfft(frames * _window(n_fft), axis=-1)


def istft(X_BxFxQ: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
  """Inverse of `stft` (least-squares overlap-add), float32 (B, F * hop)."""
  B, F, _ = X_BxFxQ.shape
  win = _window(n_fft)
  frames = scipy.fft.irfft(X_BxFxQ, n=n_fft, axis=-1).astype(np.float32) * win
  r = n_fft // hop
  if n_fft % hop:
    raise ValueError(f"n_fft {n_fft} must be a multiple of the STFT hop {hop}")
  out = np.zeros((B, F + r - 1, hop), np.float32)
  norm = np.zeros((F + r - 1, hop), np.float32)
  w2 = (win * win).reshape(r, hop)
  chunks = frames.reshape(B, F, r, hop)
  for j in range(r):
    out[:, j:j + F] += chunks[:, :, j]
    norm[j:j + F] += w2[j]
  y = (out / np.maximum(norm, 1e-8)).reshape(B, -1)
  pad = n_fft // 2 - hop // 2
  return y[:, pad:pad + F * hop]


def _nearest(x_NxD: np.ndarray, c_CxD: np.ndarray, c_sq: np.ndarray, chunk: int = 8192) -> np.ndarray:
  out = np.empty(len(x_NxD), np.int64)
  for a in range(0, len(x_NxD), chunk):
    xb = x_NxD[a:a + chunk]
    out[a:a + chunk] = np.argmin(c_sq[None, :] - 2.0 * (xb @ c_CxD.T), axis=1)
  return out


def kmeans(x_NxD: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
  """Lloyd k-means with k-means++ seeding on a subsample; empty clusters re-seeded at far points."""
  n = len(x_NxD)
  if n < k:
    raise ValueError(f"k-means needs at least {k} vectors to fit {k} centroids, got {n}")
  # k-means++ seeding on at most 4096 points (cheap, and seeds the rare onset frames).
  seed_pts = x_NxD[rng.choice(n, size=min(n, 4096), replace=False)]
  cent = np.empty((k, x_NxD.shape[1]), np.float32)
  cent[0] = seed_pts[rng.integers(len(seed_pts))]
  d2 = ((seed_pts - cent[0]) ** 2).sum(axis=1)
  for i in range(1, k):
    p = d2 / d2.sum() if d2.sum() > 0 else None
    cent[i] = seed_pts[rng.choice(len(seed_pts), p=p)]
    d2 = np.minimum(d2, ((seed_pts - cent[i]) ** 2).sum(axis=1))
  for _ in range(iters):
    c_sq = (cent * cent).sum(axis=1)
    assign = _nearest(x_NxD, cent, c_sq)
    counts = np.bincount(assign, minlength=k)
    empty = counts == 0
    # Cluster sums by sorting (np.add.at is ~20x slower here).
    order = np.argsort(assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[~empty]
    cent[~empty] = np.add.reduceat(x_NxD[order], starts, axis=0) / counts[~empty, None]
    if empty.any():  # re-seed at the points worst served by their centroid
      err = ((x_NxD - cent[assign]) ** 2).sum(axis=1)
      cent[empty] = x_NxD[np.argsort(err)[::-1][:int(empty.sum())]]
  return cent


class SyntheticCodec:
  """Residual-VQ codec over log-mel frames with a Griffin-Lim decoder (see module docstring)."""

  def __init__(self, cfg: CodecConfig, codebooks_KxCxD: np.ndarray):
    codebooks_KxCxD = np.asarray(codebooks_KxCxD, np.float32)
    want = (cfg.num_codebooks, cfg.codebook_size, cfg.dim)
    if codebooks_KxCxD.shape != want:
      raise ValueError(f"codebooks have shape {codebooks_KxCxD.shape}, config wants {want}")
    self.cfg = cfg
    self.codebooks = codebooks_KxCxD
    self._sq = (codebooks_KxCxD ** 2).sum(axis=-1)
    self._analysis, self._synthesis = mel_matrices(cfg)

  # -- the tokenizer interface ------------------------------------------------------------------
  sample_rate = property(lambda self: self.cfg.sample_rate)
  hop_length = property(lambda self: self.cfg.hop_length)
  frame_rate = property(lambda self: self.cfg.sample_rate / self.cfg.hop_length)
  num_codebooks = property(lambda self: self.cfg.num_codebooks)
  codebook_size = property(lambda self: self.cfg.codebook_size)
  bos_id = property(lambda self: self.cfg.codebook_size)       # model vocab = codebook_size + 2
  eos_id = property(lambda self: self.cfg.codebook_size + 1)
  vocab_size = property(lambda self: self.cfg.codebook_size + 2)

  def num_frames(self, num_samples: int) -> int:
    return num_code_frames(num_samples, self.cfg)

  def features(self, audio) -> np.ndarray:
    """Log-mel code-frame vectors: (N,) -> (T, D) or (B, N) -> (B, T, D), float32."""
    return log_mel_frames(audio, self.cfg, self._analysis)

  def quantize(self, feats_xTxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residual VQ: features (..., T, D) -> (codes (..., K, T) int32, reconstruction (..., T, D))."""
    f = np.asarray(feats_xTxD, np.float32)
    if f.shape[-1] != self.cfg.dim:
      raise ValueError(f"features must have shape (..., T, {self.cfg.dim}), got {f.shape}")
    lead = f.shape[:-1]
    r = f.reshape(-1, f.shape[-1]).copy()
    codes = np.empty((self.cfg.num_codebooks, r.shape[0]), np.int32)
    with _one_blas_thread():
      for k in range(self.cfg.num_codebooks):
        idx = _nearest(r, self.codebooks[k], self._sq[k])
        codes[k] = idx
        r -= self.codebooks[k][idx]
    recon = (f.reshape(-1, f.shape[-1]) - r).reshape(f.shape)
    codes = np.moveaxis(codes.reshape((self.cfg.num_codebooks,) + lead), 0, -2)
    return codes, recon

  def encode(self, audio) -> np.ndarray:
    """Audio (N,) -> codes (K, T) int32; (B, N) -> (B, K, T). T = ceil(N / hop_length)."""
    return self.quantize(self.features(audio))[0]

  def encode_features(self, feats) -> np.ndarray:
    """Precomputed `log_mel_frames` (..., T, D) -> codes (..., K, T) int32."""
    return self.quantize(feats)[0]

  def dequantize(self, codes) -> np.ndarray:
    """Codes (..., k, T) -> summed centroids (..., T, D) float32 of the first k <= K residual levels (an
    RVQ decodes any prefix of its levels: Table 4's 1- and 4-codebook models)."""
    c = np.asarray(codes)
    C = self.cfg.codebook_size
    if c.ndim < 2 or not 1 <= c.shape[-2] <= self.cfg.num_codebooks:
      raise ValueError(f"codes must have shape (..., k, T) with 1 <= k <= {self.cfg.num_codebooks}, got {c.shape}")
    K = c.shape[-2]
    if c.size and (c.min() < 0 or c.max() >= C):
      raise ValueError(f"codes must lie in [0, {C}), got range [{c.min()}, {c.max()}] "
                       f"(BOS/EOS ids {C}/{C + 1} must be stripped before decoding)")
    out = 0.0
    for k in range(K):
      out = out + self.codebooks[k][c[..., k, :]]
    return np.asarray(out, np.float32)

  def decode(self, codes, griffin_lim_iters: int | None = None) -> np.ndarray:
    """Codes (K, T) -> audio (T * hop_length,) float32; (B, K, T) -> (B, T * hop_length)."""
    c = np.asarray(codes)
    single = c.ndim == 2
    feats = self.dequantize(c[None] if single else c)
    audio = self.features_to_audio(feats, griffin_lim_iters)
    return audio[0] if single else audio

  def features_to_audio(self, feats_BxTxD: np.ndarray, griffin_lim_iters: int | None = None):
    """Invert log-mel code-frame vectors to audio (B, T * hop_length) by fast Griffin-Lim."""
    cfg = self.cfg
    B, T, _ = feats_BxTxD.shape
    mel = np.exp(2.0 * feats_BxTxD.reshape(B, T * cfg.sub_frames, cfg.n_mels))  # band power
    # At (or within 10% of) the floor = silence: quantised silent frames land a hair above it.
    mel = np.where(mel <= (1.1 * cfg.log_floor) ** 2, 0.0, mel).astype(np.float32)
    with _one_blas_thread():
      mag = np.sqrt(np.maximum(mel @ self._synthesis.T, 0.0))                        # (B, F, Q)
    y = griffin_lim(mag, cfg.n_fft, cfg.stft_hop,
                    cfg.griffin_lim_iters if griffin_lim_iters is None else griffin_lim_iters, seed=cfg.seed)
    d = cfg.analysis_delay
    if d:
      y = np.concatenate([y[:, d:], np.zeros((y.shape[0], d), y.dtype)], axis=1)
    return y

  # -- fitting and persistence ------------------------------------------------------------------
  @classmethod
  def fit(cls, audios: Iterable[np.ndarray], cfg: CodecConfig = CodecConfig(),
          verbose: bool = False) -> "SyntheticCodec":
    """Fit the K residual codebooks by k-means on the code-frame features of `audios` (1-D arrays)."""
    analysis = mel_matrices(cfg)[0]
    return cls.fit_features([log_mel_frames(a, cfg, analysis) for a in audios], cfg, verbose)

  @classmethod
  def fit_features(cls, feats: Sequence[np.ndarray], cfg: CodecConfig = CodecConfig(),
                   verbose: bool = False) -> "SyntheticCodec":
    """Fit from precomputed `log_mel_frames` (a list of (T, D)), so a pipeline computes them once."""
    t0 = time.time()
    rng = np.random.default_rng(cfg.seed)
    if not len(feats):
      raise ValueError("SyntheticCodec.fit needs at least one audio clip")
    x = np.concatenate([np.asarray(f, np.float32).reshape(-1, cfg.dim) for f in feats], axis=0)
    # Most frames are near-silent; draw `active_fraction` of the sample from frames with sound.
    floor = np.log(cfg.log_floor)
    loud = x.max(axis=1) > floor + 0.5 * (x.max() - floor)    # halfway to the loudest, in log
    n_fit = min(len(x), cfg.max_fit_frames)
    act = np.flatnonzero(loud)
    n_act = min(len(act), int(round(n_fit * cfg.active_fraction)))
    pick = rng.choice(act, size=n_act, replace=False) if n_act else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(x)), pick)
    pick = np.concatenate([pick, rng.choice(rest, size=min(len(rest), n_fit - n_act), replace=False)])
    r = x[pick].copy()
    if verbose:
      print(f"[codec] fitting {cfg.num_codebooks}x{cfg.codebook_size} codebooks on {len(r)} of "
            f"{len(x)} frames ({n_act} loud)", flush=True)
    books = np.empty((cfg.num_codebooks, cfg.codebook_size, cfg.dim), np.float32)
    for k in range(cfg.num_codebooks):
      with _one_blas_thread():  # also faster for k-means on a loaded machine (1.7 s vs 2.3 s a stage)
        books[k] = kmeans(r, cfg.codebook_size, cfg.kmeans_iters, rng)
        idx = _nearest(r, books[k], (books[k] ** 2).sum(axis=1))
      r -= books[k][idx]
      if verbose:
        print(f"[codec] stage {k + 1}/{cfg.num_codebooks}: residual rms {np.sqrt((r ** 2).mean()):.4f} "
              f"({time.time() - t0:.1f}s)", flush=True)
    return cls(cfg, books)

  def save(self, path: str) -> str:
    """Write config + codebooks to one .npz atomically (temp file + rename)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
      with open(tmp, "wb") as f:
        np.savez(f, codebooks=self.codebooks,
                 config=np.asarray(json.dumps(dataclasses.asdict(self.cfg))),
                 format=np.asarray("dreamfoley_jax.synthetic_codec/1"))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return path

  @classmethod
  def load(cls, path: str) -> "SyntheticCodec":
    with np.load(path, allow_pickle=False) as z:
      if "codebooks" not in z or "config" not in z:
        raise ValueError(f"{path}: not a synthetic codec file (keys {sorted(z.files)}; "
                         "want 'codebooks' and 'config')")
      raw = json.loads(str(z["config"]))
      known = {f.name for f in dataclasses.fields(CodecConfig)}
      unknown = sorted(set(raw) - known)
      if unknown:
        raise ValueError(f"{path}: unknown codec config fields {unknown}")
      return cls(CodecConfig(**raw), z["codebooks"])


def num_code_frames(num_samples: int, cfg: CodecConfig = CodecConfig()) -> int:
  """T = ceil(N / hop_length): a partial last frame is zero-padded."""
  return -(-int(num_samples) // cfg.hop_length)


def log_mel_frames(audio, cfg: CodecConfig = CodecConfig(), analysis_MxQ: np.ndarray | None = None):
  """The codec's features: (N,) -> (T, D) or (B, N) -> (B, T, D) float32 (needs no codebooks)."""
  x, single = _as_batch(audio)
  if analysis_MxQ is None:
    analysis_MxQ = mel_matrices(cfg)[0]
  T = num_code_frames(x.shape[1], cfg)
  x = np.pad(x, ((0, 0), (0, T * cfg.hop_length - x.shape[1])))
  if cfg.analysis_delay:
    x = np.pad(x, ((0, 0), (cfg.analysis_delay, 0)))[:, :T * cfg.hop_length]
  X = stft(x, cfg.n_fft, cfg.stft_hop)                                      # (B, F, Q)
  power = X.real ** 2 + X.imag ** 2
  with _one_blas_thread():
    mel = power @ analysis_MxQ.T                                            # (B, F, M)
  # log of the band's rms magnitude: 0.5 * log(mean power).
  feats = 0.5 * np.log(np.maximum(mel, cfg.log_floor ** 2)).reshape(x.shape[0], T, cfg.dim)
  return feats[0] if single else feats


def _as_batch(audio) -> tuple[np.ndarray, bool]:
  x = np.asarray(audio, np.float32)
  if x.ndim == 1:
    return x[None], True
  if x.ndim == 2:
    return x, False
  raise ValueError(f"audio must be (N,) or (B, N), got shape {x.shape}")


def griffin_lim(mag_BxFxQ: np.ndarray, n_fft: int, hop: int, iters: int, momentum: float = 0.99,
                seed: int = 0, init: str = "advance") -> np.ndarray:
  """Fast Griffin-Lim (Perraudin et al. 2013): audio (B, F * hop) whose |STFT| approximates mag."""
  mag = mag_BxFxQ.astype(np.float32)
  B, F, Q = mag.shape
  if init == "advance":
    # Phase of a stationary sinusoid at each bin centre: steady partials start out coherent, which
    # avoids the beating (and false onsets) that random initial phases leave in long rings.
    ph = 2 * np.pi * hop / n_fft * np.arange(F)[:, None] * np.arange(Q)[None, :]
    angles = np.broadcast_to(np.exp(1j * ph), mag.shape).astype(np.complex64)
  else:
    rng = np.random.default_rng(seed)
    angles = np.exp(2j * np.pi * rng.random(mag.shape)).astype(np.complex64)
  prev = np.zeros_like(angles)
  for _ in range(iters):
    y = istft(mag * angles, n_fft, hop)
    rebuilt = stft(y, n_fft, hop).astype(np.complex64)
    accel = rebuilt + momentum * (rebuilt - prev)
    prev = rebuilt
    angles = accel / np.maximum(np.abs(accel), 1e-8)
  return istft(mag * angles, n_fft, hop).astype(np.float32)
