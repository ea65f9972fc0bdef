"""HuBERT (base, post-LN, GroupNorm conv front end) as the higgs-audio-v2 tokenizer's semantic teacher.

Names follow transformers' ``HubertModel`` (``feature_extractor/conv_layers_0/conv``,
``encoder/layers_0/attention/q_proj``). Returns every hidden state: entry 0 is the encoder input after
the positional conv and ``encoder.layer_norm``, entry l the output of layer l.
Legend: B batch, N samples, T frames (50 Hz), D width, H heads, E head dim.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamfoley_jax.audio.layers import (HIGHEST, ChannelGroupNorm, Conv1d, Dense, LayerNorm, conv_out_len,
                                         conv_out_len_int, gelu)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class HubertConfig:
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  layer_norm_eps: float = 1e-5
  feat_proj_layer_norm: bool = True

  @classmethod
  def from_hf_config(cls, d: dict) -> "HubertConfig":
    """From a transformers HubertConfig dict; rejects variants this port does not implement."""
    unsupported = {"feat_extract_norm": "group", "do_stable_layer_norm": False, "hidden_act": "gelu",
                   "feat_extract_activation": "gelu", "conv_pos_batch_norm": False, "use_weighted_layer_sum": False}
    for k, want in unsupported.items():
      if k in d and d[k] != want:
        raise ValueError(f"HuBERT config field {k}={d[k]!r} is not supported (only {want!r})")
    kw = {}
    for f in dataclasses.fields(cls):
      if f.name in d:
        v = d[f.name]
        kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)

  def frames(self, n: int) -> int:
    """Number of 50 Hz frames for `n` input samples."""
    for k, s in zip(self.conv_kernel, self.conv_stride):
      n = conv_out_len_int(n, k, s)
    return n


class HubertAttention(nn.Module):
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array, key_valid_BxT: Optional[Array]) -> Array:
    c = self.cfg
    b, t, d = x_BxTxD.shape
    h = c.num_attention_heads
    e = d // h
    q = Dense(d, name="q_proj")(x_BxTxD).reshape(b, t, h, e)
    k = Dense(d, name="k_proj")(x_BxTxD).reshape(b, t, h, e)
    v = Dense(d, name="v_proj")(x_BxTxD).reshape(b, t, h, e)
    s_BxHxTxS = jnp.einsum("bthe,bshe->bhts", q, k, precision=HIGHEST) * (e ** -0.5)
    if key_valid_BxT is not None:
      s_BxHxTxS = jnp.where(key_valid_BxT[:, None, None, :], s_BxHxTxS, -jnp.inf)
    p = jax.nn.softmax(s_BxHxTxS, axis=-1)
    o = jnp.einsum("bhts,bshe->bthe", p, v, precision=HIGHEST).reshape(b, t, d)
    return Dense(d, name="out_proj")(o)


class HubertFeedForward(nn.Module):
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.cfg
    return Dense(c.hidden_size, name="output_dense")(gelu(Dense(c.intermediate_size, name="intermediate_dense")(x)))


class HubertEncoderLayer(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + ff(x))."""
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array, key_valid_BxT: Optional[Array]) -> Array:
    c = self.cfg
    x = x_BxTxD + HubertAttention(c, name="attention")(x_BxTxD, key_valid_BxT)
    x = LayerNorm(c.layer_norm_eps, name="layer_norm")(x)
    x = x + HubertFeedForward(c, name="feed_forward")(x)
    return LayerNorm(c.layer_norm_eps, name="final_layer_norm")(x)


class HubertConvLayer(nn.Module):
  cfg: HubertConfig
  i: int

  @nn.compact
  def __call__(self, x_BxTxC: Array, out_len_B: Optional[Array]) -> Array:
    c, i = self.cfg, self.i
    # no padding: valid outputs read only valid inputs, so only the GroupNorm statistics need the length
    x = Conv1d(c.conv_dim[i], c.conv_kernel[i], c.conv_stride[i], use_bias=c.conv_bias, name="conv")(x_BxTxC)
    if i == 0:
      x = ChannelGroupNorm(1e-5, name="layer_norm")(x, out_len_B)
    return gelu(x)


class HubertFeatureEncoder(nn.Module):
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x_BxN: Array, len_B: Optional[Array]) -> tuple[Array, Optional[Array]]:
    c = self.cfg
    x = x_BxN[:, :, None]
    for i in range(len(c.conv_dim)):
      if len_B is not None:
        len_B = conv_out_len(len_B, c.conv_kernel[i], c.conv_stride[i])
      x = HubertConvLayer(c, i, name=f"conv_layers_{i}")(x, len_B)
    return x, len_B


class HubertFeatureProjection(nn.Module):
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.cfg
    if c.feat_proj_layer_norm:
      x = LayerNorm(c.layer_norm_eps, name="layer_norm")(x)
    return Dense(c.hidden_size, name="projection")(x)


class HubertPositionalConvEmbedding(nn.Module):
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array, len_B: Optional[Array]) -> Array:
    c = self.cfg
    k = c.num_conv_pos_embeddings
    y = Conv1d(c.hidden_size, k, padding=k // 2, groups=c.num_conv_pos_embedding_groups, name="conv")(x_BxTxD, len_B)
    if k % 2 == 0:  # "same" padding with an even kernel yields one extra step; the reference drops it
      y = y[:, :-1]
    return gelu(y)


class HubertEncoder(nn.Module):
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array, len_B: Optional[Array]) -> Array:
    c = self.cfg
    h = x_BxTxD + HubertPositionalConvEmbedding(c, name="pos_conv_embed")(x_BxTxD, len_B)
    h = LayerNorm(c.layer_norm_eps, name="layer_norm")(h)
    valid_BxT = None if len_B is None else jnp.arange(h.shape[1])[None, :] < len_B[:, None]
    states = [h]
    for i in range(c.num_hidden_layers):
      h = HubertEncoderLayer(c, name=f"layers_{i}")(h, valid_BxT)
      states.append(h)
    return jnp.stack(states, axis=1)


class HubertModel(nn.Module):
  """(B, N) 16 kHz audio -> (all hidden states (B, L+1, T, D), valid frames (B,) or None)."""
  cfg: HubertConfig

  @nn.compact
  def __call__(self, x_BxN: Array, len_B: Optional[Array] = None) -> tuple[Array, Optional[Array]]:
    feats, frames_B = HubertFeatureEncoder(self.cfg, name="feature_extractor")(x_BxN, len_B)
    h = HubertFeatureProjection(self.cfg, name="feature_projection")(feats)
    return HubertEncoder(self.cfg, name="encoder")(h, frames_B), frames_B
