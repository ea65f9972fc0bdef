"""Band-limited (windowed-sinc, Hann) resampling that matches ``torchaudio.functional.resample``.

The polyphase kernel is built with the same operation order as torchaudio's ``sinc_interp_hann`` path
(default ``lowpass_filter_width=6``, ``rolloff=0.99``), in float32 by default, so the JAX and numpy
versions agree with torchaudio to float32 rounding (float64 on request: the evaluation front ends,
eval/frontends.py, resample in float64). Two entry points:
- ``resample_np``: host-side numpy (audio loading, any rate pair; ``dtype`` float32 or float64);
- ``resample_jnp``: traced inside jitted models (static lengths, float32).
Output length is ``ceil(n * new / orig)`` (torchaudio's trimming).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def sinc_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
                rolloff: float = 0.99, dtype: str = "float32") -> tuple[np.ndarray, int]:
  """(new, kernel_len) polyphase kernel in `dtype` and the left pad `width`, for reduced rates."""
  if orig_freq <= 0 or new_freq <= 0:
    raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
  g = math.gcd(int(orig_freq), int(new_freq))
  orig, new = int(orig_freq) // g, int(new_freq) // g
  base = min(orig, new) * rolloff
  width = math.ceil(lowpass_filter_width * orig / base)
  f = np.dtype(dtype).type
  idx = (np.arange(-width, width + orig, dtype=f) / f(orig))[None, :]
  t = (np.arange(0, -new, -1, dtype=f) / f(new))[:, None] + idx
  t = t * f(base)
  t = np.clip(t, -lowpass_filter_width, lowpass_filter_width).astype(f)
  window = np.cos(t * f(math.pi) / f(lowpass_filter_width) / f(2)).astype(f) ** 2
  t = t * f(math.pi)
  scale = f(base / orig)
  with np.errstate(invalid="ignore", divide="ignore"):
    k = np.where(t == 0, f(1.0), np.sin(t) / t).astype(f)
  k = k * (window * scale)
  return np.ascontiguousarray(k.astype(f)), width


def _reduced(orig_freq: int, new_freq: int) -> tuple[int, int]:
  g = math.gcd(int(orig_freq), int(new_freq))
  return int(orig_freq) // g, int(new_freq) // g


def output_length(n: int, orig_freq: int, new_freq: int) -> int:
  """Number of samples torchaudio returns for `n` input samples."""
  orig, new = _reduced(orig_freq, new_freq)
  return int(math.ceil(new * n / orig))


def resample_np(x: np.ndarray, orig_freq: int, new_freq: int, *, dtype=np.float32, lowpass_filter_width: int = 6,
                rolloff: float = 0.99) -> np.ndarray:
  """Resamples the last axis of `x` from orig_freq to new_freq (numpy, any leading shape), computed and
  returned in `dtype` (float32: torchaudio's float32 numbers; float64: the evaluation front ends)."""
  dtype = np.dtype(dtype)
  x = np.asarray(x, dtype)
  if orig_freq == new_freq:
    return x.copy()
  orig, new = _reduced(orig_freq, new_freq)
  kernel, width = sinc_kernel(orig_freq, new_freq, lowpass_filter_width, rolloff, dtype.name)
  lead, n = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, n)
  padded = np.pad(flat, ((0, 0), (width, width + orig)))
  klen = kernel.shape[1]
  n_frames = (padded.shape[1] - klen) // orig + 1
  # frames[b, i, :] = padded[b, i*orig : i*orig + klen]
  frames = np.lib.stride_tricks.sliding_window_view(padded, klen, axis=1)[:, ::orig][:, :n_frames]
  out = np.empty((flat.shape[0], n_frames, new), dtype)
  step = max(1, (1 << 22) // klen)  # blocks of frames: bounded memory for hour-long files
  for s in range(0, n_frames, step):
    out[:, s:s + step] = np.einsum("bik,nk->bin", frames[:, s:s + step], kernel)
  out = out.reshape(flat.shape[0], -1)
  out = out[:, :output_length(n, orig_freq, new_freq)]
  return np.ascontiguousarray(out.reshape(*lead, -1).astype(dtype))


def resample_jnp(x_BxN: jax.Array, orig_freq: int, new_freq: int) -> jax.Array:
  """Resamples (B, N) float32 audio inside jit; N is static."""
  if orig_freq == new_freq:
    return x_BxN
  orig, new = _reduced(orig_freq, new_freq)
  kernel, width = sinc_kernel(orig_freq, new_freq)
  b, n = x_BxN.shape
  padded = jnp.pad(x_BxN, ((0, 0), (width, width + orig)))
  k_KxIxO = jnp.asarray(kernel.T[:, None, :])  # (klen, 1, new)
  y = jax.lax.conv_general_dilated(padded[:, :, None], k_KxIxO, (orig,), "VALID",
                                   dimension_numbers=("NWC", "WIO", "NWC"),
                                   precision=jax.lax.Precision.HIGHEST)
  return y.reshape(b, -1)[:, :output_length(n, orig_freq, new_freq)]
