"""Prefill: the prompt rows embedded and run through the decoder once, filling the KV cache.

Legend: B clips, R decoder rows (2B with CFG: conditional rows then unconditional ones, else B), Lt text
tokens, Nv null-video tokens, P prompt slots, C prefix frames, La delayed columns, K codebooks, S KV-cache
slots, D width.

The prompt is [text | video | prefix columns 0..C-1]; prompt padding is masked out as keys and positions
count real tokens only, exactly as in the training forward (models/foley.py).

CFG: the conditional and unconditional prompts run as one doubled batch (R = 2B). Unconditional = null
text + null video, or, with a negative prompt, the negative text + null video. Modes come from the
conditional drop flags: video+text (none), video only (drop text), text only (drop video: text-to-audio).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.sampling import layout
from dreamfoley_jax.sampling.config import SampleConfig
from dreamfoley_jax.sampling.state import Prompt, SamplingState

Array = jax.Array

# KV-cache slots are rounded up to a multiple of this (the extra slots stay masked). An unaligned slot count
# (525 for 10 s) sends XLA:CPU's attention dots down a slower path: 16 rows decode ~7% faster per step
# with 528 slots than with 525 (small config, this repo's 2-core CPU; docs/sampling.md). Measured on CPU
# only; on GPU/TPU the few extra slots add < 3% to the KV bytes of a 10 s cache (0.6% at 528 vs 525).
CACHE_ALIGN = 16


def cache_slots(prompt_len: int, num_cols: int) -> int:
  """S: KV-cache length for a prompt of `prompt_len` tokens followed by `num_cols` audio columns."""
  return -(-(prompt_len + num_cols) // CACHE_ALIGN) * CACHE_ALIGN


def double(a: Array, guided: bool) -> Array:
  """(B, ...) -> (R, ...): the clips' rows once more for the unconditional half under CFG."""
  return jnp.concatenate([a, a], 0) if guided else a


def embed_prompts(m: foley.DreamFoley, prompt: Prompt, guided: bool):
  """[text | video] embeddings (R, P, D) and mask (R, P): the conditional rows, then (CFG) the
  unconditional ones (null or negative text, null video). Called inside `model.apply`."""
  B = prompt.lengths.shape[0]
  batch = prompt.batch
  x_BxPxD, mask_BxP = m.embed_prompt(batch, prompt.drop_text, prompt.drop_video)
  if not guided:
    return x_BxPxD, mask_BxP
  ub = batch if prompt.negative_text_ids is None else dict(batch, text_ids=prompt.negative_text_ids,
                                                           text_mask=prompt.negative_text_mask)
  drop_t = jnp.ones((B,), bool) if prompt.negative is None else ~prompt.negative
  xu_BxPxD, mu_BxP = m.embed_prompt(ub, drop_t, jnp.ones((B,), bool))
  return jnp.concatenate([x_BxPxD, xu_BxPxD], 0), jnp.concatenate([mask_BxP, mu_BxP], 0)


def prefill(cfg: foley.FoleyConfig, sc: SampleConfig, params, prompt: Prompt, keys_B: Array, max_frames: int,
            return_logits: bool = False) -> SamplingState:
  """The loop's first state: the delayed buffer laid out, the KV cache filled with the prompt (+ prefix)."""
  model = foley.DreamFoley(cfg)
  variables = {"params": params}
  K, V = cfg.num_codebooks, cfg.vocab_per_codebook
  lengths_B = prompt.lengths
  B = lengths_B.shape[0]
  La = layout.num_columns(max_frames, K)
  C = prompt.num_prefix
  ids_BxLaxK, known_BxLaxK, vacant_BxLaxK = layout.delayed_layout(cfg, lengths_B, La, prompt.prefix_codes, xp=jnp)
  guided = sc.cfg_scale is not None
  R = 2 * B if guided else B

  x_RxPxD, pmask_RxP = model.apply(variables, method=lambda m: embed_prompts(m, prompt, guided))
  P = x_RxPxD.shape[1]
  text_len = prompt.text_ids.shape[1]
  a0_R = foley.audio_position_offset(cfg, pmask_RxP, text_len)                 # position of column 0
  if C:
    xa_RxCxD = model.apply(variables, double(ids_BxLaxK[:, :C], guided), double(vacant_BxLaxK[:, :C], guided),
                           method=lambda m, i, v: m.embed_audio(i, v))
    x0 = jnp.concatenate([x_RxPxD, xa_RxCxD], axis=1)
    m0 = jnp.concatenate([pmask_RxP, jnp.ones((R, C), bool)], axis=1)
  else:
    x0, m0 = x_RxPxD, pmask_RxP
  pos0 = foley.sequence_positions(cfg, pmask_RxP, text_len, C)
  run = lambda m, *a: m.decode(*a)
  Nv = cfg.null_video_len
  S = cache_slots(P, La)
  if guided and text_len + Nv < P:
    # The unconditional prompt is [text | null video | padding]: every video slot past the null video is
    # masked out as a key. Prefill those rows on the compacted [text | null video | prefix] (same tokens,
    # same positions, same order), so the CFG half costs Lt + Nv tokens instead of P. The skipped slots
    # stay masked in the cache; decoding writes both halves at the same slots P + C + s.
    keep = np.r_[0:text_len + Nv, P:P + C]
    _, ac = model.apply(variables, x0[:B], m0[:B], pos0[:B], qwen2.init_cache(cfg.decoder, B, S), method=run)
    _, au = model.apply(variables, x0[B:, keep], m0[B:, keep], pos0[B:, keep],
                        qwen2.init_cache(cfg.decoder, B, S), method=run)
    # Rows are axis 0 of the mask and of each per-layer k/v buffer; axis 1 of the stacked (layers, R, ...)
    # k/v of a scan_layers decoder.
    kv_axis = 1 if cfg.decoder.scan_layers else 0
    filled = {k: jax.tree.map(lambda a, b, ax=(0 if k == "mask" else kv_axis): jnp.concatenate([a, b], axis=ax),
                              ac["cache"][k], au["cache"][k]) for k in ("k", "v", "mask")}
    cache = dict(filled, index=jnp.asarray(P + C, jnp.int32))
  else:
    _, aux = model.apply(variables, x0, m0, pos0, qwen2.init_cache(cfg.decoder, R, S), method=run)
    cache = aux["cache"]
  return SamplingState(
      step=jnp.asarray(C, jnp.int32), ids_BxLaxK=ids_BxLaxK, known_BxLaxK=known_BxLaxK, vacant_BxLaxK=vacant_BxLaxK,
      cache=cache, audio_start_R=a0_R, lengths_B=lengths_B, keys_B=keys_B, done_B=jnp.zeros((B,), bool),
      logits_BxLaxKxV=jnp.zeros((B, La, K, V), jnp.float32) if return_logits else None)
