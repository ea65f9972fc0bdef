"""The decode loop: one `lax.while_loop` over `SamplingState`, one delayed column per step.

Legend: B clips, R decoder rows (2B with CFG, else B), La delayed columns, K codebooks, V per-codebook vocab,
D width, H head hidden width, N columns of a noise block.

Each step decodes column s (one token per row at cache slot P + s, position audio_start + s), predicts
column s + 1 for all K codebooks (CFG-guided, filters.py) and writes the drawn codes into the cells of
column s + 1 not known before sampling. A clip is done after column T + K.

Randomness: item i at column j draws with fold_in(key_i, j), key_i = fold_in(key(seed), item_seed_i),
so a clip's tokens do not depend on which other clips share its batch.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from dreamfoley_jax.models import foley
from dreamfoley_jax.sampling import filters
from dreamfoley_jax.sampling.config import SampleConfig
from dreamfoley_jax.sampling.prefill import double
from dreamfoley_jax.sampling.state import SamplingState

Array = jax.Array

NOISE_BLOCK = 16  # decode steps whose Gumbel noise is drawn together


# --------------------------------------------------------------------------------------------------
# Decode-step heads: the K codebook MLPs with their weights laid out once, outside the loop
# --------------------------------------------------------------------------------------------------

def decode_weights(params) -> list:
  """The param arrays every decode step reads: the decoder layers + final norm (not the token embedding)
  and the codebook heads (what bounds a decode step on memory bandwidth)."""
  return [x for k, v in params["decoder"].items() if k not in ("embed_tokens", "lm_head")
          for x in jax.tree.leaves(v)] + jax.tree.leaves(params["heads"])


def step_heads_weights(cfg: foley.FoleyConfig, heads_params: dict) -> dict:
  """`CodebookHeads` params re-laid out for a decode step: the K first layers fused into one (D, K*H)
  matmul. Done once before the loop (XLA:CPU otherwise re-transposes the stacked kernels every step)."""
  cd = jnp.dtype(cfg.decoder.dtype)
  f32 = jnp.float32
  K = cfg.num_codebooks
  if cfg.head_depth == 1:     # the only layer is the last: fp32 (heads.logits_fp32)
    w_KxDxV = heads_params["kernel"]
    return {"w1": jnp.transpose(w_KxDxV, (1, 0, 2)).reshape(w_KxDxV.shape[1], -1).astype(f32),
            "b1": heads_params["bias"].reshape(-1).astype(f32)}
  w1_KxDxH = heads_params["fc1_kernel"]
  return {"w1": jnp.transpose(w1_KxDxH, (1, 0, 2)).reshape(w1_KxDxH.shape[1], -1).astype(cd),
          "b1": heads_params["fc1_bias"].reshape(-1).astype(cd),
          # separate (H, V) kernels: slicing a stacked one inside the loop can materialise a copy per step
          "w2": [heads_params["fc2_kernel"][k].astype(f32) for k in range(K)],
          "b2": heads_params["fc2_bias"].astype(f32)}


def step_heads(cfg: foley.FoleyConfig, hw: dict, h_NxD: Array) -> Array:
  """Logits (N, K, V) in fp32 for N rows: the same math as `DreamFoley.predict` on one position per row
  (the last projection in fp32 at HIGHEST precision, so guidance never sees bf16-rounded logits)."""
  K, V = cfg.num_codebooks, cfg.vocab_per_codebook
  N = h_NxD.shape[0]
  hi = jax.lax.Precision.HIGHEST
  if "w2" not in hw:
    return (jnp.dot(h_NxD.astype(jnp.float32), hw["w1"], precision=hi) + hw["b1"]).reshape(N, K, V)
  y_NxKH = jnp.dot(h_NxD.astype(hw["w1"].dtype), hw["w1"]) + hw["b1"]
  z_KxNxH = jax.nn.gelu(y_NxKH, approximate=False).reshape(N, K, -1).transpose(1, 0, 2).astype(jnp.float32)
  # K plain 2-D dots: as one batched einsum XLA:CPU picked a transposed output layout and a strided
  # (Eigen) kernel, 3x slower than K separate GEMMs at N = 2.
  return jnp.stack([jnp.dot(z_KxNxH[k], w, precision=hi) for k, w in enumerate(hw["w2"])], axis=1) + hw["b2"]


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SamplerLoop:
  """The decode loop of one model and sampling setting (hashable: a static argument of the jitted program)."""
  cfg: foley.FoleyConfig
  sc: SampleConfig

  @property
  def guided(self) -> bool:
    return self.sc.cfg_scale is not None

  def step(self, params, hw: dict, state: SamplingState, noise_BxKxV: Optional[Array] = None) -> SamplingState:
    """Decodes column `state.step`, draws column step + 1 (noise_BxKxV: its Gumbel noise drawn up front)."""
    cfg, model, K = self.cfg, foley.DreamFoley(self.cfg), self.cfg.num_codebooks
    R = state.audio_start_R.shape[0]

    def decode(m, col, vac, pos, cache):
      h_Rx1xD, a = m.decode(m.embed_audio(col, vac), jnp.ones((R, 1), bool), pos, cache)
      return step_heads(cfg, hw, h_Rx1xD[:, 0]), a["cache"]

    s = state.step
    col_Bx1xK = jax.lax.dynamic_slice_in_dim(state.ids_BxLaxK, s, 1, axis=1)
    vac_Bx1xK = jax.lax.dynamic_slice_in_dim(state.vacant_BxLaxK, s, 1, axis=1)
    logits_RxKxV, cache = model.apply({"params": params}, double(col_Bx1xK, self.guided),
                                      double(vac_Bx1xK, self.guided), (state.audio_start_R + s)[:, None],
                                      state.cache, method=decode)
    logits_BxKxV = filters.guide(logits_RxKxV, self.sc.cfg_scale)
    j = s + 1
    keys_B = jax.vmap(lambda k: jax.random.fold_in(k, j))(state.keys_B)
    drawn_BxK = filters.choose_tokens(logits_BxKxV, keys_B, self.sc, cfg.codebook_size, noise_BxKxV)
    known_BxK = jax.lax.dynamic_index_in_dim(state.known_BxLaxK, j, axis=1, keepdims=False)
    old_BxK = jax.lax.dynamic_index_in_dim(state.ids_BxLaxK, j, axis=1, keepdims=False)
    new_BxK = jnp.where(known_BxK, old_BxK, drawn_BxK)
    logits = state.logits_BxLaxKxV
    if logits is not None:
      logits = jax.lax.dynamic_update_index_in_dim(logits, logits_BxKxV, s, axis=1)
    return state.replace(step=j, ids_BxLaxK=jax.lax.dynamic_update_index_in_dim(state.ids_BxLaxK, new_BxK, j, axis=1),
                         cache=cache, done_B=j >= state.lengths_B + K, logits_BxLaxKxV=logits)

  def running(self, state: SamplingState) -> Array:
    """() bool: columns left to draw and some clip not done."""
    return (state.step < state.ids_BxLaxK.shape[1] - 1) & ~jnp.all(state.done_B)

  def run(self, params, state: SamplingState) -> SamplingState:
    """Steps until every clip is done (traced: call inside jit)."""
    hw = step_heads_weights(self.cfg, params["heads"])
    if self.sc.temperature == 0:
      return jax.lax.while_loop(self.running, lambda st: self.step(params, hw, st), state)
    K, V = self.cfg.num_codebooks, self.cfg.vocab_per_codebook

    # Blocks of NOISE_BLOCK steps: the Gumbel noise of a block's columns is drawn in one call, then an
    # inner loop decodes them (same keys, same noise, same tokens as drawing it step by step).
    def block(st):
      j0 = st.step + 1
      noise_NxBxKxV = filters.gumbel_noise(st.keys_B, (K, V), j0 + jnp.arange(NOISE_BLOCK))
      stop = st.step + NOISE_BLOCK
      inner = lambda t: self.step(params, hw, t,
                                  jax.lax.dynamic_index_in_dim(noise_NxBxKxV, t.step + 1 - j0, 0, False))
      return jax.lax.while_loop(lambda t: self.running(t) & (t.step < stop), inner, st)

    return jax.lax.while_loop(self.running, block, state)
