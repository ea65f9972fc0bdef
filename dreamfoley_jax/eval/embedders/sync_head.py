"""Synchformer's offset classifier (`compare_v_a`: vproj/aproj + GlobalTransformer + off_head) in Flax.

Legend: B batch, S segments (14 per 4.8 s window), Tv/Ta tokens per segment (8 video, 6 audio),
L sequence (1 + S*Tv + 1 + S*Ta = 198), D width (768), H heads (8), K offset classes (21).
Reads the `vproj.*`, `aproj.*`, `transformer.*` keys of synchformer_state_dict.pth; the video and
audio feature extractors are their own ports (models/synchformer.py, sync_audio.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.convert.common import TensorSource, check_keys, linear_to_jax


@dataclasses.dataclass(frozen=True)
class SyncHeadConfig:
  width: int = 768
  num_layers: int = 3
  num_heads: int = 8
  seq_len: int = 198
  num_classes: int = 21
  ln_eps: float = 1e-5

  @classmethod
  def tiny(cls):
    return cls(width=16, num_layers=2, num_heads=2, seq_len=1 + 3 * 2 + 1 + 3 * 1)


def _dense(n, name, axes=("embed", "mlp")):
  return nn.Dense(n, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


def _ln(name, eps):
  return nn.LayerNorm(epsilon=eps, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class Block(nn.Module):
  config: SyncHeadConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    c = self.config
    b, l, d = x_BxLxD.shape
    h = _ln("ln1", c.ln_eps)(x_BxLxD)
    hd = d // c.num_heads
    q = _dense(d, "query")(h).reshape(b, l, c.num_heads, hd)
    k = _dense(d, "key")(h).reshape(b, l, c.num_heads, hd)
    v = _dense(d, "value")(h).reshape(b, l, c.num_heads, hd)
    att_BxHxLxL = jax.nn.softmax(jnp.einsum("blhd,bmhd->bhlm", q, k) / math.sqrt(hd), axis=-1)
    y = jnp.einsum("bhlm,bmhd->blhd", att_BxHxLxL, v).reshape(b, l, d)
    x = x_BxLxD + _dense(d, "proj")(y)
    h = _ln("ln2", c.ln_eps)(x)
    h = _dense(d, "mlp_2")(nn.gelu(_dense(4 * d, "mlp_0")(h), approximate=False))
    return x + h


class SyncHead(nn.Module):
  """(video (B, S, Tv, D), audio (B, S, Ta, D)) -> ((B, K) offset logits, aux)."""
  config: SyncHeadConfig

  @nn.compact
  def __call__(self, vis_BxSxTvxD, aud_BxSxTaxD):
    c = self.config
    b = vis_BxSxTvxD.shape[0]
    v = _dense(c.width, "vproj")(vis_BxSxTvxD).reshape(b, -1, c.width)
    a = _dense(c.width, "aproj")(aud_BxSxTaxD).reshape(b, -1, c.width)
    v = _ln("vis_in_lnorm", c.ln_eps)(v)
    a = _ln("aud_in_lnorm", c.ln_eps)(a)
    init = nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "embed"))
    off = jnp.broadcast_to(self.param("OFF_tok", init, (1, 1, c.width)), (b, 1, c.width))
    mod = jnp.broadcast_to(self.param("MOD_tok", init, (1, 1, c.width)), (b, 1, c.width))
    x = jnp.concatenate([off, v, mod, a], axis=1)
    if x.shape[1] != c.seq_len:
      raise ValueError(f"sync head expects {c.seq_len} tokens (1 + 14*8 + 1 + 14*6 for the real model), "
                       f"got {x.shape[1]} from video {vis_BxSxTvxD.shape} and audio {aud_BxSxTaxD.shape}")
    x = x + self.param("pos_emb", init, (1, c.seq_len, c.width))
    for i in range(c.num_layers):
      x = Block(c, name=f"blocks_{i}")(x)
    x = _ln("ln_f", c.ln_eps)(x)
    # 21 offset classes: not divisible by a tensor axis, so the logits width is replicated
    return _dense(c.num_classes, "off_head", ("embed", "embed_out"))(x[:, 0]), {"cls": x[:, 0]}


def torch_shapes(c: SyncHeadConfig) -> dict[str, tuple[int, ...]]:
  d = c.width
  s = {"vproj.weight": (d, d), "vproj.bias": (d,), "aproj.weight": (d, d), "aproj.bias": (d,)}
  t = "transformer."
  for n in ("vis_in_lnorm", "aud_in_lnorm", "ln_f"):
    s[f"{t}{n}.weight"] = (d,)
    s[f"{t}{n}.bias"] = (d,)
  s[f"{t}OFF_tok"] = (1, 1, d)
  s[f"{t}MOD_tok"] = (1, 1, d)
  s[f"{t}pos_emb_cfg.pos_emb"] = (1, c.seq_len, d)
  for i in range(c.num_layers):
    p = f"{t}blocks.{i}."
    for n in ("ln1", "ln2"):
      s[f"{p}{n}.weight"] = (d,)
      s[f"{p}{n}.bias"] = (d,)
    for n in ("key", "query", "value", "proj"):
      s[f"{p}attn.{n}.weight"] = (d, d)
      s[f"{p}attn.{n}.bias"] = (d,)
    s[f"{p}mlp.0.weight"] = (4 * d, d)
    s[f"{p}mlp.0.bias"] = (4 * d,)
    s[f"{p}mlp.2.weight"] = (d, 4 * d)
    s[f"{p}mlp.2.bias"] = (d,)
  s[f"{t}off_head.weight"] = (c.num_classes, d)
  s[f"{t}off_head.bias"] = (c.num_classes,)
  return s


def convert_sync_head(src: TensorSource | Mapping, c: SyncHeadConfig = SyncHeadConfig()) -> dict:
  """synchformer_state_dict.pth (feature-extractor keys ignored) -> flax variables of SyncHead."""
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  check_keys(torch_shapes(c), src.shapes(), source=src.path,
             ignore=lambda k: k.startswith(("vfeat_extractor.", "afeat_extractor.")))

  def lin(k):
    return {"kernel": linear_to_jax(src.get(f"{k}.weight")), "bias": src.get(f"{k}.bias")}

  def ln(k):
    return {"scale": src.get(f"{k}.weight"), "bias": src.get(f"{k}.bias")}

  t = "transformer."
  p = {"vproj": lin("vproj"), "aproj": lin("aproj"), "vis_in_lnorm": ln(f"{t}vis_in_lnorm"),
       "aud_in_lnorm": ln(f"{t}aud_in_lnorm"), "ln_f": ln(f"{t}ln_f"), "off_head": lin(f"{t}off_head"),
       "OFF_tok": src.get(f"{t}OFF_tok"), "MOD_tok": src.get(f"{t}MOD_tok"),
       "pos_emb": src.get(f"{t}pos_emb_cfg.pos_emb")}
  for i in range(c.num_layers):
    b = f"{t}blocks.{i}."
    p[f"blocks_{i}"] = {"ln1": ln(f"{b}ln1"), "ln2": ln(f"{b}ln2"), "query": lin(f"{b}attn.query"),
                        "key": lin(f"{b}attn.key"), "value": lin(f"{b}attn.value"), "proj": lin(f"{b}attn.proj"),
                        "mlp_0": lin(f"{b}mlp.0"), "mlp_2": lin(f"{b}mlp.2")}
  return {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), p)}
