"""Channels-last 1-D layers shared by the audio tokenizer (HuBERT, DAC, semantic codec).

Legend: B batch, T time steps, C channels, K kernel taps. Every layer takes an optional per-item valid
length `len_B`; when given, inputs past it are zeroed before a convolution reads them, which reproduces
what the reference computes on the unpadded clip (its convolutions see zero padding there).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST
CH = "audio_channels"
CH_IN = "audio_channels_in"  # a kernel's input channels (a distinct name: logical axes must not repeat)


def conv_out_len(len_B: Array, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Array:
  """torch Conv1d output length for each valid input length (non-negative)."""
  return jnp.maximum((len_B + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1, 0)


def conv_out_len_int(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
  """The same for a static length, using torch/transformers' int() truncation."""
  return int((n + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)


def time_mask(x_BxTxC: Array, len_B: Optional[Array]) -> Array:
  if len_B is None:
    return x_BxTxC
  keep_BxT = jnp.arange(x_BxTxC.shape[1])[None, :] < len_B[:, None]
  return jnp.where(keep_BxT[..., None], x_BxTxC, 0.0)


def _conv_init(key, shape, dtype=jnp.float32):
  k, cin, _ = shape
  return jax.random.normal(key, shape, dtype) / jnp.sqrt(k * cin)


class Conv1d(nn.Module):
  """torch.nn.Conv1d on (B, T, C); kernel (K, C_in/groups, C_out)."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  groups: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x_BxTxC: Array, len_B: Optional[Array] = None) -> Array:
    cin = x_BxTxC.shape[-1]
    w = self.param("kernel", nn.with_logical_partitioning(_conv_init, ("kernel", CH_IN, CH)),
                   (self.kernel_size, cin // self.groups, self.features))
    y = jax.lax.conv_general_dilated(
        time_mask(x_BxTxC, len_B), w, (self.stride,), [(self.padding, self.padding)],
        rhs_dilation=(self.dilation,), dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=self.groups, precision=HIGHEST)
    if self.use_bias:
      y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (CH,)), (self.features,))
    return y


class ConvTranspose1d(nn.Module):
  """torch.nn.ConvTranspose1d on (B, T, C); kernel (K, C_in, C_out) = torch (C_in, C_out, K) moved.

  Output length (T - 1) * stride - 2 * padding + K + output_padding, as torch's.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int = 0
  output_padding: int = 0
  use_bias: bool = True

  @nn.compact
  def __call__(self, x_BxTxC: Array, len_B: Optional[Array] = None) -> Array:
    k, p = self.kernel_size, self.padding
    w_KxIxO = self.param("kernel", nn.with_logical_partitioning(_conv_init, ("kernel", CH_IN, CH)),
                         (k, x_BxTxC.shape[-1], self.features))
    # A transposed conv is a conv over the stride-dilated input with the taps reversed.
    y = jax.lax.conv_general_dilated(
        time_mask(x_BxTxC, len_B), w_KxIxO[::-1], (1,), [(k - 1 - p, k - 1 - p + self.output_padding)],
        lhs_dilation=(self.stride,), dimension_numbers=("NWC", "WIO", "NWC"), precision=HIGHEST)
    if self.use_bias:
      y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (CH,)), (self.features,))
    return y


class Dense(nn.Module):
  """torch.nn.Linear on the last axis; kernel (in, out); matmul on 2-D-flattened activations."""
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    w = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), (CH_IN, CH)),
                   (x.shape[-1], self.features))
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w, precision=HIGHEST).reshape(*x.shape[:-1], self.features)
    if self.use_bias:
      y = y + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (CH,)), (self.features,))
    return y


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm over the last axis (two-pass variance, as torch)."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    g = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, (CH,)), (c,))
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (CH,)), (c,))
    mu = jnp.mean(x, -1, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, -1, keepdims=True)
    return xc * jax.lax.rsqrt(var + self.eps) * g + b


class ChannelGroupNorm(nn.Module):
  """torch.nn.GroupNorm(C, C): each channel normalised over time (valid steps only when len_B given)."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x_BxTxC: Array, len_B: Optional[Array] = None) -> Array:
    c = x_BxTxC.shape[-1]
    g = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, (CH,)), (c,))
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (CH,)), (c,))
    if len_B is None:
      mu = jnp.mean(x_BxTxC, 1, keepdims=True)
      xc = x_BxTxC - mu
      var = jnp.mean(xc * xc, 1, keepdims=True)
    else:
      keep = (jnp.arange(x_BxTxC.shape[1])[None, :] < len_B[:, None])[..., None]
      n = jnp.maximum(len_B, 1).astype(x_BxTxC.dtype)[:, None, None]
      mu = jnp.sum(jnp.where(keep, x_BxTxC, 0.0), 1, keepdims=True) / n
      xc = x_BxTxC - mu
      var = jnp.sum(jnp.where(keep, xc * xc, 0.0), 1, keepdims=True) / n
    return xc * jax.lax.rsqrt(var + self.eps) * g + b


class Snake1d(nn.Module):
  """DAC's Snake activation x + sin(alpha x)^2 / (alpha + 1e-9); alpha per channel."""

  @nn.compact
  def __call__(self, x_BxTxC: Array) -> Array:
    alpha = self.param("alpha", nn.with_logical_partitioning(nn.initializers.ones, (CH,)), (x_BxTxC.shape[-1],))
    return x_BxTxC + (1.0 / (alpha + 1e-9)) * jnp.square(jnp.sin(alpha * x_BxTxC))


def gelu(x: Array) -> Array:
  return jax.nn.gelu(x, approximate=False)
