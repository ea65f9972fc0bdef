"""Synchformer visual extractor (MMAudio's MotionFormer): PyTorch checkpoints -> Flax params (orbax).

Accepts MMAudio's ``synchformer_state_dict.pth`` (``vfeat_extractor.*`` next to the audio extractor and
transformer keys, which are skipped, exactly as ``Synchformer.load_state_dict`` does), a bare MotionFormer
state dict (no prefix), or the same in .safetensors/.npz. The unused 2-D ``patch_embed.*`` is optional and
dropped.

Shapes: the package's legend (dreamfoley_jax.models): D width, F MLP width, C channels, Tw token frames,
Np patches per frame.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from dreamfoley_jax.convert.common import (ConversionError, TensorSource, check_keys, conv_to_jax,
                                           iter_block_tables, linear_to_jax, load_converted, prefixed_source,
                                           save_converted, stack_blocks, unflatten)
from dreamfoley_jax.models.synchformer import PRESETS, SynchformerConfig

PREFIXES = ("vfeat_extractor.", "module.vfeat_extractor.", "")
# Present in real checkpoints but unused by the feature extractor.
_OPTIONAL = re.compile(r"^patch_embed\.proj\.(weight|bias)$")


def _ident(x):
  return np.asarray(x)


def block_table(i: int) -> dict[str, tuple[str, Callable]]:
  t = f"blocks.{i}."
  out = {}
  for n in ("norm1", "norm2", "norm3"):
    out[f"{n}/weight"] = (t + n + ".weight", _ident)
    out[f"{n}/bias"] = (t + n + ".bias", _ident)
  for a in ("attn", "timeattn"):
    for lin in ("qkv", "proj"):
      out[f"{a}/{lin}/kernel"] = (f"{t}{a}.{lin}.weight", linear_to_jax)
      out[f"{a}/{lin}/bias"] = (f"{t}{a}.{lin}.bias", _ident)
  for lin in ("fc1", "fc2"):
    out[f"mlp/{lin}/kernel"] = (f"{t}mlp.{lin}.weight", linear_to_jax)
    out[f"mlp/{lin}/bias"] = (f"{t}mlp.{lin}.bias", _ident)
  return out


def top_table() -> dict[str, tuple[str, Callable]]:
  a = "spatial_attn_agg."
  return {
      "patch_embed_3d/proj/kernel": ("patch_embed_3d.proj.weight", conv_to_jax),
      "patch_embed_3d/proj/bias": ("patch_embed_3d.proj.bias", _ident),
      "cls_token": ("cls_token", _ident),
      "pos_embed": ("pos_embed", _ident),
      "temp_embed": ("temp_embed", _ident),
      "norm/weight": ("norm.weight", _ident),
      "norm/bias": ("norm.bias", _ident),
      "spatial_attn_agg/cls_token": (a + "cls_token", _ident),
      "spatial_attn_agg/self_attn/in_proj_kernel": (a + "self_attn.in_proj_weight", linear_to_jax),
      "spatial_attn_agg/self_attn/in_proj_bias": (a + "self_attn.in_proj_bias", _ident),
      "spatial_attn_agg/self_attn/out_proj/kernel": (a + "self_attn.out_proj.weight", linear_to_jax),
      "spatial_attn_agg/self_attn/out_proj/bias": (a + "self_attn.out_proj.bias", _ident),
      "spatial_attn_agg/linear1/kernel": (a + "linear1.weight", linear_to_jax),
      "spatial_attn_agg/linear1/bias": (a + "linear1.bias", _ident),
      "spatial_attn_agg/linear2/kernel": (a + "linear2.weight", linear_to_jax),
      "spatial_attn_agg/linear2/bias": (a + "linear2.bias", _ident),
      "spatial_attn_agg/norm1/weight": (a + "norm1.weight", _ident),
      "spatial_attn_agg/norm1/bias": (a + "norm1.bias", _ident),
      "spatial_attn_agg/norm2/weight": (a + "norm2.weight", _ident),
      "spatial_attn_agg/norm2/bias": (a + "norm2.bias", _ident),
  }


def torch_shapes(cfg: SynchformerConfig, *, with_2d_patch_embed: bool = True) -> dict[str, tuple[int, ...]]:
  """Every MotionFormer state-dict key (without ``vfeat_extractor.``) for `cfg`, with its torch shape."""
  D, F, C, Tw, Np, patch = (cfg.width, cfg.mlp_dim, cfg.in_channels, cfg.token_frames, cfg.patches_per_frame,
                            cfg.patch_size)
  out = {"cls_token": (1, 1, D), "pos_embed": (1, 1 + Np, D), "temp_embed": (1, Tw, D),
         "patch_embed_3d.proj.weight": (D, C, cfg.tubelet, patch, patch), "patch_embed_3d.proj.bias": (D,),
         "norm.weight": (D,), "norm.bias": (D,)}
  if with_2d_patch_embed:
    out.update({"patch_embed.proj.weight": (D, C, patch, patch), "patch_embed.proj.bias": (D,)})
  for i in range(cfg.depth):
    t = f"blocks.{i}."
    for n in ("norm1", "norm2", "norm3"):
      out[t + n + ".weight"] = out[t + n + ".bias"] = (D,)
    for a in ("attn", "timeattn"):
      out.update({f"{t}{a}.qkv.weight": (3 * D, D), f"{t}{a}.qkv.bias": (3 * D,), f"{t}{a}.proj.weight": (D, D),
                  f"{t}{a}.proj.bias": (D,)})
    out.update({t + "mlp.fc1.weight": (F, D), t + "mlp.fc1.bias": (F,), t + "mlp.fc2.weight": (D, F),
                t + "mlp.fc2.bias": (D,)})
  a = "spatial_attn_agg."
  out.update({a + "cls_token": (1, 1, D), a + "self_attn.in_proj_weight": (3 * D, D),
              a + "self_attn.in_proj_bias": (3 * D,), a + "self_attn.out_proj.weight": (D, D),
              a + "self_attn.out_proj.bias": (D,), a + "linear1.weight": (F, D), a + "linear1.bias": (F,),
              a + "linear2.weight": (D, F), a + "linear2.bias": (D,), a + "norm1.weight": (D,),
              a + "norm1.bias": (D,), a + "norm2.weight": (D,), a + "norm2.bias": (D,)})
  return out


def detect_prefix(keys) -> str:
  keys = set(keys)
  for p in PREFIXES:
    if p + "patch_embed_3d.proj.weight" in keys:
      return p
  raise ConversionError("not a Synchformer/MotionFormer checkpoint: no 'vfeat_extractor.patch_embed_3d.proj."
                        f"weight' (or unprefixed 'patch_embed_3d.proj.weight') key; first keys: {sorted(keys)[:8]}")


def iter_converted(source: TensorSource, cfg: SynchformerConfig):
  """Yields (flax path with unscanned ``blocks_{i}``, numpy array) one tensor at a time."""
  return iter_block_tables(source, top_table(), block_table, cfg.depth, cfg.param_dtype)


def convert_state_dict(src, cfg: SynchformerConfig | str = "synchformer", *, strip_prefix: str | None = None
                       ) -> dict[str, Any]:
  """Torch state dict (mapping, path or TensorSource) -> the Flax ``params`` tree (numpy leaves).

  Raises one ConversionError listing every missing, unexpected and mis-shaped key.
  """
  cfg = PRESETS[cfg] if isinstance(cfg, str) else cfg
  source = prefixed_source(src, detect_prefix, strip_prefix)
  found = source.shapes()
  expected = torch_shapes(cfg, with_2d_patch_embed=False)
  expected.update({k: v for k, v in torch_shapes(cfg).items() if k in found and _OPTIONAL.match(k)})
  check_keys(expected, found, source=source.path)
  flat = dict(iter_converted(source, cfg))
  if cfg.scan_layers:
    flat = stack_blocks(flat, cfg.depth)
  return unflatten(flat)


def infer_config(shapes: Mapping[str, tuple[int, ...]], base: SynchformerConfig | None = None
                 ) -> SynchformerConfig:
  """Depth/width/MLP read off the (prefix-stripped) shapes; heads from `base` (12 for width 768)."""
  base = base or PRESETS["synchformer"]
  try:
    D = shapes["pos_embed"][-1]
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
    ratio = shapes["blocks.0.mlp.fc1.weight"][0] // D
  except (KeyError, ValueError) as e:
    raise ConversionError(f"cannot infer the Synchformer config from the checkpoint shapes ({e!r})") from e
  if D != base.width:
    raise ConversionError(f"checkpoint width {D} differs from the base config's {base.width}: pass config= "
                          "with the right num_heads")
  return dataclasses.replace(base, depth=depth, mlp_ratio=ratio)


def convert_to_orbax(input_path, output_dir, *, overwrite: bool = False,
                     config: SynchformerConfig | str | None = None, scan_layers: bool = False,
                     param_dtype: str = "float32"):
  """Converts a Synchformer / MotionFormer checkpoint to an orbax params checkpoint.

  ``config``: a SynchformerConfig or preset name; default: inferred from the shapes (heads of the real model).
  Writes ``output_dir/params`` (the tree for ``Synchformer(cfg).apply({'params': tree}, windows)``) and
  ``dreamfoley_meta.json`` with the config, atomically. Returns (output_dir, config).
  """
  source = prefixed_source(input_path, detect_prefix)
  cfg = infer_config(source.shapes()) if config is None else (PRESETS[config] if isinstance(config, str)
                                                               else config)
  cfg = cfg.replace(scan_layers=scan_layers, param_dtype=param_dtype)
  params = convert_state_dict(source, cfg)
  save_converted(params, output_dir, family="synchformer", config=cfg, source=input_path, overwrite=overwrite)
  return output_dir, cfg


def load_orbax(path, target=None):
  """(config, params) from a directory written by `convert_to_orbax` (``target``: abstract tree with shardings)."""
  return load_converted(path, "synchformer", SynchformerConfig, target)
