"""The whole DreamFoley model <-> a Hugging Face model directory that transformers loads with trust_remote_code.

Export (to_hf): trained params (a params checkpoint, a training workdir's latest step, or in memory) ->
``config.json`` (a Qwen2 config + DreamFoley's fields, ``auto_map``), ``model.safetensors`` shards and the
PyTorch model code copied from ``hf_template/`` (``modeling_dreamfoley.py``, ``configuration_dreamfoley.py``),
so that ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` builds DreamFoley on transformers' Qwen2Model.
The decoder's keys are standard Qwen2 keys (``model.layers.0.self_attn.q_proj.weight``...): the decoder alone
loads as a plain ``Qwen2Model``.

Import (to_jax): such a directory (safetensors only, never a pickle) -> params in either layer layout
(``layers_{i}`` or, with ``scan_layers``, stacked under ``layers/layer``). Every key and shape is checked
first, with one error naming each problem; tensors are then streamed one at a time. JAX -> HF -> JAX is bitwise.

The hf_template files are package data, never imported by dreamfoley_jax (they need torch).

Shapes: the package's legend (dreamfoley_jax.models): D width, F head MLP width, K codebooks, V vocab.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Optional

import numpy as np

from dreamfoley_jax.convert import common
from dreamfoley_jax.convert import qwen2 as cq
from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.models import foley, qwen2

FAMILY = "dreamfoley"
TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "hf_template"
CODE_FILES = ("configuration_dreamfoley.py", "modeling_dreamfoley.py")
AUTO_MAP = {"AutoConfig": "configuration_dreamfoley.DreamFoleyConfig",
            "AutoModel": "modeling_dreamfoley.DreamFoleyModel"}
# FoleyConfig fields that config.json carries (the decoder's are the Qwen2 fields; the HF model takes encoder
# features, so vision_mode / synchformer / eva have no counterpart).
FOLEY_FIELDS = tuple(f.name for f in dataclasses.fields(foley.FoleyConfig)
                     if f.name not in ("decoder", "vision_mode", "synchformer", "eva"))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor and where it lives in the JAX params."""
  hf_key: str
  path: tuple[str, ...]          # JAX params path; decoder layers: below the layer (layers_{i} / layers/layer)
  layer: Optional[int]           # decoder layer index
  layout: str                    # same | T (torch Linear (out, in) <-> kernel (in, out)) | swap (last two axes)
  hf_shape: tuple[int, ...]


def _jax_layout(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if layout == "T":
    return shape[::-1]
  if layout == "swap":
    return shape[:-2] + (shape[-1], shape[-2])
  return shape


def entries(cfg: foley.FoleyConfig) -> list[Entry]:
  """Every tensor of the HF model for `cfg`, decoder first (convert/qwen2's table under model.*)."""
  d = cfg.decoder
  out = [Entry(e.hf_key, e.path, e.layer, "T" if e.transpose else "same", e.hf_shape)
         for e in cq.hf_entries(d, with_lm_head=False)]
  D, K, V = d.hidden_size, cfg.num_codebooks, cfg.vocab_per_codebook
  dims = [cfg.video_dim] + [D] * cfg.projector_depth
  for i in range(cfg.projector_depth):
    out.append(Entry(f"projector.fc{i + 1}.weight", ("projector", f"fc{i + 1}", "kernel"), None, "T",
                     (dims[i + 1], dims[i])))
    out.append(Entry(f"projector.fc{i + 1}.bias", ("projector", f"fc{i + 1}", "bias"), None, "same", (dims[i + 1],)))
  out.append(Entry("audio_embed", ("audio_embed",), None, "same", (K, V, D)))
  if cfg.learnable_pad:
    out.append(Entry("audio_pad", ("audio_pad",), None, "same", (K, D)))
  out.append(Entry("null_text", ("null_text",), None, "same", (cfg.null_text_len, D)))
  out.append(Entry("null_video", ("null_video",), None, "same", (cfg.null_video_len, D)))
  if cfg.head_depth == 1:
    out += [Entry("heads.fc1.weight", ("heads", "kernel"), None, "swap", (K, V, D)),
            Entry("heads.fc1.bias", ("heads", "bias"), None, "same", (K, V))]
  else:
    F = cfg.head_hidden or D
    out += [Entry("heads.fc1.weight", ("heads", "fc1_kernel"), None, "swap", (K, F, D)),
            Entry("heads.fc1.bias", ("heads", "fc1_bias"), None, "same", (K, F)),
            Entry("heads.fc2.weight", ("heads", "fc2_kernel"), None, "swap", (K, V, F)),
            Entry("heads.fc2.bias", ("heads", "fc2_bias"), None, "same", (K, V))]
  return out


def jax_path(e: Entry, scanned: bool) -> tuple[str, ...]:
  if e.path[0] in ("embed_tokens", "norm"):
    return ("decoder",) + e.path
  if e.layer is None:
    return e.path
  return ("decoder", "layers", "layer") + e.path if scanned else ("decoder", f"layers_{e.layer}") + e.path


def jax_shape(e: Entry, cfg: foley.FoleyConfig, scanned: bool) -> tuple[int, ...]:
  s = _jax_layout(e.layout, e.hf_shape)
  return (cfg.decoder.num_hidden_layers,) + s if (e.layer is not None and scanned) else s


def _to_hf(e: Entry, x: np.ndarray) -> np.ndarray:
  if e.layout == "T":
    x = x.T
  elif e.layout == "swap":
    x = np.swapaxes(x, -1, -2)
  return np.ascontiguousarray(x)


_to_jax = _to_hf  # both layouts are their own inverse


# --------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------

def hf_config(cfg: foley.FoleyConfig, sampling: Optional[Mapping[str, Any]] = None) -> dict:
  """config.json of the exported directory: the decoder's Qwen2 fields + DreamFoley's + auto_map."""
  d = qwen2.to_hf_config(cfg.decoder)
  d.update({"model_type": FAMILY, "architectures": ["DreamFoleyModel"], "auto_map": dict(AUTO_MAP)})
  for f in FOLEY_FIELDS:
    v = getattr(cfg, f)
    d[f] = list(v) if isinstance(v, tuple) else v
  if sampling is not None:
    d["sampling"] = {k: sampling[k] for k in ("temperature", "top_k", "top_p", "cfg_scale") if k in sampling}
  return d


def config_from_hf(d: Mapping[str, Any], where: Any = "<config>", **decoder_overrides) -> foley.FoleyConfig:
  """The FoleyConfig of an exported config.json (decoder_overrides: scan_layers, param_dtype, ...)."""
  if d.get("model_type") != FAMILY:
    raise ConversionError(f"{where}: model_type is {d.get('model_type')!r}, expected {FAMILY!r} (a directory "
                          f"written by --family dreamfoley --direction to_hf)")
  try:
    dec = qwen2.from_hf_config({**d, "model_type": "qwen2"}, **decoder_overrides)
    kw = {f: d[f] for f in FOLEY_FIELDS if f in d}
    if "loss_weights" in kw:
      kw["loss_weights"] = tuple(float(w) for w in kw["loss_weights"])
    return foley.FoleyConfig(decoder=dec, **kw)
  except (TypeError, ValueError) as e:
    raise ConversionError(f"{where}: {e}") from e


def _check_exportable(cfg: foley.FoleyConfig) -> None:
  if cfg.vision_mode != "features":
    raise ConversionError(
        f"vision_mode={cfg.vision_mode!r}: the video encoders run inside this model (params synchformer/, "
        f"eva_clip/), and the exported PyTorch model takes encoder features (sync_feats / clip_feats); export a "
        f"vision_mode='features' model (the encoders' features made by tools/extract_features.py)")


# --------------------------------------------------------------------------------------------------
# params -> HF
# --------------------------------------------------------------------------------------------------

def _validated(params: Mapping, cfg: foley.FoleyConfig, where: Any):
  """(unboxed params, scanned, entries) after checking every key and shape against `cfg`."""
  import flax.linen as nn

  _check_exportable(cfg)
  params = nn.unbox(params)
  if "decoder" not in params:
    raise ConversionError(f"{where}: params have no 'decoder' (keys: {sorted(params)})")
  try:
    scanned = qwen2.is_scanned(params["decoder"], f"{where}: params/decoder")
  except ValueError as e:
    raise ConversionError(str(e)) from e
  es = entries(cfg)
  expected = {"/".join(jax_path(e, scanned)): jax_shape(e, cfg, scanned) for e in es}
  found = {k: tuple(np.shape(v)) for k, v in common.flatten(params).items()}
  common.check_keys(expected, found, source=where)
  return params, scanned, es


def _tensor(params: Mapping, e: Entry, scanned: bool) -> np.ndarray:
  """Entry `e` of the params as an HF tensor (one layer's slice of a scanned stack)."""
  x = _leaf(params, jax_path(e, scanned))
  return _to_hf(e, np.asarray(x[e.layer] if (scanned and e.layer is not None) else x))


def _leaf(tree: Mapping, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def save_hf(params: Mapping, cfg: foley.FoleyConfig, output_dir, *, dtype=None, max_shard_size="5GB",
            overwrite: bool = False, progress: bool = False, sampling: Optional[Mapping[str, Any]] = None,
            where: Any = "<params>") -> pathlib.Path:
  """Writes the HF directory (atomically: a temp dir renamed into place); shards are streamed tensor by tensor.

  dtype: of the written tensors (default: as stored, so the round trip is bitwise). sampling: the sampling
  defaults generate() uses (an experiment's `sample` section; default the paper's).
  """
  params, scanned, es = _validated(params, cfg, where)
  out_dtype = None if dtype is None else np.dtype(qwen2._dt(dtype) if isinstance(dtype, str) else dtype)

  def get(e: Entry) -> np.ndarray:
    x = _tensor(params, e, scanned)
    return x if out_dtype is None else x.astype(out_dtype)

  def dtype_of(e: Entry) -> np.dtype:
    return out_dtype if out_dtype is not None else np.dtype(_leaf(params, jax_path(e, scanned)).dtype)

  return cq.write_hf(es, get, cfg.decoder, output_dir, dtype_of=dtype_of, max_shard_size=max_shard_size,
                     overwrite=overwrite, progress=progress, tied=True, hf_config=hf_config(cfg, sampling),
                     extra_files={n: TEMPLATE_DIR / n for n in CODE_FILES}, desc="dreamfoley jax->hf")


def write_model_files(cfg: foley.FoleyConfig, output_dir, *, sampling=None) -> pathlib.Path:
  """config.json + the model code, no weights: enough for `AutoConfig.from_pretrained(dir,
  trust_remote_code=True)` + `AutoModel.from_config` (randomly initialised, e.g. a benchmark at 7B size)."""
  _check_exportable(cfg)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "config.json").write_text(json.dumps(hf_config(cfg, sampling), indent=2, sort_keys=True))
  for n in CODE_FILES:
    (out / n).write_text((TEMPLATE_DIR / n).read_text())
  return out


# --------------------------------------------------------------------------------------------------
# HF -> params
# --------------------------------------------------------------------------------------------------

def load_config(path, **decoder_overrides) -> foley.FoleyConfig:
  p = pathlib.Path(path)
  f = p / "config.json" if p.is_dir() else p
  if not f.exists():
    raise ConversionError(f"{f}: missing (an exported DreamFoley directory has config.json)" if p.exists()
                          else f"{p}: no such file or directory")
  try:
    d = json.loads(f.read_text())
  except json.JSONDecodeError as e:
    raise ConversionError(f"{f}: not valid JSON ({e})") from e
  return config_from_hf(d, where=f, **decoder_overrides)


def _safetensors_only(path: pathlib.Path) -> None:
  if not path.is_dir():
    raise ConversionError(f"{path}: no such directory")
  if (path / "model.safetensors.index.json").exists() or any(path.glob("*.safetensors")):
    return
  pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
  raise ConversionError(f"{path}: no *.safetensors weights" + (
      f" (found {pickles}: DreamFoley checkpoints load only through safetensors, never a pickle; re-save with "
      f"model.save_pretrained(dir) (safetensors is its default))" if pickles else ""))


def load_hf(path, *, scan_layers: bool = False, param_dtype: Optional[str] = None, progress: bool = False
            ) -> tuple[dict, foley.FoleyConfig]:
  """An exported directory -> (params as numpy, FoleyConfig). param_dtype None keeps each tensor's stored dtype
  (the bitwise round trip); the config's param_dtype then names it."""
  p = pathlib.Path(path)
  overrides: dict[str, Any] = {"scan_layers": bool(scan_layers)}
  if param_dtype:
    overrides["param_dtype"] = param_dtype
  cfg = load_config(p, **overrides)
  _safetensors_only(p)
  source = common.TensorSource(p)
  es = entries(cfg)
  common.check_keys({e.hf_key: e.hf_shape for e in es}, source.shapes(), source=p,
                    ignore=lambda k: k.endswith("rotary_emb.inv_freq"))
  dt = None if param_dtype is None else np.dtype(qwen2._dt(param_dtype))
  params: dict = {}
  stacked: dict[tuple[str, ...], np.ndarray] = {}
  stored = set()
  for e in cq._progress(es, progress, "dreamfoley hf->jax"):
    x = _to_jax(e, source.get(e.hf_key))
    x = x if dt is None else x.astype(dt)
    stored.add(x.dtype)
    path_ = jax_path(e, scan_layers)
    if e.layer is not None and scan_layers:
      if path_ not in stacked:    # preallocated once, then filled layer by layer
        stacked[path_] = np.empty(jax_shape(e, cfg, True), x.dtype)
        cq._set(params, path_, stacked[path_])
      stacked[path_][e.layer] = x
    else:
      cq._set(params, path_, np.ascontiguousarray(x))
    del x
  if param_dtype is None and len(stored) == 1:
    cfg = cfg.replace(decoder=cfg.decoder.replace(param_dtype=np.dtype(stored.pop()).name))
  return params, cfg


# --------------------------------------------------------------------------------------------------
# orbax / training checkpoints
# --------------------------------------------------------------------------------------------------

def _state_dir(path: pathlib.Path) -> Optional[pathlib.Path]:
  """The train-state item of a training workdir (latest step), a checkpoints/ dir or one step's dir."""
  if (path / "state").is_dir():
    return path / "state"
  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted((int(p.name), p) for p in root.iterdir() if p.is_dir() and p.name.isdigit()
                 and (p / "state").is_dir()) if root.is_dir() else []
  return steps[-1][1] / "state" if steps else None


def load_trained_params(path) -> dict:
  """Params (host numpy) of a params checkpoint (common.save_params: DIR/params) or of a training run's train
  state (only its params are read, not the optimizer state)."""
  p = pathlib.Path(path)
  if not p.exists():
    raise ConversionError(f"{p}: no such file or directory")
  if (p / "params").is_dir():
    return common.load_params(p, host=True)
  state = _state_dir(p)
  if state is None:
    raise ConversionError(f"{p}: neither a params checkpoint (DIR/params) nor a training checkpoint "
                          f"(DIR/checkpoints/<step>/state, DIR/<step>/state)")
  import jax
  import orbax.checkpoint as ocp

  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(state)
  meta = getattr(meta, "item_metadata", meta)
  if "params" not in meta:
    raise ConversionError(f"{state}: a checkpoint without 'params' (found {sorted(meta)})")
  target = {"params": jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])}
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  return ckptr.restore(state, args=ocp.args.PyTreeRestore(item=target, restore_args=args,
                                                          partial_restore=True))["params"]


def resolve_config(ckpt_dir, config=None) -> tuple[foley.FoleyConfig, Optional[dict]]:
  """(FoleyConfig, sampling defaults or None) of a checkpoint: from `config` (an experiment file
  `experiments/x.py[:arg]`, an exported config.json, or a FoleyConfig JSON) or else the checkpoint's own
  dreamfoley_meta.json (a --family dreamfoley conversion, or the main job's {"config": "experiments/..."})."""
  from dreamfoley_jax import configs

  if config is None:
    meta = common.read_metadata(ckpt_dir) if pathlib.Path(ckpt_dir).is_dir() else {}
    config = meta.get("config")
    if isinstance(config, dict):
      return common.config_from_dict(foley.FoleyConfig, config), None
    if config is None:
      raise ConversionError(f"{ckpt_dir}: no model config recorded with this checkpoint: pass --model_config "
                            f"experiments/<name>.py (the experiment it was trained with)")
  if isinstance(config, foley.FoleyConfig):
    return config, None
  text = str(config)
  if text.endswith(".json"):
    p = pathlib.Path(text)
    if not p.exists():
      raise ConversionError(f"{p}: no such model config")
    try:
      d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
      raise ConversionError(f"{p}: not valid JSON ({e})") from e
    if d.get("model_type") == FAMILY:
      return config_from_hf(d, where=p), d.get("sampling")
    return common.config_from_dict(foley.FoleyConfig, d), None
  try:
    exp = configs.load_config(text)
  except (FileNotFoundError, AttributeError) as e:
    raise ConversionError(f"model config {text}: {e} (pass --model_config experiments/<name>.py)") from e
  try:
    cfg = configs.model_config(exp.model)
  except (ValueError, TypeError, KeyError) as e:
    raise ConversionError(f"model config {text}: model section: {e}") from e
  sampling = dict(exp.sample.to_dict()) if "sample" in exp else None
  return cfg, sampling


def export_from_orbax(ckpt_dir, output_dir, *, overwrite: bool = False, config=None, dtype: Optional[str] = None,
                      max_shard_size="5GB", progress: bool = False, **unused) -> pathlib.Path:
  """A trained checkpoint -> HF directory. `config`: see `resolve_config` (--model_config)."""
  if unused:
    raise ConversionError(f"dreamfoley: unknown options {sorted(unused)}")
  cfg, sampling = resolve_config(ckpt_dir, config)
  _check_exportable(cfg)
  params = load_trained_params(ckpt_dir)
  return save_hf(params, cfg, output_dir, dtype=dtype, max_shard_size=max_shard_size, overwrite=overwrite,
                 progress=progress, sampling=sampling, where=pathlib.Path(ckpt_dir))


def convert_to_orbax(input_path, output_dir, *, overwrite: bool = False, scan_layers: bool = False,
                     param_dtype: Optional[str] = None, progress: bool = False, **unused) -> pathlib.Path:
  """An exported HF directory -> a params checkpoint (tools/generate.py --checkpoint) with its FoleyConfig in
  dreamfoley_meta.json."""
  if unused:
    raise ConversionError(f"dreamfoley: unknown options {sorted(unused)}")
  params, cfg = load_hf(input_path, scan_layers=scan_layers, param_dtype=param_dtype, progress=progress)
  return common.save_converted(params, output_dir, family=FAMILY, config=cfg,
                               source=pathlib.Path(input_path).absolute(), overwrite=overwrite)


def load_orbax(ckpt_dir) -> tuple[dict, foley.FoleyConfig]:
  """(params, FoleyConfig) of a checkpoint written by convert_to_orbax."""
  cfg, params = common.load_converted(ckpt_dir, FAMILY, foley.FoleyConfig)
  return params, cfg
