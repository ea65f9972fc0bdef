"""higgs-audio-v2 tokenizer checkpoints -> Flax params (`dreamfoley_jax.audio.higgs`).

Two input layouts, detected from the keys:
- transformers ``HiggsAudioV2TokenizerModel`` (safetensors / state dict): plain ``.weight`` for the DAC
  convs; the HuBERT positional conv as ``parametrizations.weight.original0`` (g) / ``original1`` (v);
- the original boson-multimodal ``HiggsAudioTokenizer`` (``model.pth``): DAC as ``encoder.block.*`` /
  ``decoder_2.model.*`` with ``weight_g``/``weight_v``, ``quantizer.vq.layers.*._codebook``,
  ``fc_prior``/``fc_post2``, semantic convs wrapped as ``.conv.conv``.
Weight norm is merged as w = g * v / ||v||, the norm taken over every axis where g has size 1 (dim 0 for
the DAC convs, dim 2 for HuBERT's positional conv). Keys only training uses (``decoder_semantic``, ``fc1``,
codebook EMA buffers, ``masked_spec_embed``) are skipped.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Callable, Mapping, Optional

import numpy as np

from dreamfoley_jax.convert.common import (ConversionError, PathLike, TensorSource, check_keys, conv_to_jax,
                                           flatten, linear_to_jax, load_converted, save_converted, unflatten)

FAMILY = "higgs_audio_v2_tokenizer"

_UNUSED = re.compile(r"^(decoder_semantic\.|fc1\.|semantic_model\.masked_spec_embed$|"
                     r"quantizer\.quantizers\.\d+\.codebook\.(inited|cluster_size|embed_avg)$)")


def is_unused(key: str) -> bool:
  """Keys of the reference that inference never reads."""
  return bool(_UNUSED.match(key))


# ------------------------------------------------------------------------------------------------
# Key tables
# ------------------------------------------------------------------------------------------------

def flax_to_torch_key(path: str) -> str:
  """'semantic_model/encoder/layers_0/attention/q_proj/kernel' -> '...layers.0.attention.q_proj.weight'."""
  parts = [re.sub(r"_(\d+)$", r".\1", p) for p in path.split("/")]
  if parts[-1] == "kernel":
    parts[-1] = "weight"
  return ".".join(parts)


def _kind(path: str, ndim: int) -> str:
  leaf = path.rsplit("/", 1)[-1]
  if leaf == "kernel":
    if ndim == 2:
      return "linear"
    return "conv_t" if "/conv_t1/" in path else "conv"
  if leaf == "alpha":
    return "snake"
  return "plain"


def _to_jax(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return linear_to_jax(w)
  if kind == "conv":
    return conv_to_jax(w)
  if kind == "conv_t":  # torch (in, out, k) -> (k, in, out)
    return np.ascontiguousarray(np.transpose(w, (2, 0, 1)))
  if kind == "snake":  # (1, C, 1) -> (C,)
    return np.ascontiguousarray(w.reshape(-1))
  return np.asarray(w)


def _torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind == "linear":
    return (shape[1], shape[0])
  if kind == "conv":
    return (shape[2], shape[1], shape[0])
  if kind == "conv_t":
    return (shape[1], shape[2], shape[0])
  if kind == "snake":
    return (1, shape[0], 1)
  return tuple(shape)


def expected_torch_shapes(cfg) -> dict[str, tuple[int, ...]]:
  """torch key -> torch shape for every param of the Flax model (from jax.eval_shape; no weights)."""
  from dreamfoley_jax.audio.higgs import abstract_params

  out = {}
  for path, leaf in flatten(abstract_params(cfg)).items():
    out[flax_to_torch_key(path)] = _torch_shape(_kind(path, len(leaf.shape)), tuple(leaf.shape))
  return out


_INNER = ("snake1", "conv1", "snake2", "conv2")


def boson_to_hf_key(key: str, n_ratios: int) -> str:
  """Renames one boson-multimodal HiggsAudioTokenizer key to the transformers layout."""
  last, m = n_ratios + 1, None
  rules: list[tuple[str, Callable[[re.Match], str]]] = [
      (r"^encoder\.block\.0\.(.+)$", lambda m: f"acoustic_encoder.conv1.{m[1]}"),
      (rf"^encoder\.block\.{last}\.(.+)$", lambda m: f"acoustic_encoder.snake1.{m[1]}"),
      (rf"^encoder\.block\.{last + 1}\.(.+)$", lambda m: f"acoustic_encoder.conv2.{m[1]}"),
      (r"^encoder\.block\.(\d+)\.block\.([012])\.block\.([0123])\.(.+)$",
       lambda m: f"acoustic_encoder.block.{int(m[1]) - 1}.res_unit{int(m[2]) + 1}.{_INNER[int(m[3])]}.{m[4]}"),
      (r"^encoder\.block\.(\d+)\.block\.3\.(.+)$", lambda m: f"acoustic_encoder.block.{int(m[1]) - 1}.snake1.{m[2]}"),
      (r"^encoder\.block\.(\d+)\.block\.4\.(.+)$", lambda m: f"acoustic_encoder.block.{int(m[1]) - 1}.conv1.{m[2]}"),
      (r"^decoder_2\.model\.0\.(.+)$", lambda m: f"acoustic_decoder.conv1.{m[1]}"),
      (rf"^decoder_2\.model\.{last}\.(.+)$", lambda m: f"acoustic_decoder.snake1.{m[1]}"),
      (rf"^decoder_2\.model\.{last + 1}\.(.+)$", lambda m: f"acoustic_decoder.conv2.{m[1]}"),
      (r"^decoder_2\.model\.(\d+)\.block\.0\.(.+)$", lambda m: f"acoustic_decoder.block.{int(m[1]) - 1}.snake1.{m[2]}"),
      (r"^decoder_2\.model\.(\d+)\.block\.1\.(.+)$", lambda m: f"acoustic_decoder.block.{int(m[1]) - 1}.conv_t1.{m[2]}"),
      (r"^decoder_2\.model\.(\d+)\.block\.([234])\.block\.([0123])\.(.+)$",
       lambda m: f"acoustic_decoder.block.{int(m[1]) - 1}.res_unit{int(m[2]) - 1}.{_INNER[int(m[3])]}.{m[4]}"),
      (r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(.+)$", lambda m: f"quantizer.quantizers.{m[1]}.codebook.{m[2]}"),
      (r"^quantizer\.vq\.layers\.(\d+)\.(.+)$", lambda m: f"quantizer.quantizers.{m[1]}.{m[2]}"),
      (r"^fc_prior\.(.+)$", lambda m: f"fc.{m[1]}"),
      (r"^fc_post1\.(.+)$", lambda m: f"fc1.{m[1]}"),
      (r"^fc_post2\.(.+)$", lambda m: f"fc2.{m[1]}"),
      (r"^((?:en|de)coder_semantic\..*)\.(conv|conv1|conv2)\.conv\.(.+)$", lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
      (r"^((?:en|de)coder_semantic)\.(conv|conv1|conv2)\.conv\.(.+)$", lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
  ]
  for pat, fn in rules:
    m = re.match(pat, key)
    if m:
      return fn(m)
  return key


def detect_layout(keys) -> str:
  keys = list(keys)
  if any(k.startswith(("decoder_2.", "fc_prior.", "quantizer.vq.")) or k.endswith(".weight_v") for k in keys):
    return "boson"
  return "transformers"


def _weight_norm_merge(g: np.ndarray, v: np.ndarray, key: str) -> np.ndarray:
  if g.ndim != v.ndim:
    raise ConversionError(f"{key}: weight-norm g {g.shape} and v {v.shape} have different ranks")
  axes = tuple(i for i in range(v.ndim) if g.shape[i] == 1)
  norm = np.sqrt(np.sum(np.square(v.astype(np.float32)), axis=axes, keepdims=True))
  return (v * (g / norm)).astype(np.float32)


@dataclasses.dataclass
class _Plan:
  """Where each normalised (transformers-layout) key comes from."""
  shapes: dict[str, tuple[int, ...]]
  sources: dict[str, tuple[str, ...]]  # one key (plain) or (g_key, v_key)


def plan_keys(found: Mapping[str, tuple[int, ...]], n_ratios: int, layout: str = "auto") -> _Plan:
  """Maps raw checkpoint keys to transformers-layout keys, pairing weight-norm halves."""
  layout = detect_layout(found) if layout == "auto" else layout
  if layout not in ("transformers", "boson"):
    raise ConversionError(f"unknown layout {layout!r} (expected 'auto', 'transformers' or 'boson')")
  ren = (lambda k: boson_to_hf_key(k, n_ratios)) if layout == "boson" else (lambda k: k)
  shapes, sources, halves = {}, {}, {}
  for raw, shape in found.items():
    k = ren(raw)
    for g_suf, v_suf in ((".parametrizations.weight.original0", ".parametrizations.weight.original1"),
                         (".weight_g", ".weight_v")):
      if k.endswith(g_suf) or k.endswith(v_suf):
        base = k[: -len(g_suf)] if k.endswith(g_suf) else k[: -len(v_suf)]
        halves.setdefault(base + ".weight", {})["g" if k.endswith(g_suf) else "v"] = (raw, shape)
        break
    else:
      shapes[k], sources[k] = tuple(shape), (raw,)
  for k, gv in halves.items():
    if set(gv) != {"g", "v"}:
      have = next(iter(gv.values()))[0]
      raise ConversionError(f"{have}: weight-norm half without its partner (need both g and v for {k})")
    shapes[k], sources[k] = tuple(gv["v"][1]), (gv["g"][0], gv["v"][0])
  return _Plan(shapes, sources)


def convert_state_dict(source: TensorSource | Mapping[str, Any], cfg, *, layout: str = "auto",
                       source_name: Optional[PathLike] = None) -> dict:
  """Checkpoint -> nested Flax param dict (numpy float32) for `HiggsAudioV2Tokenizer(cfg)`."""
  from dreamfoley_jax.audio.higgs import abstract_params

  if not isinstance(source, TensorSource):
    source = TensorSource.from_dict(source)
  name = source_name or source.path
  plan = plan_keys(source.shapes(), len(cfg.downsampling_ratios), layout)
  expected = expected_torch_shapes(cfg)
  check_keys(expected, plan.shapes, source=name, ignore=is_unused)
  flat = {}
  for path, leaf in flatten(abstract_params(cfg)).items():
    tk = flax_to_torch_key(path)
    srcs = plan.sources[tk]
    if len(srcs) == 1:
      w = source.get(srcs[0])
    else:
      w = _weight_norm_merge(source.get(srcs[0]), source.get(srcs[1]), tk)
    w = _to_jax(_kind(path, len(leaf.shape)), np.asarray(w, np.float32))
    if tuple(w.shape) != tuple(leaf.shape):  # guarded by check_keys; kept as a last line of defence
      raise ConversionError(f"{name}: {tk} -> {path} has shape {w.shape}, model expects {leaf.shape}")
    flat[path] = w
  return unflatten(flat)


def load_config(input_path: PathLike, config=None):
  """The tokenizer config: given, or config.json beside/inside the checkpoint, or the real preset."""
  from dreamfoley_jax.audio.higgs import HiggsTokenizerConfig

  if isinstance(config, HiggsTokenizerConfig):
    return config
  if isinstance(config, Mapping):
    return HiggsTokenizerConfig.from_hf_config(dict(config))
  if config is not None:
    return HiggsTokenizerConfig.from_hf_config(json.loads(pathlib.Path(config).read_text()))
  p = pathlib.Path(input_path)
  cand = p / "config.json" if p.is_dir() else p.parent / "config.json"
  if cand.exists():
    d = json.loads(cand.read_text())
    if d.get("model_type") == "higgs_audio_v2_tokenizer":
      return HiggsTokenizerConfig.from_hf_config(d)
    if "n_q" in d or "ratios" in d:  # boson's config.json: only the geometry we check against the preset
      real = HiggsTokenizerConfig.real()
      if tuple(d.get("ratios", real.downsampling_ratios)) != real.downsampling_ratios or \
         int(d.get("n_q", 8)) != real.num_quantizers:
        raise ConversionError(f"{cand}: boson config {d} is not the real higgs-audio-v2 geometry; pass config=")
      return real
  return HiggsTokenizerConfig.real()


def convert_to_orbax(input_path: PathLike, output_dir: PathLike, *, overwrite: bool = False, config=None,
                     layout: str = "auto", **unused_options) -> pathlib.Path:
  """Converts a transformers or boson checkpoint (file or directory) into an orbax params dir, atomically."""
  if unused_options:
    raise TypeError(f"convert_to_orbax({FAMILY}): unknown options {sorted(unused_options)}")
  cfg = load_config(input_path, config)
  p = pathlib.Path(input_path)
  if p.is_dir() and not list(p.glob("*.safetensors")):
    for name in ("model.pth", "pytorch_model.bin", "model.pt"):
      if (p / name).exists():
        p = p / name
        break
  params = convert_state_dict(TensorSource(p), cfg, layout=layout, source_name=p)
  return save_converted(params, output_dir, family=FAMILY, config=cfg, source=p, overwrite=overwrite)


def load_orbax(path, target=None):
  """(config, params) from a directory written by `convert_to_orbax`."""
  from dreamfoley_jax.audio.higgs import HiggsTokenizerConfig

  return load_converted(path, FAMILY, HiggsTokenizerConfig, target)
