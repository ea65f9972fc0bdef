"""Band-limited (windowed-sinc, Hann) resampling that matches ``torchaudio.functional.resample``.

The polyphase kernel is built in float32 with the same operation order as torchaudio's
``sinc_interp_hann`` path (default ``lowpass_filter_width=6``, ``rolloff=0.99``), so the JAX and numpy
versions agree with torchaudio to float32 rounding. Two entry points:
- ``resample_np``: host-side numpy (audio loading, any rate pair);
- ``resample_jnp``: traced inside jitted models (static lengths).
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
                rolloff: float = 0.99) -> tuple[np.ndarray, int]:
  """(new, kernel_len) float32 polyphase kernel and the left pad `width`, for reduced rates."""
  if orig_freq <= 0 or new_freq <= 0:
    raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
  g = math.gcd(int(orig_freq), int(new_freq))
  orig, new = int(orig_freq) // g, int(new_freq) // g
  base = min(orig, new) * rolloff
  width = math.ceil(lowpass_filter_width * orig / base)
  f32 = np.float32
  idx = (np.arange(-width, width + orig, dtype=f32) / f32(orig))[None, :]
  t = (np.arange(0, -new, -1, dtype=f32) / f32(new))[:, None] + idx
  t = t * f32(base)
  t = np.clip(t, -lowpass_filter_width, lowpass_filter_width).astype(f32)
  window = np.cos(t * f32(math.pi) / f32(lowpass_filter_width) / f32(2)).astype(f32) ** 2
  t = t * f32(math.pi)
  scale = f32(base / orig)
  with np.errstate(invalid="ignore", divide="ignore"):
    k = np.where(t == 0, f32(1.0), np.sin(t) / t).astype(f32)
  k = k * (window * scale)
  return np.ascontiguousarray(k.astype(f32)), width


def _reduced(orig_freq: int, new_freq: int) -> tuple[int, int]:
  g = math.gcd(int(orig_freq), int(new_freq))
  return int(orig_freq) // g, int(new_freq) // g


def output_length(n: int, orig_freq: int, new_freq: int) -> int:
  """Number of samples torchaudio returns for `n` input samples."""
  orig, new = _reduced(orig_freq, new_freq)
  return int(math.ceil(new * n / orig))


def resample_np(x: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
  """Resamples the last axis of float32 `x` from orig_freq to new_freq (numpy, any leading shape)."""
  x = np.asarray(x, np.float32)
  if orig_freq == new_freq:
    return x.copy()
  orig, new = _reduced(orig_freq, new_freq)
  kernel, width = sinc_kernel(orig_freq, new_freq)
  lead, n = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, n)
  padded = np.pad(flat, ((0, 0), (width, width + orig)))
  klen = kernel.shape[1]
  n_frames = (padded.shape[1] - klen) // orig + 1
  # frames[b, i, :] = padded[b, i*orig : i*orig + klen]
  frames = np.lib.stride_tricks.sliding_window_view(padded, klen, axis=1)[:, ::orig][:, :n_frames]
  out = np.empty((flat.shape[0], n_frames, new), np.float32)
  step = max(1, (1 << 22) // klen)  # blocks of frames: bounded memory for hour-long files
  for s in range(0, n_frames, step):
    out[:, s:s + step] = np.einsum("bik,nk->bin", frames[:, s:s + step], kernel)
  out = out.reshape(flat.shape[0], -1)
  out = out[:, :output_length(n, orig_freq, new_freq)]
  return np.ascontiguousarray(out.reshape(*lead, -1).astype(np.float32))


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
