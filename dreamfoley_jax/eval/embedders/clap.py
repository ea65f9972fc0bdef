"""LAION-CLAP (HTSAT-base audio + RoBERTa-base text, fusion off) in Flax, its converter and the embedder.

Legend: B batch, N samples, T log-mel frames, M mel bins, H/W Swin image rows/cols, L tokens, C channels,
W windows, K keys per window, D width, S text length (77), J joint embedding width (512).

What av-benchmark's "LAION-CLAP-Score" runs: laion_clap `CLAP_Module(enable_fusion=False,
amodel="HTSAT-base")` with music_speech_audioset_epoch_15_esc_89.98.pt. Audio: 48 kHz, repeat-padded or
cropped to 10 s (frontends.clap_input) -> torchlibrosa STFT power (n_fft 1024, hop 480, periodic Hann,
centre reflect pad) -> slaney mel 64 bins 50-14000 Hz -> 10 log10(max(x, 1e-10)) (ref 1, no top_db) ->
bn0 over mel bins -> bicubic (align_corners) 1001 -> 1024 frames -> folded into a 256x256 image (4 time
chunks stacked along frequency) -> Swin (embed 128, depths 2/2/12/2, heads 4/8/16/32, window 8) -> final
LayerNorm -> mean over tokens (HTSAT's 'embedding') -> audio_projection (Linear-ReLU-Linear) -> L2 norm.
Text: RoBERTa-base pooler_output -> text_projection -> L2 norm.
Flax names are the torch module paths with the dots inside one Flax module turned into '_'
(`audio_branch.layers.0.blocks.1.attn.qkv` -> `audio_branch/layers_0_blocks_1/attn/qkv`,
`text_branch.encoder.layer.3.attention.self.query` -> `text_branch/encoder_layer_3/attention_self_query`);
`torch_layout` is the one-to-one table.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.convert.common import ConversionError, TensorSource, check_keys, conv_to_jax, linear_to_jax
from dreamfoley_jax.eval import frontends
from dreamfoley_jax.eval.embedders.base import Embedder, random_state_dict, resolve_variables
from dreamfoley_jax.eval.embedders.roberta_bpe import RobertaBPE, find_tokenizer

CHECKPOINT_FILES = ("music_speech_audioset_epoch_15_esc_89.98.pt",)


@dataclasses.dataclass(frozen=True)
class HTSATConfig:
  """laion_clap HTSAT-base.json audio_cfg + create_htsat_model('base')."""
  sample_rate: int = 48000
  n_fft: int = 1024  # audio_cfg.window_size
  hop: int = 480
  mel_bins: int = 64
  fmin: float = 50.0
  fmax: float = 14000.0
  spec_size: int = 256
  patch_size: int = 4
  embed_dim: int = 128
  depths: tuple[int, ...] = (2, 2, 12, 2)
  num_heads: tuple[int, ...] = (4, 8, 16, 32)
  window_size: int = 8
  mlp_ratio: float = 4.0
  num_classes: int = 527  # tscam_conv/head: in the checkpoint, unused by the embedding
  eps: float = 1e-5

  @property
  def freq_ratio(self) -> int:
    return self.spec_size // self.mel_bins

  @property
  def num_features(self) -> int:
    return self.embed_dim * 2 ** (len(self.depths) - 1)

  @classmethod
  def tiny(cls):  # tests/fixtures/make/make_clap_golden.py
    return cls(sample_rate=16000, n_fft=256, hop=32, mel_bins=32, fmin=50.0, fmax=8000.0, spec_size=128,
               embed_dim=6, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=8, num_classes=5)


@dataclasses.dataclass(frozen=True)
class RobertaConfig:
  """roberta-base as laion_clap loads it (RobertaModel.from_pretrained('roberta-base'))."""
  vocab_size: int = 50265
  hidden: int = 768
  layers: int = 12
  heads: int = 12
  intermediate: int = 3072
  max_positions: int = 514
  type_vocab_size: int = 1
  pad_id: int = 1
  eps: float = 1e-5

  @classmethod
  def tiny(cls):
    return cls(vocab_size=96, hidden=32, layers=2, heads=4, intermediate=64, max_positions=80)


@dataclasses.dataclass(frozen=True)
class ClapConfig:
  audio: HTSATConfig = HTSATConfig()
  text: RobertaConfig = RobertaConfig()
  joint_dim: int = 512
  context_length: int = 77  # CLAP_Module.tokenizer: padding='max_length', truncation, max_length=77
  clip_samples: int = 480000

  @classmethod
  def tiny(cls):
    return cls(audio=HTSATConfig.tiny(), text=RobertaConfig.tiny(), joint_dim=16, clip_samples=15000)


def _dense(n, name, axes=("embed", "mlp"), use_bias=True):
  return nn.Dense(n, name=name, use_bias=use_bias,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def _ln(name, eps):
  return nn.LayerNorm(epsilon=eps, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def l2_normalize(x, eps=1e-12):
  """torch.nn.functional.normalize(x, dim=-1)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# --------------------------------------------------------------------------------------------------
# Audio front end (torchlibrosa Spectrogram + LogmelFilterBank, in JAX)
# --------------------------------------------------------------------------------------------------


def logmel(wav_BxN, mel_FxM, c: HTSATConfig):
  """Power STFT (periodic Hann, centre reflect pad) -> mel -> dB: (B, 1 + N // hop, M), float32."""
  pad = c.n_fft // 2
  x = jnp.pad(wav_BxN.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
  n_frames = 1 + wav_BxN.shape[-1] // c.hop
  idx = np.arange(n_frames)[:, None] * c.hop + np.arange(c.n_fft)[None, :]
  frames_BxTxF = x[:, idx] * jnp.asarray(frontends.hann(c.n_fft), jnp.float32)
  spec = jnp.fft.rfft(frames_BxTxF, axis=-1)
  power = jnp.square(spec.real) + jnp.square(spec.imag)
  mel = jnp.einsum("btf,fm->btm", power, mel_FxM, precision=jax.lax.Precision.HIGHEST)
  return 10.0 * jnp.log10(jnp.maximum(mel, 1e-10))  # ref 1.0, amin 1e-10, top_db None (HTSAT's args)


def mel_matrix(c: HTSATConfig) -> np.ndarray:
  """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (slaney scale and norm), (n_fft//2+1, M)."""
  return frontends.mel_filterbank(c.sample_rate, c.n_fft, c.mel_bins, c.fmin, c.fmax, htk=False,
                                  slaney_norm=True).astype(np.float32)


@functools.lru_cache(maxsize=8)
def bicubic_matrix(n_out: int, n_in: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic interpolate (align_corners=True, A=-0.75, edge-clamped)."""
  a = -0.75
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.float32(scale) * np.arange(n_out, dtype=np.float32)
  i0 = np.floor(src).astype(np.int64)
  t = (src - i0).astype(np.float64)
  w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
       ((a + 2) * t - (a + 3)) * t * t + 1,
       ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
       ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
  m = np.zeros((n_out, n_in), np.float64)
  for k in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(i0 - 1 + k, 0, n_in - 1)), w[k])
  return m.astype(np.float32)


def wav2img(x_BxTxM, c: HTSATConfig):
  """HTSAT reshape_wav2img: bicubic to spec_size*freq_ratio frames, fold time chunks onto frequency."""
  r, (b, t, m) = c.freq_ratio, x_BxTxM.shape
  target_t = c.spec_size * r
  if t > target_t or m != c.spec_size // r:
    raise ValueError(f"HTSAT: log-mel of {t} frames x {m} mels does not fit the {c.spec_size}^2 Swin input "
                     f"(at most {target_t} frames, exactly {c.spec_size // r} mels); clip the audio to "
                     f"{c.hop * (target_t - 1)} samples or fewer")
  if t < target_t:
    x_BxTxM = jnp.einsum("ut,btm->bum", jnp.asarray(bicubic_matrix(target_t, t)), x_BxTxM,
                         precision=jax.lax.Precision.HIGHEST)
  x = x_BxTxM.reshape(b, r, target_t // r, m).transpose(0, 1, 3, 2)  # (B, chunk, M, time in chunk)
  return x.reshape(b, r * m, target_t // r)  # (B, H, W)


# --------------------------------------------------------------------------------------------------
# Swin (HTSAT)
# --------------------------------------------------------------------------------------------------


def _relative_position_index(w: int) -> np.ndarray:
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  return rel[..., 0] * (2 * w - 1) + rel[..., 1]  # (w*w, w*w)


def _partition(x_BxHxWxC, w):
  b, h, wd, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // w) * (wd // w), w * w, c)  # (B, windows, K, C)


def _unpartition(x_BxWxKxC, w, h, wd):
  b, c = x_BxWxKxC.shape[0], x_BxWxKxC.shape[-1]
  x = x_BxWxKxC.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, wd, c)


def _shift_mask(h, wd, w, s) -> np.ndarray:
  """Swin SW-MSA mask (windows, K, K): 0 within a region, -100 across regions (the reference's value)."""
  img = np.zeros((h, wd), np.float32)
  cnt = 0
  for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
    for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
      img[hs, ws] = cnt
      cnt += 1
  win = _partition(img[None, :, :, None], w)[0, :, :, 0]  # (windows, K)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  dim: int
  heads: int
  window: int

  @nn.compact
  def __call__(self, x_BxWxKxC, mask_WxKxK):
    b, nw, k, c = x_BxWxKxC.shape
    hd = c // self.heads
    table = self.param("relative_position_bias_table",
                       nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "heads")),
                       ((2 * self.window - 1) ** 2, self.heads))
    bias_HxKxK = table[_relative_position_index(self.window).reshape(-1)].reshape(k, k, self.heads)
    bias_HxKxK = bias_HxKxK.transpose(2, 0, 1)
    qkv = _dense(3 * c, "qkv")(x_BxWxKxC.reshape(-1, c)).reshape(b, nw, k, 3, self.heads, hd)
    q, kk, v = qkv[..., 0, :, :] * hd ** -0.5, qkv[..., 1, :, :], qkv[..., 2, :, :]
    s = jnp.einsum("bwqhd,bwkhd->bwhqk", q, kk) + bias_HxKxK
    if mask_WxKxK is not None:
      s = s + mask_WxKxK[None, :, None]
    o = jnp.einsum("bwhqk,bwkhd->bwqhd", jax.nn.softmax(s, axis=-1), v).reshape(-1, c)
    return _dense(c, "proj", ("mlp", "embed"))(o).reshape(b, nw, k, c)


class SwinBlock(nn.Module):
  dim: int
  heads: int
  resolution: int  # square maps: H == W
  window: int
  shift: int
  mlp_ratio: float
  eps: float

  @nn.compact
  def __call__(self, x_BxLxC):
    b, _, c = x_BxLxC.shape
    r, w, s = self.resolution, self.window, self.shift
    if r <= w:  # reference: a window covering the whole map, no shift
      w, s = r, 0
    h = _ln("norm1", self.eps)(x_BxLxC).reshape(b, r, r, c)
    if s:
      h = jnp.roll(h, (-s, -s), axis=(1, 2))
    mask = jnp.asarray(_shift_mask(r, r, w, s)) if s else None
    h = WindowAttention(c, self.heads, w, name="attn")(_partition(h, w), mask)
    h = _unpartition(h, w, r, r)
    if s:
      h = jnp.roll(h, (s, s), axis=(1, 2))
    x = x_BxLxC + h.reshape(b, r * r, c)
    y = _ln("norm2", self.eps)(x).reshape(-1, c)
    y = Mlp(int(c * self.mlp_ratio), c, name="mlp")(y)
    return x + y.reshape(b, r * r, c)


class Mlp(nn.Module):
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    return _dense(self.out, "fc2", ("mlp", "embed"))(nn.gelu(_dense(self.hidden, "fc1")(x), approximate=False))


class PatchMerging(nn.Module):
  resolution: int
  eps: float

  @nn.compact
  def __call__(self, x_BxLxC):
    b, _, c = x_BxLxC.shape
    r = self.resolution
    x = x_BxLxC.reshape(b, r, r, c)
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = _ln("norm", self.eps)(x.reshape(b, -1, 4 * c))
    return nn.with_logical_constraint(_dense(2 * c, "reduction", use_bias=False)(x), ("batch", "length", "act_embed"))


class HTSAT(nn.Module):
  """Waveform (B, N) -> HTSAT 'embedding' (B, num_features); aux: logmel, swin_in (the 2-D image)."""
  config: HTSATConfig

  @nn.compact
  def __call__(self, wav_BxN):
    c = self.config
    mel_FxM = self.param("logmel_extractor_melW",
                         nn.with_logical_partitioning(lambda *_: jnp.asarray(mel_matrix(c)), (None, None)))
    mel_BxTxM = logmel(wav_BxN, jax.lax.stop_gradient(mel_FxM), c)
    x = nn.BatchNorm(use_running_average=True, epsilon=c.eps, name="bn0",
                     scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))(mel_BxTxM)
    img_BxHxW = wav2img(x, c)
    p = c.patch_size
    x = nn.Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed_proj",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None, None, "conv_in", "conv_out")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))(img_BxHxW[..., None])
    b, g = x.shape[0], x.shape[1]
    x = _ln("patch_embed_norm", c.eps)(x.reshape(b, g * g, c.embed_dim))
    for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
      res, dim = g // 2 ** i, c.embed_dim * 2 ** i
      for j in range(depth):
        x = SwinBlock(dim, heads, res, c.window_size, 0 if j % 2 == 0 else c.window_size // 2, c.mlp_ratio, c.eps,
                      name=f"layers_{i}_blocks_{j}")(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
      if i < len(c.depths) - 1:
        x = PatchMerging(res, c.eps, name=f"layers_{i}_downsample")(x)
    x = _ln("norm", c.eps)(x)
    return x.mean(axis=1), {"logmel": mel_BxTxM, "swin_in": img_BxHxW}


# --------------------------------------------------------------------------------------------------
# RoBERTa
# --------------------------------------------------------------------------------------------------


class RobertaLayer(nn.Module):
  config: RobertaConfig

  @nn.compact
  def __call__(self, x_BxSxD, bias_Bx1x1xS):
    c = self.config
    b, s, d = x_BxSxD.shape
    hd = d // c.heads
    x2 = x_BxSxD.reshape(-1, d)
    q, k, v = (_dense(d, f"attention_self_{n}")(x2).reshape(b, s, c.heads, hd) for n in ("query", "key", "value"))
    sc = jnp.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5 + bias_Bx1x1xS
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(sc, axis=-1), v).reshape(-1, d)
    h = _ln("attention_output_LayerNorm", c.eps)(_dense(d, "attention_output_dense", ("mlp", "embed"))(o) + x2)
    f = nn.gelu(_dense(c.intermediate, "intermediate_dense")(h), approximate=False)
    out = _ln("output_LayerNorm", c.eps)(_dense(d, "output_dense", ("mlp", "embed"))(f) + h)
    return out.reshape(b, s, d)


class Roberta(nn.Module):
  """transformers RobertaModel: (input_ids, attention_mask) (B, S) -> pooler_output (B, D); aux: hidden."""
  config: RobertaConfig

  @nn.compact
  def __call__(self, ids_BxS, mask_BxS):
    c = self.config
    emb = lambda n, rows: nn.Embed(rows, c.hidden, name=f"embeddings_{n}",  # noqa: E731
                                   embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                               (None, "embed")))
    not_pad = (ids_BxS != c.pad_id).astype(jnp.int32)
    pos_BxS = jnp.cumsum(not_pad, axis=1) * not_pad + c.pad_id  # create_position_ids_from_input_ids
    x = (emb("word_embeddings", c.vocab_size)(ids_BxS) + emb("token_type_embeddings", c.type_vocab_size)(
        jnp.zeros_like(ids_BxS)) + emb("position_embeddings", c.max_positions)(pos_BxS))
    x = _ln("embeddings_LayerNorm", c.eps)(x)
    bias = jnp.where(mask_BxS[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    for i in range(c.layers):
      x = RobertaLayer(c, name=f"encoder_layer_{i}")(x, bias)
    pooled = jnp.tanh(_dense(c.hidden, "pooler_dense")(x[:, 0]))
    return pooled, {"hidden": x}


class Clap(nn.Module):
  """The two towers; `encode_audio` / `encode_text` return L2-normalised (B, J) embeddings and aux."""
  config: ClapConfig

  def setup(self):
    c = self.config
    self.audio_branch = HTSAT(c.audio)
    self.text_branch = Roberta(c.text)
    # audio/text_projection: Linear -> ReLU -> Linear (torch Sequential indices 0 and 2)
    self.audio_projection_0 = _dense(c.joint_dim, "audio_projection_0")
    self.audio_projection_2 = _dense(c.joint_dim, "audio_projection_2", ("mlp", "embed"))
    self.text_projection_0 = _dense(c.joint_dim, "text_projection_0")
    self.text_projection_2 = _dense(c.joint_dim, "text_projection_2", ("mlp", "embed"))

  def encode_audio(self, wav_BxN):
    emb, aux = self.audio_branch(wav_BxN)
    return l2_normalize(self.audio_projection_2(nn.relu(self.audio_projection_0(emb)))), {**aux, "embedding": emb}

  def encode_text(self, ids_BxS, mask_BxS):
    pooled, aux = self.text_branch(ids_BxS, mask_BxS)
    return l2_normalize(self.text_projection_2(nn.relu(self.text_projection_0(pooled)))), {**aux, "pooler": pooled}

  def __call__(self, wav_BxN, ids_BxS, mask_BxS):
    a, aux_a = self.encode_audio(wav_BxN)
    t, aux_t = self.encode_text(ids_BxS, mask_BxS)
    return {"audio": a, "text": t}, {**aux_a, **aux_t}


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------

# In the checkpoint, not used by the embeddings: fixed buffers (rebuilt from the config), the AudioSet
# head, the contrastive-loss MLPs and temperatures.
_UNUSED = re.compile(r"(relative_position_index|attn_mask|num_batches_tracked|position_ids|token_type_ids"
                     r"|spectrogram_extractor\.stft\.conv_(real|imag)\.weight|audio_branch\.(tscam_conv|head)\."
                     r"|(audio|text)_transform\.sequential\.|logit_scale_[at])")


def torch_layout(c: ClapConfig) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """(torch key, flax path incl. collection, kind, torch shape) for every tensor the embeddings use."""
  out = []

  def lin(tp, fp, din, dout, bias=True):
    out.append((f"{tp}.weight", fp + ("kernel",), "linear", (dout, din)))
    if bias:
      out.append((f"{tp}.bias", fp + ("bias",), "raw", (dout,)))

  def ln(tp, fp, d):
    out.extend([(f"{tp}.weight", fp + ("scale",), "raw", (d,)), (f"{tp}.bias", fp + ("bias",), "raw", (d,))])

  a, t = c.audio, c.text
  A, T = ("params", "audio_branch"), ("params", "text_branch")
  out.append(("audio_branch.logmel_extractor.melW", A + ("logmel_extractor_melW",), "raw",
              (a.n_fft // 2 + 1, a.mel_bins)))
  ln("audio_branch.bn0", A + ("bn0",), a.mel_bins)
  out.extend([("audio_branch.bn0.running_mean", ("batch_stats", "audio_branch", "bn0", "mean"), "raw", (a.mel_bins,)),
              ("audio_branch.bn0.running_var", ("batch_stats", "audio_branch", "bn0", "var"), "raw", (a.mel_bins,))])
  p = a.patch_size
  out.append(("audio_branch.patch_embed.proj.weight", A + ("patch_embed_proj", "kernel"), "conv",
              (a.embed_dim, 1, p, p)))
  out.append(("audio_branch.patch_embed.proj.bias", A + ("patch_embed_proj", "bias"), "raw", (a.embed_dim,)))
  ln("audio_branch.patch_embed.norm", A + ("patch_embed_norm",), a.embed_dim)
  res = a.spec_size // p
  for i, (depth, heads) in enumerate(zip(a.depths, a.num_heads)):
    d, r = a.embed_dim * 2 ** i, res // 2 ** i
    w = min(r, a.window_size)
    for j in range(depth):
      tp, fp = f"audio_branch.layers.{i}.blocks.{j}", A + (f"layers_{i}_blocks_{j}",)
      ln(f"{tp}.norm1", fp + ("norm1",), d)
      out.append((f"{tp}.attn.relative_position_bias_table", fp + ("attn", "relative_position_bias_table"), "raw",
                  ((2 * w - 1) ** 2, heads)))
      lin(f"{tp}.attn.qkv", fp + ("attn", "qkv"), d, 3 * d)
      lin(f"{tp}.attn.proj", fp + ("attn", "proj"), d, d)
      ln(f"{tp}.norm2", fp + ("norm2",), d)
      lin(f"{tp}.mlp.fc1", fp + ("mlp", "fc1"), d, int(d * a.mlp_ratio))
      lin(f"{tp}.mlp.fc2", fp + ("mlp", "fc2"), int(d * a.mlp_ratio), d)
    if i < len(a.depths) - 1:
      tp, fp = f"audio_branch.layers.{i}.downsample", A + (f"layers_{i}_downsample",)
      ln(f"{tp}.norm", fp + ("norm",), 4 * d)
      lin(f"{tp}.reduction", fp + ("reduction",), 4 * d, 2 * d, bias=False)
  ln("audio_branch.norm", A + ("norm",), a.num_features)
  for name, rows in (("word_embeddings", t.vocab_size), ("position_embeddings", t.max_positions),
                     ("token_type_embeddings", t.type_vocab_size)):
    out.append((f"text_branch.embeddings.{name}.weight", T + (f"embeddings_{name}", "embedding"), "raw",
                (rows, t.hidden)))
  ln("text_branch.embeddings.LayerNorm", T + ("embeddings_LayerNorm",), t.hidden)
  for i in range(t.layers):
    tp, fp = f"text_branch.encoder.layer.{i}", T + (f"encoder_layer_{i}",)
    for n in ("query", "key", "value"):
      lin(f"{tp}.attention.self.{n}", fp + (f"attention_self_{n}",), t.hidden, t.hidden)
    lin(f"{tp}.attention.output.dense", fp + ("attention_output_dense",), t.hidden, t.hidden)
    ln(f"{tp}.attention.output.LayerNorm", fp + ("attention_output_LayerNorm",), t.hidden)
    lin(f"{tp}.intermediate.dense", fp + ("intermediate_dense",), t.hidden, t.intermediate)
    lin(f"{tp}.output.dense", fp + ("output_dense",), t.intermediate, t.hidden)
    ln(f"{tp}.output.LayerNorm", fp + ("output_LayerNorm",), t.hidden)
  lin("text_branch.pooler.dense", T + ("pooler_dense",), t.hidden, t.hidden)
  for tower, din in (("audio", a.num_features), ("text", t.hidden)):
    lin(f"{tower}_projection.0", ("params", f"{tower}_projection_0"), din, c.joint_dim)
    lin(f"{tower}_projection.2", ("params", f"{tower}_projection_2"), c.joint_dim, c.joint_dim)
  return out


def torch_shapes(c: ClapConfig) -> dict[str, tuple[int, ...]]:
  return {k: s for k, _, _, s in torch_layout(c)}


def _source(src) -> TensorSource:
  """A TensorSource over laion_clap's keys: 'state_dict' unwrapped (TensorSource), 'module.' stripped."""
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  if any(k.startswith("module.") for k in src.keys()):  # DDP checkpoints, as laion_clap's load_state_dict
    path = src.path
    src = TensorSource.from_dict({k: src.get(k) for k in src.keys()}, strip_prefix="module.")
    src.path = path  # errors name the file
  return src


RESAVE_HINT = (
    "python -c \"import torch; ck = torch.load('IN.pt', map_location='cpu', weights_only=False); "
    "torch.save(ck.get('state_dict', ck), 'music_speech_audioset_epoch_15_esc_89.98.pt')\"")


def read_checkpoint(path: str | os.PathLike) -> TensorSource:
  """TensorSource over a laion_clap checkpoint: safetensors, or torch.load(weights_only=True) only.

  laion_clap's published .pt files are reported to be pickle protocol 4 with numpy scalars beside the
  state dict (Audio-AGI/AudioSep PR #51); torch's weights-only unpickler refuses those (its FRAME and
  MEMOIZE opcodes, as of torch 2.13). We never fall back to a full unpickler on a downloaded file: the
  error says how to re-save the state dict once, in an environment where you trust the file.
  """
  try:
    return TensorSource(path)
  except ConversionError as e:
    raise ConversionError(
        f"{path}: torch.load(weights_only=True) cannot read this file ({e}). laion_clap's published "
        f"checkpoints are protocol-4 pickles that the weights-only loader refuses; this project never "
        f"unpickles untrusted files with code execution. If you trust the file, re-save its state dict "
        f"once (protocol 2) and point --config.weights at the result:\n  {RESAVE_HINT}") from e


def convert_clap(src: TensorSource | Mapping, c: ClapConfig = ClapConfig()) -> dict:
  """laion_clap CLAP state dict -> flax variables {'params', 'batch_stats'} (float32 numpy).

  Raises ConversionError naming the file and every missing/unexpected/mis-shaped key. A checkpoint
  without `logmel_extractor.melW` gets the librosa filterbank; one with it keeps its own (as torch does).
  """
  src = _source(src)
  layout = torch_layout(c)
  expected = {k: s for k, _, _, s in layout}
  optional = {"audio_branch.logmel_extractor.melW"}
  found = src.shapes()
  check_keys({k: s for k, s in expected.items() if k not in optional or k in found}, found, source=src.path,
             ignore=lambda k: bool(_UNUSED.search(k)))
  tree: dict = {}
  for tkey, fpath, kind, _ in layout:
    if tkey not in found:
      v = mel_matrix(c.audio)
    else:
      v = src.get(tkey)
      v = linear_to_jax(v) if kind == "linear" else conv_to_jax(v) if kind == "conv" else v
    node = tree
    for part in fpath[:-1]:
      node = node.setdefault(part, {})
    node[fpath[-1]] = np.asarray(v, np.float32)
  return tree


def random_variables(c: ClapConfig, seed: int) -> dict:
  """Seeded random weights through the converter (tests and smoke runs only)."""
  shapes = {k: s for k, s in torch_shapes(c).items() if not k.endswith("melW")}
  return convert_clap(random_state_dict(shapes, seed), c)


# --------------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------------


class ClapEmbedder(Embedder):
  """LAION-CLAP-Score towers (Flax port): 48 kHz audio -> clap_audio (512,), caption -> clap_text (512,)."""
  FILES = CHECKPOINT_FILES

  def __init__(self, path: str | os.PathLike | None = None, *, tokenizer: str | os.PathLike | None = None,
               seed: int = 0, config: ClapConfig = ClapConfig(), variables=None, random_weights: int | None = None,
               matmul_precision: str = "highest"):
    super().__init__(name="clap", native=True, needs_text=True)
    self.config, self.seed = config, seed  # seed: the 10 s crop of longer audio (unseeded upstream)
    # fp32 matmuls as in the reference: TPU/GPU defaults (bf16 passes, TF32) would move the scores
    self.matmul_precision = matmul_precision
    self.model = Clap(config)
    self.variables, self.source, ckpt = resolve_variables(
        "clap", path, CHECKPOINT_FILES, variables=variables, seed=random_weights,
        random_fn=lambda s: random_variables(config, s),
        checkpoint_fn=lambda c: convert_clap(read_checkpoint(c), config))
    self._tokenizer_path, self._ckpt, self._tokenizer = tokenizer, ckpt, None
    self._audio = jax.jit(self._precise(lambda v, x: self.model.apply(v, x, method=Clap.encode_audio)[0]))
    self._text = jax.jit(self._precise(lambda v, i, m: self.model.apply(v, i, m, method=Clap.encode_text)[0]))

  def _precise(self, fn):
    def wrapped(*args):
      with jax.default_matmul_precision(self.matmul_precision):
        return fn(*args)
    return wrapped

  @property
  def tokenizer(self) -> RobertaBPE:
    if self._tokenizer is None:  # loaded on first caption: audio-only runs need no tokenizer files
      self._tokenizer = RobertaBPE(find_tokenizer(self._tokenizer_path, self._ckpt), self.config.context_length)
    return self._tokenizer

  def fingerprint(self) -> str:
    tok = self._tokenizer_path or "default tokenizer"
    return f"clap|flax|{self.source}|{tok}|seed{self.seed}|{self.matmul_precision}|{self.config}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    c = self.config
    x = frontends.prepare_audio(wav_CxT, sr, c.audio.sample_rate, duration_s)
    x = frontends.clap_input(x, seed=self.seed, n=c.clip_samples)
    e = self._audio(self.variables, np.asarray(x, np.float32)[None])
    return {"clap_audio": np.asarray(e[0])}

  def text_features(self, caption):
    ids, mask = self.tokenizer([caption])
    if ids.max() >= self.config.text.vocab_size:
      raise ValueError(f"clap: the tokenizer at {self.tokenizer.source} produced id {ids.max()} but the text "
                       f"tower has {self.config.text.vocab_size} embeddings: use roberta-base's own files")
    return {"clap_text": np.asarray(self._text(self.variables, ids, mask)[0])}
