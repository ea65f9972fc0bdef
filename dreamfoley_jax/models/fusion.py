"""Dual vision-encoder fusion, DreamFoley eq. 1: F_v = concat(phi_a(V; r_a), up(phi_t(V; r_t))).

Legend (dreamfoley_jax.models): B batch, Ts sync tokens (25 Hz), Tc CLIP frames (4 fps), Tv output (video)
frames (25 Hz), Ds / Dc / Dv sync / CLIP / fused widths.

Both streams are put on the audio-aligned grid: output frame j stands for time j / r_a. Synchformer gives
8 tokens per 16-frame window at stride 8, i.e. one token per 25 Hz frame, so sync token j is frame j
(cropped or padded to Tv). CLIP frame i was sampled at time i / r_t; output frame j reads it at the
fractional position x = j * r_t / r_a (computed in exact integer arithmetic for rational rates):
  "nearest"       i = floor(x): each CLIP frame is repeated until the next one is sampled
                  (torch F.interpolate 'nearest' with the exact rate ratio).
  "nearest_exact" i = floor(x + 1/2): the CLIP frame closest in time.
  "linear"        (1 - w) f[floor(x)] + w f[floor(x) + 1], w = x - floor(x), clamped at the last frame.
The default is "nearest". The paper only says the text-aligned features are "upsampled" by r_a / r_t;
plain repetition keeps the semantic features unblended. Of the two repetitions, "nearest" is the one
aligned with how the frames were sampled: with the decoder's default rule (ffmpeg's fps filter,
dreamfoley_jax.video.io) 4 fps sample i shows the last frame before (i + 1/2) / 4 s, i.e. content from
about i/4 + 0.1 s, and floor repetition uses it for the 25 Hz frames in [i/4, (i + 1)/4), centred at
i/4 + 0.125 s; "nearest_exact" would use it from (i - 1/2)/4, showing content up to ~0.25 s early.
MMAudio brings its sync stream to its latent length with F.interpolate(mode='nearest-exact'), which is
"nearest_exact" here when the lengths are in the exact rate ratio.

Real clips are off by a few frames (an 8.04 s clip has 201 frames at 25 Hz but only
((201 - 16) // 8 + 1) * 8 = 192 sync tokens). `target_len` fixes Tv; positions without data are filled
with zeros ("zero") or the last valid feature ("edge") and the returned mask is False there. The mask is
True where both streams have real data: j < (valid sync tokens) and floor(x) < (valid CLIP frames).
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import flax.linen as nn
import jax.numpy as jnp

from dreamfoley_jax import sharding

UPSAMPLE_MODES = ("nearest", "nearest_exact", "linear")
PAD_MODES = ("zero", "edge")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
  sync_rate: float = 25.0      # r_a, audio-aligned rate (paper section 3.2)
  clip_rate: float = 4.0       # r_t, text-aligned rate (paper section 3.2)
  upsample: str = "nearest"    # one of UPSAMPLE_MODES
  pad: str = "zero"            # one of PAD_MODES, fill for positions past the valid data

  def __post_init__(self):
    if self.upsample not in UPSAMPLE_MODES:
      raise ValueError(f"FusionConfig.upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
    if self.pad not in PAD_MODES:
      raise ValueError(f"FusionConfig.pad must be one of {PAD_MODES}, got {self.pad!r}")

  @property
  def ratio(self) -> Fraction:
    """r_t / r_a as an exact fraction (4/25 for the paper's rates)."""
    return (Fraction(self.clip_rate).limit_denominator(1_000_000)
            / Fraction(self.sync_rate).limit_denominator(1_000_000))


def aligned_length(duration_sec: float, rate: float = 25.0) -> int:
  """Number of whole 25 Hz frames in a clip: floor(duration * rate), robust to 8.04 * 25 = 200.999..."""
  return int(math.floor(Fraction(duration_sec).limit_denominator(1_000_000)
                        * Fraction(rate).limit_denominator(1_000_000)))


def clip_source_index(num_out: int, cfg: FusionConfig):
  """(i0_Tv, w_Tv): the CLIP frame read by each output frame and the linear weight of frame i0 + 1."""
  r = cfg.ratio
  j = jnp.arange(num_out, dtype=jnp.int32)
  num, den = r.numerator, r.denominator
  if cfg.upsample == "nearest_exact":
    i0 = (2 * j * num + den) // (2 * den)
    return i0, jnp.zeros((num_out,), jnp.float32)
  i0 = (j * num) // den
  if cfg.upsample == "linear":
    w = ((j * num) % den).astype(jnp.float32) / den
  else:
    w = jnp.zeros((num_out,), jnp.float32)
  return i0, w


def _valid_counts(mask_BxT, batch: int, length: int):
  if mask_BxT is None:
    return jnp.full((batch,), length, jnp.int32)
  return jnp.sum(mask_BxT.astype(jnp.int32), axis=-1)


class DualStreamFusion(nn.Module):
  """Aligns Synchformer (25 Hz) and EVA-CLIP (4 fps) features at 25 Hz and concatenates them."""
  config: FusionConfig

  @nn.compact
  def __call__(self, sync_BxTsxDs, clip_BxTcxDc, *, target_len: int | None = None,
               sync_mask_BxTs=None, clip_mask_BxTc=None):
    """Returns (fused_BxTvxDv with Dv = Ds + Dc, mask_BxTv). Masks mark valid prefixes (True = data)."""
    cfg = self.config
    b, ts, _ = sync_BxTsxDs.shape
    tc = clip_BxTcxDc.shape[1]
    ta = ts if target_len is None else int(target_len)
    dtype = jnp.result_type(sync_BxTsxDs.dtype, clip_BxTcxDc.dtype)
    n_sync_B = _valid_counts(sync_mask_BxTs, b, ts)
    n_clip_B = _valid_counts(clip_mask_BxTc, b, tc)
    j_Tv = jnp.arange(ta, dtype=jnp.int32)

    # sync: token j is frame j
    sync_ok_BxTv = j_Tv[None, :] < n_sync_B[:, None]
    src_s_BxTv = jnp.minimum(j_Tv[None, :], jnp.maximum(n_sync_B[:, None] - 1, 0))
    sync_BxTvxDs = jnp.take_along_axis(sync_BxTsxDs, src_s_BxTv[..., None], axis=1).astype(dtype)

    # clip: output frame j reads position j * r_t / r_a
    i0_Tv, w_Tv = clip_source_index(ta, cfg)
    last_B = jnp.maximum(n_clip_B - 1, 0)[:, None]
    clip_ok_BxTv = i0_Tv[None, :] < n_clip_B[:, None]
    i0_BxTv = jnp.minimum(i0_Tv[None, :], last_B)
    clip_BxTvxDc = jnp.take_along_axis(clip_BxTcxDc, i0_BxTv[..., None], axis=1).astype(dtype)
    if cfg.upsample == "linear":
      i1_BxTv = jnp.minimum(i0_Tv[None, :] + 1, last_B)
      nxt_BxTvxDc = jnp.take_along_axis(clip_BxTcxDc, i1_BxTv[..., None], axis=1).astype(dtype)
      w = w_Tv.astype(dtype)[None, :, None]
      clip_BxTvxDc = clip_BxTvxDc * (1 - w) + nxt_BxTvxDc * w

    if cfg.pad == "zero":
      sync_BxTvxDs = jnp.where(sync_ok_BxTv[..., None], sync_BxTvxDs, 0)
      clip_BxTvxDc = jnp.where(clip_ok_BxTv[..., None], clip_BxTvxDc, 0)
    fused_BxTvxDv = jnp.concatenate([sync_BxTvxDs, clip_BxTvxDc], axis=-1)
    fused_BxTvxDv = sharding.constrain(fused_BxTvxDv, ("batch", "length", "act_embed"))
    return fused_BxTvxDv, sync_ok_BxTv & clip_ok_BxTv
