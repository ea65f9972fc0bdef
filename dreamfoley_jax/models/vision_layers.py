"""Small building blocks shared by the vision towers (EVA-CLIP, Synchformer).

Legend (dreamfoley_jax.models): R rows (images or windows), N tokens, D width, F hidden width, Dp patch
vector length (prod(patch) * C).
Parameter names match PyTorch (``weight``/``bias`` for LayerNorm, ``kernel``/``bias`` for linears in
(in, out) layout) so the converters are one-to-one tables.
"""
from __future__ import annotations

import json
import pathlib
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamfoley_jax.models.qwen2 import Linear  # 2-D-flattened matmul with logical axes

__all__ = ["Linear", "LayerNorm", "Mlp", "PatchEmbed", "remat", "l2_normalize", "patchify", "from_presets",
           "golden_resolved"]


def from_presets(presets: Mapping, kind: str, name: str, **overrides):
  """presets[name] with `overrides` replaced; a clear error naming the choices for an unknown name."""
  if name not in presets:
    raise KeyError(f"unknown {kind} preset {name!r}; choose from {sorted(presets)}")
  return presets[name].replace(**overrides)


def golden_resolved(path_or_dict, which: str) -> tuple[dict, str]:
  """(the '<which>.resolved' section, where it came from) of a goldens *_config.json file or dict."""
  if isinstance(path_or_dict, dict):
    d, where = path_or_dict, "<dict>"
  else:
    where = str(path_or_dict)
    d = json.loads(pathlib.Path(path_or_dict).read_text())
  try:
    return d[which]["resolved"], where
  except KeyError as e:
    raise ValueError(f"{where}: no '{which}.resolved' section") from e


class LayerNorm(nn.Module):
  """torch.nn.LayerNorm over the last axis (biased variance), statistics in fp32."""
  eps: float = 1e-6
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    w = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (d,),
                   jnp.dtype(self.param_dtype))
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (d,),
                   jnp.dtype(self.param_dtype))
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    xc = xf - mean
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    y = xc * jax.lax.rsqrt(var + self.eps)
    return (y * w.astype(jnp.float32) + b.astype(jnp.float32)).astype(x.dtype)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 (timm / MotionFormer Mlp)."""
  hidden: int
  dtype: str = "float32"
  param_dtype: str = "float32"
  names: tuple[str, str] = ("fc1", "fc2")

  @nn.compact
  def __call__(self, x_RxNxD):
    d = x_RxNxD.shape[-1]
    h = Linear(self.hidden, ("embed", "mlp"), use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
               name=self.names[0])(x_RxNxD)
    h = jax.nn.gelu(h, approximate=False)
    return Linear(d, ("mlp", "embed"), use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                  name=self.names[1])(h)


_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat(cls, policy: str):
  """Wraps a block class in nn.remat with a named policy ('none' returns it unchanged)."""
  if policy not in _POLICIES:
    raise ValueError(f"unknown remat_policy {policy!r}; choose from {sorted(_POLICIES)}")
  if policy == "none":
    return cls
  return nn.remat(cls, policy=_POLICIES[policy], prevent_cse=True)


def l2_normalize(x, eps: float = 1e-12):
  """torch.nn.functional.normalize(x, dim=-1): x / max(||x||, eps)."""
  n = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
  return (x / jnp.maximum(n, eps)).astype(x.dtype)


def patchify(x, patch: Sequence[int]):
  """Cuts a channels-last array (R, *spatial, C) into non-overlapping patches.

  Returns (R, N, Dp) = (R, num_patches, prod(patch) * C) with patches in row-major grid order and each patch flattened
  as (*patch, C): the layout of a flax conv kernel (*patch, C, D) reshaped to (prod(patch)*C, D), so a
  stride=kernel convolution becomes one 2-D matmul.
  """
  n, *spatial, c = x.shape
  if len(spatial) != len(patch):
    raise ValueError(f"patchify: input {x.shape} has {len(spatial)} spatial dims, patch {tuple(patch)}")
  grid = []
  split = [n]
  for s, p in zip(spatial, patch):
    if s % p:
      raise ValueError(f"patchify: spatial size {s} is not a multiple of the patch size {p} (input {x.shape})")
    grid.append(s // p)
    split += [s // p, p]
  x = x.reshape(*split, c)
  k = len(spatial)
  perm = (0,) + tuple(1 + 2 * i for i in range(k)) + tuple(2 + 2 * i for i in range(k)) + (2 * k + 1,)
  x = x.transpose(perm)
  num = 1
  for g in grid:
    num *= g
  size = c
  for p in patch:
    size *= p
  return x.reshape(n, num, size)


class ConvAsMatmul(nn.Module):
  """A stride=kernel conv applied to pre-cut patches; ``kernel`` in flax conv layout (*patch, C, D)."""
  features: int
  kernel_shape: tuple[int, ...]     # (*patch, C)
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, patches_RxNxDp):
    shape = tuple(self.kernel_shape) + (self.features,)
    axes = (None,) * (len(shape) - 2) + ("conv_in", "embed")  # logical names may not repeat
    k = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes), shape,
                   jnp.dtype(self.param_dtype))
    b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (self.features,),
                   jnp.dtype(self.param_dtype))
    R, N, Dp = patches_RxNxDp.shape
    y = jnp.dot(patches_RxNxDp.reshape(R * N, Dp).astype(self.dtype),
                k.reshape(Dp, self.features).astype(self.dtype))
    return (y + b.astype(self.dtype)).reshape(R, N, self.features)


class PatchEmbed(nn.Module):
  """Channels-last (R, *spatial, C) -> (R, N, D) tokens in row-major grid order; param ``proj``."""
  features: int
  patch: tuple[int, ...]
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    patches = patchify(x, self.patch)
    return ConvAsMatmul(self.features, tuple(self.patch) + (c,), self.dtype, self.param_dtype,
                        name="proj")(patches)
