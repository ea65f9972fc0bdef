"""Shared checkpoint plumbing: reading torch/safetensors files, key validation, atomic writes, orbax I/O.

Every converter in this package builds on these helpers so that all of them behave the same way:
- untrusted torch files are read only with ``torch.load(weights_only=True)`` or safetensors;
- a bad checkpoint raises one ``ConversionError`` listing *every* missing, unexpected and mis-shaped key;
- outputs are written to a temporary sibling directory and renamed into place, so a failed run leaves
  nothing half-written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

PathLike = str | os.PathLike


class ConversionError(ValueError):
  """A checkpoint does not match what the converter expects."""


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # local: torch is only needed for .bin/.pth inputs

  if t.dtype == torch.bfloat16:
    t = t.float()
  return t.detach().cpu().numpy()


def load_torch_file(path: PathLike, *, nested_keys: Iterable[str] = ("state_dict", "model", "module")
                    ) -> dict[str, np.ndarray]:
  """Reads a .bin/.pt/.pth file with ``torch.load(weights_only=True)``; unwraps common nesting."""
  try:
    import torch
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ConversionError(f"{path}: reading torch checkpoints needs `pip install torch==2.13.0`") from e
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:
    raise ConversionError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e
  for key in nested_keys:
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state dict (mapping of names to tensors), got {type(obj)}")
  out = {}
  for k, v in obj.items():
    if hasattr(v, "detach"):
      out[k] = _torch_to_numpy(v)
  return out


def safetensors_files(path: PathLike) -> list[pathlib.Path]:
  """The safetensors shards of a file or an HF directory (honouring model.safetensors.index.json)."""
  p = pathlib.Path(path)
  if p.is_file():
    return [p]
  if not p.is_dir():
    raise ConversionError(f"{p}: no such file or directory")
  index = p / "model.safetensors.index.json"
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (KeyError, json.JSONDecodeError) as e:
      raise ConversionError(f"{index}: not a valid safetensors index ({e})") from e
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not (p / f).exists()]
    if missing:
      raise ConversionError(f"{index}: lists shards that are not in {p}: {missing}")
    return [p / f for f in files]
  files = sorted(p.glob("*.safetensors"))
  if not files:
    raise ConversionError(f"{p}: no *.safetensors files (and no model.safetensors.index.json)")
  return files


class TensorSource:
  """Lazy name -> numpy tensor access over safetensors shards or a torch file.

  Safetensors tensors are read one at a time (``get``), so converting a 7B checkpoint holds one model's
  worth of memory, not two. Torch pickles cannot be read lazily and are loaded whole.
  """

  def __init__(self, path: PathLike, *, strip_prefix: str = ""):
    self.path = pathlib.Path(path)
    self._strip = strip_prefix
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._where: dict[str, Any] = {}
    self._eager: dict[str, np.ndarray] | None = None
    if self.path.is_file() and self.path.suffix in _TORCH_SUFFIXES:
      self._eager = load_torch_file(self.path)
      for k, v in self._eager.items():
        self._add(k, tuple(v.shape), k)
    elif self.path.is_file() and self.path.suffix == ".npz":
      with np.load(self.path) as f:
        self._eager = {k: f[k] for k in f.files}
      for k, v in self._eager.items():
        self._add(k, tuple(v.shape), k)
    else:
      from safetensors import safe_open

      for f in safetensors_files(self.path):
        try:
          with safe_open(str(f), framework="numpy") as h:
            for k in h.keys():
              self._add(k, tuple(h.get_slice(k).get_shape()), (f, k))
        except Exception as e:
          raise ConversionError(f"{f}: not a readable safetensors file ({e})") from e

  @classmethod
  def from_dict(cls, tensors: Mapping[str, Any], *, strip_prefix: str = "") -> "TensorSource":
    self = cls.__new__(cls)
    self.path = pathlib.Path("<in-memory state dict>")
    self._strip = strip_prefix
    self._shapes, self._where = {}, {}
    self._eager = {k: (_torch_to_numpy(v) if hasattr(v, "detach") else np.asarray(v)) for k, v in tensors.items()}
    for k, v in self._eager.items():
      self._add(k, tuple(v.shape), k)
    return self

  def _add(self, key, shape, where):
    if self._strip:
      if not key.startswith(self._strip):
        return
      key = key[len(self._strip):]
    self._shapes[key] = shape
    self._where[key] = where

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return dict(self._shapes)

  def keys(self):
    return self._shapes.keys()

  def __contains__(self, key):
    return key in self._shapes

  def get(self, key: str) -> np.ndarray:
    where = self._where[key]
    if self._eager is not None:
      return np.asarray(self._eager[where])
    from safetensors import safe_open

    f, k = where
    with safe_open(str(f), framework="numpy") as h:
      return h.get_tensor(k)


def prefixed_source(src, detect_prefix: Callable[[Iterable[str]], str], strip_prefix: str | None = None
                    ) -> "TensorSource":
  """A TensorSource over `src` (a mapping, a checkpoint path or a TensorSource, returned as is) with the key
  prefix `strip_prefix` removed, or, when it is None, the prefix `detect_prefix(keys)` finds (it raises a
  ConversionError naming the keys it looked for)."""
  if isinstance(src, TensorSource):
    return src
  if isinstance(src, Mapping):
    prefix = detect_prefix(src.keys()) if strip_prefix is None else strip_prefix
    return TensorSource.from_dict(src, strip_prefix=prefix)
  raw = TensorSource(src)
  prefix = detect_prefix(raw.keys()) if strip_prefix is None else strip_prefix
  return TensorSource(src, strip_prefix=prefix) if prefix else raw


def iter_block_tables(source: "TensorSource", top_table: Mapping[str, tuple[str, Callable]],
                      block_table: Callable[[int], Mapping[str, tuple[str, Callable]]], depth: int,
                      param_dtype) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (flax path, numpy array in `param_dtype`) one tensor at a time for a ViT-style tower: the
  {flax path: (torch key, transform)} `top_table`, then `block_table(i)` under unscanned ``blocks_{i}/``."""
  dt = np.dtype(param_dtype)
  for path, (key, fn) in top_table.items():
    yield path, fn(source.get(key)).astype(dt)
  for i in range(depth):
    for path, (key, fn) in block_table(i).items():
      yield f"blocks_{i}/{path}", fn(source.get(key)).astype(dt)


def stack_blocks(flat: dict[str, Any], depth: int, prefix: str = "blocks") -> dict[str, Any]:
  """Unscanned ``blocks_{i}/...`` leaves -> scanned ``blocks/block/...`` with a leading layer axis."""
  out = {k: v for k, v in flat.items() if not k.startswith(prefix + "_")}
  inner = sorted({k.split("/", 1)[1] for k in flat if k.startswith(prefix + "_0/")})
  for p in inner:
    out[f"{prefix}/block/{p}"] = np.stack([flat.pop(f"{prefix}_{i}/{p}") for i in range(depth)])
  return out


def check_keys(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], *,
               source: PathLike, ignore: Callable[[str], bool] = lambda k: False) -> None:
  """Raises one ConversionError naming every missing, unexpected and mis-shaped key."""
  missing = sorted(k for k in expected if k not in found)
  unexpected = sorted(k for k in found if k not in expected and not ignore(k))
  misshaped = sorted(k for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
  if not (missing or unexpected or misshaped):
    return
  lines = [f"{source}: checkpoint does not match the model"]
  if missing:
    lines.append(f"  missing keys ({len(missing)}):")
    lines += [f"    {k}  expected shape {tuple(expected[k])}" for k in missing]
  if unexpected:
    lines.append(f"  unexpected keys ({len(unexpected)}):")
    lines += [f"    {k}  shape {tuple(found[k])}" for k in unexpected]
  if misshaped:
    lines.append(f"  mis-shaped keys ({len(misshaped)}):")
    lines += [f"    {k}  expected {tuple(expected[k])}, found {tuple(found[k])}" for k in misshaped]
  raise ConversionError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# Param trees
# --------------------------------------------------------------------------------------------------

def flatten(tree: Mapping, sep: str = "/") -> dict[str, Any]:
  out = {}

  def rec(prefix, node):
    if isinstance(node, Mapping):
      for k, v in node.items():
        rec(f"{prefix}{sep}{k}" if prefix else str(k), v)
    else:
      out[prefix] = node

  rec("", tree)
  return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    parts = path.split(sep)
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


# Layout transforms between torch and flax.
def linear_to_jax(w):  # torch (out, in) -> flax (in, out)
  return np.ascontiguousarray(np.asarray(w).T)


def conv_to_jax(w):  # torch (O, I, *k) -> flax (*k, I, O)
  w = np.asarray(w)
  return np.ascontiguousarray(np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)))


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_output_dir(path: PathLike, *, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a temp dir beside `path`; renames it to `path` only if the block succeeds."""
  final = pathlib.Path(path).absolute()
  if final.exists() and not overwrite:
    raise FileExistsError(f"{final}: already exists (pass overwrite=True / --overwrite to replace it)")
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
  try:
    yield tmp
    if final.exists():
      old = final.with_name(f".{final.name}.old-{os.getpid()}")
      os.replace(final, old)
      os.replace(tmp, final)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def save_params(params, path: PathLike, *, overwrite: bool = False, metadata: dict | None = None) -> pathlib.Path:
  """Saves a param pytree as an orbax (StandardCheckpointer) checkpoint, atomically."""
  import orbax.checkpoint as ocp

  with atomic_output_dir(path, overwrite=overwrite) as tmp:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / "params", params)
    ckptr.wait_until_finished()
    if metadata is not None:
      (tmp / "dreamfoley_meta.json").write_text(json.dumps(metadata, indent=1, sort_keys=True))
  return pathlib.Path(path)


def load_params(path: PathLike, target=None, *, host: bool = False):
  """Restores params saved by `save_params`; `target` (abstract tree with shardings) places them.

  host=True restores every array as numpy in host memory, whatever devices or mesh wrote it: the way to
  read a checkpoint written on another slice, or one larger than a single chip, before re-laying it out
  (models.params.inference_layout, sampling.place_params)."""
  import orbax.checkpoint as ocp

  p = pathlib.Path(path).absolute()
  item = p / "params"
  if not item.exists():
    raise ConversionError(f"{p}: not a dreamfoley_jax params checkpoint (no 'params' directory inside)")
  ckptr = ocp.StandardCheckpointer()
  if host and target is None:
    import jax

    meta = ckptr.metadata(item)
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)   # calloc: no pages touched
  return ckptr.restore(item, target) if target is not None else ckptr.restore(item)


def read_metadata(path: PathLike) -> dict:
  f = pathlib.Path(path) / "dreamfoley_meta.json"
  return json.loads(f.read_text()) if f.exists() else {}


def config_from_dict(cls, d: Mapping[str, Any]):
  """Rebuilds a (nested) frozen config dataclass from `dataclasses.asdict` output (lists -> tuples)."""
  kw = {}
  for f in dataclasses.fields(cls):
    if f.name not in d:
      continue
    v = d[f.name]
    if dataclasses.is_dataclass(f.default) and isinstance(v, Mapping):
      v = config_from_dict(type(f.default), v)
    elif isinstance(v, list):
      v = tuple(v)
    kw[f.name] = v
  return cls(**kw)


def save_converted(params, output_dir: PathLike, *, family: str, config, source: PathLike,
                   overwrite: bool = False) -> pathlib.Path:
  """`save_params` with the family, the model config and the source path in dreamfoley_meta.json."""
  meta = {"family": family, "config": dataclasses.asdict(config), "source": str(source)}
  return save_params(params, output_dir, overwrite=overwrite, metadata=meta)


def load_converted(path: PathLike, family: str, config_cls, target=None):
  """(config, params) from a checkpoint written by `save_converted` for `family`."""
  meta = read_metadata(path)
  if meta.get("family") != family or "config" not in meta:
    raise ConversionError(f"{path}: not a converted {family} checkpoint (dreamfoley_meta.json family="
                          f"{meta.get('family')!r})")
  return config_from_dict(config_cls, meta["config"]), load_params(path, target)
