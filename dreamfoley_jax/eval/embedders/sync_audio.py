"""Synchformer's audio feature extractor (`afeat_extractor`: AST + frequency aggregation) in Flax.

Legend: S segments, T spectrogram frames (66), F mel bins (128), f/t patch grid (12 x 6), N tokens
(2 + f*t = 74), D width (768), K heads (12), I MLP width (3072).
av-benchmark's `AST(extract_features=True, max_spec_t=66, factorize_freq_time=True,
agg_freq_module='TransformerEncoderLayer', agg_time_module=Identity)`: the Hugging Face AST encoder
(16x16 patches, stride 10, cls + distillation tokens, position embeddings cut to 2 + f*t, pre-LN
layers, eps 1e-12, exact GELU, final LayerNorm); the f*t patch tokens regrouped per time column; a
norm-first nn.TransformerEncoderLayer (eps 1e-6, exact GELU) with its own cls token aggregates the f
tokens of each column; its cls output is the column's feature -> (S, t, D).
Parameter names follow the torch module paths so the converter table reads one-to-one.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.convert.common import TensorSource, check_keys, conv_to_jax, linear_to_jax


@dataclasses.dataclass(frozen=True)
class SyncAudioConfig:
  width: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_mel_bins: int = 128
  max_frames: int = 66
  patch: int = 16
  stride: int = 10
  ast_eps: float = 1e-12
  agg_eps: float = 1e-6

  @property
  def grid(self) -> tuple[int, int]:
    return ((self.num_mel_bins - self.patch) // self.stride + 1, (self.max_frames - self.patch) // self.stride + 1)

  @classmethod
  def tiny(cls):
    return cls(width=16, num_layers=2, num_heads=2, mlp_dim=32, num_mel_bins=36, max_frames=26)


def _dense(n, name):
  return nn.Dense(n, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))


def _ln(name, eps):
  return nn.LayerNorm(epsilon=eps, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _attend(q_BxNxD, k_BxNxD, v_BxNxD, heads):
  b, n, d = q_BxNxD.shape
  e = d // heads
  q = q_BxNxD.reshape(b, n, heads, e)
  k = k_BxNxD.reshape(b, -1, heads, e)
  v = v_BxNxD.reshape(b, -1, heads, e)
  att = jax.nn.softmax(jnp.einsum("bnke,bmke->bknm", q, k) / math.sqrt(e), axis=-1)
  return jnp.einsum("bknm,bmke->bnke", att, v).reshape(b, n, d)


class ASTLayer(nn.Module):
  config: SyncAudioConfig

  @nn.compact
  def __call__(self, x_BxNxD):
    c = self.config
    h = _ln("layernorm_before", c.ast_eps)(x_BxNxD)
    a = _attend(_dense(c.width, "query")(h), _dense(c.width, "key")(h), _dense(c.width, "value")(h), c.num_heads)
    x = x_BxNxD + _dense(c.width, "attention_output")(a)
    h = _ln("layernorm_after", c.ast_eps)(x)
    h = nn.gelu(_dense(c.mlp_dim, "intermediate")(h), approximate=False)
    return x + _dense(c.width, "output")(h)


class FreqAggregator(nn.Module):
  """Norm-first nn.TransformerEncoderLayer over [cls, f tokens]; returns the cls row."""
  config: SyncAudioConfig

  @nn.compact
  def __call__(self, x_BxFxD):
    c = self.config
    b = x_BxFxD.shape[0]
    cls = self.param("cls_token", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed")),
                     (1, 1, c.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c.width)), x_BxFxD], axis=1)
    h = _ln("norm1", c.agg_eps)(x)
    qkv = _dense(3 * c.width, "in_proj")(h)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    x = x + _dense(c.width, "out_proj")(_attend(q, k, v, c.num_heads))
    h = _ln("norm2", c.agg_eps)(x)
    x = x + _dense(c.width, "linear2")(nn.gelu(_dense(c.mlp_dim, "linear1")(h), approximate=False))
    return x[:, 0]


class SyncAudioEncoder(nn.Module):
  """Normalised log-mel segments (B, S, T, F) -> ((B, S, t, D) features, aux)."""
  config: SyncAudioConfig

  @nn.compact
  def __call__(self, spec_BxSxTxF):
    c = self.config
    b, s, t_in, f_in = spec_BxSxTxF.shape
    f, t = c.grid
    x = spec_BxSxTxF.reshape(b * s, t_in, f_in).transpose(0, 2, 1)[..., None]  # (BS, F, T, 1): freq = H
    x = nn.Conv(c.width, (c.patch, c.patch), strides=(c.stride, c.stride), padding="VALID", name="patch_embeddings",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None, None, "conv_in", "conv_out")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))(x)
    if x.shape[1:3] != (f, t):
      raise ValueError(f"sync audio encoder expects ({c.max_frames} frames, {c.num_mel_bins} mels) per segment, "
                       f"got {(t_in, f_in)}")
    x = x.reshape(b * s, f * t, c.width)  # f-major, as torch's flatten(2) of (D, f, t)
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None, "embed"))
    cls = self.param("cls_token", init, (1, 1, c.width))
    dist = self.param("distillation_token", init, (1, 1, c.width))
    pos = self.param("position_embeddings", init, (1, 2 + f * t, c.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b * s, 1, c.width)), jnp.broadcast_to(dist, (b * s, 1, c.width)), x], 1)
    x = x + pos
    for i in range(c.num_layers):
      x = ASTLayer(c, name=f"layer_{i}")(x)
    x = _ln("layernorm", c.ast_eps)(x)
    cols = x[:, 2:].reshape(b * s, f, t, c.width).transpose(0, 2, 1, 3).reshape(b * s * t, f, c.width)
    out = FreqAggregator(c, name="freq_attn_agg")(cols)
    return out.reshape(b, s, t, c.width), {"last_hidden_state": x}


# --------------------------------------------------------------------------------------------------
# Conversion from synchformer_state_dict.pth (afeat_extractor.*)
# --------------------------------------------------------------------------------------------------

_P = "afeat_extractor."
_LAYER = {  # flax name -> torch suffix under ast.encoder.layer.{i}.
    "query": "attention.attention.query", "key": "attention.attention.key", "value": "attention.attention.value",
    "attention_output": "attention.output.dense", "intermediate": "intermediate.dense", "output": "output.dense",
}


def torch_shapes(c: SyncAudioConfig) -> dict[str, tuple[int, ...]]:
  d, f, t = c.width, *c.grid
  a = f"{_P}ast."
  s = {f"{a}embeddings.cls_token": (1, 1, d), f"{a}embeddings.distillation_token": (1, 1, d),
       f"{a}embeddings.position_embeddings": (1, 2 + f * t, d),
       f"{a}embeddings.patch_embeddings.projection.weight": (d, 1, c.patch, c.patch),
       f"{a}embeddings.patch_embeddings.projection.bias": (d,),
       f"{a}layernorm.weight": (d,), f"{a}layernorm.bias": (d,)}
  for i in range(c.num_layers):
    p = f"{a}encoder.layer.{i}."
    for n in ("query", "key", "value", "attention_output"):
      s[f"{p}{_LAYER[n]}.weight"] = (d, d)
      s[f"{p}{_LAYER[n]}.bias"] = (d,)
    s[f"{p}intermediate.dense.weight"] = (c.mlp_dim, d)
    s[f"{p}intermediate.dense.bias"] = (c.mlp_dim,)
    s[f"{p}output.dense.weight"] = (d, c.mlp_dim)
    s[f"{p}output.dense.bias"] = (d,)
    for n in ("layernorm_before", "layernorm_after"):
      s[f"{p}{n}.weight"] = (d,)
      s[f"{p}{n}.bias"] = (d,)
  g = f"{_P}freq_attn_agg."
  s.update({f"{g}cls_token": (1, 1, d), f"{g}self_attn.in_proj_weight": (3 * d, d), f"{g}self_attn.in_proj_bias": (3 * d,),
            f"{g}self_attn.out_proj.weight": (d, d), f"{g}self_attn.out_proj.bias": (d,),
            f"{g}linear1.weight": (c.mlp_dim, d), f"{g}linear1.bias": (c.mlp_dim,),
            f"{g}linear2.weight": (d, c.mlp_dim), f"{g}linear2.bias": (d,),
            f"{g}norm1.weight": (d,), f"{g}norm1.bias": (d,), f"{g}norm2.weight": (d,), f"{g}norm2.bias": (d,)})
  return s


def convert_sync_audio(src: TensorSource | Mapping, c: SyncAudioConfig = SyncAudioConfig()) -> dict:
  """synchformer_state_dict.pth -> flax variables of SyncAudioEncoder (other keys ignored)."""
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  want = torch_shapes(c)
  check_keys(want, src.shapes(), source=src.path, ignore=lambda k: not k.startswith(_P))
  a, g = f"{_P}ast.", f"{_P}freq_attn_agg."

  def lin(k):
    return {"kernel": linear_to_jax(src.get(f"{k}.weight")), "bias": src.get(f"{k}.bias")}

  def ln(k):
    return {"scale": src.get(f"{k}.weight"), "bias": src.get(f"{k}.bias")}

  p = {"cls_token": src.get(f"{a}embeddings.cls_token"),
       "distillation_token": src.get(f"{a}embeddings.distillation_token"),
       "position_embeddings": src.get(f"{a}embeddings.position_embeddings"),
       "patch_embeddings": {"kernel": conv_to_jax(src.get(f"{a}embeddings.patch_embeddings.projection.weight")),
                            "bias": src.get(f"{a}embeddings.patch_embeddings.projection.bias")},
       "layernorm": ln(f"{a}layernorm")}
  for i in range(c.num_layers):
    q = f"{a}encoder.layer.{i}."
    p[f"layer_{i}"] = {n: lin(q + t) for n, t in _LAYER.items()}
    p[f"layer_{i}"]["layernorm_before"] = ln(f"{q}layernorm_before")
    p[f"layer_{i}"]["layernorm_after"] = ln(f"{q}layernorm_after")
  p["freq_attn_agg"] = {
      "cls_token": src.get(f"{g}cls_token"),
      "in_proj": {"kernel": linear_to_jax(src.get(f"{g}self_attn.in_proj_weight")),
                  "bias": src.get(f"{g}self_attn.in_proj_bias")},
      "out_proj": lin(f"{g}self_attn.out_proj"), "linear1": lin(f"{g}linear1"), "linear2": lin(f"{g}linear2"),
      "norm1": ln(f"{g}norm1"), "norm2": ln(f"{g}norm2")}
  return {"params": jax.tree.map(lambda x: np.asarray(x, np.float32), p)}
