"""Delay pattern for K residual codebooks (MusicGen / Higgs-Audio-v2 style): pure index math.

Legend: K codebooks, T frames, La delayed columns (T + 2 + K - 1 when wrapped), B clips, C prefix frames.

Layout (matches transformers' HiggsAudioV2Processor, checked against tests/fixtures/delay_pattern.npz):
  wrapped[k]  = [BOS] + codes[k] + [EOS]                      (K, T+2)
  delayed[k,j] = BOS            if j < k
               = wrapped[k,j-k] if 0 <= j-k < T+2
               = EOS            otherwise                     (K, T+2+K-1)
The staircase cells (j < k, and j-k >= T+2) hold no information; `vacant_mask` marks them so the model
can fill them with its learnable padding embeddings (DreamFoley eq. 2) instead of BOS/EOS embeddings.

`DelayPattern` owns the index logic (build, revert, the sampler's per-clip layout); the module functions
are its one-call forms. Every method takes an `xp` module (numpy or jax.numpy) and works on leading batch
dims.
"""
from __future__ import annotations

import dataclasses

import numpy as np

BOS = 1024
EOS = 1025


@dataclasses.dataclass(frozen=True)
class DelayPattern:
  """Codebook k of frame t sits at delayed column t + k (+1 for the BOS when wrapped)."""
  num_codebooks: int          # K
  bos: int = BOS
  eos: int = EOS
  wrap: bool = True           # [BOS] + codes + [EOS] per codebook before delaying

  def length(self, num_frames: int) -> int:
    """La: delayed columns of `num_frames` frames (BOS + frames + EOS + K-1 staircase when wrapped)."""
    return num_frames + (2 if self.wrap else 0) + self.num_codebooks - 1

  def num_frames(self, length: int) -> int:
    """T of a delayed sequence of `length` columns."""
    return length - (2 if self.wrap else 0) - (self.num_codebooks - 1)

  def wrapped(self, codes_xKxT, xp=np):
    """(..., K, T) -> (..., K, T+2): BOS and EOS around every codebook's codes."""
    lead = codes_xKxT.shape[:-1]
    b = xp.full(lead + (1,), self.bos, dtype=codes_xKxT.dtype)
    e = xp.full(lead + (1,), self.eos, dtype=codes_xKxT.dtype)
    return xp.concatenate([b, codes_xKxT, e], axis=-1)

  @staticmethod
  def _gather_index(K: int, T: int, La: int, xp):
    j = xp.arange(La)[None, :]
    k = xp.arange(K)[:, None]
    src = j - k
    return src, (src >= 0) & (src < T), src < 0

  def build(self, codes_xKxT, xp=np):
    """codes (..., K, T) -> delayed (..., K, La)."""
    x = self.wrapped(codes_xKxT, xp) if self.wrap else codes_xKxT
    K, T = x.shape[-2], x.shape[-1]
    La = T + K - 1
    src, inside, before = self._gather_index(K, T, La, xp)
    g = xp.take_along_axis(x, xp.broadcast_to(xp.clip(src, 0, T - 1), x.shape[:-1] + (La,)), axis=-1)
    fill = xp.where(before, self.bos, self.eos).astype(x.dtype)
    return xp.where(inside, g, fill)

  def vacant(self, num_frames: int, xp=np):
    """(K, La) True where the delayed pattern of `num_frames` frames holds a staircase filler."""
    Tw = num_frames + 2 if self.wrap else num_frames
    _, inside, _ = self._gather_index(self.num_codebooks, Tw, Tw + self.num_codebooks - 1, xp)
    return ~inside

  @staticmethod
  def unshift(delayed_xKxLa, xp=np):
    """delayed (..., K, La) -> (..., K, La-K+1): row k = delayed[k, k:k+La-K+1] (the wrapped codes if wrap)."""
    K, La = delayed_xKxLa.shape[-2], delayed_xKxLa.shape[-1]
    n = La - K + 1
    idx = xp.arange(n)[None, :] + xp.arange(K)[:, None]
    return xp.take_along_axis(delayed_xKxLa, xp.broadcast_to(idx, delayed_xKxLa.shape[:-1] + (n,)), axis=-1)

  def revert(self, delayed_xKxLa, num_frames: int | None = None, xp=np, codebook_size: int = 1024):
    """delayed (..., K, La) -> codes (..., K, T): BOS/EOS stripped, clipped to [0, codebook_size) like Higgs
    batch_decode; the first `num_frames` frames when given."""
    r = self.unshift(delayed_xKxLa, xp)
    if self.wrap:
      r = r[..., 1:-1]
    if num_frames is not None:
      r = r[..., :num_frames]
    return xp.clip(r, 0, codebook_size - 1)

  def layout(self, lengths_B, length: int, prefix_BxKxC=None, xp=np):
    """The time-major delayed buffer of clips of `lengths_B` frames, every cell the sampler need not draw
    filled in: (ids (B,La,K), known (B,La,K), vacant (B,La,K)).

    ids hold BOS/EOS (and the prefix's codes for frames < C) where known, 0 where a code is to be drawn.
    Column j, codebook k, d = j - k: d <= 0 BOS, 1 <= d <= T frame d-1, d > T EOS; vacant: d < 0, d > T+1.
    """
    if not self.wrap:
      raise ValueError("the sampler's layout needs a wrapped pattern (BOS/EOS around the codes)")
    K = self.num_codebooks
    lengths = xp.asarray(lengths_B)
    B = lengths.shape[0]
    j = xp.arange(length)[None, :, None]
    k = xp.arange(K)[None, None, :]
    d = xp.broadcast_to(j - k, (B, length, K))
    T = lengths[:, None, None]
    ids = xp.where(d <= 0, self.bos, xp.where(d > T, self.eos, 0))
    code = (d >= 1) & (d <= T)
    known = ~code
    if prefix_BxKxC is not None:
      C = prefix_BxKxC.shape[-1]
      in_prefix = code & (d <= C)
      src = xp.clip(d - 1, 0, max(C - 1, 0))                                  # (B,La,K) frame index
      p = xp.asarray(prefix_BxKxC)
      g = p[xp.arange(B)[:, None, None], xp.broadcast_to(k, d.shape), src]
      ids = xp.where(in_prefix, g, ids)
      known = known | in_prefix
    vacant = (d < 0) | (d > T + 1)
    return ids.astype(xp.int32), known, vacant

  def frames(self, ids_BxLaxK, lengths_B, num_frames: int, codebook_size: int, xp=np):
    """Time-major delayed ids (B, La, K) -> frame-aligned codes (B, K, num_frames), zero beyond each length."""
    codes = self.revert(xp.swapaxes(ids_BxLaxK, 1, 2), num_frames=num_frames, xp=xp, codebook_size=codebook_size)
    valid = xp.arange(num_frames)[None, None, :] < xp.asarray(lengths_B)[:, None, None]
    return xp.where(valid, codes, 0).astype(xp.int32)

  def batch(self, codes_list, pad_to: int | None = None):
    """List of (K, T_i) -> (B, La, K) time-major ids right-padded with EOS, and the (B, La) valid mask."""
    delayed = [self.build(np.asarray(c)) for c in codes_list]
    La = max(d.shape[-1] for d in delayed) if pad_to is None else pad_to
    K = delayed[0].shape[0]
    ids = np.full((len(delayed), La, K), self.eos, dtype=np.asarray(codes_list[0]).dtype)
    mask = np.zeros((len(delayed), La), bool)
    for i, d in enumerate(delayed):
      if d.shape[-1] > La:
        raise ValueError(f"item {i}: delayed length {d.shape[-1]} exceeds pad_to={La}")
      ids[i, :d.shape[-1]] = d.T
      mask[i, :d.shape[-1]] = True
    return ids, mask


# One-call forms of the pattern (K read from the arrays where they carry it).

def delayed_length(num_frames: int, num_codebooks: int, wrap: bool = True) -> int:
  return DelayPattern(num_codebooks, wrap=wrap).length(num_frames)


def num_frames_from_delayed(length: int, num_codebooks: int, wrap: bool = True) -> int:
  return DelayPattern(num_codebooks, wrap=wrap).num_frames(length)


def wrap_codes(codes_xKxT, bos: int = BOS, eos: int = EOS, xp=np):
  return DelayPattern(1, bos, eos).wrapped(codes_xKxT, xp)          # K plays no part in the wrap


def build_delay_pattern(codes_xKxT, bos: int = BOS, eos: int = EOS, wrap: bool = True, xp=np):
  """codes (..., K, T) -> delayed (..., K, T(+2)+K-1)."""
  return DelayPattern(codes_xKxT.shape[-2], bos, eos, wrap).build(codes_xKxT, xp)


def vacant_mask(K: int, T: int, wrap: bool = True, xp=np):
  """(K, La) True where the delayed pattern holds a staircase filler, not a wrapped code/BOS/EOS."""
  return DelayPattern(K, wrap=wrap).vacant(T, xp)


def revert_delay_pattern(delayed_xKxLa, xp=np):
  """delayed (..., K, La) -> (..., K, La-K+1): row k = delayed[k, k:k+La-K+1] (the wrapped codes if wrap)."""
  return DelayPattern.unshift(delayed_xKxLa, xp)


def codes_from_delayed(delayed_xKxLa, num_frames: int | None = None, wrap: bool = True, xp=np,
                       codebook_size: int = 1024):
  """Reverts and strips BOS/EOS: (..., K, T) codes, clipped to [0, codebook_size) like Higgs batch_decode."""
  return DelayPattern(delayed_xKxLa.shape[-2], wrap=wrap).revert(delayed_xKxLa, num_frames, xp, codebook_size)


def batch_delayed(codes_list, bos: int = BOS, eos: int = EOS, pad_to: int | None = None):
  """List of (K, T_i) -> (B, La, K) time-major ids right-padded with EOS, and the (B, La) valid mask."""
  return DelayPattern(np.shape(codes_list[0])[0], bos, eos).batch(codes_list, pad_to)
