"""DAC acoustic encoder/decoder (as used by the higgs-audio-v2 tokenizer), channels-last.

Module and parameter names follow transformers' ``DacEncoder``/``DacDecoder`` (``block_0/res_unit1/conv1``),
with weight norm already merged into plain kernels by the converter. The decoder's transposed convs use
``output_padding = stride % 2`` and there is no final tanh (the tokenizer's adjustment of DAC).
Legend: B batch, T time, C channels.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax

from dreamfoley_jax.audio.layers import Conv1d, ConvTranspose1d, Snake1d, conv_out_len

Array = jax.Array


class DacResidualUnit(nn.Module):
  dim: int
  dilation: int

  @nn.compact
  def __call__(self, x_BxTxC: Array, len_B: Optional[Array] = None) -> Array:
    pad = (7 - 1) * self.dilation // 2
    y = Snake1d(name="snake1")(x_BxTxC)
    y = Conv1d(self.dim, 7, dilation=self.dilation, padding=pad, name="conv1")(y, len_B)
    y = Snake1d(name="snake2")(y)
    y = Conv1d(self.dim, 1, name="conv2")(y, len_B)
    return x_BxTxC + y  # lengths are preserved, so the reference's centre crop never applies


def _down_conv(stride: int) -> tuple[int, int]:
  return 2 * stride, math.ceil(stride / 2)  # kernel, padding


class DacEncoderBlock(nn.Module):
  dim: int
  stride: int

  @nn.compact
  def __call__(self, h: Array, len_B: Optional[Array] = None) -> Array:
    for j, dil in enumerate((1, 3, 9)):
      h = DacResidualUnit(self.dim // 2, dil, name=f"res_unit{j + 1}")(h, len_B)
    h = Snake1d(name="snake1")(h)
    k, p = _down_conv(self.stride)
    return Conv1d(self.dim, k, stride=self.stride, padding=p, name="conv1")(h, len_B)


class DacDecoderBlock(nn.Module):
  out_dim: int
  stride: int

  @nn.compact
  def __call__(self, h: Array, len_B: Optional[Array] = None) -> tuple[Array, Optional[Array]]:
    s = self.stride
    k, p, op = 2 * s, math.ceil(s / 2), s % 2
    h = Snake1d(name="snake1")(h)
    h = ConvTranspose1d(self.out_dim, k, s, p, op, name="conv_t1")(h, len_B)
    if len_B is not None:
      len_B = (len_B - 1) * s - 2 * p + k + op
    for j, dil in enumerate((1, 3, 9)):
      h = DacResidualUnit(self.out_dim, dil, name=f"res_unit{j + 1}")(h, len_B)
    return h, len_B


class DacEncoder(nn.Module):
  """(B, N, 1) audio -> (B, N / hop, hidden_size)."""
  encoder_hidden_size: int
  downsampling_ratios: Sequence[int]
  hidden_size: int

  @nn.compact
  def __call__(self, x_BxNx1: Array, len_B: Optional[Array] = None) -> tuple[Array, Optional[Array]]:
    h = Conv1d(self.encoder_hidden_size, 7, padding=3, name="conv1")(x_BxNx1, len_B)
    for i, stride in enumerate(self.downsampling_ratios):
      h = DacEncoderBlock(self.encoder_hidden_size * 2 ** (i + 1), stride, name=f"block_{i}")(h, len_B)
      if len_B is not None:
        k, p = _down_conv(stride)
        len_B = conv_out_len(len_B, k, stride, p)
    h = Snake1d(name="snake1")(h)
    h = Conv1d(self.hidden_size, 3, padding=1, name="conv2")(h, len_B)
    return h, len_B


def encoder_out_len_int(n: int, downsampling_ratios: Sequence[int]) -> int:
  """transformers' conv1d_output_length chained over the encoder's strided convs (others keep length)."""
  from dreamfoley_jax.audio.layers import conv_out_len_int

  for stride in downsampling_ratios:
    k, p = _down_conv(stride)
    n = conv_out_len_int(n, k, stride, p)
  return n


class DacDecoder(nn.Module):
  """(B, T, hidden_size) -> (B, T * hop, 1) audio."""
  decoder_hidden_size: int
  upsampling_ratios: Sequence[int]

  @nn.compact
  def __call__(self, x_BxTxC: Array, len_B: Optional[Array] = None) -> tuple[Array, Optional[Array]]:
    h = Conv1d(self.decoder_hidden_size, 7, padding=3, name="conv1")(x_BxTxC, len_B)
    for i, stride in enumerate(self.upsampling_ratios):
      h, len_B = DacDecoderBlock(self.decoder_hidden_size // 2 ** (i + 1), stride, name=f"block_{i}")(h, len_B)
    h = Snake1d(name="snake1")(h)
    h = Conv1d(1, 7, padding=3, name="conv2")(h, len_B)
    return h, len_B
