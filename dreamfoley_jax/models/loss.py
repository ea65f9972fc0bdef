"""The training loss (section 5.1): CFG condition drop, the trained-cell mask, the weighted per-codebook CE.

Legend (dreamfoley_jax.models): B batch, La delayed audio columns, K codebooks, V per-codebook vocab.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dreamfoley_jax.models.foley import FoleyConfig

Array = jax.Array


def cfg_drop(rng, batch_size: int, p_text: float, p_video: float):
  """Independent per-example drop decisions for text and video (deterministic given rng)."""
  kt, kv = jax.random.split(rng)
  return (jax.random.uniform(kt, (batch_size,)) < p_text, jax.random.uniform(kv, (batch_size,)) < p_video)


def target_mask(cfg: FoleyConfig, batch: dict) -> Array:
  """(B, La-1, K): which next-column cells are trained: real codes and the final EOS; not BOS/staircase."""
  ids = batch["audio_ids"]
  tgt = ids[:, 1:]
  valid = batch.get("audio_mask", jnp.ones(ids.shape[:2], bool))[:, 1:, None]
  m = valid & (tgt != cfg.bos_id)
  if "audio_vacant" in batch:
    m = m & ~batch["audio_vacant"][:, 1:]
  return m


def weighted_loss(cfg: FoleyConfig, logits_BxLaxKxV: Array, batch: dict):
  """sum_k w_k * CE_k (section 5.1), CE_k averaged over the trained cells of codebook k."""
  ids = batch["audio_ids"]
  logits = logits_BxLaxKxV[:, :-1].astype(jnp.float32)
  tgt = ids[:, 1:]
  m = target_mask(cfg, batch).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tgt[..., None].astype(jnp.int32), axis=-1)[..., 0]   # (B,La-1,K)
  count = m.sum(axis=(0, 1))
  ce_k = (nll * m).sum(axis=(0, 1)) / jnp.maximum(count, 1.0)
  acc_k = ((jnp.argmax(logits, -1) == tgt) * m).sum(axis=(0, 1)) / jnp.maximum(count, 1.0)
  w = jnp.asarray(cfg.loss_weights[:cfg.num_codebooks], jnp.float32)
  loss = jnp.sum(w * ce_k)
  aux = {"loss": loss, "ce_per_codebook": ce_k, "acc_per_codebook": acc_k, "num_targets": count.sum()}
  return loss, aux
