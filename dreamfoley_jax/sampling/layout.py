"""The sampler's delayed token buffer, through the model's delay pattern (audio/delay.py).

Legend: B clips, T frames, C prefix frames, La delayed columns, K codebooks.

How one clip of T frames is laid out: delayed column j, codebook k, d = j - k:
  d < 0        BOS, vacant (learnable pad embedding)        -- the staircase start
  d == 0       BOS
  1 <= d <= T  code of frame d-1: sampled (or copied from the prefix when d <= C)
  d == T + 1   EOS
  d > T + 1    EOS, vacant                                   -- the staircase end
Every cell except the sampled ones is known before sampling starts (`delayed_layout`), so the loop only
samples the unknown cells and copies the rest; the clip is finished after column T + K.
"""
from __future__ import annotations

import numpy as np

from dreamfoley_jax.audio import delay
from dreamfoley_jax.models import foley


def delay_pattern(cfg: foley.FoleyConfig) -> delay.DelayPattern:
  """The model's delay pattern: its K codebooks and BOS / EOS ids."""
  return delay.DelayPattern(cfg.num_codebooks, bos=cfg.bos_id, eos=cfg.eos_id)


def num_columns(max_frames: int, num_codebooks: int) -> int:
  """La: delayed columns of a clip of `max_frames` frames: BOS + frames + EOS + K-1 staircase."""
  return delay.DelayPattern(num_codebooks).length(max_frames)


def delayed_layout(cfg: foley.FoleyConfig, lengths_B, num_cols: int, prefix_BxKxC=None, xp=np):
  """(ids (B,La,K), known (B,La,K), vacant (B,La,K)): every cell fixed before sampling, and which ones.

  ids hold BOS/EOS/prefix codes where known, 0 where the sampler must draw a code.
  """
  return delay_pattern(cfg).layout(lengths_B, num_cols, prefix_BxKxC, xp=xp)


def frames_from_delayed(cfg: foley.FoleyConfig, ids_BxLaxK, lengths_B, max_frames: int, xp=np):
  """Frame-aligned codes (B, K, max_frames): delay reverted, BOS/EOS stripped, zero beyond each length."""
  return delay_pattern(cfg).frames(ids_BxLaxK, lengths_B, max_frames, cfg.codebook_size, xp=xp)
