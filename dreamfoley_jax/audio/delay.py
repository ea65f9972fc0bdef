"""Delay pattern for K residual codebooks (MusicGen / Higgs-Audio-v2 style): pure index math.

Layout (matches transformers' HiggsAudioV2Processor, checked against tests/fixtures/delay_pattern.npz):
  wrapped[k]  = [BOS] + codes[k] + [EOS]                      (K, T+2)
  delayed[k,j] = BOS            if j < k
               = wrapped[k,j-k] if 0 <= j-k < T+2
               = EOS            otherwise                     (K, T+2+K-1)
The staircase cells (j < k, and j-k >= T+2) hold no information; `vacant_mask` marks them so the model
can fill them with its learnable padding embeddings (DreamFoley eq. 2) instead of BOS/EOS embeddings.

Every function takes an `xp` module (numpy or jax.numpy) and works on leading batch dims.
"""
from __future__ import annotations

import numpy as np

BOS = 1024
EOS = 1025


def delayed_length(num_frames: int, num_codebooks: int, wrap: bool = True) -> int:
  return num_frames + (2 if wrap else 0) + num_codebooks - 1


def num_frames_from_delayed(length: int, num_codebooks: int, wrap: bool = True) -> int:
  return length - (2 if wrap else 0) - (num_codebooks - 1)


def wrap_codes(codes_xKxT, bos: int = BOS, eos: int = EOS, xp=np):
  lead = codes_xKxT.shape[:-1]
  b = xp.full(lead + (1,), bos, dtype=codes_xKxT.dtype)
  e = xp.full(lead + (1,), eos, dtype=codes_xKxT.dtype)
  return xp.concatenate([b, codes_xKxT, e], axis=-1)


def _gather_index(K: int, T: int, L: int, xp):
  j = xp.arange(L)[None, :]
  k = xp.arange(K)[:, None]
  src = j - k
  return src, (src >= 0) & (src < T), src < 0


def build_delay_pattern(codes_xKxT, bos: int = BOS, eos: int = EOS, wrap: bool = True, xp=np):
  """codes (..., K, T) -> delayed (..., K, T(+2)+K-1)."""
  x = wrap_codes(codes_xKxT, bos, eos, xp) if wrap else codes_xKxT
  K, T = x.shape[-2], x.shape[-1]
  L = T + K - 1
  src, inside, before = _gather_index(K, T, L, xp)
  g = xp.take_along_axis(x, xp.broadcast_to(xp.clip(src, 0, T - 1), x.shape[:-1] + (L,)), axis=-1)
  fill = xp.where(before, bos, eos).astype(x.dtype)
  return xp.where(inside, g, fill)


def vacant_mask(K: int, T: int, wrap: bool = True, xp=np):
  """(K, L) True where the delayed pattern holds a staircase filler, not a wrapped code/BOS/EOS."""
  Tw = T + 2 if wrap else T
  _, inside, _ = _gather_index(K, Tw, Tw + K - 1, xp)
  return ~inside


def revert_delay_pattern(delayed_xKxL, xp=np):
  """delayed (..., K, L) -> (..., K, L-K+1): row k = delayed[k, k:k+L-K+1] (the wrapped codes if wrap)."""
  K, L = delayed_xKxL.shape[-2], delayed_xKxL.shape[-1]
  n = L - K + 1
  idx = xp.arange(n)[None, :] + xp.arange(K)[:, None]
  return xp.take_along_axis(delayed_xKxL, xp.broadcast_to(idx, delayed_xKxL.shape[:-1] + (n,)), axis=-1)


def codes_from_delayed(delayed_xKxL, num_frames: int | None = None, wrap: bool = True, xp=np,
                       codebook_size: int = 1024):
  """Reverts and strips BOS/EOS: (..., K, T) codes, clipped to [0, codebook_size) like Higgs batch_decode."""
  r = revert_delay_pattern(delayed_xKxL, xp)
  if wrap:
    r = r[..., 1:-1]
  if num_frames is not None:
    r = r[..., :num_frames]
  return xp.clip(r, 0, codebook_size - 1)


def batch_delayed(codes_list, bos: int = BOS, eos: int = EOS, pad_to: int | None = None):
  """List of (K, T_i) -> (B, L, K) time-major ids right-padded with EOS, and the (B, L) valid mask."""
  delayed = [build_delay_pattern(np.asarray(c), bos, eos) for c in codes_list]
  L = max(d.shape[-1] for d in delayed) if pad_to is None else pad_to
  K = delayed[0].shape[0]
  ids = np.full((len(delayed), L, K), eos, dtype=np.asarray(codes_list[0]).dtype)
  mask = np.zeros((len(delayed), L), bool)
  for i, d in enumerate(delayed):
    if d.shape[-1] > L:
      raise ValueError(f"item {i}: delayed length {d.shape[-1]} exceeds pad_to={L}")
    ids[i, :d.shape[-1]] = d.T
    mask[i, :d.shape[-1]] = True
  return ids, mask
