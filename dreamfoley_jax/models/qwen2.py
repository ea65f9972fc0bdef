"""Qwen2 / Qwen2.5 decoder in Flax linen, matching transformers' Qwen2ForCausalLM.

Legend (dreamfoley_jax.models): B batch, T query time, S key / cache slots, D width, H query heads, Hkv kv heads,
G query heads per kv head, Dh head dim, F MLP width, V vocab, L layers; einsum: j = Hkv, e = Dh, q = G*T rows.

Parameter names follow the Hugging Face module names (``q_proj``, ``input_layernorm``...) so that the
converter in ``dreamfoley_jax.convert.qwen2`` is a one-to-one table. Kernels are 2-D (in, out): XLA:CPU
handles the backward of 2-D dots much better than dots with extra batch dims (see JAX_NOTES).

KV cache: an explicit pytree ``{"k": L x (B,Hkv,Dh,S), "v": L x (B,Hkv,S,Dh), "mask": (B,S) bool, "index": int32}``
(a list of per-layer arrays, or one (L,B,Hkv,...) array with scan_layers).
A call with a cache writes its T new keys at slots [index, index+T) and each query attends to valid
slots at or before its own slot, so prefill (T = prompt) and decode (T = 1) share one code path.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamfoley_jax import sharding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int = 151936
  hidden_size: int = 896
  intermediate_size: int = 4864
  num_hidden_layers: int = 24
  num_attention_heads: int = 14
  num_key_value_heads: int = 2
  head_dim: Optional[int] = None
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True
  max_position_embeddings: int = 32768
  initializer_range: float = 0.02
  # Implementation choices (not in HF config).
  param_dtype: str = "float32"
  dtype: str = "float32"            # compute dtype; norms, softmax and rope run in fp32 regardless
  scan_layers: bool = False
  remat_policy: str = "none"        # none | full | dots | dots_no_batch
  attention_impl: str = "xla"       # xla (einsum + softmax) | dot_product_attention (jax.nn, its default: XLA)
                                    # | cudnn (jax.nn's cuDNN flash kernel: GPU only; training and prefill)
                                    # | blocked (causal query blocks that skip fully masked key blocks)
  attention_block: int = 256        # query block size of attention_impl="blocked"
  fuse_projections: bool = False    # one matmul for q|k|v and one for gate|up (kernels concatenated per call)
  swiglu_vjp: bool = False          # hand-written backward for silu(gate) * up (one fused elementwise pass)

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  def replace(self, **kw) -> "Qwen2Config":
    return dataclasses.replace(self, **kw)


PRESETS: dict[str, Qwen2Config] = {
    "tiny": Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                        max_position_embeddings=4096),
    "qwen2.5-0.5b": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                max_position_embeddings=32768),
    "qwen2.5-1.5b": Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                max_position_embeddings=32768),
    "qwen2.5-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                              rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                              max_position_embeddings=32768),
}

# Exact options (same math as HF, parity tests cover them) that speed up XLA:CPU training; see
# benchmarks/bench_decoder.py. Off by default: on TPU, concatenating tensor-sharded kernels costs a reshard.
CPU_FAST_OPTIONS = dict(attention_impl="blocked", fuse_projections=True, swiglu_vjp=True)

_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
              "max_position_embeddings", "initializer_range")


def from_preset(name: str, **overrides) -> Qwen2Config:
  if name not in PRESETS:
    raise KeyError(f"unknown Qwen2 preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


def from_hf_config(path_or_dict, **overrides) -> Qwen2Config:
  """Builds a config from an HF ``config.json`` (path, directory or dict)."""
  if isinstance(path_or_dict, dict):
    d, where = path_or_dict, "<dict>"
  else:
    p = pathlib.Path(path_or_dict)
    p = p / "config.json" if p.is_dir() else p
    if not p.exists():
      raise FileNotFoundError(f"{p}: no config.json")
    d, where = json.loads(p.read_text()), str(p)
  mt = d.get("model_type", "qwen2")
  if mt != "qwen2":
    raise ValueError(f"{where}: model_type is {mt!r}, expected 'qwen2'")
  if d.get("rope_scaling"):
    raise ValueError(f"{where}: rope_scaling={d['rope_scaling']} is not supported")
  theta = d.get("rope_theta", (d.get("rope_parameters") or {}).get("rope_theta", 10000.0))
  kw = {k: d[k] for k in _HF_FIELDS if k in d and d[k] is not None}
  kw["rope_theta"] = float(theta)
  kw.setdefault("num_key_value_heads", kw.get("num_attention_heads"))
  kw.update(overrides)
  return Qwen2Config(**kw)


def to_hf_config(cfg: Qwen2Config) -> dict:
  """An HF Qwen2 ``config.json`` dict for `cfg`."""
  d = {k: getattr(cfg, k) for k in _HF_FIELDS if k != "head_dim"}
  d.update({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu",
            "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None,
            "max_window_layers": cfg.num_hidden_layers, "rope_scaling": None, "torch_dtype": "float32",
            "use_cache": True, "bos_token_id": 151643, "eos_token_id": 151643})
  if cfg.head_dim is not None and cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
    d["head_dim"] = cfg.head_dim
  return d


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------

def _dt(name: str):
  return jnp.dtype(name)


class Linear(nn.Module):
  """y = x @ W (+ b) on 2-D-flattened activations; kernel (in, out) with logical axes."""
  features: int
  axes: tuple[str, str]
  use_bias: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  init_std: float = 0.02

  weights_only: bool = False  # return (kernel, bias) instead of applying them (fused projections)

  @nn.compact
  def __call__(self, x):
    in_features = x if self.weights_only else x.shape[-1]
    k = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes),
                   (in_features, self.features), _dt(self.param_dtype))
    b = None
    if self.use_bias:
      b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)),
                     (self.features,), _dt(self.param_dtype))
    if self.weights_only:
      return k, b
    lead = x.shape[:-1]
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype), k.astype(self.dtype))
    if b is not None:
      y = y + b.astype(self.dtype)
    return y.reshape(*lead, self.features)


def fused_linear(x, weights, dtype):
  """x @ [W1|W2|...] (+ [b1|b2|...]) as one 2-D matmul; returns the per-weight outputs."""
  lead = x.shape[:-1]
  k = jnp.concatenate([w.astype(dtype) for w, _ in weights], axis=1)
  y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dtype), k)
  if weights[0][1] is not None:
    y = y + jnp.concatenate([b.astype(dtype) for _, b in weights])
  sizes = [w.shape[1] for w, _ in weights]
  outs = jnp.split(y, _offsets(sizes), axis=1)
  return [o.reshape(*lead, o.shape[-1]) for o in outs]


def _offsets(sizes):
  out, acc = [], 0
  for n in sizes[:-1]:
    acc += n
    out.append(acc)
  return out


@jax.custom_vjp
def swiglu(gate, up):
  """silu(gate) * up with a hand-written backward (XLA:CPU's autodiff of silu is slow)."""
  return gate * jax.nn.sigmoid(gate) * up


def _swiglu_fwd(gate, up):
  return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, g):
  gate, up = res
  s = jax.nn.sigmoid(gate)
  silu = gate * s
  return g * up * (s + silu * (1 - s)), g * silu


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class RMSNorm(nn.Module):
  eps: float = 1e-6
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    w = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                   (x.shape[-1],), _dt(self.param_dtype))
    in_dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return w.astype(in_dtype) * xf.astype(in_dtype)


def rope_cos_sin(positions_BxT: Array, head_dim: int, theta: float):
  """cos/sin tables (B,T,Dh) in fp32, HF layout (frequencies repeated, not interleaved)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_BxTxHxDh: Array, cos_BxTxDh: Array, sin_BxTxDh: Array) -> Array:
  """Rotates the query (H heads) or key (Hkv heads) vectors of each position."""
  dtype = x_BxTxHxDh.dtype
  x = x_BxTxHxDh.astype(jnp.float32)
  half = x.shape[-1] // 2
  rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_BxTxDh[:, :, None, :] + rot * sin_BxTxDh[:, :, None, :]
  return out.astype(dtype)


def _attend_kv_major(q_BxHkvxGxTxDh, k_BxHkvxSxDh, v_BxHkvxSxDh, mask_BxTxS, keys_transposed: bool = False):
  """GQA with kv-head-major layouts: both dots are plain batched GEMMs over (B, Hkv).

  keys_transposed: k is given as (B, Hkv, Dh, S) (the KV cache layout), so q @ k is a plain (NN) GEMM.
  """
  B, Hkv, G, T, Dh = q_BxHkvxGxTxDh.shape
  S = v_BxHkvxSxDh.shape[2]
  q_BxHkvxQxDh = q_BxHkvxGxTxDh.reshape(B, Hkv, G * T, Dh)
  if keys_transposed:
    scores = jnp.einsum("bjqe,bjes->bjqs", q_BxHkvxQxDh, k_BxHkvxSxDh, preferred_element_type=jnp.float32)
  else:
    scores = jnp.einsum("bjqe,bjse->bjqs", q_BxHkvxQxDh, k_BxHkvxSxDh, preferred_element_type=jnp.float32)
  # The fp32 scores are scaled, as `attention` (training) does: scaling bf16 q first rounded q * Dh^-0.5 to
  # bf16, so the KV-cache decode and the training forward disagreed on 40% of bf16 outputs (up to 0.04).
  scores = scores.reshape(B, Hkv, G, T, S) * (Dh ** -0.5)
  scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxHkvxSxDh.dtype).reshape(B, Hkv, G * T, S)
  out = jnp.einsum("bjqs,bjse->bjqe", probs, v_BxHkvxSxDh)
  return out.reshape(B, Hkv, G, T, Dh)


def blocked_causal_attention(q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh, mask_BxTxS, block: int):
  """Causal self-attention (key slot s == position s, no cache) in query blocks of `block` rows.

  Query block [a, b) only reads keys [0, b): keys past the block are masked anyway, so skipping them
  changes no result but saves ~40% of the attention FLOPs at T=1024. The (padding) mask still applies.
  """
  B, T, H, Dh = q_BxTxHxDh.shape
  Hkv = k_BxSxHkvxDh.shape[2]
  q = q_BxTxHxDh.reshape(B, T, Hkv, H // Hkv, Dh).transpose(0, 2, 3, 1, 4)  # B Hkv G T Dh
  k = k_BxSxHkvxDh.transpose(0, 2, 1, 3)
  v = v_BxSxHkvxDh.transpose(0, 2, 1, 3)
  outs = []
  for a in range(0, T, block):
    b = min(T, a + block)
    outs.append(_attend_kv_major(q[:, :, :, a:b], k[:, :, :b], v[:, :, :b], mask_BxTxS[:, a:b, :b]))
  out = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]
  return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


# The kernel behind attention_impl="cudnn". Tests set "xla" to run the same code path (mask handling, padding,
# cache transposes) on CPU against the einsum attention.
FLASH_IMPLEMENTATION = "cudnn"


def flash_attention(q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh, mask_BxTxS, *, self_causal: bool):
  """`jax.nn.dot_product_attention(implementation=FLASH_IMPLEMENTATION)`: cuDNN's flash kernel on NVIDIA GPUs.

  self_causal: the mask is causal-by-slot & key-valid over the same T slots (training, no cache), so the
  kernel's own causal mask skips the upper triangle and only key padding rides along (as its bias, the
  valid row broadcast over the queries: the last query row of such a mask is the key-valid row). Else the
  whole mask is the bias (prefill against a KV cache). cuDNN's training kernel with a bias needs even
  lengths: an odd T gets one masked key / dropped query slot (same result).
  """
  B, T = q_BxTxHxDh.shape[:2]
  if self_causal:
    valid_BxS = mask_BxTxS[:, -1]
    if T % 2:
      pad = lambda x: jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
      q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh = pad(q_BxTxHxDh), pad(k_BxSxHkvxDh), pad(v_BxSxHkvxDh)
      valid_BxS = jnp.pad(valid_BxS, ((0, 0), (0, 1)))
    S = valid_BxS.shape[1]
    mask = jnp.broadcast_to(valid_BxS[:, None, None, :], (B, 1, S, S))
  else:
    mask = mask_BxTxS[:, None]
  out = jax.nn.dot_product_attention(q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh, mask=mask, is_causal=self_causal,
                                     implementation=FLASH_IMPLEMENTATION)
  return out[:, :T]


def attention(q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh, mask_BxTxS, impl: str = "xla"):
  """Grouped-query attention; mask True = may attend. Softmax in fp32."""
  B, T, H, Dh = q_BxTxHxDh.shape
  Hkv = k_BxSxHkvxDh.shape[2]
  G = H // Hkv
  if impl == "cudnn":
    return flash_attention(q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh, mask_BxTxS, self_causal=True)
  if impl == "dot_product_attention":
    out = jax.nn.dot_product_attention(q_BxTxHxDh, k_BxSxHkvxDh, v_BxSxHkvxDh, mask=mask_BxTxS[:, None])
    return out
  q_BxTxHkvxGxDh = q_BxTxHxDh.reshape(B, T, Hkv, G, Dh)
  scores = jnp.einsum("btjge,bsje->bjgts", q_BxTxHkvxGxDh, k_BxSxHkvxDh, preferred_element_type=jnp.float32)
  scores = scores * (Dh ** -0.5)
  scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs_BxHkvxGxTxS = jax.nn.softmax(scores, axis=-1).astype(v_BxSxHkvxDh.dtype)
  out = jnp.einsum("bjgts,bsje->btjge", probs_BxHkvxGxTxS, v_BxSxHkvxDh)
  return out.reshape(B, T, H, Dh)


class Qwen2Attention(nn.Module):
  config: Qwen2Config

  @nn.compact
  def __call__(self, x_BxTxD, cos, sin, mask_BxTxS, layer_cache=None, cache_index=None):
    c = self.config
    Dh, H, Hkv = c.head_size, c.num_attention_heads, c.num_key_value_heads
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, init_std=c.initializer_range)
    B, T, D = x_BxTxD.shape
    if c.fuse_projections:
      ws = [Linear(n, ax, use_bias=True, weights_only=True, name=name, **kw)(D)
            for n, ax, name in ((H * Dh, ("embed", "heads"), "q_proj"), (Hkv * Dh, ("embed", "kv_heads"), "k_proj"),
                                (Hkv * Dh, ("embed", "kv_heads"), "v_proj"))]
      q, k, v = fused_linear(x_BxTxD, ws, c.dtype)
    else:
      q = Linear(H * Dh, ("embed", "heads"), use_bias=True, name="q_proj", **kw)(x_BxTxD)
      k = Linear(Hkv * Dh, ("embed", "kv_heads"), use_bias=True, name="k_proj", **kw)(x_BxTxD)
      v = Linear(Hkv * Dh, ("embed", "kv_heads"), use_bias=True, name="v_proj", **kw)(x_BxTxD)
    q, k, v = q.reshape(B, T, H, Dh), k.reshape(B, T, Hkv, Dh), v.reshape(B, T, Hkv, Dh)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    new_cache = None
    if layer_cache is not None:
      # Cache kv-head-major, k (B,Hkv,Dh,S) and v (B,Hkv,S,Dh): the T new slots are written in place and the
      # attention dots are plain batched GEMMs over (B,Hkv) reading contiguous keys (no per-step transpose).
      cdt = layer_cache["k"].dtype
      ck = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(cdt).transpose(0, 2, 3, 1),
                                        (0, 0, 0, cache_index))
      cv = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(cdt).transpose(0, 2, 1, 3),
                                        (0, 0, cache_index, 0))
      new_cache = {"k": ck, "v": cv}
      if c.attention_impl == "cudnn" and T > 1:    # prefill: the flash kernel over the whole cache
        out = flash_attention(q, ck.astype(q.dtype).transpose(0, 3, 1, 2), cv.astype(q.dtype).transpose(0, 2, 1, 3),
                              mask_BxTxS, self_causal=False)
      else:
        q_kv = q.reshape(B, T, Hkv, H // Hkv, Dh).transpose(0, 2, 3, 1, 4)          # B Hkv G T Dh
        out = _attend_kv_major(q_kv, ck.astype(q.dtype), cv.astype(q.dtype), mask_BxTxS, keys_transposed=True)
        out = out.transpose(0, 3, 1, 2, 4)
    elif c.attention_impl == "blocked":
      out = blocked_causal_attention(q, k, v, mask_BxTxS, c.attention_block)
    else:
      out = attention(q, k, v, mask_BxTxS, c.attention_impl)
    out = sharding.constrain(out.reshape(B, T, H * Dh), ("batch", "length", "act_heads"))
    out = Linear(c.hidden_size, ("heads", "embed"), name="o_proj", **kw)(out)
    return out, new_cache


class Qwen2MLP(nn.Module):
  config: Qwen2Config

  @nn.compact
  def __call__(self, x_BxTxD):
    c = self.config
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype, init_std=c.initializer_range)
    F, D = c.intermediate_size, x_BxTxD.shape[-1]
    if c.fuse_projections:
      ws = [Linear(F, ("embed", "mlp"), weights_only=True, name=n, **kw)(D) for n in ("gate_proj", "up_proj")]
      gate, up = fused_linear(x_BxTxD, ws, c.dtype)
    else:
      gate = Linear(F, ("embed", "mlp"), name="gate_proj", **kw)(x_BxTxD)
      up = Linear(F, ("embed", "mlp"), name="up_proj", **kw)(x_BxTxD)
    h = swiglu(gate, up) if c.swiglu_vjp else nn.silu(gate) * up
    h = sharding.constrain(h, ("batch", "length", "act_mlp"))
    return Linear(c.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(h)


class Qwen2DecoderLayer(nn.Module):
  config: Qwen2Config

  @nn.compact
  def __call__(self, x_BxTxD, cos, sin, mask_BxTxS, layer_cache=None, cache_index=None):
    c = self.config
    x_BxTxD = sharding.constrain(x_BxTxD, ("batch", "length", "act_embed"))
    h = RMSNorm(c.rms_norm_eps, c.param_dtype, name="input_layernorm")(x_BxTxD)
    h, new_cache = Qwen2Attention(c, name="self_attn")(h, cos, sin, mask_BxTxS, layer_cache, cache_index)
    x_BxTxD = x_BxTxD + h
    h = RMSNorm(c.rms_norm_eps, c.param_dtype, name="post_attention_layernorm")(x_BxTxD)
    x_BxTxD = x_BxTxD + Qwen2MLP(c, name="mlp")(h)
    return x_BxTxD, new_cache


class _ScanLayer(nn.Module):
  """(carry, xs) adapter so the layer can run under nn.scan."""
  config: Qwen2Config

  @nn.compact
  def __call__(self, x, layer_cache, cos, sin, mask, cache_index):
    x, new_cache = Qwen2DecoderLayer(self.config, name="layer")(x, cos, sin, mask, layer_cache, cache_index)
    return x, new_cache


_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _remat(cls, policy: str, static_argnums=()):
  if policy == "none":
    return cls
  if policy not in _POLICIES:
    raise ValueError(f"unknown remat_policy {policy!r}; choose from {sorted(_POLICIES)}")
  return nn.remat(cls, policy=_POLICIES[policy], prevent_cse=True, static_argnums=static_argnums)


def make_mask(q_slot_BxT: Array, key_valid_BxS: Array) -> Array:
  """Causal (by slot) + key padding mask, (B,T,S)."""
  S = key_valid_BxS.shape[1]
  causal = jnp.arange(S)[None, None, :] <= q_slot_BxT[:, :, None]
  return causal & key_valid_BxS[:, None, :]


class Qwen2Model(nn.Module):
  """The decoder stack: token embedding, L layers, final norm. Returns hidden states."""
  config: Qwen2Config

  def setup(self):
    c = self.config
    self.embed_tokens = nn.Embed(
        c.vocab_size, c.hidden_size, dtype=_dt(c.dtype), param_dtype=_dt(c.param_dtype),
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                                    ("vocab", "embed")))
    if c.scan_layers:
      layer = _remat(_ScanLayer, c.remat_policy)
      self.layers = nn.scan(
          layer, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), out_axes=0,
          length=c.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})(c, name="layers")
    else:
      layer = _remat(Qwen2DecoderLayer, c.remat_policy)
      self.layers = [layer(c, name=f"layers_{i}") for i in range(c.num_hidden_layers)]
    self.norm = RMSNorm(c.rms_norm_eps, c.param_dtype)

  def embed(self, input_ids_BxT: Array) -> Array:
    """Token lookup on a table gathered over the FSDP axis first (its width is split there), so the gather
    and its scatter-add gradient stay batch-sharded: looking up the fsdp-split table directly made XLA's
    SPMD partitioner replicate the activations ("involuntary full rematerialization")."""
    # Cast first: the gathered copy is in the compute dtype (7B, bf16: 1.09 GB over fsdp, a temporary).
    table = sharding.constrain(self.embed_tokens.embedding.astype(_dt(self.config.dtype)), ("vocab", None))
    return jnp.take(table, input_ids_BxT, axis=0)

  def attend(self, h_BxTxD: Array) -> Array:
    """Tied output projection (h @ embedding^T), in fp32 accumulation."""
    return self.embed_tokens.attend(h_BxTxD)

  def __call__(self, input_ids_BxT: Optional[Array] = None, *, inputs_embeds_BxTxD: Optional[Array] = None,
               attention_mask_BxT: Optional[Array] = None, positions_BxT: Optional[Array] = None,
               cache: Optional[dict] = None):
    """Returns (hidden_BxTxD, aux); aux["cache"] is the updated cache when one is given.

    attention_mask_BxT: True for real tokens (padding masked out as keys). positions default to
    arange(T) (+ cache index), as transformers does.
    """
    c = self.config
    if inputs_embeds_BxTxD is None:
      if input_ids_BxT is None:
        raise ValueError("Qwen2Model needs input_ids or inputs_embeds")
      inputs_embeds_BxTxD = self.embed(input_ids_BxT)
    x = inputs_embeds_BxTxD.astype(_dt(c.dtype))
    B, T, _ = x.shape
    valid = jnp.ones((B, T), bool) if attention_mask_BxT is None else attention_mask_BxT.astype(bool)
    index = jnp.asarray(0, jnp.int32) if cache is None else cache["index"]
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None] + index, (B, T))
    q_slot = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None] + index, (B, T))
    if cache is None:
      mask = make_mask(q_slot, valid)
    else:
      key_valid = jax.lax.dynamic_update_slice(cache["mask"], valid, (0, index))
      mask = make_mask(q_slot, key_valid)
    cos, sin = rope_cos_sin(positions_BxT, c.head_size, c.rope_theta)
    new_layers = None
    if c.scan_layers:
      layer_caches = None if cache is None else {"k": cache["k"], "v": cache["v"]}
      x, new_layers = self.layers(x, layer_caches, cos, sin, mask, index)
    else:
      ks, vs = [], []
      for i, layer in enumerate(self.layers):
        lc = None if cache is None else {"k": cache["k"][i], "v": cache["v"][i]}
        x, nc = layer(x, cos, sin, mask, lc, index)
        if cache is not None:
          ks.append(nc["k"])
          vs.append(nc["v"])
      if cache is not None:
        new_layers = {"k": ks, "v": vs}
    x = self.norm(x)
    aux = {}
    if cache is not None:
      aux["cache"] = {"k": new_layers["k"], "v": new_layers["v"], "mask": key_valid, "index": index + T}
    return x, aux


def init_cache(config: Qwen2Config, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache for S = `max_len` slots, kv-head-major: k (B,Hkv,Dh,S), v (B,Hkv,S,Dh) per layer.

  k/v are lists of L such arrays for the unscanned stack (each layer's buffer is updated in place,
  never sliced out of a stack), or stacked (L,B,Hkv,...) arrays with `scan_layers` (the scan carries them).
  """
  dtype = _dt(dtype or config.dtype)
  kshape = (batch, config.num_key_value_heads, config.head_size, max_len)
  vshape = (batch, config.num_key_value_heads, max_len, config.head_size)
  L = config.num_hidden_layers
  if config.scan_layers:
    k, v = jnp.zeros((L,) + kshape, dtype), jnp.zeros((L,) + vshape, dtype)
  else:
    k, v = [jnp.zeros(kshape, dtype) for _ in range(L)], [jnp.zeros(vshape, dtype) for _ in range(L)]
  return {"k": k, "v": v, "mask": jnp.zeros((batch, max_len), bool), "index": jnp.asarray(0, jnp.int32)}


def is_scanned(model_params: Mapping, where: str = "decoder params") -> bool:
  """Whether Qwen2Model params are in the `scan_layers` layout (layers/layer) or unrolled (layers_0...)."""
  if "layers" in model_params and "layer" in model_params["layers"]:
    return True
  if "layers_0" in model_params:
    return False
  raise ValueError(f"{where} have neither layers_0 nor layers/layer (keys: {sorted(model_params)})")


def unstack_layers(model_params: Mapping, num_layers: int, where: str = "params", fn=None) -> dict:
  """Qwen2Model params with `scan_layers` (``layers/layer/...``, a leading layer axis) -> the unscanned
  layout (``layers_0 ... layers_{L-1}``); the same weights. Other entries are kept as they are.
  fn (optional) is applied to each layer's slice (e.g. a dtype cast), so no full-size copy is made."""
  if not is_scanned(model_params, where):
    raise ValueError(f"{where}: expected scanned decoder layers under layers/layer, got keys {sorted(model_params)}")
  stacked = model_params["layers"]["layer"]
  for path, x in jax.tree_util.tree_leaves_with_path(stacked):
    if x.shape[:1] != (num_layers,):
      raise ValueError(f"{where}: layers/layer{jax.tree_util.keystr(path)} has shape {tuple(x.shape)}, expected a "
                       f"leading axis of num_hidden_layers={num_layers}")
  out = {k: v for k, v in model_params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: (fn or (lambda y: y))(x[i]), stacked)
  return out


class Qwen2ForCausalLM(nn.Module):
  """Qwen2Model + LM head (tied to the embedding or separate), as transformers' Qwen2ForCausalLM."""
  config: Qwen2Config

  def setup(self):
    c = self.config
    self.model = Qwen2Model(c)
    if not c.tie_word_embeddings:
      self.lm_head = Linear(c.vocab_size, ("embed", "vocab"), dtype=c.dtype, param_dtype=c.param_dtype,
                            init_std=c.initializer_range)

  def __call__(self, input_ids_BxT=None, **kw):
    h, aux = self.model(input_ids_BxT, **kw)
    if self.config.tie_word_embeddings:
      logits = self.model.attend(h)
    else:
      logits = self.lm_head(h)
    aux["hidden_states"] = h
    return logits, aux
