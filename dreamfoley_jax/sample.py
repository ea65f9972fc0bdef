"""Sampling: one jitted `lax.while_loop` with a KV cache, classifier-free guidance and the delay pattern.

Legend: B clips, Lt text tokens, Tv video frames (25 Hz), P prompt slots (= Lt + Tv), La delayed audio
columns, K codebooks, V per-codebook vocab (codebook_size + BOS + EOS), C context (prefix) frames.

How one clip of T frames is laid out (audio/delay.py): delayed column j, codebook k, d = j - k:
  d < 0        BOS, vacant (learnable pad embedding)        -- the staircase start
  d == 0       BOS
  1 <= d <= T  code of frame d-1: sampled (or copied from the prefix when d <= C)
  d == T + 1   EOS
  d > T + 1    EOS, vacant                                   -- the staircase end
Every cell except the sampled ones is known before sampling starts (`delayed_layout`), so the loop only
samples the unknown cells and copies the rest; the clip is finished after column T + K.

The loop (gemma-sampler style): prefill [text | video | prefix columns 0..C-1] into the KV cache, then
each iteration decodes column s (T = 1 step at cache slot P + s, position a0 + s, a0 = foley.audio_position_offset), predicts column
s + 1 for all K codebooks and writes it into the token buffer. Prompt padding is masked out as keys and
positions count real tokens only, exactly as in the training forward (models/foley.py).

CFG: the conditional and unconditional prompts run as one doubled batch (2B); guided logits =
uncond + s * (cond - uncond). Unconditional = null text + null video, or, with a negative prompt,
the negative text + null video. Modes come from the conditional drop flags: video+text (none), video
only (drop text), text only (drop video: text-to-audio).

Token choice per codebook, in this order (issue 7): BOS/EOS logits masked out (codes only), top-k,
then top-p on the softmax of the top-k-filtered logits, then temperature on the surviving logits, then a
categorical draw. temperature == 0 takes the argmax. Note the order: top-p sees the *untempered*
distribution (transformers applies temperature first); top-p never replaces top-k.

Randomness: item i at column j draws with fold_in(key_i, j), key_i = fold_in(key(seed), item_seed_i),
so a clip's tokens do not depend on which other clips share its batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax import sharding
from dreamfoley_jax.audio import delay
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import params as foley_params

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  temperature: float = 1.0          # paper sec. 5.1 sampling settings (experiments/paper_7b.py c.sample)
  top_k: int = 25                   # 0 = off
  top_p: float = 0.9                # 1.0 = off
  cfg_scale: Optional[float] = 3.0  # None = no unconditional pass (single batch)

  def replace(self, **kw) -> "SampleConfig":
    return dataclasses.replace(self, **kw)


def sample_config_from_dict(d) -> SampleConfig:
  d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
  known = {f.name for f in dataclasses.fields(SampleConfig)}
  return SampleConfig(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------------
# Logit filters (same semantics as transformers' TopKLogitsWarper / TopPLogitsWarper, min_keep = 1)
# --------------------------------------------------------------------------------------------------

def top_k_mask(logits_xV: Array, top_k: int) -> Array:
  """True where a logit is >= the k-th largest (ties at the k-th value are kept, as transformers does)."""
  V = logits_xV.shape[-1]
  if top_k <= 0 or top_k >= V:
    return jnp.ones(logits_xV.shape, bool)
  kth = jax.lax.optimization_barrier(jax.lax.top_k(logits_xV, top_k)[0])[..., -1:]
  return logits_xV >= kth


def top_p_mask(logits_xV: Array, top_p: float, max_kept: int = 0) -> Array:
  """Nucleus: drop the smallest tokens whose ascending cumulative probability is <= 1 - top_p.

  `max_kept` > 0 says at most that many logits are finite (after top-k), so only they are sorted.
  """
  V = logits_xV.shape[-1]
  if top_p >= 1.0:
    return jnp.ones(logits_xV.shape, bool)
  n = max_kept if 0 < max_kept < V else V
  desc = jax.lax.optimization_barrier(jax.lax.top_k(logits_xV, n)[0])
  asc = desc[..., ::-1]
  cum = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
  remove = (cum <= 1.0 - top_p).at[..., -1].set(False)
  r = remove.sum(-1, keepdims=True)
  thr = jnp.take_along_axis(asc, r, axis=-1)
  return logits_xV >= thr


def filter_logits(logits_xV: Array, top_k: int, top_p: float) -> Array:
  """top-k, then top-p on what top-k kept; removed logits become -inf.

  One `lax.top_k` serves both filters (its sorted values are the nucleus candidates): on CPU a second
  top_k / a full sort of 1026 logits cost more than the rest of a tiny model's decode step.
  """
  V = logits_xV.shape[-1]
  neg = jnp.asarray(-jnp.inf, logits_xV.dtype)
  if top_k <= 0 or top_k >= V:
    return jnp.where(top_p_mask(logits_xV, top_p), logits_xV, neg)
  # The barrier keeps XLA:CPU's TopK custom call: without it the slices below are folded into the
  # top_k's own slice and XLA falls back to a full sort of the row (20x slower at (64, 1026)).
  desc = jax.lax.optimization_barrier(jax.lax.top_k(logits_xV, top_k)[0])   # sorted, descending
  thr = desc[..., -1:]                                           # k-th largest: ties kept, as transformers
  if top_p < 1.0:
    asc = desc[..., ::-1]
    cum = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
    remove = (cum <= 1.0 - top_p).at[..., -1].set(False)
    thr = jnp.maximum(thr, jnp.take_along_axis(asc, remove.sum(-1, keepdims=True), axis=-1))
  return jnp.where(logits_xV >= thr, logits_xV, neg)


def argmax_last(x: Array) -> Array:
  """`jnp.argmax(x, -1)` (first index of the maximum) as two plain reductions.

  XLA:CPU lowers argmax to a variadic (value, index) reduce that cost more than a top-k per decode step.
  """
  V = x.shape[-1]
  m = jnp.max(x, axis=-1, keepdims=True)
  return jnp.min(jnp.where(x == m, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def categorical(key: Array, logits_xV: Array) -> Array:
  """`jax.random.categorical(key, logits, axis=-1)`: the same Gumbel draws, the same result."""
  return argmax_last(jax.random.gumbel(key, logits_xV.shape, logits_xV.dtype) + logits_xV)


def gumbel_noise(keys_B: Array, shape, columns_N: Array) -> Array:
  """(N, B) + shape float32 Gumbel noise: item i at column j uses fold_in(key_i, j), as `choose_tokens`
  draws it. Drawing a block of columns in one call amortises XLA:CPU's rolled threefry loop."""
  per = lambda j: jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, j), shape, jnp.float32))(keys_B)
  return jax.vmap(per)(columns_N)


def choose_tokens(logits_BxKxV: Array, keys_B: Array, sc: SampleConfig, codebook_size: int,
                  gumbel_BxKxV: Optional[Array] = None) -> Array:
  """Codes in [0, codebook_size) for every (item, codebook): filters, then temperature, then draw.

  gumbel_BxKxV: the draw's noise given up front (`gumbel_noise` of the same keys: the same tokens).
  """
  V = logits_BxKxV.shape[-1]
  x = jnp.where(jnp.arange(V) < codebook_size, logits_BxKxV.astype(jnp.float32), -jnp.inf)
  if sc.temperature == 0:
    return argmax_last(x)
  x = filter_logits(x, sc.top_k, sc.top_p) / sc.temperature
  if gumbel_BxKxV is not None:
    return argmax_last(gumbel_BxKxV + x).astype(jnp.int32)
  return jax.vmap(categorical)(keys_B, x).astype(jnp.int32)


def guide(logits_2BxKxV: Array, cfg_scale: Optional[float]) -> Array:
  if cfg_scale is None:
    return logits_2BxKxV
  B = logits_2BxKxV.shape[0] // 2
  cond, unc = logits_2BxKxV[:B], logits_2BxKxV[B:]
  return unc + cfg_scale * (cond - unc)


# --------------------------------------------------------------------------------------------------
# Delay-pattern bookkeeping (index math)
# --------------------------------------------------------------------------------------------------

def num_columns(max_frames: int, num_codebooks: int) -> int:
  """Delayed columns of a clip of `max_frames` frames: BOS + frames + EOS + K-1 staircase."""
  return delay.delayed_length(max_frames, num_codebooks)


def delayed_layout(cfg: foley.FoleyConfig, lengths_B, num_cols: int, prefix_BxKxC=None, xp=np):
  """(ids (B,La,K), known (B,La,K), vacant (B,La,K)): every cell fixed before sampling, and which ones.

  ids hold BOS/EOS/prefix codes where known, 0 where the sampler must draw a code.
  """
  K = cfg.num_codebooks
  lengths = xp.asarray(lengths_B)
  B = lengths.shape[0]
  j = xp.arange(num_cols)[None, :, None]
  k = xp.arange(K)[None, None, :]
  d = xp.broadcast_to(j - k, (B, num_cols, K))
  T = lengths[:, None, None]
  ids = xp.where(d <= 0, cfg.bos_id, xp.where(d > T, cfg.eos_id, 0))
  code = (d >= 1) & (d <= T)
  known = ~code
  if prefix_BxKxC is not None:
    C = prefix_BxKxC.shape[-1]
    in_prefix = code & (d <= C)
    src = xp.clip(d - 1, 0, max(C - 1, 0))                                    # (B,La,K) frame index
    p = xp.asarray(prefix_BxKxC)
    g = p[xp.arange(B)[:, None, None], xp.broadcast_to(k, d.shape), src]
    ids = xp.where(in_prefix, g, ids)
    known = known | in_prefix
  vacant = (d < 0) | (d > T + 1)
  return ids.astype(xp.int32), known, vacant


def frames_from_delayed(cfg: foley.FoleyConfig, ids_BxLaxK, lengths_B, max_frames: int, xp=np):
  """Frame-aligned codes (B, K, max_frames): delay reverted, BOS/EOS stripped, zero beyond each length."""
  codes = delay.codes_from_delayed(xp.swapaxes(ids_BxLaxK, 1, 2), num_frames=max_frames, xp=xp,
                                   codebook_size=cfg.codebook_size)
  valid = xp.arange(max_frames)[None, None, :] < xp.asarray(lengths_B)[:, None, None]
  return xp.where(valid, codes, 0).astype(xp.int32)


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
  if cfg.head_depth == 1:     # the only layer is the last: fp32 (foley.logits_fp32)
    w = heads_params["kernel"]                                                  # (K, D, V)
    return {"w1": jnp.transpose(w, (1, 0, 2)).reshape(w.shape[1], -1).astype(f32),
            "b1": heads_params["bias"].reshape(-1).astype(f32)}
  w1 = heads_params["fc1_kernel"]                                               # (K, D, H)
  return {"w1": jnp.transpose(w1, (1, 0, 2)).reshape(w1.shape[1], -1).astype(cd),
          "b1": heads_params["fc1_bias"].reshape(-1).astype(cd),
          # separate (H, V) kernels: slicing a stacked one inside the loop can materialise a copy per step
          "w2": [heads_params["fc2_kernel"][k].astype(f32) for k in range(K)],
          "b2": heads_params["fc2_bias"].astype(f32)}


def step_heads(cfg: foley.FoleyConfig, hw: dict, h_NxD: Array) -> Array:
  """Logits (N, K, V) in fp32: the same math as `DreamFoley.predict` on one position per row (the last
  projection in fp32 at HIGHEST precision, so guidance never sees bf16-rounded logits)."""
  K, V = cfg.num_codebooks, cfg.vocab_per_codebook
  N = h_NxD.shape[0]
  hi = jax.lax.Precision.HIGHEST
  if "w2" not in hw:
    return (jnp.dot(h_NxD.astype(jnp.float32), hw["w1"], precision=hi) + hw["b1"]).reshape(N, K, V)
  y = jnp.dot(h_NxD.astype(hw["w1"].dtype), hw["w1"]) + hw["b1"]
  z = jax.nn.gelu(y, approximate=False).reshape(N, K, -1).transpose(1, 0, 2).astype(jnp.float32)   # (K, N, H)
  # K plain 2-D dots: as one batched einsum XLA:CPU picked a transposed output layout and a strided
  # (Eigen) kernel, 3x slower than K separate GEMMs at N = 2.
  return jnp.stack([jnp.dot(z[k], w, precision=hi) for k, w in enumerate(hw["w2"])], axis=1) + hw["b2"]


# --------------------------------------------------------------------------------------------------
# The jitted loop
# --------------------------------------------------------------------------------------------------

NOISE_BLOCK = 16  # decode steps whose Gumbel noise is drawn together
# KV-cache slots are rounded up to a multiple of this (the extra slots stay masked). An unaligned slot count
# (525 for 10 s) sends XLA:CPU's attention dots down a slower path: 16 rows decode ~7% faster per step
# with 528 slots than with 525 (small config, this repo's 2-core CPU; docs/sampling.md). Measured on CPU
# only; on GPU/TPU the few extra slots add < 3% to the KV bytes of a 10 s cache (0.6% at 528 vs 525).
CACHE_ALIGN = 16


def cache_slots(prompt_len: int, num_cols: int) -> int:
  """KV-cache length for a prompt of `prompt_len` tokens followed by `num_cols` audio columns."""
  return -(-(prompt_len + num_cols) // CACHE_ALIGN) * CACHE_ALIGN


@functools.partial(jax.jit, static_argnames=("cfg", "sc", "max_frames", "return_logits"))
def _sample_jit(params, batch, lengths_B, keys_B, cond_drop_text_B, cond_drop_video_B, neg_text_ids,
                neg_text_mask, neg_B, prefix_BxKxC, *, cfg: foley.FoleyConfig, sc: SampleConfig,
                max_frames: int, return_logits: bool):
  model = foley.DreamFoley(cfg)
  variables = {"params": params}
  K, V = cfg.num_codebooks, cfg.vocab_per_codebook
  B = lengths_B.shape[0]
  La = num_columns(max_frames, K)
  C = 0 if prefix_BxKxC is None else prefix_BxKxC.shape[-1]
  ids, known, vacant = delayed_layout(cfg, lengths_B, La, prefix_BxKxC, xp=jnp)
  guided = sc.cfg_scale is not None
  nB = 2 * B if guided else B

  def prompts(m):
    x, mask = m.embed_prompt(batch, cond_drop_text_B, cond_drop_video_B)
    if not guided:
      return x, mask
    ub = batch if neg_text_ids is None else dict(batch, text_ids=neg_text_ids, text_mask=neg_text_mask)
    drop_t = jnp.ones((B,), bool) if neg_B is None else ~neg_B
    xu, mu = m.embed_prompt(ub, drop_t, jnp.ones((B,), bool))
    return jnp.concatenate([x, xu], 0), jnp.concatenate([mask, mu], 0)

  def dup(a):
    return jnp.concatenate([a, a], 0) if guided else a

  prompt, pmask = model.apply(variables, method=prompts)
  P = prompt.shape[1]
  text_len = batch["text_ids"].shape[1]
  a0 = foley.audio_position_offset(cfg, pmask, text_len)                    # (nB,) position of column 0
  if C:
    xa = model.apply(variables, dup(ids[:, :C]), dup(vacant[:, :C]), method=lambda m, i, v: m.embed_audio(i, v))
    x0 = jnp.concatenate([prompt, xa], axis=1)
    m0 = jnp.concatenate([pmask, jnp.ones((nB, C), bool)], axis=1)
  else:
    x0, m0 = prompt, pmask
  pos0 = foley.sequence_positions(cfg, pmask, text_len, C)
  prefill = lambda m, *a: m.decode(*a)
  Nv = cfg.null_video_len
  slots = cache_slots(P, La)
  if guided and text_len + Nv < P:
    # The unconditional prompt is [text | null video | padding]: every video slot past the null video is
    # masked out as a key. Prefill those rows on the compacted [text | null video | prefix] (same tokens,
    # same positions, same order), so the CFG half costs Lt + Nv tokens instead of P. The skipped slots
    # stay masked in the cache; decoding writes both halves at the same slots P + C + s.
    keep = np.r_[0:text_len + Nv, P:P + C]
    _, ac = model.apply(variables, x0[:B], m0[:B], pos0[:B], qwen2.init_cache(cfg.decoder, B, slots),
                        method=prefill)
    _, au = model.apply(variables, x0[B:, keep], m0[B:, keep], pos0[B:, keep],
                        qwen2.init_cache(cfg.decoder, B, slots), method=prefill)
    # Rows are axis 0 of the mask and of each per-layer k/v buffer; axis 1 of the stacked (L, B, ...) k/v
    # of a scan_layers decoder.
    kv_axis = 1 if cfg.decoder.scan_layers else 0
    filled = {k: jax.tree.map(lambda a, b, ax=(0 if k == "mask" else kv_axis): jnp.concatenate([a, b], axis=ax),
                              ac["cache"][k], au["cache"][k]) for k in ("k", "v", "mask")}
    cache = dict(filled, index=jnp.asarray(P + C, jnp.int32))
  else:
    _, aux = model.apply(variables, x0, m0, pos0, qwen2.init_cache(cfg.decoder, nB, slots), method=prefill)
    cache = aux["cache"]
  state = {"step": jnp.asarray(C, jnp.int32), "ids": ids, "cache": cache,
           "done": jnp.zeros((B,), bool)}
  if return_logits:
    state["logits"] = jnp.zeros((B, La, K, V), jnp.float32)

  hw = step_heads_weights(cfg, params["heads"])

  def step_fn(m, col, vac, pos, cache):
    h, a = m.decode(m.embed_audio(col, vac), jnp.ones((nB, 1), bool), pos, cache)
    return step_heads(cfg, hw, h[:, 0]), a["cache"]

  def cond_fn(st):
    return (st["step"] < La - 1) & ~jnp.all(st["done"])

  def body_fn(st, noise=None):
    s = st["step"]
    col = jax.lax.dynamic_slice_in_dim(st["ids"], s, 1, axis=1)
    vac = jax.lax.dynamic_slice_in_dim(vacant, s, 1, axis=1)
    logits, cache = model.apply(variables, dup(col), dup(vac), (a0 + s)[:, None], st["cache"],
                                method=step_fn)
    logits = guide(logits, sc.cfg_scale)                                      # (B,K,V)
    j = s + 1
    keys = jax.vmap(lambda k: jax.random.fold_in(k, j))(keys_B)
    drawn = choose_tokens(logits, keys, sc, cfg.codebook_size, noise)
    kn = jax.lax.dynamic_index_in_dim(known, j, axis=1, keepdims=False)
    old = jax.lax.dynamic_index_in_dim(st["ids"], j, axis=1, keepdims=False)
    new = jnp.where(kn, old, drawn)
    out = {"step": j, "ids": jax.lax.dynamic_update_index_in_dim(st["ids"], new, j, axis=1), "cache": cache,
           "done": j >= lengths_B + K}
    if return_logits:
      out["logits"] = jax.lax.dynamic_update_index_in_dim(st["logits"], logits, s, axis=1)
    return out

  if sc.temperature == 0:
    st = jax.lax.while_loop(cond_fn, body_fn, state)
  else:
    # Blocks of NOISE_BLOCK steps: the Gumbel noise of a block's columns is drawn in one call, then an
    # inner loop decodes them (same keys, same noise, same tokens as drawing it step by step).
    def block_fn(st):
      j0 = st["step"] + 1
      noise = gumbel_noise(keys_B, (K, V), j0 + jnp.arange(NOISE_BLOCK))
      stop = st["step"] + NOISE_BLOCK
      inner_body = lambda t: body_fn(t, jax.lax.dynamic_index_in_dim(noise, t["step"] + 1 - j0, 0, False))
      return jax.lax.while_loop(lambda t: cond_fn(t) & (t["step"] < stop), inner_body, st)

    st = jax.lax.while_loop(cond_fn, block_fn, state)
  res = {"delayed": st["ids"], "vacant": vacant, "codes": frames_from_delayed(cfg, st["ids"], lengths_B,
                                                                               max_frames, xp=jnp),
         "lengths": lengths_B, "steps": st["step"] - C}
  if return_logits:
    res["logits"] = st["logits"]
  return res


def _pad_text(ids, mask, L):
  ids, mask = np.asarray(ids), np.asarray(mask, bool)
  pad = L - ids.shape[1]
  if pad <= 0:
    return ids, mask
  return np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))


def mesh_rules(mesh, batch_size: int):
  """The logical rules for sampling `batch_size` clips on `mesh`: the trainer's, except that the batch axis
  stays replicated when the clips do not split evenly over (data, fsdp) (e.g. one clip on a pod)."""
  missing = [a for a in sharding.MESH_AXES if a not in mesh.shape]
  if missing:
    raise ValueError(f"sampling needs a {sharding.MESH_AXES} mesh (sharding.make_mesh); this one has axes "
                     f"{tuple(mesh.shape)}, missing {missing}")
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % dp == 0:
    return sharding.LOGICAL_RULES
  return tuple((n, None) if n == "batch" else (n, a) for n, a in sharding.LOGICAL_RULES)


def clip_sharding(mesh, rules, ndim: int):
  """Sharding of a clip-leading (B, ...) prompt array under `mesh_rules`: split over (data, fsdp) when the
  rules split the batch, else replicated."""
  if rules is sharding.LOGICAL_RULES:
    return sharding.data_sharding(mesh, ndim)
  return sharding.replicated(mesh)


@functools.lru_cache(maxsize=8)
def _param_shardings(cfg: foley.FoleyConfig, mesh, rules):
  with sharding.use_mesh(mesh, rules):
    return sharding.shardings_for(foley_params.abstract_params(cfg), mesh, rules)


def place_params(cfg: foley.FoleyConfig, params, mesh, rules=sharding.LOGICAL_RULES):
  """`params` laid out on `mesh` by their logical axis names (the trainer's layout: layers split over
  tensor / fsdp), so a model too large for one chip samples across the slice."""
  sh = _param_shardings(cfg, mesh, tuple(tuple(r) for r in rules))
  want, got = jax.tree.structure(sh), jax.tree.structure(params)
  if want != got:
    raise ValueError(f"params do not match the model of this config (pass them through models.params.inference_layout "
                     f"with this config first): expected the tree {want}, got {got}")

  def put(path, x, s):
    try:
      return jax.device_put(x, s)
    except ValueError as e:
      raise ValueError(f"params{jax.tree_util.keystr(path)} {tuple(x.shape)} cannot be laid out as {s.spec} on "
                       f"mesh {dict(mesh.shape)}: {e}") from e

  return jax.tree_util.tree_map_with_path(put, params, sh)


def sample(cfg: foley.FoleyConfig, params, batch: dict, lengths, *, sample_cfg: SampleConfig = SampleConfig(),
           seed: int = 0, item_seeds=None, max_frames: Optional[int] = None, drop_text=None, drop_video=None,
           negative_text_ids=None, negative_text_mask=None, negative=None, prefix_codes=None,
           return_logits: bool = False, mesh=None) -> dict:
  """Generates audio codes for a batch of clips.

  cfg, params: the model (unboxed params). batch: the prompt fields of `DreamFoley.__call__` (text_ids,
  text_mask, sync_feats/clip_feats or video_feats, video_mask). lengths (B,): frames to generate per clip
  (25 per second), each <= max_frames (default max(lengths); pass a bucket size to share compilations).
  drop_text / drop_video (B,) bool: conditional-pass drops (video-only: drop_text; text-only:
  drop_video). mesh: sample sharded over a (data, fsdp, tensor) mesh (sharding.make_mesh): params are laid
  out as the trainer lays them out (`place_params`), the clips split over (data, fsdp) when they divide
  evenly. negative_text_ids/_mask (B, Ln) + negative (B,) bool: items whose unconditional pass uses
  the negative text (with null video) instead of null text. prefix_codes (B, K, C): the first C frames
  of every clip are given (windowed continuation); each length must be >= C.

  Returns numpy {"codes": (B,K,max_frames) frame-aligned, zero beyond lengths; "lengths": (B,);
  "delayed": (B,La,K) the full delayed token buffer; "vacant": (B,La,K); "steps": decode steps run;
  "logits" (B,La,K,V) guided logits, row j predicting column j+1 (only with return_logits)}.
  """
  lengths = np.asarray(lengths, np.int32).reshape(-1)
  B = lengths.shape[0]
  max_frames = int(max_frames or lengths.max())
  if lengths.min() < 1 or lengths.max() > max_frames:
    raise ValueError(f"lengths must be in [1, max_frames={max_frames}], got {lengths.tolist()}")
  batch = dict(batch)
  Lt = np.asarray(batch["text_ids"]).shape[1]
  batch.setdefault("text_mask", np.ones((B, Lt), bool))
  neg_ids = neg_mask = neg = None
  if negative_text_ids is not None:
    if sample_cfg.cfg_scale is None:
      raise ValueError("a negative prompt needs cfg_scale (it replaces the unconditional text)")
    neg_ids = np.asarray(negative_text_ids)
    neg_mask = np.ones(neg_ids.shape, bool) if negative_text_mask is None else np.asarray(negative_text_mask)
    neg = np.ones((B,), bool) if negative is None else np.asarray(negative, bool)
    L = max(Lt, neg_ids.shape[1])
    batch["text_ids"], batch["text_mask"] = _pad_text(batch["text_ids"], batch["text_mask"], L)
    neg_ids, neg_mask = _pad_text(neg_ids, neg_mask, L)
    neg_ids, neg_mask, neg = jnp.asarray(neg_ids, jnp.int32), jnp.asarray(neg_mask), jnp.asarray(neg)
  if prefix_codes is not None:
    prefix_codes = jnp.asarray(prefix_codes, jnp.int32)
    if prefix_codes.shape[:2] != (B, cfg.num_codebooks):
      raise ValueError(f"prefix_codes must be (B={B}, K={cfg.num_codebooks}, C), got {prefix_codes.shape}")
    if lengths.min() < prefix_codes.shape[-1]:
      raise ValueError(f"every length must cover the prefix ({prefix_codes.shape[-1]} frames): {lengths.tolist()}")
  seeds = np.arange(B) if item_seeds is None else np.asarray(item_seeds)
  base = jax.random.key(seed)
  keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(seeds, jnp.uint32))
  # Always arrays (all-False = keep): one compiled program for every mode.
  dt = jnp.zeros((B,), bool) if drop_text is None else jnp.asarray(drop_text, bool).reshape(B)
  dv = jnp.zeros((B,), bool) if drop_video is None else jnp.asarray(drop_video, bool).reshape(B)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  ctx = contextlib.nullcontext()
  if mesh is not None:
    rules = mesh_rules(mesh, B)
    params = place_params(cfg, params, mesh, rules)
    batch = {k: jax.device_put(v, clip_sharding(mesh, rules, v.ndim)) for k, v in batch.items()}
    ctx = sharding.use_mesh(mesh, rules)
  with ctx:
    out = _sample_jit(params, batch, jnp.asarray(lengths), keys, dt, dv, neg_ids, neg_mask, neg, prefix_codes,
                      cfg=cfg, sc=sample_cfg, max_frames=max_frames, return_logits=return_logits)
  return jax.tree.map(np.asarray, out)


# --------------------------------------------------------------------------------------------------
# Long clips: windowed continuation
# --------------------------------------------------------------------------------------------------

def _window(x: np.ndarray, start: int, n: int) -> np.ndarray:
  """x[:, start:start + n] zero-padded to n along axis 1: a video shorter than the audio (text-to-audio,
  --allow_longer) is padded one window at a time, never for the whole clip."""
  w = x[:, start:start + n]
  pad = n - w.shape[1]
  return np.pad(w, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)) if pad > 0 else w


def _frames_windower(cfg: foley.FoleyConfig, batch: dict, total: int, window: int, context: int):
  """frames mode: (start, window lengths) -> the window's uint8 frame batch (25 fps and 4 fps).

  Window starts are whole seconds so the 4 fps frames stay aligned with the 25 fps ones.
  """
  per_s = int(cfg.sync_rate)
  if window % per_s or context % per_s:
    raise ValueError(f"frames-mode windows must be whole seconds: window={window}, context={context} frames")
  out = {}
  for key, rate in (("frames_sync", cfg.sync_rate), ("frames_clip", cfg.clip_rate)):
    if key not in batch:
      continue
    x = np.asarray(batch[key])
    out[key] = (x, np.asarray(batch.get(f"{key}_mask", np.ones(x.shape[:2], bool)), bool), rate)

  def window_batch(start: int, wl) -> dict:
    wb = {}
    for key, (x, m, rate) in out.items():
      a = start * int(rate) // per_s
      n = int(np.ceil(window * rate / cfg.sync_rate))
      keep = np.arange(n)[None] < np.ceil(np.asarray(wl)[:, None] * rate / cfg.sync_rate)
      wb[key], wb[f"{key}_mask"] = _window(x, a, n), _window(m, a, n) & keep
    return wb

  return window_batch


def fused_video(cfg: foley.FoleyConfig, batch: dict) -> tuple[np.ndarray, np.ndarray]:
  """Whole-clip fused video features at the sync rate (B, Tv, Dv) and mask (B, Tv)."""
  if "video_feats" in batch:
    v = np.asarray(batch["video_feats"], np.float32)
  else:
    if "video_mask" in batch:
      Tv = np.asarray(batch["video_mask"]).shape[1]
    elif cfg.use_sync:
      Tv = np.asarray(batch["sync_feats"]).shape[1]
    else:
      Tv = int(np.ceil(np.asarray(batch["clip_feats"]).shape[1] * cfg.sync_rate / cfg.clip_rate))
    v = np.asarray(foley.fuse_video(cfg, batch.get("sync_feats"), batch.get("clip_feats"), Tv))
  m = np.asarray(batch.get("video_mask", np.ones(v.shape[:2], bool)), bool)
  return v, m


def window_plan(total_frames: int, window: int, context: int) -> list[int]:
  """Start frames of the windows covering [0, total_frames): each new window re-reads `context` frames."""
  if not 0 <= context < window:
    raise ValueError(f"context ({context}) must be in [0, window={window})")
  starts = [0]
  while starts[-1] + window < total_frames:
    starts.append(starts[-1] + window - context)
  return starts


def sample_long(cfg: foley.FoleyConfig, params, batch: dict, lengths, *, window_frames: int = 250,
                context_frames: int = 75, sample_cfg: SampleConfig = SampleConfig(), seed: int = 0,
                item_seeds=None, progress=None, **kw) -> dict:
  """Clips of any length: windows of `window_frames` (the trained length, 10 s) that overlap by
  `context_frames` (3 s). Window w>0 re-prefills [text | video frames [s, s+W) | the last C generated
  frames as a delayed prefix] and continues; the seam is at token level (no crossfade).

  batch holds whole-clip video (25 Hz sync feats / 4 fps clip feats, or fused video_feats) and text;
  lengths (B,) total frames. Video frame f and audio frame f share the time f / 25 s. Returns
  {"codes" (B,K,max(lengths)), "lengths", "windows": [{"start", "lengths", "video_start", "prefix"}]}.
  `progress(n)` (optional) is called with the number of frames each window adds.
  """
  lengths = np.asarray(lengths, np.int64).reshape(-1)
  B, K = lengths.shape[0], cfg.num_codebooks
  if kw.get("mesh") is not None:     # once, not in every window's sample call
    params = place_params(cfg, params, kw["mesh"])
  total = int(lengths.max())
  starts = window_plan(total, window_frames, context_frames)
  frames_mode = cfg.vision_mode == "frames"
  if frames_mode:
    video_window = _frames_windower(cfg, batch, starts[-1] + window_frames, window_frames, context_frames)
  else:
    feats, vmask = fused_video(cfg, batch)
  text = {k: batch[k] for k in ("text_ids", "text_mask") if k in batch}
  out = np.zeros((B, K, total), np.int32)
  windows = []
  seeds = np.arange(B) if item_seeds is None else np.asarray(item_seeds)
  for w, start in enumerate(starts):
    C = 0 if w == 0 else context_frames
    # Items already complete get a dummy length (C + 1) and their output is ignored.
    active = lengths > start + C
    wl = np.where(active, np.minimum(lengths - start, window_frames), C + 1).astype(np.int32)
    if frames_mode:
      wb = dict(text, **video_window(start, wl))
    else:
      vm = _window(vmask, start, window_frames) & (np.arange(window_frames)[None] < wl[:, None])
      wb = dict(text, video_feats=_window(feats, start, window_frames), video_mask=vm)
    prefix = out[:, :, start:start + C].copy() if C else None
    res = sample(cfg, params, wb, wl, sample_cfg=sample_cfg, seed=seed + 7919 * w, item_seeds=seeds,
                 max_frames=window_frames, prefix_codes=prefix, **kw)
    for i in np.nonzero(active)[0]:
      out[i, :, start + C:start + wl[i]] = res["codes"][i, :, C:wl[i]]
    windows.append({"start": start, "lengths": wl, "active": active, "video_start": start, "prefix": prefix,
                    "codes": res["codes"]})
    if progress is not None:
      progress(int(np.sum(np.where(active, wl - C, 0))))
  return {"codes": out, "lengths": lengths.astype(np.int32), "windows": windows}
