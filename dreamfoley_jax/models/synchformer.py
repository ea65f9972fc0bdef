"""Synchformer's visual feature extractor (MMAudio's MotionFormer with divided space-time attention).

Legend (dreamfoley_jax.models): B batch, Nw windows, Fw frames per window (16), Tw token frames (Fw/2 = 8),
Np patches per frame (14*14 = 196), N tokens (1 cls + Tw*Np = 1569), D width, H heads, Dh head dim,
R rows (windows flattened, B*Nw; or B*Nw*Tw in the aggregator), Ng attention groups of M tokens;
S keys of the aggregator (1 cls + Np); einsum: r R, g Ng, m / n query / key inside a group, l N, e Dh.

Matches MMAudio @974010a ``Synchformer()`` = ``MotionFormer(extract_features=True, factorize_space_time=True,
agg_space_module='TransformerEncoderLayer', agg_time_module=Identity, add_global_repr=False)``:
- tubelet embedding Conv3d k=s=(2,16,16) over 16 frames of 224^2 -> 8x14x14 tokens in (t,h,w) order, a cls
  token, and separate position terms: cls + pos_embed[0]; token (t,n) + pos_embed[1+n] + temp_embed[t];
- blocks: x += timeattn(norm3(x)); x += attn(norm1(x)); x += mlp(norm2(x)). In each DividedAttention the cls
  query attends to every token; a patch query attends to the cls key plus the tokens at its own spatial
  position across time (timeattn) or in its own frame (attn). q is scaled by Dh^-0.5 before the dot.
- norm(x[:, 1:]), then per token-frame a spatial aggregator (a norm-first nn.TransformerEncoderLayer with its
  own cls token, GELU, eps 1e-6) whose cls output is the frame's feature: 8 vectors of D per window.
Only the aggregator's cls row reaches the output, so only its query row is computed (same arithmetic).

Parameter names follow the torch module names (``patch_embed_3d/proj``, ``blocks_{i}/timeattn/qkv`` ...,
``spatial_attn_agg/self_attn/in_proj``). The unused 2-D ``patch_embed`` of the torch model is not kept.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.models.vision_layers import (LayerNorm, Linear, Mlp, PatchEmbed, from_presets, golden_resolved,
                                                 remat)
from dreamfoley_jax.video import preprocess as vpre

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SynchformerConfig:
  image_size: int = 224
  patch_size: int = 16
  tubelet: int = 2               # PATCH_SIZE_TEMP
  num_frames: int = 16           # frames per window
  in_channels: int = 3
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  layernorm_eps: float = 1e-6
  # MMAudio's windowing of a 25 fps video.
  window: int = 16
  stride: int = 8
  # Implementation choices.
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def patches_per_frame(self) -> int:
    return self.grid * self.grid

  @property
  def token_frames(self) -> int:
    return self.num_frames // self.tubelet

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return self.width * self.mlp_ratio

  def replace(self, **kw) -> "SynchformerConfig":
    return dataclasses.replace(self, **kw)


PRESETS: dict[str, SynchformerConfig] = {
    "synchformer": SynchformerConfig(),
    # The golden tiny model: divided_224_16x4.yaml with DEPTH=2, EMBED_DIM=64, NUM_HEADS=4.
    "tiny": SynchformerConfig(width=64, depth=2, num_heads=4),
}


def from_preset(name: str, **overrides) -> SynchformerConfig:
  return from_presets(PRESETS, "Synchformer", name, **overrides)


def from_golden_config(path_or_dict, which: str = "tiny_config", **overrides) -> SynchformerConfig:
  """Config from the goldens' synchformer_config.json ('tiny_config' or 'real_config' section)."""
  r, where = golden_resolved(path_or_dict, which)
  if r.get("pos_embed") != "separate" or r.get("attn_layer") != "divided":
    raise ValueError(f"{where}: only pos_embed='separate' with attn_layer='divided' is supported, got {r}")
  kt, kh, _ = r["patch_embed_3d_kernel_stride"]
  kw = dict(image_size=int(r["img_size"]), patch_size=int(kh), tubelet=int(kt),
            num_frames=int(r["frames_per_window"]), width=int(r["embed_dim"]), depth=int(r["depth"]),
            num_heads=int(r["num_heads"]), mlp_ratio=int(r["mlp_hidden"]) // int(r["embed_dim"]),
            layernorm_eps=float(r["layernorm_eps"]))
  kw.update(overrides)
  return SynchformerConfig(**kw)


def _dt(name: str):
  return jnp.dtype(name)


def _grouped_attention_with_cls(q_RxNgxMxHxDh, k_RxNgxMxHxDh, v_RxNgxMxHxDh, cls_k_RxHxDh, cls_v_RxHxDh):
  """Each query attends within its group of M tokens plus the (shared) cls key/value."""
  s_self = jnp.einsum("rgmhe,rgnhe->rghmn", q_RxNgxMxHxDh, k_RxNgxMxHxDh, preferred_element_type=jnp.float32)
  s_cls = jnp.einsum("rgmhe,rhe->rghm", q_RxNgxMxHxDh, cls_k_RxHxDh, preferred_element_type=jnp.float32)
  scores = jnp.concatenate([s_cls[..., None], s_self], axis=-1)          # (R,Ng,H,M,1+M), cls first
  probs = jax.nn.softmax(scores, axis=-1).astype(v_RxNgxMxHxDh.dtype)
  out = jnp.einsum("rghmn,rgnhe->rgmhe", probs[..., 1:], v_RxNgxMxHxDh)
  return out + jnp.einsum("rghm,rhe->rgmhe", probs[..., 0], cls_v_RxHxDh)


class DividedAttention(nn.Module):
  """MotionFormer DividedAttention over time ('time') or space ('space'); returns proj(out) (R,N,D)."""
  config: SynchformerConfig
  over: str  # "time" | "space"

  @nn.compact
  def __call__(self, x_RxNxD: Array) -> Array:
    c = self.config
    R, N, D = x_RxNxD.shape
    H, Dh, Tw, Np = c.num_heads, c.head_dim, c.token_frames, c.patches_per_frame
    qkv = Linear(3 * D, ("embed", "heads"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                 name="qkv")(x_RxNxD)
    q, k, v = (t.reshape(R, N, H, Dh) for t in jnp.split(qkv, 3, axis=-1))
    q = q * (Dh ** -0.5)
    # cls query over all N keys.
    s = jnp.einsum("rhe,rlhe->rhl", q[:, 0], k, preferred_element_type=jnp.float32)
    cls_out = jnp.einsum("rhl,rlhe->rhe", jax.nn.softmax(s, axis=-1).astype(v.dtype), v)
    qp, kp, vp = (t[:, 1:].reshape(R, Tw, Np, H, Dh) for t in (q, k, v))
    if self.over == "time":    # groups = spatial positions, sequence = frames
      qp, kp, vp = (t.transpose(0, 2, 1, 3, 4) for t in (qp, kp, vp))
    elif self.over != "space":
      raise ValueError(f"DividedAttention.over must be 'time' or 'space', got {self.over!r}")
    out = _grouped_attention_with_cls(qp, kp, vp, k[:, 0], v[:, 0])
    if self.over == "time":
      out = out.transpose(0, 2, 1, 3, 4)
    out = jnp.concatenate([cls_out[:, None], out.reshape(R, Tw * Np, H, Dh)], axis=1).reshape(R, N, D)
    return Linear(D, ("heads", "embed"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                  name="proj")(out)


class DividedSpaceTimeBlock(nn.Module):
  """x += timeattn(norm3(x)); x += attn(norm1(x)); x += mlp(norm2(x)). Returns (x, timeattn output)."""
  config: SynchformerConfig

  @nn.compact
  def __call__(self, x_RxNxD: Array):
    c = self.config
    ln = lambda name: LayerNorm(c.layernorm_eps, c.param_dtype, name=name)  # noqa: E731
    x = nn.with_logical_constraint(x_RxNxD, ("batch", "length", "act_embed"))
    t = DividedAttention(c, "time", name="timeattn")(ln("norm3")(x))
    x = x + t
    x = x + DividedAttention(c, "space", name="attn")(ln("norm1")(x))
    x = x + Mlp(c.mlp_dim, c.dtype, c.param_dtype, name="mlp")(ln("norm2")(x))
    return x, t


class _ScanBlock(nn.Module):
  config: SynchformerConfig

  @nn.compact
  def __call__(self, x, _):
    x, _t = DividedSpaceTimeBlock(self.config, name="block")(x)
    return x, None


class SpatialAggregator(nn.Module):
  """Norm-first TransformerEncoderLayer with its own cls token; returns the cls output per sequence."""
  config: SynchformerConfig

  @nn.compact
  def __call__(self, x_RxNpxD: Array) -> Array:
    c = self.config
    R, Np, D = x_RxNpxD.shape
    pdt = _dt(c.param_dtype)
    cls = self.param("cls_token", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               (None, None, "embed")), (1, 1, D), pdt)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x_RxNpxD.dtype), (R, 1, D)), x_RxNpxD], axis=1)
    h = LayerNorm(c.layernorm_eps, c.param_dtype, name="norm1")(x)
    attn = _AggregatorAttention(c, name="self_attn")
    y = x[:, 0] + attn(h)                                  # only the cls row is needed downstream
    z = LayerNorm(c.layernorm_eps, c.param_dtype, name="norm2")(y)
    z = Linear(c.mlp_dim, ("embed", "mlp"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
               name="linear1")(z)
    z = Linear(D, ("mlp", "embed"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
               name="linear2")(jax.nn.gelu(z, approximate=False))
    return y + z


class _AggregatorAttention(nn.Module):
  """nn.MultiheadAttention (in_proj rows q,k,v; out_proj) for the cls query of each sequence."""
  config: SynchformerConfig

  @nn.compact
  def __call__(self, h_RxSxD: Array) -> Array:
    c = self.config
    R, S, D = h_RxSxD.shape
    H, Dh = c.num_heads, c.head_dim
    w = self.param("in_proj_kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                  ("embed", "heads")), (D, 3 * D),
                   _dt(c.param_dtype)).astype(c.dtype)
    b = self.param("in_proj_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)), (3 * D,),
                   _dt(c.param_dtype)).astype(c.dtype)
    q_RxHxDh = (h_RxSxD[:, 0] @ w[:, :D] + b[:D]).reshape(R, H, Dh)
    kv_RxSx2xHxDh = (h_RxSxD.reshape(R * S, D) @ w[:, D:] + b[D:]).reshape(R, S, 2, H, Dh)
    s = jnp.einsum("rhe,rshe->rhs", q_RxHxDh * (Dh ** -0.5), kv_RxSx2xHxDh[:, :, 0],
                   preferred_element_type=jnp.float32)
    o = jnp.einsum("rhs,rshe->rhe", jax.nn.softmax(s, axis=-1).astype(kv_RxSx2xHxDh.dtype),
                   kv_RxSx2xHxDh[:, :, 1]).reshape(R, D)
    return Linear(D, ("heads", "embed"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                  name="out_proj")(o)


class Synchformer(nn.Module):
  """Windows (B,Nw,Fw,H,W,C) channels-last in [-1,1] -> (features (B,Nw,Tw,D), aux).

  With ``intermediates=True`` aux holds, per window flattened to R = B*Nw: ``embed`` (R,N,D) input of block 0,
  ``block0_timeattn`` (R,N,D), ``block0`` (R,N,D) (these two unscanned only) and ``pre_agg`` (R,Tw*Np,D).
  """
  config: SynchformerConfig

  @nn.compact
  def __call__(self, windows_BxNwxFwxHxWxC: Array, *, intermediates: bool = False):
    c = self.config
    B, Nw, Fw, H, W, C = windows_BxNwxFwxHxWxC.shape
    if (Fw, H, W, C) != (c.num_frames, c.image_size, c.image_size, c.in_channels):
      raise ValueError(f"Synchformer expects windows (B,Nw,{c.num_frames},{c.image_size},{c.image_size},"
                       f"{c.in_channels}) channels-last, got {windows_BxNwxFwxHxWxC.shape}")
    D, Tw, Np = c.width, c.token_frames, c.patches_per_frame
    pdt = _dt(c.param_dtype)
    x = windows_BxNwxFwxHxWxC.reshape(B * Nw, Fw, H, W, C).astype(c.dtype)
    x = PatchEmbed(D, (c.tubelet, c.patch_size, c.patch_size), c.dtype, c.param_dtype,
                   name="patch_embed_3d")(x)                                  # (R, Tw*Np, D), (t,h,w) order
    part = nn.with_logical_partitioning
    cls = self.param("cls_token", part(nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, D), pdt)
    pos = self.param("pos_embed", part(nn.initializers.normal(0.02), (None, "length", "embed")),
                     (1, 1 + Np, D), pdt).astype(x.dtype)
    temp = self.param("temp_embed", part(nn.initializers.zeros, (None, "length", "embed")), (1, Tw, D),
                      pdt).astype(x.dtype)
    patch_pos = (pos[0, 1:][None, :, :] + temp[0][:, None, :]).reshape(Tw * Np, D)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype) + pos[:, :1], (B * Nw, 1, D)),
                         x + patch_pos[None]], axis=1)
    aux: dict[str, Any] = {}
    if intermediates:
      aux["embed"] = x
    if c.scan_layers:
      x, _ = nn.scan(remat(_ScanBlock, c.remat_policy), variable_axes={"params": 0},
                     split_rngs={"params": True}, length=c.depth,
                     metadata_params={nn.PARTITION_NAME: "layers"})(c, name="blocks")(x, None)
    else:
      block = remat(DividedSpaceTimeBlock, c.remat_policy)
      for i in range(c.depth):
        x, t = block(c, name=f"blocks_{i}")(x)
        if intermediates and i == 0:
          aux["block0_timeattn"], aux["block0"] = t, x
    x = LayerNorm(c.layernorm_eps, c.param_dtype, name="norm")(x[:, 1:])    # (R, Tw*Np, D)
    if intermediates:
      aux["pre_agg"] = x
    feats = SpatialAggregator(c, name="spatial_attn_agg")(x.reshape(B * Nw * Tw, Np, D))
    return feats.reshape(B, Nw, Tw, D), aux


@functools.lru_cache(maxsize=8)
def jitted_apply(config: SynchformerConfig) -> Callable:
  """One jitted (params, windows) -> features per config, so repeated calls reuse compiled executables."""
  model = Synchformer(config)
  return jax.jit(lambda p, w: model.apply({"params": p}, w)[0])


def encode_video_with_sync(model: Synchformer, params, video_BxTxHxWxC, *, batch_size: Optional[int] = None,
                           apply_fn: Optional[Callable] = None) -> Array:
  """MMAudio's encode_video_with_sync: (B,T,224,224,3) in [-1,1] -> (B, S*8, D).

  Windows are run ``batch_size`` at a time (default: all B*S at once) through one jitted apply; pass
  ``apply_fn`` (params, windows (N,1,F,H,W,C)) -> (N,1,T,D) to reuse a compiled function.
  """
  c = model.config
  B = video_BxTxHxWxC.shape[0]
  win = vpre.sync_windows(video_BxTxHxWxC, c.window, c.stride, axis=1)   # (B,S,F,H,W,C), MMAudio's windows
  S = win.shape[1]
  flat = win.reshape((B * S, 1) + tuple(win.shape[2:]))
  if apply_fn is None:
    apply_fn = jitted_apply(c)
  n = B * S if not batch_size or batch_size < 0 else batch_size
  outs = []
  for i in range(0, B * S, n):
    chunk = flat[i:i + n]
    if chunk.shape[0] < n:  # pad the last chunk so one compiled shape serves every call
      pad = np.zeros((n - chunk.shape[0],) + tuple(chunk.shape[1:]), chunk.dtype)
      out = apply_fn(params, jnp.concatenate([jnp.asarray(chunk), jnp.asarray(pad)]))[:chunk.shape[0]]
    else:
      out = apply_fn(params, chunk)
    outs.append(out)
  feats = jnp.concatenate(outs, axis=0)                                    # (B*S, 1, T, D)
  return feats.reshape(B, S * feats.shape[2], feats.shape[3])
