"""Token choice: logit filters (top-k, top-p), temperature, the categorical draw and CFG guidance.

Legend: B clips, K codebooks, V per-codebook vocab, N columns of a noise block; `x` in `logits_xV` stands
for any leading dims.

Per codebook, in this order (issue 7): BOS/EOS logits masked out (codes only), top-k, then top-p on the
softmax of the top-k-filtered logits, then temperature on the surviving logits, then a categorical draw.
temperature == 0 takes the argmax. Note the order: top-p sees the *untempered* distribution (transformers
applies temperature first); top-p never replaces top-k. Filters follow transformers' TopKLogitsWarper /
TopPLogitsWarper (min_keep = 1).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from dreamfoley_jax.sampling.config import SampleConfig

Array = jax.Array


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
  desc_xk = jax.lax.optimization_barrier(jax.lax.top_k(logits_xV, top_k)[0])   # sorted, descending
  thr = desc_xk[..., -1:]                                        # k-th largest: ties kept, as transformers
  if top_p < 1.0:
    asc = desc_xk[..., ::-1]
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
  x_BxKxV = jnp.where(jnp.arange(V) < codebook_size, logits_BxKxV.astype(jnp.float32), -jnp.inf)
  if sc.temperature == 0:
    return argmax_last(x_BxKxV)
  x_BxKxV = filter_logits(x_BxKxV, sc.top_k, sc.top_p) / sc.temperature
  if gumbel_BxKxV is not None:
    return argmax_last(gumbel_BxKxV + x_BxKxV).astype(jnp.int32)
  return jax.vmap(categorical)(keys_B, x_BxKxV).astype(jnp.int32)


def guide(logits_RxKxV: Array, cfg_scale: Optional[float]) -> Array:
  """CFG: uncond + s * (cond - uncond) over the doubled batch (R = 2B rows: conditional first); the logits
  unchanged without CFG (cfg_scale None)."""
  if cfg_scale is None:
    return logits_RxKxV
  B = logits_RxKxV.shape[0] // 2
  cond_BxKxV, unc_BxKxV = logits_RxKxV[:B], logits_RxKxV[B:]
  return unc_BxKxV + cfg_scale * (cond_BxKxV - unc_BxKxV)
