"""Checkpoint converters, one module per model family, looked up lazily by name.

Each family module exposes ``convert_to_orbax(input_path, output_dir, *, overwrite=False, **options)``
(PyTorch/HF -> orbax) and optionally ``export_from_orbax(ckpt_dir, output_dir, *, overwrite=False,
**options)`` (orbax -> PyTorch/HF). ``tools/convert_checkpoint.py`` dispatches on ``--family``.

Shapes in the converters use the package's legend (dreamfoley_jax.models): D width, F MLP width, H / Hkv
query / kv heads, Dh head dim, K codebooks, V vocab, Tw token frames, Np patches per frame, C channels.
"""
from __future__ import annotations

import importlib
import types

FAMILIES: dict[str, str] = {
    "qwen2": "dreamfoley_jax.convert.qwen2",
    "higgs": "dreamfoley_jax.convert.higgs",
    "eva_clip": "dreamfoley_jax.convert.eva_clip",
    "synchformer": "dreamfoley_jax.convert.synchformer",
    "dreamfoley": "dreamfoley_jax.convert.dreamfoley",
}


def get_family(name: str) -> types.ModuleType:
  """The converter module of a family (imported on first use)."""
  if name not in FAMILIES:
    raise KeyError(f"unknown checkpoint family {name!r}; choose from {sorted(FAMILIES)}")
  return importlib.import_module(FAMILIES[name])
