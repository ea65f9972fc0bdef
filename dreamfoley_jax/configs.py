"""Experiment configs: loading `experiments/<name>.py` files (ml_collections) with overrides."""
from __future__ import annotations

import importlib.util
import pathlib
import sys

import ml_collections


def load_config(path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config()` of an experiment file; `path` may end in `:arg` (passed to get_config)."""
  arg = None
  if ":" in path and not pathlib.Path(path).exists():
    path, arg = path.rsplit(":", 1)
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such experiment config")
  name = f"_dreamfoley_experiment_{p.stem}"
  spec = importlib.util.spec_from_file_location(name, p)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod
  spec.loader.exec_module(mod)
  if not hasattr(mod, "get_config"):
    raise AttributeError(f"{p}: defines no get_config()")
  cfg = mod.get_config(arg) if arg is not None else mod.get_config()
  for k, v in (overrides or {}).items():
    set_path(cfg, k, v)
  return cfg


def set_path(cfg: ml_collections.ConfigDict, dotted: str, value) -> None:
  node = cfg
  parts = dotted.split(".")
  for p in parts[:-1]:
    if p not in node:
      raise KeyError(f"config has no field {dotted!r} (stopped at {p!r})")
    node = node[p]
  if parts[-1] not in node:
    raise KeyError(f"config has no field {dotted!r}")
  node[parts[-1]] = value
