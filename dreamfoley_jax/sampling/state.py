"""The sampler's pytrees: the `Prompt` it is given and the `SamplingState` its loop carries.

Legend: B clips, R decoder rows (2B with CFG: conditional rows then unconditional ones, else B), Lt text
tokens, Ln negative-text tokens, Tv video frames (25 Hz), P prompt slots (Lt + video tokens), C prefix
frames, La delayed columns, K codebooks, V per-codebook vocab, S KV-cache slots, Hkv kv heads, Dh head dim.
"""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class Prompt:
  """What one batch of clips is conditioned on (every array clip-leading; a None field is absent)."""
  text_ids: Array                       # (B, Lt) int32
  text_mask: Array                      # (B, Lt) bool, False = padding
  video: dict                           # the video fields `DreamFoley.embed_prompt` reads: sync_feats
                                        # (B, Tv, Ds) / clip_feats (B, Tc, Dc) / video_feats (B, Tv, Dv) /
                                        # frames_sync, frames_clip (+ _mask); video_mask (B, Tv) bool
  lengths: Array                        # (B,) int32 frames to generate per clip
  drop_text: Array                      # (B,) bool: the conditional pass uses the null text (video-only)
  drop_video: Array                     # (B,) bool: the conditional pass uses the null video (text-only)
  negative_text_ids: Optional[Array] = None   # (B, Lt) int32 negative prompt, padded to Lt (needs CFG)
  negative_text_mask: Optional[Array] = None  # (B, Lt) bool
  negative: Optional[Array] = None            # (B,) bool: items whose unconditional pass uses it
  prefix_codes: Optional[Array] = None        # (B, K, C) int32 given first frames (windowed continuation)

  @property
  def batch(self) -> dict:
    """The prompt fields as `DreamFoley.embed_prompt`'s batch dict."""
    return dict(self.video, text_ids=self.text_ids, text_mask=self.text_mask)

  @property
  def num_prefix(self) -> int:
    """C: frames given by `prefix_codes` (0 without)."""
    return 0 if self.prefix_codes is None else self.prefix_codes.shape[-1]


@flax.struct.dataclass
class SamplingState:
  """The `lax.while_loop` carry: the token buffer being filled one delayed column per step."""
  step: Array                   # () int32: the last column written; the next step decodes it and draws step+1
  ids_BxLaxK: Array              # (B, La, K) int32 delayed token buffer (known cells pre-filled, drawn ones added)
  known_BxLaxK: Array            # (B, La, K) bool: cells fixed before sampling (BOS/EOS/prefix), never drawn
  vacant_BxLaxK: Array           # (B, La, K) bool: staircase cells, embedded with the learnable pad
  cache: dict                   # the decoder's KV cache of R rows, S slots (qwen2.init_cache): k (R, Hkv, Dh,
                                # S) and v (R, Hkv, S, Dh) per layer (stacked (layers, R, ...) with
                                # scan_layers), mask (R, S) bool, index () int32 the next slot
  audio_start_R: Array          # (R,) int32 rotary position of delayed column 0 per row
  lengths_B: Array              # (B,) int32 frames per clip
  keys_B: Array                 # (B,) per-clip PRNG keys; column j draws with fold_in(key, j)
  done_B: Array                 # (B,) bool: clip finished (its last EOS column written)
  logits_BxLaxKxV: Optional[Array] = None   # (B, La, K, V) fp32 guided logits, row j predicting column j+1
                                           # (only with return_logits)
