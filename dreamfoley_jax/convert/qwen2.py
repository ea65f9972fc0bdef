"""Hugging Face Qwen2 / Qwen2.5 <-> dreamfoley_jax Qwen2ForCausalLM params (in memory or orbax).

Import: an HF directory (``config.json`` + ``model.safetensors`` or sharded ``model-0000x-of-0000y``
shards with ``model.safetensors.index.json``; or a ``.bin``/``.pth`` read with
``torch.load(weights_only=True)``) -> ``{"model": ..., "lm_head": ...}`` in either layer layout
(``layers_{i}`` or, with ``scan_layers``, stacked under ``layers/layer`` with a leading layer axis).
Every key and shape is checked before any tensor is read; tensors are then streamed one at a time into
preallocated arrays, so the peak is about one model's worth of memory.

Export: params (or just the decoder subtree, e.g. ``params["decoder"]`` of the DreamFoley model, plus an
optional lm_head) -> an HF directory that ``Qwen2ForCausalLM.from_pretrained`` loads: safetensors
shards of at most ``max_shard_size`` (+ index json when there is more than one) and ``config.json``,
written to a temp dir and renamed. Shards are written tensor by tensor, never assembled in memory.

Shapes: the package's legend (dreamfoley_jax.models): D width, F MLP width, H / Hkv heads, Dh head dim, V vocab.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
from typing import Any, Callable, Mapping, Optional

import numpy as np

from dreamfoley_jax.convert import common
from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.models import qwen2

FAMILY = "qwen2"

# (HF suffix inside a layer, flax path inside the layer, is_linear_kernel)
_LAYER_TABLE: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("input_layernorm.weight", ("input_layernorm", "weight"), False),
    ("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), True),
    ("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), False),
    ("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), True),
    ("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), False),
    ("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), True),
    ("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), False),
    ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), True),
    ("post_attention_layernorm.weight", ("post_attention_layernorm", "weight"), False),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), True),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), True),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), True),
)


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor: where it lives in the flax tree and how it is laid out."""
  hf_key: str
  path: tuple[str, ...]          # flax path below the decoder root ("embed_tokens", ...) or ("lm_head", ...)
  layer: Optional[int]           # layer index for per-layer tensors
  transpose: bool                # torch Linear (out, in) <-> flax kernel (in, out)
  hf_shape: tuple[int, ...]


def _layer_hf_shapes(cfg: qwen2.Qwen2Config) -> dict[str, tuple[int, ...]]:
  D, Dh, H, Hkv, F = (cfg.hidden_size, cfg.head_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                      cfg.intermediate_size)
  return {
      "input_layernorm.weight": (D,), "post_attention_layernorm.weight": (D,),
      "self_attn.q_proj.weight": (H * Dh, D), "self_attn.q_proj.bias": (H * Dh,),
      "self_attn.k_proj.weight": (Hkv * Dh, D), "self_attn.k_proj.bias": (Hkv * Dh,),
      "self_attn.v_proj.weight": (Hkv * Dh, D), "self_attn.v_proj.bias": (Hkv * Dh,),
      "self_attn.o_proj.weight": (D, H * Dh),
      "mlp.gate_proj.weight": (F, D), "mlp.up_proj.weight": (F, D), "mlp.down_proj.weight": (D, F),
  }


def hf_entries(cfg: qwen2.Qwen2Config, *, with_lm_head: Optional[bool] = None) -> list[_Entry]:
  """The HF tensors of a Qwen2ForCausalLM for `cfg`, in HF's order (lm_head only when untied)."""
  with_lm_head = (not cfg.tie_word_embeddings) if with_lm_head is None else with_lm_head
  V, D = cfg.vocab_size, cfg.hidden_size
  out = [_Entry("model.embed_tokens.weight", ("embed_tokens", "embedding"), None, False, (V, D))]
  shapes = _layer_hf_shapes(cfg)
  for i in range(cfg.num_hidden_layers):
    for suffix, path, is_kernel in _LAYER_TABLE:
      out.append(_Entry(f"model.layers.{i}.{suffix}", path, i, is_kernel, shapes[suffix]))
  out.append(_Entry("model.norm.weight", ("norm", "weight"), None, False, (D,)))
  if with_lm_head:
    out.append(_Entry("lm_head.weight", ("lm_head", "kernel"), None, True, (V, D)))
  return out


def expected_hf_shapes(cfg: qwen2.Qwen2Config) -> dict[str, tuple[int, ...]]:
  return {e.hf_key: e.hf_shape for e in hf_entries(cfg)}


def _ignored(cfg: qwen2.Qwen2Config) -> Callable[[str], bool]:
  def ignore(k: str) -> bool:
    # Old checkpoints store rotary buffers; tied checkpoints sometimes store a copy of the embedding.
    return k.endswith("rotary_emb.inv_freq") or (cfg.tie_word_embeddings and k == "lm_head.weight")
  return ignore


def _flax_shape(e: _Entry, cfg: qwen2.Qwen2Config) -> tuple[int, ...]:
  s = e.hf_shape[::-1] if e.transpose else e.hf_shape
  if e.layer is not None and cfg.scan_layers:
    s = (cfg.num_hidden_layers,) + s
  return s


def _tree_path(e: _Entry, cfg: qwen2.Qwen2Config) -> tuple[str, ...]:
  """Full path in the Qwen2ForCausalLM params tree."""
  if e.path[0] == "lm_head":
    return e.path
  if e.layer is None:
    return ("model",) + e.path
  if cfg.scan_layers:
    return ("model", "layers", "layer") + e.path
  return ("model", f"layers_{e.layer}") + e.path


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...], where: str):
  node = tree
  for p in path:
    if not isinstance(node, Mapping) or p not in node:
      raise ConversionError(f"{where}: params have no {'/'.join(path)}")
    node = node[p]
  return node


def _progress(items, enabled: bool, desc: str):
  if not enabled:
    return items
  from tqdm import tqdm

  return tqdm(items, desc=desc, unit="tensor")


# --------------------------------------------------------------------------------------------------
# HF -> params
# --------------------------------------------------------------------------------------------------

def _weights_path(path: pathlib.Path) -> pathlib.Path:
  """The weights inside an HF directory: safetensors (preferred) or a torch pickle."""
  if path.is_file():
    return path
  if not path.is_dir():
    raise ConversionError(f"{path}: no such file or directory")
  if (path / "model.safetensors.index.json").exists() or list(path.glob("*.safetensors")):
    return path
  for name in ("pytorch_model.bin", "model.bin", "model.pth", "model.pt"):
    if (path / name).exists():
      return path / name
  torch_files = sorted(p for p in path.iterdir() if p.suffix in (".bin", ".pth", ".pt"))
  if len(torch_files) == 1:
    return torch_files[0]
  raise ConversionError(f"{path}: no *.safetensors, model.safetensors.index.json or single .bin/.pth "
                        f"weights file (found {sorted(p.name for p in path.iterdir())})")


def load_config(path, **overrides) -> qwen2.Qwen2Config:
  """The Qwen2Config of an HF directory (or of the directory holding a weights file)."""
  p = pathlib.Path(path)
  if not p.exists():
    raise ConversionError(f"{p}: no such file or directory")
  cfg_file = p / "config.json" if p.is_dir() else p.parent / "config.json"
  if not cfg_file.exists():
    raise ConversionError(f"{cfg_file}: missing (an HF Qwen2 directory needs config.json)")
  try:
    return qwen2.from_hf_config(cfg_file, **overrides)
  except (ValueError, TypeError, json.JSONDecodeError) as e:
    raise ConversionError(f"{cfg_file}: {e}") from e


def source_to_params(source: common.TensorSource, cfg: qwen2.Qwen2Config, *, progress: bool = False,
                     where: Any = None) -> dict:
  """Streams a validated TensorSource into a Qwen2ForCausalLM param tree of numpy arrays."""
  where = where or source.path
  common.check_keys(expected_hf_shapes(cfg), source.shapes(), source=where, ignore=_ignored(cfg))
  dtype = np.dtype(qwen2._dt(cfg.param_dtype))
  entries = hf_entries(cfg)
  params: dict = {}
  stacked: dict[tuple[str, ...], np.ndarray] = {}
  for e in _progress(entries, progress, "qwen2 hf->jax"):
    x = source.get(e.hf_key)
    x = x.T if e.transpose else x
    path = _tree_path(e, cfg)
    if e.layer is not None and cfg.scan_layers:
      if path not in stacked:  # preallocate the stacked array once, then fill layer by layer
        stacked[path] = np.empty(_flax_shape(e, cfg), dtype)
        _set(params, path, stacked[path])
      stacked[path][e.layer] = x
    else:
      _set(params, path, np.ascontiguousarray(x, dtype=dtype))
    del x
  return params


def load_hf(path, *, progress: bool = False, **config_overrides) -> tuple[dict, qwen2.Qwen2Config]:
  """HF directory (or weights file beside its config.json) -> (params, config).

  config_overrides set implementation fields, e.g. ``scan_layers=True``, ``param_dtype="bfloat16"``.
  """
  p = pathlib.Path(path)
  cfg = load_config(p, **config_overrides)
  weights = _weights_path(p)
  return source_to_params(common.TensorSource(weights), cfg, progress=progress, where=weights), cfg


# --------------------------------------------------------------------------------------------------
# params -> HF
# --------------------------------------------------------------------------------------------------

def _detect_scan(decoder_params: Mapping) -> bool:
  try:
    return qwen2.is_scanned(decoder_params)
  except ValueError as e:
    raise ConversionError(str(e)) from e


def decoder_hf_tensors(decoder_params: Mapping, cfg: qwen2.Qwen2Config, *, lm_head: Optional[Mapping] = None,
                       dtype=None):
  """Validates a Qwen2Model subtree (+ optional lm_head subtree); returns (entries, get, dtype_of).

  `get` produces one HF tensor (numpy, torch layout) at a time; `dtype_of` gives its dtype without
  converting it. The layer layout is detected from the tree. Without `lm_head` the export is tied
  (the config must say tie_word_embeddings).
  """
  decoder_params = _unbox(decoder_params)
  if lm_head is None and not cfg.tie_word_embeddings:
    raise ConversionError("untied Qwen2 config but no lm_head params given: pass lm_head=params['lm_head'] "
                          "or export with config.replace(tie_word_embeddings=True)")
  cfg = cfg.replace(scan_layers=_detect_scan(decoder_params))
  entries = hf_entries(cfg, with_lm_head=lm_head is not None)
  tree = {"model": decoder_params}
  if lm_head is not None:
    tree["lm_head"] = _unbox(lm_head)
  expected = {"/".join(_tree_path(e, cfg)): _flax_shape(e, cfg) for e in entries}
  found = {k: tuple(np.shape(v)) for k, v in common.flatten(tree).items()}
  common.check_keys(expected, found, source="<params>")
  out_dtype = None if dtype is None else np.dtype(qwen2._dt(dtype) if isinstance(dtype, str) else dtype)

  def dtype_of(e: _Entry) -> np.dtype:
    return out_dtype if out_dtype is not None else np.dtype(_get(tree, _tree_path(e, cfg), "<params>").dtype)

  def get(e: _Entry) -> np.ndarray:
    x = _get(tree, _tree_path(e, cfg), "<params>")
    if e.layer is not None and cfg.scan_layers:
      x = x[e.layer]
    x = np.asarray(x)
    x = x.T if e.transpose else x
    return np.ascontiguousarray(x if out_dtype is None else x.astype(out_dtype))

  return entries, get, dtype_of


def _unbox(tree):
  """Strips flax logical-partitioning boxes if the tree still carries them."""
  import flax.linen as nn

  return nn.unbox(tree) if tree is not None else None


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size) -> int:
  """'5GB' (decimal, as transformers) / '500MiB' / 12345 -> bytes."""
  if isinstance(size, (int, np.integer)):
    return int(size)
  m = _SIZE_RE.match(str(size))
  if not m:
    raise ValueError(f"cannot parse size {size!r}; use e.g. 5GB, 500MB, 2GiB or a byte count")
  return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()])


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
              np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int8): "I8",
              np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
_TORCH_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _st_dtype(dt: np.dtype) -> str:
  dt = np.dtype(dt)
  if dt.name == "bfloat16":
    return "BF16"
  if dt not in _ST_DTYPES:
    raise ConversionError(f"dtype {dt} cannot be written to safetensors")
  return _ST_DTYPES[dt]


def _write_safetensors(file: pathlib.Path, items: list[tuple[str, tuple[int, ...], np.dtype]],
                       get: Callable[[str], np.ndarray]) -> None:
  """Writes one safetensors file tensor by tensor (the header is known from shapes and dtypes)."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for key, shape, dt in items:
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
    header[key] = {"dtype": _st_dtype(dt), "shape": list(shape), "data_offsets": [offset, offset + n]}
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(file, "wb") as f:
    f.write(len(blob).to_bytes(8, "little"))
    f.write(blob)
    for key, shape, dt in items:
      x = get(key)
      if x.shape != tuple(shape) or x.dtype != dt:
        raise ConversionError(f"{key}: produced {x.shape} {x.dtype}, planned {tuple(shape)} {dt}")
      f.write(np.ascontiguousarray(x).tobytes())


def write_hf(entries: list[_Entry], get: Callable[[_Entry], np.ndarray], cfg: qwen2.Qwen2Config, output_dir, *,
             dtype_of: Callable[[_Entry], np.dtype], max_shard_size="5GB", overwrite: bool = False,
             progress: bool = False, tied: bool, hf_config: Optional[dict] = None,
             extra_files: Mapping[str, pathlib.Path] = {}, desc: str = "qwen2 jax->hf") -> pathlib.Path:
  """Plans shards from shapes/dtypes, then streams tensors into them inside an atomic output dir.

  hf_config: the config.json to write instead of `cfg`'s Qwen2 one; extra_files: {name: source} copied in
  (e.g. the modeling code of a model built on Qwen2, convert/dreamfoley)."""
  limit = parse_size(max_shard_size)
  shards: list[list[_Entry]] = [[]]
  size = 0
  for e in entries:
    n = int(np.prod(e.hf_shape)) * np.dtype(dtype_of(e)).itemsize
    if shards[-1] and size + n > limit:  # a single tensor larger than the limit gets its own shard
      shards.append([])
      size = 0
    shards[-1].append(e)
    size += n
  n_shards = len(shards)
  names = (["model.safetensors"] if n_shards == 1 else
           [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)])
  by_key = {e.hf_key: e for e in entries}
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=len(entries), desc=desc, unit="tensor")

  def fetch(key):
    if bar is not None:
      bar.update(1)
    return get(by_key[key])

  with common.atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
    for name, shard in zip(names, shards):
      items = [(e.hf_key, tuple(e.hf_shape), np.dtype(dtype_of(e))) for e in shard]
      _write_safetensors(tmp / name, items, fetch)
    if n_shards > 1:
      total = sum(int(np.prod(e.hf_shape)) * np.dtype(dtype_of(e)).itemsize for e in entries)
      index = {"metadata": {"total_size": total},
               "weight_map": {e.hf_key: name for name, shard in zip(names, shards) for e in shard}}
      (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf_cfg = dict(hf_config) if hf_config is not None else qwen2.to_hf_config(cfg.replace(tie_word_embeddings=tied))
    for k in ("bos_token_id", "eos_token_id"):  # Qwen's ids only make sense with its real vocabulary
      if hf_cfg.get(k) is not None and hf_cfg[k] >= cfg.vocab_size:
        hf_cfg[k] = None
    hf_cfg["torch_dtype"] = _TORCH_DTYPE_NAMES.get(_st_dtype(dtype_of(entries[0])), "float32")
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True))
    for name, src in extra_files.items():
      shutil.copyfile(src, tmp / name)
  if bar is not None:
    bar.close()
  return pathlib.Path(output_dir)


def save_decoder_hf(decoder_params: Mapping, cfg: qwen2.Qwen2Config, output_dir, *,
                    lm_head: Optional[Mapping] = None, dtype=None, max_shard_size="5GB",
                    overwrite: bool = False, progress: bool = False) -> pathlib.Path:
  """Exports a Qwen2Model subtree (e.g. DreamFoley's params['decoder']) + optional lm_head to HF."""
  entries, get, dtype_of = decoder_hf_tensors(decoder_params, cfg, lm_head=lm_head, dtype=dtype)
  return write_hf(entries, get, cfg, output_dir, dtype_of=dtype_of, max_shard_size=max_shard_size,
                  overwrite=overwrite, progress=progress, tied=lm_head is None)


def save_hf(params: Mapping, cfg: qwen2.Qwen2Config, output_dir, **kw) -> pathlib.Path:
  """Exports Qwen2ForCausalLM params ({'model': ..., 'lm_head'?: ...}) to an HF directory."""
  params = _unbox(params)
  if "model" not in params:
    raise ConversionError(f"expected Qwen2ForCausalLM params with a 'model' subtree, got keys {sorted(params)}")
  return save_decoder_hf(params["model"], cfg, output_dir, lm_head=params.get("lm_head"), **kw)


def params_to_state_dict(params: Mapping, cfg: qwen2.Qwen2Config) -> dict[str, np.ndarray]:
  """In-memory HF state dict of numpy arrays (for tests and small models)."""
  params = _unbox(params)
  entries, get, _ = decoder_hf_tensors(params["model"], cfg, lm_head=params.get("lm_head"))
  return {e.hf_key: get(e) for e in entries}


# --------------------------------------------------------------------------------------------------
# orbax
# --------------------------------------------------------------------------------------------------

def _config_dict(cfg: qwen2.Qwen2Config) -> dict:
  return dataclasses.asdict(cfg)


def convert_to_orbax(input_path, output_dir, *, overwrite: bool = False, scan_layers: bool = False,
                     param_dtype: Optional[str] = None, progress: bool = False, **unused) -> pathlib.Path:
  """HF Qwen2 directory -> orbax params checkpoint with the Qwen2Config in its metadata."""
  if unused:
    raise ConversionError(f"qwen2: unknown options {sorted(unused)}")
  overrides: dict[str, Any] = {"scan_layers": bool(scan_layers)}
  if param_dtype:
    overrides["param_dtype"] = param_dtype
  params, cfg = load_hf(input_path, progress=progress, **overrides)
  meta = {"family": FAMILY, "config": _config_dict(cfg), "source": str(pathlib.Path(input_path).absolute())}
  return common.save_params(params, output_dir, overwrite=overwrite, metadata=meta)


def load_orbax(ckpt_dir) -> tuple[dict, qwen2.Qwen2Config]:
  """(params, config) from a checkpoint written by convert_to_orbax."""
  meta = common.read_metadata(ckpt_dir)
  if meta.get("family") != FAMILY or "config" not in meta:
    raise ConversionError(f"{ckpt_dir}: not a qwen2 checkpoint (dreamfoley_meta.json has family="
                          f"{meta.get('family')!r}); convert it with --family qwen2 first")
  cfg = qwen2.Qwen2Config(**meta["config"])
  params = common.load_params(ckpt_dir)
  return params, cfg


def export_from_orbax(ckpt_dir, output_dir, *, overwrite: bool = False, max_shard_size="5GB",
                      dtype: Optional[str] = None, progress: bool = False, **unused) -> pathlib.Path:
  """Orbax checkpoint from convert_to_orbax -> HF directory."""
  if unused:
    raise ConversionError(f"qwen2: unknown options {sorted(unused)}")
  params, cfg = load_orbax(ckpt_dir)
  return save_hf(params, cfg, output_dir, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite,
                 progress=progress)
