"""The paper's metric math (FD, KL, IS, IB/CLAP cosine, DeSync) as defined by av-benchmark.

Everything here is float64 numpy on embeddings/logits that the embedders produced; nothing loads a
model. The definitions follow hkchengrex/av-benchmark (MMAudio's evaluation code, which also scores
Kling-Eval) line by line; each function's docstring names the reference behaviour it reproduces and
where this module deliberately differs (documented in docs/evaluation.md).

Shapes: N clips, D embedding width, C classes (527 AudioSet logits), S segments, P patches.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------


def embedding_statistics(x_NxD) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased (N-1) covariance, as `np.cov(rowvar=False)`; needs N >= 2."""
  x = np.asarray(x_NxD, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
  if x.shape[0] < 2:
    raise ValueError(f"FD needs at least 2 embeddings to estimate a covariance, got {x.shape[0]}")
  mu = x.mean(axis=0)
  xc = x - mu
  return mu, (xc.T @ xc) / (x.shape[0] - 1)


def _sqrtm(a):
  """scipy.linalg.sqrtm without `disp` (removed in scipy 1.18; the reference passes disp=False)."""
  from scipy import linalg

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # older scipy warns "matrix is singular" for rank-deficient input
    out = linalg.sqrtm(a)
  return out[0] if isinstance(out, tuple) else out


def trace_sqrt_product(sigma1, sigma2, *, method: str = "sqrtm", eps: float = 1e-6) -> float:
  """tr sqrt(S1 S2).

  method="sqrtm" reproduces av-benchmark (from pytorch-fid): scipy sqrtm of the product; when it is
  not finite, retry with eps*I added to both covariances; a complex result whose diagonal has an
  imaginary part above 1e-3 raises ValueError (the reference then reports FD = -1; we raise).
  method="eig" uses tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD problem that
  stays exact when N < D (rank-deficient covariances); both agree to ~1e-6 relative on full-rank input.
  """
  s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  if s1.shape != s2.shape or s1.shape[0] != s1.shape[1]:
    raise ValueError(f"covariances must be square and equal-shaped, got {s1.shape} and {s2.shape}")
  if method == "eig":
    w1, v1 = np.linalg.eigh(s1)
    r1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())
  if method != "sqrtm":
    raise ValueError(f"method must be 'sqrtm' or 'eig', got {method!r}")
  covmean = _sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    warnings.warn(f"FD: singular covariance product; adding {eps} to the diagonals (as av-benchmark)")
    off = np.eye(s1.shape[0]) * eps
    covmean = _sqrtm((s1 + off) @ (s2 + off))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FD: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
    covmean = covmean.real
  return float(np.trace(covmean))


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2, *, method: str = "sqrtm") -> float:
  """||mu1-mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)."""
  mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"means have different shapes {mu1.shape} and {mu2.shape}")
  d = mu1 - mu2
  s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
  tr = trace_sqrt_product(s1, s2, method=method)
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2.0 * tr)


def frechet_distance(gen_NxD, ref_MxD, *, method: str = "sqrtm") -> float:
  """FD between two embedding sets (av-benchmark `compute_fd(generated, ground_truth)`)."""
  g = np.asarray(gen_NxD, dtype=np.float64)
  r = np.asarray(ref_MxD, dtype=np.float64)
  if g.ndim != 2 or r.ndim != 2 or g.shape[1] != r.shape[1]:
    raise ValueError(f"FD needs (N, D) and (M, D) embeddings, got {g.shape} and {r.shape}")
  return frechet_distance_from_stats(*embedding_statistics(g), *embedding_statistics(r), method=method)


def frechet_distance_jnp(gen_NxD, ref_MxD):
  """FD in jnp (eigh form, float32 unless x64 is on); for 2048-d embeddings on an accelerator."""
  import jax.numpy as jnp

  def stats(x):
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)

  mu1, s1 = stats(jnp.asarray(gen_NxD))
  mu2, s2 = stats(jnp.asarray(ref_MxD))
  w1, v1 = jnp.linalg.eigh(s1)
  r1 = (v1 * jnp.sqrt(jnp.clip(w1, 0.0))) @ v1.T
  m = r1 @ s2 @ r1
  w = jnp.linalg.eigvalsh((m + m.T) / 2)
  d = mu1 - mu2
  return d @ d + jnp.trace(s1) + jnp.trace(s2) - 2.0 * jnp.sqrt(jnp.clip(w, 0.0)).sum()


# --------------------------------------------------------------------------------------------------
# KL and IS over AudioSet logits
# --------------------------------------------------------------------------------------------------


def log_softmax(x, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def kl_softmax(gt_logits_NxC, gen_logits_NxC) -> float:
  """Mean over paired clips of KL(softmax(gt) || softmax(gen)) (av-benchmark 'KL-*-softmax').

  The reference calls F.kl_div(log_softmax(gen), log_softmax(gt), reduction="sum", log_target=True)
  and divides by N; rows must be paired (row i of both is the same clip).
  """
  gt = np.asarray(gt_logits_NxC, dtype=np.float64)
  gen = np.asarray(gen_logits_NxC, dtype=np.float64)
  if gt.shape != gen.shape or gt.ndim != 2:
    raise ValueError(f"KL needs paired (N, C) logits, got {gt.shape} and {gen.shape}")
  lp, lq = log_softmax(gt), log_softmax(gen)
  return float((np.exp(lp) * (lp - lq)).sum() / gt.shape[0])


def kl_sigmoid(gt_logits_NxC, gen_logits_NxC) -> float:
  """av-benchmark's 'kl_sigmoid' (per-class Bernoulli log-probs); reported by it, not by the paper."""
  gt = np.asarray(gt_logits_NxC, dtype=np.float64)
  gen = np.asarray(gen_logits_NxC, dtype=np.float64)
  lp, lq = -np.logaddexp(0, -gt), -np.logaddexp(0, -gen)
  return float((np.exp(lp) * (lp - lq)).sum() / gt.shape[0])


def inception_score(logits_NxC, *, splits: int = 10, shuffle: bool = True, seed: int = 2020
                    ) -> tuple[float, float]:
  """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` chunks (av-benchmark compute_isc).

  Rows are permuted with np.random.RandomState(seed).permutation(N); chunk i is rows
  [i*N//splits, (i+1)*N//splits); std is numpy's population std (ddof=0).
  """
  x = np.asarray(logits_NxC, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"IS needs (N, C) logits, got {x.shape}")
  n = x.shape[0]
  if n < splits:
    raise ValueError(f"IS with {splits} splits needs at least {splits} clips, got {n}")
  if shuffle:
    x = x[np.random.RandomState(seed).permutation(n)]
  logp = log_softmax(x)
  p = np.exp(logp)
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    pc, lpc = p[lo:hi], logp[lo:hi]
    logq = np.log(pc.mean(axis=0, keepdims=True))
    scores.append(math.exp(float((pc * (lpc - logq)).sum(axis=1).mean())))
  return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------------------------------
# Cosine scores (IB-score, CLAP)
# --------------------------------------------------------------------------------------------------


def mean_cosine(a_NxD, b_NxD, *, eps: float = 1e-8) -> float:
  """Mean over rows of cos(a_i, b_i) (torch.cosine_similarity, eps 1e-8); NOT multiplied by 100."""
  a = np.asarray(a_NxD, dtype=np.float64)
  b = np.asarray(b_NxD, dtype=np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"cosine needs paired (N, D) embeddings, got {a.shape} and {b.shape}")
  na = np.maximum(np.linalg.norm(a, axis=1), eps)
  nb = np.maximum(np.linalg.norm(b, axis=1), eps)
  return float(((a * b).sum(axis=1) / (na * nb)).mean())


# --------------------------------------------------------------------------------------------------
# DeSync (Synchformer)
# --------------------------------------------------------------------------------------------------

SYNC_SR = 16000
SYNC_FPS = 25.0
SYNC_AUDIO_SEGMENT = 10240  # samples = 0.64 s = 16 frames at 25 fps
SYNC_AUDIO_STEP = 5120  # 0.32 s = 8 frames
SYNC_VIDEO_SEGMENT = 16
SYNC_VIDEO_STEP = 8
DESYNC_WINDOW_SEGMENTS = 14  # 0.64 + 13 * 0.32 = 4.8 s: the window Synchformer was trained on
DESYNC_GRID_S = tuple(float(v) for v in np.linspace(-2.0, 2.0, 21))  # 21 offset classes, 0.2 s apart


def num_segments(length: int, segment: int, step: int) -> int:
  """Segments of `segment` starting every `step` that fit in `length` (no padding)."""
  return 0 if length < segment else (length - segment) // step + 1


def sync_audio_segments(duration_s: float) -> int:
  return num_segments(int(round(SYNC_SR * duration_s)), SYNC_AUDIO_SEGMENT, SYNC_AUDIO_STEP)


def sync_video_segments(duration_s: float) -> int:
  return num_segments(int(SYNC_FPS * duration_s), SYNC_VIDEO_SEGMENT, SYNC_VIDEO_STEP)


def desync_windows(num_segs: int, window: int = DESYNC_WINDOW_SEGMENTS) -> list[slice]:
  """The segment ranges scored: the first and the last `window` segments ([:14] and [-14:])."""
  if num_segs < window:
    raise ValueError(f"DeSync needs at least {window} Synchformer segments (4.8 s), got {num_segs}")
  return [slice(0, window), slice(num_segs - window, num_segs)]


def desync_window_pairs(video_SxTxD, audio_SxTxD):
  """[(video[:14], audio[:14]), (video[-14:], audio[-14:])]; each stream needs >= 14 segments."""
  n = DESYNC_WINDOW_SEGMENTS
  desync_windows(len(video_SxTxD))
  desync_windows(len(audio_SxTxD))
  return [(video_SxTxD[:n], audio_SxTxD[:n]), (video_SxTxD[-n:], audio_SxTxD[-n:])]


def desync_from_logits(logits_NxWxK, grid: Sequence[float] = DESYNC_GRID_S) -> float:
  """Mean |offset| in seconds of the argmax class over all clips and windows (av-benchmark DeSync)."""
  lg = np.asarray(logits_NxWxK)
  g = np.asarray(grid, dtype=np.float64)
  if lg.shape[-1] != g.shape[0]:
    raise ValueError(f"sync logits have {lg.shape[-1]} classes, the grid has {g.shape[0]}")
  return float(np.abs(g[np.argmax(lg, axis=-1)]).mean())


# --------------------------------------------------------------------------------------------------
# The paper's table
# --------------------------------------------------------------------------------------------------

# (column header, JSON key, lower is better) in the paper's column order (Tables 1-2).
PAPER_COLUMNS = (
    ("FD_PaSST", "FD-PASST", True),
    ("FD_PANNs", "FD-PANN", True),
    ("FD_VGG", "FD-VGG", True),
    ("KL_PANNs", "KL-PANNS-softmax", True),   # not in the paper's tables: the two KLs it averages, beside it
    ("KL_PaSST", "KL-PASST-softmax", True),
    ("KL", "KL", True),
    ("IS", "ISC-PANNS-mean", False),
    ("IB-score", "IB-Score", False),
    ("DeSync", "DeSync", True),
    ("CLAP", "LAION-CLAP-Score", False),
)


def combined_kl(metrics: dict) -> float | None:
  """The paper's KL: the mean of KL-PANNS-softmax and KL-PASST-softmax (None if either is missing)."""
  a, b = metrics.get("KL-PANNS-softmax"), metrics.get("KL-PASST-softmax")
  return None if a is None or b is None else (a + b) / 2.0


def markdown_table(rows: dict[str, dict], *, ib_scale: float = 100.0) -> str:
  """One row per model name; '-' where a metric was not computed. IB-score multiplied by ib_scale (x100 as
  the paper prints it; the header says so when it is another scale)."""
  name = lambda h: h if h != "IB-score" or ib_scale == 100 else f"IB-score (x{ib_scale:g})"  # noqa: E731
  head = "| Method | " + " | ".join(f"{name(h)} {'↓' if low else '↑'}" for h, _, low in PAPER_COLUMNS) + " |"
  sep = "|---|" + "---|" * len(PAPER_COLUMNS)
  lines = [head, sep]
  for name, m in rows.items():
    cells = []
    for _, key, _ in PAPER_COLUMNS:
      v = m.get(key)
      if v is None:
        cells.append("-")
      else:
        v = v * ib_scale if key == "IB-Score" else v
        cells.append(f"{v:.3f}" if key == "DeSync" else f"{v:.2f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
