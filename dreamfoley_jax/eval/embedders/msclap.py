"""MS-CLAP 2023 (microsoft/CLAP `CLAP_weights_2023.pth`) in Flax: the model PAM prompts, and its converter.

Legend: B batch, N samples, S text length (77), D width, H heads, E head dim, J joint width (1024).

msclap's CLAP(version='2023'), as PAM (soham97/PAM) builds it:
- audio: 44.1 kHz waveform -> HTSAT (`clap.HTSAT`, the same Swin as LAION-CLAP's at MS-CLAP's geometry:
  embed 96, depths 2/2/6/2, heads 4/8/16/32, window 8, 256^2 input, n_fft 1024, hop 320, 64 mels).
  Its log-mel filterbank is torchlibrosa's `melW` stored in the checkpoint; msclap's HTSATWrapper builds the
  model from htsat's own config module (sample_rate 32000, fmax 14000), so that filterbank is designed
  for 32 kHz although audio arrives at 44.1 kHz: we load the checkpoint's melW and, without one, build the
  same 32 kHz filterbank. The embedding is the mean of the final tokens (HTSAT's latent_output), then
  Projection (Linear no-bias -> GELU -> Linear no-bias, residual from the first, LayerNorm).
- text: GPT-2 (transformers GPT2Model) on `prompt + ' <|endoftext|>'` padded with '!' (id 0) to 77; the
  hidden state at position (count of ids != 0) - 1 -> Projection.
- logit_scale: exp() of the learned scalar multiplies the cosines.
Flax names: `htsat/...` as clap.HTSAT's, `audio_projection`, `gpt2/h_{i}/attn_c_attn`, `text_projection`.
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

from dreamfoley_jax.convert.common import ConversionError, TensorSource, check_keys
from dreamfoley_jax.eval.embedders import clap
from dreamfoley_jax.eval.embedders.clap import HTSAT, HTSATConfig, l2_normalize

CHECKPOINT_FILES = ("CLAP_weights_2023.pth",)
PROMPTS = ("the sound is clear and clean.", "the sound is noisy and with artifacts.")   # PAM's antonym pair


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """transformers GPT2Config() (the 'gpt2' checkpoint msclap loads)."""
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  eps: float = 1e-5

  @classmethod
  def tiny(cls):
    return cls(vocab_size=64, n_positions=80, n_embd=16, n_layer=2, n_head=2)


def htsat_2023() -> HTSATConfig:
  # sample_rate: the filterbank's design rate (htsat config.py's 32 kHz, see the module docstring)
  return HTSATConfig(sample_rate=32000, n_fft=1024, hop=320, mel_bins=64, fmin=50.0, fmax=14000.0, spec_size=256,
                     patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(4, 8, 16, 32), window_size=8,
                     num_classes=527)


@dataclasses.dataclass(frozen=True)
class MsClapConfig:
  audio: HTSATConfig = dataclasses.field(default_factory=htsat_2023)
  text: GPT2Config = GPT2Config()
  d_proj: int = 1024
  sample_rate: int = 44100       # the audio the model is given (config.yml sampling_rate)
  window_seconds: float = 7.0    # PAM's window (config.yml duration)
  text_len: int = 77
  pad_id: int = 0                # '!' in GPT-2's vocabulary (msclap adds it as the pad token)

  @property
  def window_samples(self) -> int:
    return int(round(self.sample_rate * self.window_seconds))

  @classmethod
  def tiny(cls):   # tests/fixtures/make/make_pam_golden.py: 7 s at 44.1 kHz, hop 640 -> 483 frames into 512
    return cls(audio=HTSATConfig(sample_rate=32000, n_fft=1024, hop=640, mel_bins=32, fmin=50.0, fmax=14000.0,
                                 spec_size=128, embed_dim=6, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4),
                                 window_size=8, num_classes=5),
               text=GPT2Config.tiny(), d_proj=16, text_len=24)


def _dense(n, name, use_bias=True, axes=("embed", "mlp")):
  return clap._dense(n, name, axes=axes, use_bias=use_bias)


class Projection(nn.Module):
  """msclap Projection: LayerNorm(l1(x) + l2(gelu(l1(x)))), no biases in the linears (dropout: eval)."""
  d_out: int

  @nn.compact
  def __call__(self, x):
    e1 = _dense(self.d_out, "linear1", use_bias=False)(x)
    e2 = _dense(self.d_out, "linear2", use_bias=False, axes=("mlp", "embed"))(nn.gelu(e1, approximate=False))
    return clap._ln("layer_norm", 1e-5)(e1 + e2)


class GPT2Block(nn.Module):
  config: GPT2Config

  @nn.compact
  def __call__(self, x_BxSxD, bias_Bx1xSxS):
    c = self.config
    b, s, d = x_BxSxD.shape
    e = d // c.n_head
    h = clap._ln("ln_1", c.eps)(x_BxSxD).reshape(-1, d)
    qkv = _dense(3 * d, "attn_c_attn")(h).reshape(b, s, 3, c.n_head, e)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    att_BxHxSxS = jnp.einsum("bqhe,bkhe->bhqk", q, k) * e ** -0.5 + bias_Bx1xSxS
    o = jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(att_BxHxSxS, axis=-1), v).reshape(-1, d)
    x = x_BxSxD + _dense(d, "attn_c_proj", axes=("mlp", "embed"))(o).reshape(b, s, d)
    h = clap._ln("ln_2", c.eps)(x).reshape(-1, d)
    h = _dense(d, "mlp_c_proj", axes=("mlp", "embed"))(nn.gelu(_dense(4 * d, "mlp_c_fc")(h), approximate=True))
    return x + h.reshape(b, s, d)


class GPT2(nn.Module):
  """transformers GPT2Model: (input_ids, attention_mask) (B, S) -> last_hidden_state (B, S, D)."""
  config: GPT2Config

  @nn.compact
  def __call__(self, ids_BxS, mask_BxS):
    c = self.config
    emb = lambda n, rows: nn.Embed(rows, c.n_embd, name=n, embedding_init=nn.with_logical_partitioning(  # noqa: E731
        nn.initializers.normal(0.02), (None, "embed")))
    s = ids_BxS.shape[1]
    x = emb("wte", c.vocab_size)(ids_BxS) + emb("wpe", c.n_positions)(jnp.arange(s)[None])
    allowed = jnp.tril(jnp.ones((s, s), bool))[None] & (mask_BxS[:, None, :] > 0)
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None]
    for i in range(c.n_layer):
      x = GPT2Block(c, name=f"h_{i}")(x, bias)
    return clap._ln("ln_f", c.eps)(x)


class MsClap(nn.Module):
  config: MsClapConfig

  def setup(self):
    c = self.config
    self.htsat = HTSAT(c.audio)
    self.audio_projection = Projection(c.d_proj)
    self.gpt2 = GPT2(c.text)
    self.text_projection = Projection(c.d_proj)
    self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
        lambda *_: jnp.asarray(np.log(1 / 0.07), jnp.float32), ()))

  def encode_audio(self, wav_BxN):
    """Projected audio embedding (B, J), not normalised (msclap's audio_encoder(...)[0]); aux."""
    emb, aux = self.htsat(wav_BxN)
    return self.audio_projection(emb), {**aux, "embedding": emb}

  def encode_text(self, ids_BxS, mask_BxS):
    """Projected text embedding (B, J) at the last non-pad token (msclap's TextEncoder)."""
    h = self.gpt2(ids_BxS, mask_BxS)
    last = jnp.sum(ids_BxS != self.config.pad_id, axis=-1) - 1
    return self.text_projection(h[jnp.arange(h.shape[0]), last]), {"hidden": h}

  def pam(self, wav_WxN, ids_2xS, mask_2xS):
    """PAM per window: softmax over exp(logit_scale) * cos(text_k, audio) of the two prompts, the first's."""
    a, aux_a = self.encode_audio(wav_WxN)
    t, _ = self.encode_text(ids_2xS, mask_2xS)
    sim_Wx2 = jnp.exp(self.logit_scale) * l2_normalize(a) @ l2_normalize(t).T
    return jax.nn.softmax(sim_Wx2, axis=-1)[:, 0], {**aux_a, "similarity": sim_Wx2, "audio": a, "text": t}

  def __call__(self, wav_BxN, ids_BxS, mask_BxS):
    return self.pam(wav_BxN, ids_BxS, mask_BxS)


@functools.lru_cache(maxsize=4)
def jitted_pam(c: MsClapConfig):
  """jit(MsClap(c).apply): (variables, wav_WxN, ids_2xS, mask_2xS) -> (PAM per window, aux); one compiled
  function per config and shape in a process (the data stage and the tests share it)."""
  model = MsClap(c)
  return jax.jit(lambda v, w, i, m: model.apply(v, w, i, m))


def pam_windows(wav_N: np.ndarray, n: int) -> np.ndarray:
  """PAM's AudioDataset.process_audio (non-repro): (W, n) windows of a mono signal. Shorter than a window:
  repeated and cut to n; longer: the whole windows, then, if samples remain, the LAST n samples."""
  x = np.asarray(wav_N, np.float32).reshape(-1)
  if x.size == 0:
    raise ValueError("PAM: empty audio")
  if n >= x.size:
    return np.tile(x, -(-n // x.size))[:n][None]
  k = x.size // n
  wins = [x[i * n:(i + 1) * n] for i in range(k)]
  if x.size > k * n:
    wins.append(x[-n:])
  return np.stack(wins)


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------

A_PREFIX = "audio_encoder.base.htsat."
_UNUSED = re.compile(r"(relative_position_index|attn_mask|num_batches_tracked|spectrogram_extractor\.stft\."
                     r"conv_(real|imag)\.weight|htsat\.(tscam_conv|head)\.|caption_encoder\.base\.h\.\d+\.attn\."
                     r"(bias|masked_bias)$)")


def torch_layout(c: MsClapConfig) -> list[tuple[str, tuple[str, ...], str, tuple[int, ...]]]:
  """(torch key, flax path incl. collection, kind, torch shape) for every tensor the model uses."""
  # the HTSAT entries of clap's table, moved from laion_clap's `audio_branch.` to msclap's keys
  out = []
  for k, path, kind, shape in clap.torch_layout(clap.ClapConfig(audio=c.audio, text=clap.RobertaConfig.tiny(),
                                                                joint_dim=8)):
    if k.startswith("audio_branch."):
      out.append((A_PREFIX + k[len("audio_branch."):], (path[0], "htsat") + path[2:], kind, shape))

  def lin(tp, fp, din, dout, bias=True, kind="linear"):
    out.append((f"{tp}.weight", fp + ("kernel",), kind, (dout, din) if kind == "linear" else (din, dout)))
    if bias:
      out.append((f"{tp}.bias", fp + ("bias",), "raw", (dout,)))

  def ln(tp, fp, d):
    out.extend([(f"{tp}.weight", fp + ("scale",), "raw", (d,)), (f"{tp}.bias", fp + ("bias",), "raw", (d,))])

  def proj(tp, fp, din):
    lin(f"{tp}.linear1", fp + ("linear1",), din, c.d_proj, bias=False)
    lin(f"{tp}.linear2", fp + ("linear2",), c.d_proj, c.d_proj, bias=False)
    ln(f"{tp}.layer_norm", fp + ("layer_norm",), c.d_proj)

  proj("audio_encoder.projection", ("params", "audio_projection"), c.audio.num_features)
  t, T = c.text, ("params", "gpt2")
  d = t.n_embd
  out.append(("caption_encoder.base.wte.weight", T + ("wte", "embedding"), "raw", (t.vocab_size, d)))
  out.append(("caption_encoder.base.wpe.weight", T + ("wpe", "embedding"), "raw", (t.n_positions, d)))
  for i in range(t.n_layer):
    tp, fp = f"caption_encoder.base.h.{i}", T + (f"h_{i}",)
    ln(f"{tp}.ln_1", fp + ("ln_1",), d)
    # transformers' Conv1D keeps (in, out): the Flax kernel as it is
    lin(f"{tp}.attn.c_attn", fp + ("attn_c_attn",), d, 3 * d, kind="conv1d")
    lin(f"{tp}.attn.c_proj", fp + ("attn_c_proj",), d, d, kind="conv1d")
    ln(f"{tp}.ln_2", fp + ("ln_2",), d)
    lin(f"{tp}.mlp.c_fc", fp + ("mlp_c_fc",), d, 4 * d, kind="conv1d")
    lin(f"{tp}.mlp.c_proj", fp + ("mlp_c_proj",), 4 * d, d, kind="conv1d")
  ln("caption_encoder.base.ln_f", T + ("ln_f",), d)
  proj("caption_encoder.projection", ("params", "text_projection"), d)
  out.append(("logit_scale", ("params", "logit_scale"), "raw", ()))
  return out


def torch_shapes(c: MsClapConfig = MsClapConfig()) -> dict[str, tuple[int, ...]]:
  return {k: s for k, _, _, s in torch_layout(c)}


def convert_msclap(src: TensorSource | Mapping, c: MsClapConfig = MsClapConfig()) -> dict:
  """msclap CLAP 2023 state dict -> flax variables {'params', 'batch_stats'} (float32 numpy).

  Raises ConversionError naming the file and every missing/unexpected/mis-shaped key (strict, where
  msclap's own load_state_dict(strict=False) would silently keep random weights).
  """
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  layout = torch_layout(c)
  mel = A_PREFIX + "logmel_extractor.melW"
  found = src.shapes()
  check_keys({k: s for k, _, _, s in layout if k != mel or k in found}, found, source=src.path,
             ignore=lambda k: bool(_UNUSED.search(k)))
  tree: dict = {}
  for tkey, fpath, kind, _ in layout:
    v = src.get(tkey) if tkey in found else clap.mel_matrix(c.audio)
    v = clap.linear_to_jax(v) if kind == "linear" else clap.conv_to_jax(v) if kind == "conv" else v
    node = tree
    for part in fpath[:-1]:
      node = node.setdefault(part, {})
    node[fpath[-1]] = np.asarray(v, np.float32)
  return tree


def read_checkpoint(path: str | os.PathLike) -> TensorSource:
  """CLAP_weights_2023.pth ({'model': state dict}) via torch.load(weights_only=True), or safetensors."""
  try:
    return TensorSource(path)
  except ConversionError as e:
    raise ConversionError(f"{path}: cannot read the MS-CLAP 2023 checkpoint ({e}); expected "
                          f"CLAP_weights_2023.pth (microsoft/msclap) or a safetensors file of its state dict") from e


def random_variables(c: MsClapConfig, seed: int) -> dict:
  from dreamfoley_jax.eval.embedders.base import random_state_dict

  return convert_msclap(random_state_dict({k: s for k, s in torch_shapes(c).items() if not k.endswith("melW")},
                                          seed), c)


class Gpt2Prompts:
  """GPT-2's byte-level BPE from local files (tokenizer.json, or vocab.json + merges.txt), called as msclap
  does for GPT models: text + ' <|endoftext|>', padded with '!' (id 0) to `length`, no truncation."""

  def __init__(self, path: str | os.PathLike, length: int = 77):
    import pathlib

    import tokenizers

    p = pathlib.Path(path).expanduser()
    d = p if p.is_dir() else p.parent
    if (p.is_file() and p.name == "tokenizer.json") or (p / "tokenizer.json").is_file():
      tok = tokenizers.Tokenizer.from_file(str(p if p.is_file() else p / "tokenizer.json"))
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
      tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
      tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", normalized=False)])
    else:
      raise FileNotFoundError(f"pam: no GPT-2 tokenizer at {p}: expected tokenizer.json, or vocab.json and "
                              f"merges.txt (the files of the 'gpt2' model msclap loads); nothing is downloaded")
    if tok.token_to_id("<|endoftext|>") is None or tok.token_to_id("!") is None:
      raise ValueError(f"pam: the tokenizer at {p} lacks '<|endoftext|>' or '!': not GPT-2's")
    tok.no_padding()
    tok.no_truncation()
    self.tok, self.length, self.pad, self.source = tok, length, tok.token_to_id("!"), str(p)

  def __call__(self, texts) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(texts), self.length), self.pad, np.int32)
    mask = np.zeros((len(texts), self.length), np.int32)
    for i, t in enumerate(texts):
      e = self.tok.encode(t + " <|endoftext|>").ids
      if len(e) > self.length:
        raise ValueError(f"pam: prompt {t!r} is {len(e)} tokens, over {self.length}")
      ids[i, :len(e)], mask[i, :len(e)] = e, 1
    return ids, mask
