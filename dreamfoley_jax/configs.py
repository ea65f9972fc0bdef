"""Experiment configs: loading `experiments/<name>.py` files (ml_collections) with overrides, and the one
place where their sections become the frozen config dataclasses (unknown keys rejected, naming the key).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys
from typing import Any, Iterable, Mapping

import ml_collections

from dreamfoley_jax.models import eva_clip, foley, qwen2, synchformer
from dreamfoley_jax.sampling.config import SECTION_KEYS, SampleConfig


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


# --------------------------------------------------------------------------------------------------
# ConfigDict sections -> dataclasses
# --------------------------------------------------------------------------------------------------

def _plain(d) -> dict:
  if d is None:
    return {}
  return dict(d.to_dict() if hasattr(d, "to_dict") else d)


def check_keys(d: Mapping[str, Any], accepted: Iterable[str], where: str, error: type = ValueError) -> None:
  """`error` (a ValueError) naming the unknown keys of section `where` and the accepted ones."""
  accepted = set(accepted)
  unknown = set(d) - accepted
  if unknown:
    raise error(f"{where}: unknown fields {sorted(unknown)}; accepted: {', '.join(sorted(accepted))}")


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def decoder_config(d, where: str = "model.decoder") -> qwen2.Qwen2Config:
  """Qwen2Config from `preset` (or `hf_config`, a config.json) plus field overrides."""
  d = _plain(d)
  check_keys(d, _fields(qwen2.Qwen2Config) | {"preset", "hf_config"}, where)
  preset, hf = d.pop("preset", None), d.pop("hf_config", None)
  if hf:
    return qwen2.from_hf_config(hf, **d)
  return qwen2.from_preset(preset, **d) if preset else qwen2.Qwen2Config(**d)


def _encoder_config(d, cls, module, where: str):
  """An encoder config from `preset` plus overrides (or the dataclass defaults); None for an empty section."""
  d = _plain(d)
  if not d:
    return None
  check_keys(d, _fields(cls) | {"preset"}, where)
  preset = d.pop("preset", None)
  return module.from_preset(preset, **d) if preset else cls(**d)


def synchformer_config(d, where: str = "model.synchformer") -> synchformer.SynchformerConfig | None:
  return _encoder_config(d, synchformer.SynchformerConfig, synchformer, where)


def eva_config(d, where: str = "model.eva") -> eva_clip.EvaClipConfig | None:
  return _encoder_config(d, eva_clip.EvaClipConfig, eva_clip, where)


def model_config(d, where: str = "model") -> foley.FoleyConfig:
  """FoleyConfig from an experiment's `model` section (decoder, synchformer and eva sub-sections)."""
  d = _plain(d)
  check_keys(d, _fields(foley.FoleyConfig), where)
  kw = dict(d, decoder=decoder_config(d.get("decoder"), f"{where}.decoder"))
  if "loss_weights" in kw:
    kw["loss_weights"] = tuple(float(w) for w in kw["loss_weights"])
  kw["synchformer"] = synchformer_config(d.get("synchformer"), f"{where}.synchformer")
  kw["eva"] = eva_config(d.get("eva"), f"{where}.eva")
  if kw.get("vision_mode") == "frames":
    if kw["synchformer"] is not None:
      kw["sync_dim"] = kw["synchformer"].width
    if kw["eva"] is not None:
      kw["clip_dim"] = kw["eva"].embed_dim
  return foley.FoleyConfig(**kw)


# Keys earlier versions' experiment files had in `sample` and nothing ever read (the sampling seed is generate's
# --seed): ignored, so model directories written before the section became strict still load.
LEGACY_SAMPLE_KEYS = ("seed",)


def sample_config(d, where: str = "sample") -> SampleConfig:
  """A `sample` config section (dict or ConfigDict) -> SampleConfig; an unknown key is an error.

  The section may also hold sampling.SECTION_KEYS (read by the callers); `text_only` holds SampleConfig fields only.
  """
  d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
  for k in LEGACY_SAMPLE_KEYS:    # written by earlier versions into model directories' config.json
    d.pop(k, None)
  known = tuple(f.name for f in dataclasses.fields(SampleConfig))
  accepted = known + SECTION_KEYS
  for k in d:
    if k not in accepted:
      raise ValueError(f"config {where}: unknown key {k!r}; accepted: {', '.join(sorted(accepted))}")
  over = d.get("text_only") or {}
  over = dict(over.to_dict() if hasattr(over, "to_dict") else over)
  for k in over:
    if k not in known:
      raise ValueError(f"config {where}.text_only: unknown key {k!r}; accepted: {', '.join(sorted(known))}")
  return SampleConfig(**{k: v for k, v in d.items() if k in known})


def pretext_config(d, where: str = "main.pretext"):
  """synthetic.pretext.PretextConfig from the synthetic job's `main.pretext` section."""
  from dreamfoley_jax.synthetic import pretext

  d = _plain(d)
  check_keys(d, _fields(pretext.PretextConfig), where)
  return pretext.PretextConfig(**d)


# Keys of the sections read as ConfigDicts (train.validate checks them): every key some code reads.
TRAIN_KEYS = ("global_batch", "steps", "grad_accum", "seed", "data_seed", "frozen_regex", "log_every", "ckpt_every",
              "keep_ckpts", "async_ckpt", "pretrained_decoder", "from_scratch", "init_from")
OPTIM_KEYS = ("name", "lr", "b1", "b2", "eps", "weight_decay", "warmup_steps", "schedule", "final_lr_frac",
              "clip_norm")

# Keys of the `data` section: those the pipeline reads (`pipeline_config`) and the trainer's own.
DATA_KEYS = ("crop_min_s", "crop_max_s", "max_text_len", "bucket_seconds", "text_pad_id", "balance_by",
             "balance_power", "train_records", "num_workers")


def pipeline_config(c, fcfg: foley.FoleyConfig, local_batch: int, seed: int):
  """data.pipeline.PipelineConfig from the experiment's `data` section and the model's FoleyConfig."""
  from dreamfoley_jax.data import pipeline

  d = c.data
  check_keys(d, DATA_KEYS, "data")
  return pipeline.PipelineConfig(
      batch_size=local_batch, num_codebooks=fcfg.num_codebooks, codebook_size=fcfg.codebook_size,
      use_sync=fcfg.use_sync, use_clip=fcfg.use_clip, sync_dim=fcfg.sync_dim, clip_dim=fcfg.clip_dim,
      max_text_len=int(d.max_text_len), null_text_len=fcfg.null_text_len, null_video_len=fcfg.null_video_len,
      crop_min_s=float(d.crop_min_s), crop_max_s=float(d.crop_max_s),
      bucket_seconds=tuple(float(x) for x in d.get("bucket_seconds", (4.0, 7.0, 10.0))),
      text_pad_id=int(d.get("text_pad_id", 0)), seed=int(seed), vision_mode=fcfg.vision_mode,
      frame_size=_frame_size(fcfg), balance_by=str(d.get("balance_by", "")),
      balance_power=float(d.get("balance_power", 1.0)))


def _frame_size(fcfg: foley.FoleyConfig) -> int:
  if fcfg.vision_mode != "frames":
    return 0
  return int(fcfg.synchformer.image_size if fcfg.use_sync else fcfg.eva.image_size)
