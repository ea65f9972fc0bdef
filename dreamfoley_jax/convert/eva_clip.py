"""EVA01-CLIP-g/14 image tower: PyTorch checkpoints -> Flax params (orbax).

Reads the three layouts the weights circulate in (.bin / .pt / .pth / .safetensors / .npz):
- open_clip ``EVA01-g-14`` (``visual.trunk.*``; the timm head is the CLIP projection);
- timm ``eva_giant_patch14_*`` (no prefix);
- BAAI EVA-CLIP ``EVA01_CLIP_g_14_*.pt`` (``visual.*``: the same module names as timm, rope-free).
Everything outside the image tower (text tower, logit_scale) is skipped; rope/k_bias buffers are ignored.

Shapes: the package's legend (dreamfoley_jax.models): D width, F MLP width, C channels.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

from dreamfoley_jax.convert.common import (ConversionError, TensorSource, check_keys, conv_to_jax,
                                           iter_block_tables, linear_to_jax, load_converted, prefixed_source,
                                           save_converted, stack_blocks, unflatten)
from dreamfoley_jax.models.eva_clip import EvaClipConfig, PRESETS

# Prefixes tried in order; the first whose pos_embed is present wins.
PREFIXES = ("visual.trunk.", "visual.", "")

_IGNORED = re.compile(r"(^|\.)(rope\.|k_bias$)")


def _ident(x):
  return np.asarray(x)


def _vec(x):  # (1,1,D) / (1,N,D) kept as is
  return np.asarray(x)


def block_table(i: int) -> dict[str, tuple[str, Callable]]:
  """{flax path inside blocks_i: (torch key, torch->flax transform)}."""
  t = f"blocks.{i}."
  return {
      "norm1/weight": (t + "norm1.weight", _ident),
      "norm1/bias": (t + "norm1.bias", _ident),
      "attn/qkv/kernel": (t + "attn.qkv.weight", linear_to_jax),
      "attn/q_bias": (t + "attn.q_bias", _ident),
      "attn/v_bias": (t + "attn.v_bias", _ident),
      "attn/proj/kernel": (t + "attn.proj.weight", linear_to_jax),
      "attn/proj/bias": (t + "attn.proj.bias", _ident),
      "norm2/weight": (t + "norm2.weight", _ident),
      "norm2/bias": (t + "norm2.bias", _ident),
      "mlp/fc1/kernel": (t + "mlp.fc1.weight", linear_to_jax),
      "mlp/fc1/bias": (t + "mlp.fc1.bias", _ident),
      "mlp/fc2/kernel": (t + "mlp.fc2.weight", linear_to_jax),
      "mlp/fc2/bias": (t + "mlp.fc2.bias", _ident),
  }


def top_table() -> dict[str, tuple[str, Callable]]:
  return {
      "patch_embed/proj/kernel": ("patch_embed.proj.weight", conv_to_jax),
      "patch_embed/proj/bias": ("patch_embed.proj.bias", _ident),
      "cls_token": ("cls_token", _vec),
      "pos_embed": ("pos_embed", _vec),
      "norm/weight": ("norm.weight", _ident),
      "norm/bias": ("norm.bias", _ident),
      "head/kernel": ("head.weight", linear_to_jax),
      "head/bias": ("head.bias", _ident),
  }


def torch_shapes(cfg: EvaClipConfig) -> dict[str, tuple[int, ...]]:
  """Every timm state-dict key (no prefix) of the tower for `cfg`, with its torch shape."""
  D, F, C, patch = cfg.width, cfg.mlp_dim, cfg.in_channels, cfg.patch_size
  out = {"cls_token": (1, 1, D), "pos_embed": (1, cfg.num_tokens, D), "patch_embed.proj.weight": (D, C, patch, patch),
         "patch_embed.proj.bias": (D,), "norm.weight": (D,), "norm.bias": (D,),
         "head.weight": (cfg.embed_dim, D), "head.bias": (cfg.embed_dim,)}
  for i in range(cfg.depth):
    t = f"blocks.{i}."
    out.update({t + "norm1.weight": (D,), t + "norm1.bias": (D,), t + "attn.qkv.weight": (3 * D, D),
                t + "attn.q_bias": (D,), t + "attn.v_bias": (D,), t + "attn.proj.weight": (D, D),
                t + "attn.proj.bias": (D,), t + "norm2.weight": (D,), t + "norm2.bias": (D,),
                t + "mlp.fc1.weight": (F, D), t + "mlp.fc1.bias": (F,), t + "mlp.fc2.weight": (D, F),
                t + "mlp.fc2.bias": (D,)})
  return out


def detect_prefix(keys) -> str:
  keys = set(keys)
  for p in PREFIXES:
    if p + "pos_embed" in keys:
      return p
  raise ConversionError("not an EVA-CLIP image tower checkpoint: no 'visual.trunk.pos_embed' (open_clip), "
                        "'visual.pos_embed' (BAAI EVA-CLIP) or 'pos_embed' (timm) key; first keys: "
                        f"{sorted(keys)[:8]}")


def iter_converted(source: TensorSource, cfg: EvaClipConfig):
  """Yields (flax path with unscanned ``blocks_{i}``, numpy array) one tensor at a time."""
  return iter_block_tables(source, top_table(), block_table, cfg.depth, cfg.param_dtype)


def convert_state_dict(src, cfg: EvaClipConfig | str = "eva01-g-14", *, strip_prefix: str | None = None
                       ) -> dict[str, Any]:
  """Torch state dict (mapping, path or TensorSource) -> the Flax ``params`` tree (numpy leaves).

  Raises one ConversionError listing every missing, unexpected and mis-shaped key.
  """
  cfg = PRESETS[cfg] if isinstance(cfg, str) else cfg
  source = prefixed_source(src, detect_prefix, strip_prefix)
  check_keys(torch_shapes(cfg), source.shapes(), source=source.path, ignore=lambda k: bool(_IGNORED.search(k)))
  flat = dict(iter_converted(source, cfg))
  if cfg.scan_layers:
    flat = stack_blocks(flat, cfg.depth)
  return unflatten(flat)


def infer_config(shapes: Mapping[str, tuple[int, ...]], base: EvaClipConfig | None = None) -> EvaClipConfig:
  """Depth/width/MLP/projection widths read off the (prefix-stripped) shapes; heads from `base`."""
  base = base or PRESETS["eva01-g-14"]
  try:
    D = shapes["pos_embed"][-1]
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)))
    kw = dict(width=D, depth=depth, mlp_dim=shapes["blocks.0.mlp.fc1.weight"][0],
              embed_dim=shapes["head.weight"][0], patch_size=shapes["patch_embed.proj.weight"][-1])
  except (KeyError, ValueError) as e:
    raise ConversionError(f"cannot infer the EVA config from the checkpoint shapes ({e!r})") from e
  grid = int(round((shapes["pos_embed"][1] - 1) ** 0.5))
  kw["image_size"] = grid * kw["patch_size"]
  if D != base.width:
    raise ConversionError(f"checkpoint width {D} differs from the base config's {base.width}: pass config= "
                          "with the right num_heads")
  return dataclasses.replace(base, **kw)


def convert_to_orbax(input_path, output_dir, *, overwrite: bool = False, config: EvaClipConfig | str | None = None,
                     scan_layers: bool = False, param_dtype: str = "float32"):
  """Converts an open_clip / timm / BAAI EVA01-g-14 checkpoint to an orbax params checkpoint.

  ``config``: an EvaClipConfig or preset name; default: inferred from the shapes (heads of eva01-g-14).
  Writes ``output_dir/params`` (the tree for ``EvaVisionTower(cfg).apply({'params': tree}, x)``) and
  ``dreamfoley_meta.json`` with the config, atomically. Returns (output_dir, config).
  """
  source = prefixed_source(input_path, detect_prefix)
  if config is None:
    cfg = infer_config(source.shapes())
  else:
    cfg = PRESETS[config] if isinstance(config, str) else config
  cfg = cfg.replace(scan_layers=scan_layers, param_dtype=param_dtype)
  params = convert_state_dict(source, cfg)
  save_converted(params, output_dir, family="eva_clip", config=cfg, source=input_path, overwrite=overwrite)
  return output_dir, cfg


def load_orbax(path, target=None):
  """(config, params) from a directory written by `convert_to_orbax` (``target``: abstract tree with shardings)."""
  return load_converted(path, "eva_clip", EvaClipConfig, target)
