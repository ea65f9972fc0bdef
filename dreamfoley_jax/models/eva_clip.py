"""EVA01-CLIP-g/14 image tower in Flax linen, matching timm ``eva_giant_patch14_224`` as open_clip uses it.

Legend (dreamfoley_jax.models): B batch, HxWxC image height / width / channels, N tokens (1 cls + Np = 256
patches), D width, H heads (in attention), Dh head dim, F MLP width, O projection (CLIP embedding) width;
einsum: t / s query / key token, h H, e Dh.

Geometry (real model): patch 14 at 224 (16x16 grid + cls = 257 tokens), learned absolute position
embedding, 40 pre-LN blocks of width 1408 with 16 heads, fused qkv without bias plus separate q/v biases
(k bias is a constant zero), exact-GELU MLP of 6144, LayerNorm eps 1e-6, final norm, cls pooling, linear
head 1408 -> 1024 (the timm head *is* the CLIP projection). No RoPE, no layer scale.

Parameter names follow timm (``patch_embed/proj``, ``cls_token``, ``pos_embed``, ``blocks_{i}/norm1``,
``attn/qkv``, ``attn/q_bias``, ``attn/v_bias``, ``attn/proj``, ``norm2``, ``mlp/fc1``, ``mlp/fc2``, ``norm``,
``head``); with ``scan_layers`` the blocks live under ``blocks/block`` with a leading layer axis.
Input pixels are channels-last and already normalised with the OpenAI CLIP mean/std (`video.preprocess.clip_normalize`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamfoley_jax.models.vision_layers import (LayerNorm, Linear, Mlp, PatchEmbed, from_presets, golden_resolved,
                                                 l2_normalize, remat)

Array = jax.Array

@dataclasses.dataclass(frozen=True)
class EvaClipConfig:
  image_size: int = 224
  patch_size: int = 14
  in_channels: int = 3
  width: int = 1408
  depth: int = 40
  num_heads: int = 16
  mlp_dim: int = 6144          # int(width * 6144/1408) in timm; stored explicitly (tiny: 279)
  embed_dim: int = 1024        # CLIP projection width (timm head out)
  layernorm_eps: float = 1e-6
  # Implementation choices.
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"   # none | full | dots | dots_no_batch

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return 1 + self.grid * self.grid

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  def replace(self, **kw) -> "EvaClipConfig":
    return dataclasses.replace(self, **kw)


PRESETS: dict[str, EvaClipConfig] = {
    "eva01-g-14": EvaClipConfig(),
    # The golden tiny model: depth 2, width 64, 4 heads, real patches and MLP ratio, head to 32.
    "tiny": EvaClipConfig(width=64, depth=2, num_heads=4, mlp_dim=279, embed_dim=32),
}


def from_preset(name: str, **overrides) -> EvaClipConfig:
  return from_presets(PRESETS, "EVA-CLIP", name, **overrides)


def from_golden_config(path_or_dict, which: str = "tiny_config", **overrides) -> EvaClipConfig:
  """Config from the goldens' eva_clip_g14_config.json ('tiny_config' or 'real_config' section)."""
  r, where = golden_resolved(path_or_dict, which)
  if r.get("rope") or r.get("layer_scale"):
    raise ValueError(f"{where}: rope/layer_scale variants are not EVA01 and not supported")
  kw = dict(image_size=int(r["img_size"][0]), patch_size=int(r["patch_size"][0]), width=int(r["embed_dim"]),
            depth=int(r["depth"]), num_heads=int(r["num_heads"]), mlp_dim=int(r["mlp_hidden"]),
            embed_dim=int(r["head_out"]), layernorm_eps=float(r["layernorm_eps"]))
  kw.update(overrides)
  return EvaClipConfig(**kw)


def _dt(name: str):
  return jnp.dtype(name)


class EvaAttention(nn.Module):
  """Multi-head self-attention with a fused bias-free qkv plus learned q and v biases."""
  config: EvaClipConfig

  @nn.compact
  def __call__(self, x_BxNxD: Array) -> Array:
    c = self.config
    B, N, D = x_BxNxD.shape
    H, Dh = c.num_heads, c.head_dim
    qkv = Linear(3 * D, ("embed", "heads"), use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                 name="qkv")(x_BxNxD)
    init = nn.with_logical_partitioning(nn.initializers.zeros, ("heads",))
    q_bias = self.param("q_bias", init, (D,), _dt(c.param_dtype)).astype(c.dtype)
    v_bias = self.param("v_bias", init, (D,), _dt(c.param_dtype)).astype(c.dtype)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q_BxNxHxDh = (q + q_bias).reshape(B, N, H, Dh)
    k_BxNxHxDh = k.reshape(B, N, H, Dh)
    v_BxNxHxDh = (v + v_bias).reshape(B, N, H, Dh)
    scores = jnp.einsum("bthe,bshe->bhts", q_BxNxHxDh * (Dh ** -0.5), k_BxNxHxDh, preferred_element_type=jnp.float32)
    probs_BxHxNxN = jax.nn.softmax(scores, axis=-1).astype(v_BxNxHxDh.dtype)
    out = jnp.einsum("bhts,bshe->bthe", probs_BxHxNxN, v_BxNxHxDh).reshape(B, N, D)
    return Linear(D, ("heads", "embed"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                  name="proj")(out)


class EvaBlock(nn.Module):
  """Pre-LN block: x + attn(norm1(x)), then x + mlp(norm2(x))."""
  config: EvaClipConfig

  @nn.compact
  def __call__(self, x_BxNxD: Array) -> Array:
    c = self.config
    x = nn.with_logical_constraint(x_BxNxD, ("batch", "length", "act_embed"))
    x = x + EvaAttention(c, name="attn")(LayerNorm(c.layernorm_eps, c.param_dtype, name="norm1")(x))
    x = x + Mlp(c.mlp_dim, c.dtype, c.param_dtype, name="mlp")(
        LayerNorm(c.layernorm_eps, c.param_dtype, name="norm2")(x))
    return x


class _ScanBlock(nn.Module):
  config: EvaClipConfig

  @nn.compact
  def __call__(self, x, _):
    return EvaBlock(self.config, name="block")(x), None


class EvaVisionTower(nn.Module):
  """EVA01 image tower: pixels (B,H,W,3) normalised -> (L2-normalised embedding (B,O), aux).

  aux: ``tokens`` (B,N,D) after the final norm, ``projected`` (B,O) before normalisation; with
  ``intermediates=True`` also ``embed`` (input of block 0) and, unscanned only, ``block0``.
  """
  config: EvaClipConfig

  @nn.compact
  def __call__(self, pixels_BxHxWxC: Array, *, intermediates: bool = False):
    c = self.config
    B, H, W, C = pixels_BxHxWxC.shape
    if (H, W, C) != (c.image_size, c.image_size, c.in_channels):
      raise ValueError(f"EvaVisionTower expects (B,{c.image_size},{c.image_size},{c.in_channels}) "
                       f"channels-last pixels, got {pixels_BxHxWxC.shape}")
    D, P = c.width, c.patch_size
    pdt = _dt(c.param_dtype)
    # Patch embedding: Conv2d k=s=P written as one matmul over flattened (P,P,C) patches.
    x = PatchEmbed(D, (P, P), c.dtype, c.param_dtype, name="patch_embed")(pixels_BxHxWxC)  # (B, Np, D)
    cls = self.param("cls_token", nn.with_logical_partitioning(nn.initializers.normal(1e-6),
                                                               (None, None, "embed")), (1, 1, D), pdt)
    pos = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               (None, "length", "embed")),
                     (1, c.num_tokens, D), pdt)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (B, 1, D)), x], axis=1) + pos.astype(x.dtype)
    aux: dict[str, Any] = {}
    if intermediates:
      aux["embed"] = x
    if c.scan_layers:
      block = remat(_ScanBlock, c.remat_policy)
      x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=c.depth,
                     metadata_params={nn.PARTITION_NAME: "layers"})(c, name="blocks")(x, None)
    else:
      block = remat(EvaBlock, c.remat_policy)
      for i in range(c.depth):
        x = block(c, name=f"blocks_{i}")(x)
        if intermediates and i == 0:
          aux["block0"] = x
    tokens = LayerNorm(c.layernorm_eps, c.param_dtype, name="norm")(x)
    projected = Linear(c.embed_dim, ("embed", "null"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                       name="head")(tokens[:, 0])
    aux["tokens"] = tokens
    aux["projected"] = projected
    return l2_normalize(projected), aux
