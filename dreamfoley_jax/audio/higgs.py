"""The higgs-audio-v2 audio tokenizer (transformers ``HiggsAudioV2TokenizerModel``) in Flax.

encode: 24 kHz audio -> 16 kHz sinc resampling -> 160-sample pad -> HuBERT (mean of all hidden states,
every second frame) -> semantic encoder; DAC acoustic encoder on the 24 kHz audio (padded by hop/2 each
side when its frame count differs from the semantic one); concat -> ``fc`` -> residual VQ
(project_in -> nearest code by the reference's distance formula -> project_out, subtract).
decode: sum of project_out(codebook[c_k]) -> ``fc2`` -> DAC decoder.

Both take optional per-item valid lengths so that clips of different lengths can share one padded
batch (see ``dreamfoley_jax.audio.tokenizer``): every convolution, GroupNorm and attention then sees
exactly what it would see on the unpadded clip.
Legend: B batch, N samples, T frames (25 Hz), D width, K codebooks, V codebook entries, E codebook dim.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamfoley_jax.audio import resample as rs
from dreamfoley_jax.audio.dac import DacDecoder, DacEncoder, encoder_out_len_int
from dreamfoley_jax.audio.hubert import HubertConfig, HubertModel
from dreamfoley_jax.audio.layers import HIGHEST, CH, Conv1d, Dense, conv_out_len

Array = jax.Array

SEMANTIC_PAD = 160  # samples at 16 kHz on each side before HuBERT (the transformers port; boson used hop/2)


@dataclasses.dataclass(frozen=True)
class HiggsTokenizerConfig:
  """Geometry of the tokenizer. Defaults are the real bosonai/higgs-audio-v2-tokenizer (see `real()`)."""
  sample_rate: int = 24000
  semantic_sample_rate: int = 16000
  downsample_factor: int = 320
  target_bandwidths: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
  codebook_size: int = 1024
  codebook_dim: int = 64
  # semantic encoder (xcodec "Encoder")
  kernel_size: int = 3
  channel_ratios: tuple[float, ...] = (1, 1)
  strides: tuple[int, ...] = (1, 1)
  block_dilations: tuple[int, ...] = (1, 1)
  unit_kernel_size: int = 3
  # DAC
  encoder_hidden_size: int = 64
  downsampling_ratios: tuple[int, ...] = (8, 5, 4, 2, 3)
  decoder_hidden_size: int = 1024
  upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2, 3)
  acoustic_hidden_size: int = 256
  hubert: HubertConfig = HubertConfig()

  @classmethod
  def real(cls) -> "HiggsTokenizerConfig":
    """bosonai/higgs-audio-v2-tokenizer: hop 960 (25 Hz), 8 quantizers x 1024 x 64, HuBERT-base.

    Not transformers' `HiggsAudioV2TokenizerConfig()` defaults: those have ratios [8,5,4,2] (hop 320) and
    target_bandwidths up to 4 kbps (16 quantizers).
    """
    return cls()

  @classmethod
  def from_hf_config(cls, d: dict) -> "HiggsTokenizerConfig":
    """From `HiggsAudioV2TokenizerConfig.to_dict()` (or a config.json of that model)."""
    if "config_to_dict" in d:  # the golden's JSON wraps it
      d = d["config_to_dict"]
    ac = d.get("acoustic_model_config") or {}
    sem = d.get("semantic_model_config") or {}
    # transformers fills unspecified sub-config fields from these defaults
    ac = {"encoder_hidden_size": 64, "downsampling_ratios": [8, 5, 4, 2], "decoder_hidden_size": 1024,
          "upsampling_ratios": [8, 5, 4, 2], "hidden_size": 256, **ac}
    t = lambda v: tuple(v)
    kw = dict(
        sample_rate=d.get("sample_rate", 24000), semantic_sample_rate=d.get("semantic_sample_rate", 16000),
        downsample_factor=d.get("downsample_factor", 320),
        target_bandwidths=t(d.get("target_bandwidths", (0.5, 1, 1.5, 2, 4))),
        codebook_size=d.get("codebook_size", 1024), codebook_dim=d.get("codebook_dim", 64),
        kernel_size=d.get("kernel_size", 3), channel_ratios=t(d.get("channel_ratios", (1, 1))),
        strides=t(d.get("strides", (1, 1))), block_dilations=t(d.get("block_dilations", (1, 1))),
        unit_kernel_size=d.get("unit_kernel_size", 3),
        encoder_hidden_size=ac["encoder_hidden_size"], downsampling_ratios=t(ac["downsampling_ratios"]),
        decoder_hidden_size=ac["decoder_hidden_size"], upsampling_ratios=t(ac["upsampling_ratios"]),
        acoustic_hidden_size=ac["hidden_size"], hubert=HubertConfig.from_hf_config(sem))
    return cls(**kw)

  def replace(self, **kw) -> "HiggsTokenizerConfig":
    return dataclasses.replace(self, **kw)

  @property
  def hop_length(self) -> int:
    return math.prod(self.downsampling_ratios)

  @property
  def frame_rate(self) -> int:
    return math.ceil(self.sample_rate / self.hop_length)

  @property
  def num_quantizers(self) -> int:
    return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * math.ceil(math.log2(self.codebook_size))))

  @property
  def hidden_size(self) -> int:
    return self.acoustic_hidden_size + self.hubert.hidden_size

  @property
  def semantic_downsample_factor(self) -> int:
    return int(self.hop_length / (self.sample_rate / self.semantic_sample_rate) / self.downsample_factor)

  # ---- static frame arithmetic (python ints, as the reference computes them) ----
  def semantic_frames(self, n: int) -> int:
    r = rs.output_length(n, self.sample_rate, self.semantic_sample_rate) if self.sample_rate != \
        self.semantic_sample_rate else n
    t50 = self.hubert.frames(r + 2 * SEMANTIC_PAD)
    f = self.semantic_downsample_factor
    return -(-t50 // f) if f > 1 else t50

  def acoustic_pad(self, n: int) -> int:
    """Samples of zero padding on each side before the acoustic encoder (0 or hop // 2)."""
    return 0 if encoder_out_len_int(n, self.downsampling_ratios) == self.semantic_frames(n) else self.hop_length // 2

  def num_frames(self, n: int) -> int:
    """Code frames for an `n`-sample clip (min of both branches after the pad decision)."""
    p = self.acoustic_pad(n)
    return min(encoder_out_len_int(n + 2 * p, self.downsampling_ratios), self.semantic_frames(n))

  def min_samples(self) -> int:
    """Shortest clip the tokenizer accepts: one hop (one code frame)."""
    return self.hop_length


class HiggsResidualUnit(nn.Module):
  """xcodec semantic residual unit: x + conv2(elu(conv1(elu(x)))), no biases."""
  cfg: HiggsTokenizerConfig
  dim: int
  dilation: int

  @nn.compact
  def __call__(self, x: Array, len_B: Optional[Array]) -> Array:
    k = self.cfg.unit_kernel_size
    y = Conv1d(self.dim, k, padding=(k - 1) // 2 * self.dilation, dilation=self.dilation, use_bias=False,
               name="conv1")(jax.nn.elu(x), len_B)
    y = Conv1d(self.dim, 1, use_bias=False, name="conv2")(jax.nn.elu(y), len_B)
    return x + y


class SemanticEncoderBlock(nn.Module):
  cfg: HiggsTokenizerConfig
  in_dim: int
  out_dim: int
  stride: int

  @nn.compact
  def __call__(self, x: Array, len_B: Optional[Array]) -> tuple[Array, Optional[Array]]:
    for i, d in enumerate(self.cfg.block_dilations):
      x = HiggsResidualUnit(self.cfg, self.in_dim, d, name=f"res_units_{i}")(x, len_B)
    k = 3 if self.stride == 1 else 2 * self.stride
    x = Conv1d(self.out_dim, k, self.stride, (k - 1) // 2, name="conv")(x, len_B)
    if len_B is not None:
      len_B = conv_out_len(len_B, k, self.stride, (k - 1) // 2)
    return x, len_B


class SemanticEncoder(nn.Module):
  cfg: HiggsTokenizerConfig

  @nn.compact
  def __call__(self, x_BxTxD: Array, len_B: Optional[Array]) -> Array:
    c = self.cfg
    d = c.hubert.hidden_size
    x = Conv1d(d, c.kernel_size, 1, c.kernel_size // 2, use_bias=False, name="conv")(x_BxTxD, len_B)
    cin = d
    for i, s in enumerate(c.strides):
      cout = int(d * c.channel_ratios[i])
      x, len_B = SemanticEncoderBlock(c, cin, cout, s, name=f"conv_blocks_{i}")(x, len_B)
      cin = cout
    return x


class EuclideanCodebook(nn.Module):
  cfg: HiggsTokenizerConfig

  def setup(self):
    c = self.cfg
    self.embed = self.param("embed", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("null", CH)),
                            (c.codebook_size, c.codebook_dim))

  def quantize(self, h_NxE: Array) -> tuple[Array, Array]:
    """Nearest entry by the reference's d = -(|h|^2 - 2 h.E + |E|^2); also returns best - second best."""
    e_ExV = self.embed.T
    dist_NxV = -((jnp.sum(h_NxE ** 2, 1, keepdims=True) - 2 * jnp.dot(h_NxE, e_ExV, precision=HIGHEST))
                 + jnp.sum(e_ExV ** 2, 0, keepdims=True))
    top2, _ = jax.lax.top_k(dist_NxV, 2)
    return jnp.argmax(dist_NxV, axis=-1).astype(jnp.int32), top2[:, 0] - top2[:, 1]

  def decode(self, codes: Array) -> Array:
    return jnp.take(self.embed, codes, axis=0)


class VectorQuantization(nn.Module):
  cfg: HiggsTokenizerConfig

  def setup(self):
    self.codebook = EuclideanCodebook(self.cfg)
    self.project_in = Dense(self.cfg.codebook_dim)
    self.project_out = Dense(self.cfg.hidden_size)

  def encode(self, x_BxTxD: Array) -> tuple[Array, Array]:
    b, t, _ = x_BxTxD.shape
    h = self.project_in(x_BxTxD).reshape(b * t, -1)
    codes, gap = self.codebook.quantize(h)
    return codes.reshape(b, t), gap.reshape(b, t)

  def decode(self, codes_BxT: Array) -> Array:
    return self.project_out(self.codebook.decode(codes_BxT))

  def __call__(self, codes_BxT: Array) -> Array:
    return self.decode(codes_BxT)


class ResidualVectorQuantization(nn.Module):
  cfg: HiggsTokenizerConfig

  def setup(self):
    self.quantizers = [VectorQuantization(self.cfg, name=f"quantizers_{i}") for i in range(self.cfg.num_quantizers)]

  def encode(self, x_BxTxD: Array, num_quantizers: int) -> tuple[Array, Array]:
    residual = x_BxTxD
    codes, gaps = [], []
    for q in self.quantizers[:num_quantizers]:
      c, g = q.encode(residual)
      residual = residual - q.decode(c)
      codes.append(c)
      gaps.append(g)
    return jnp.stack(codes, 1), jnp.stack(gaps, 1)

  def decode(self, codes_BxKxT: Array) -> Array:
    out = 0.0
    for k in range(codes_BxKxT.shape[1]):
      out = out + self.quantizers[k].decode(codes_BxKxT[:, k])
    return out


class HiggsAudioV2Tokenizer(nn.Module):
  """Flax HiggsAudioV2TokenizerModel. Use `.encode` / `.decode` via `apply(..., method=...)`."""
  cfg: HiggsTokenizerConfig

  def setup(self):
    c = self.cfg
    self.semantic_model = HubertModel(c.hubert)
    self.encoder_semantic = SemanticEncoder(c)
    self.acoustic_encoder = DacEncoder(c.encoder_hidden_size, c.downsampling_ratios, c.acoustic_hidden_size)
    self.acoustic_decoder = DacDecoder(c.decoder_hidden_size, c.upsampling_ratios)
    self.fc = Dense(c.hidden_size)
    self.fc2 = Dense(c.acoustic_hidden_size)
    self.quantizer = ResidualVectorQuantization(c)

  def __call__(self, audio_BxN: Array) -> tuple[Array, dict[str, Any]]:
    """Encode then decode (used for init); returns (audio, aux)."""
    codes, aux = self.encode(audio_BxN)
    audio, aux2 = self.decode(codes)
    return audio, {**aux, **aux2}

  def num_quantizers_for(self, bandwidth: Optional[float]) -> int:
    c = self.cfg
    if bandwidth is None:
      return c.num_quantizers
    if bandwidth not in c.target_bandwidths:
      raise ValueError(f"bandwidth {bandwidth} not in target_bandwidths {c.target_bandwidths}")
    per_q = math.log2(c.codebook_size) * c.frame_rate / 1000
    return int(max(1, math.floor(bandwidth / per_q)))

  def encode(self, audio_BxN: Array, len_B: Optional[Array] = None, bandwidth: Optional[float] = None
             ) -> tuple[Array, dict[str, Any]]:
    """(B, N) or (B, 1, N) 24 kHz audio -> (codes (B, K, T) int32, aux).

    With `len_B` (valid samples per item; audio past it must be zero), frames past each item's
    `aux["frames"]` hold -1 and the valid frames equal an unpadded encode of that item.
    """
    c = self.cfg
    if audio_BxN.ndim == 3:
      if audio_BxN.shape[1] != 1:
        raise ValueError(f"audio must be mono (B, 1, N), got shape {audio_BxN.shape}")
      audio_BxN = audio_BxN[:, 0]
    b, n = audio_BxN.shape
    if n < c.min_samples():
      raise ValueError(f"audio has {n} samples; the tokenizer needs at least {c.min_samples()} (one frame)")
    aux: dict[str, Any] = {}
    audio_BxN = audio_BxN.astype(jnp.float32)

    # ---- semantic branch ----
    x16 = rs.resample_jnp(audio_BxN, c.sample_rate, c.semantic_sample_rate)
    len16 = None
    if len_B is not None:
      o, nw = rs._reduced(c.sample_rate, c.semantic_sample_rate)
      len16 = (nw * len_B + o - 1) // o  # ceil, as torchaudio trims
      x16 = jnp.where(jnp.arange(x16.shape[1])[None] < len16[:, None], x16, 0.0)
    aux["resampled_16k"] = x16
    x16 = jnp.pad(x16, ((0, 0), (SEMANTIC_PAD, SEMANTIC_PAD)))
    if len16 is not None:
      len16 = len16 + 2 * SEMANTIC_PAD
    states_BxLxTxD, t50_B = self.semantic_model(x16, len16)
    aux["hubert_hidden_states"] = states_BxLxTxD
    f = c.semantic_downsample_factor
    feats = jnp.mean(states_BxLxTxD, axis=1)
    tsem_B = None
    if f > 1:
      feats = feats[:, ::f]
      tsem_B = None if t50_B is None else (t50_B + f - 1) // f
    else:
      tsem_B = t50_B
    aux["semantic_features"] = feats
    e_sem = self.encoder_semantic(feats, tsem_B)
    aux["e_semantic"] = e_sem

    # ---- acoustic branch ----
    hp = c.hop_length // 2
    if len_B is None:
      pad = c.acoustic_pad(n)
      xa = jnp.pad(audio_BxN, ((0, 0), (pad, pad)))
      len_a = None
    else:
      # per item: shift right by hop/2 when that item's frame counts disagree (the reference's pad branch)
      nac_B = _enc_len(len_B, c.downsampling_ratios)
      need_B = nac_B != tsem_B
      xa = jnp.where(need_B[:, None], jnp.pad(audio_BxN, ((0, 0), (hp, hp))),
                     jnp.pad(audio_BxN, ((0, 0), (0, 2 * hp))))  # static length n + 2*hp for every item
      len_a = len_B + jnp.where(need_B, 2 * hp, 0)
    e_ac, tac_B = self.acoustic_encoder(xa[:, :, None], len_a)
    aux["e_acoustic"] = e_ac

    t = min(e_ac.shape[1], e_sem.shape[1])  # the reference would fail here; boson's original trims
    emb = self.fc(jnp.concatenate([e_ac[:, :t], e_sem[:, :t]], axis=-1))
    aux["fc_out"] = emb
    codes_BxKxT, gap = self.quantizer.encode(emb, self.num_quantizers_for(bandwidth))
    aux["code_gap"] = gap
    if len_B is not None:
      frames_B = jnp.minimum(jnp.minimum(tac_B, tsem_B), t)
      codes_BxKxT = jnp.where(jnp.arange(t)[None, None] < frames_B[:, None, None], codes_BxKxT, -1)
    else:
      frames_B = jnp.full((b,), t, jnp.int32)
    aux["frames"] = frames_B
    return codes_BxKxT, aux

  def decode(self, codes_BxKxT: Array, frames_B: Optional[Array] = None) -> tuple[Array, dict[str, Any]]:
    """(B, K, T) codes -> ((B, T * hop) audio, aux). With `frames_B`, output past frames * hop is zero."""
    c = self.cfg
    codes_BxKxT = jnp.clip(codes_BxKxT, 0, c.codebook_size - 1)
    q = self.quantizer.decode(codes_BxKxT)
    h = self.fc2(q)
    audio, len_out = self.acoustic_decoder(h, frames_B)
    audio = audio[..., 0]
    if len_out is not None:
      audio = jnp.where(jnp.arange(audio.shape[1])[None] < len_out[:, None], audio, 0.0)
    return audio, {"quantized": q, "fc2_out": h}


def _enc_len(len_B: Array, ratios) -> Array:
  for s in ratios:
    len_B = conv_out_len(len_B, 2 * s, s, math.ceil(s / 2))
  return len_B


def init_params(cfg: HiggsTokenizerConfig, rng=None, n: Optional[int] = None):
  """Randomly initialised params (boxed with logical axes) for a clip of `n` samples."""
  model = HiggsAudioV2Tokenizer(cfg)
  n = n or cfg.hop_length * 2
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return model.init(rng, jnp.zeros((1, n), jnp.float32))["params"]


def abstract_params(cfg: HiggsTokenizerConfig):
  """Shape/dtype tree of the params (no memory): `jax.eval_shape` of `init_params`."""
  return jax.eval_shape(lambda: nn.meta.unbox(init_params(cfg)))
