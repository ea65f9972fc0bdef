"""One model directory: everything `generate` needs under one path, described by a small manifest.

  DIR/model.json      manifest: format, what each file is, the codec / tokenizer facts, sampling defaults
  DIR/config.json     the experiment's `model`, `sample` and `data.max_text_len` sections
  DIR/params/         DreamFoley params (convert.common.save_params layout)
  DIR/codec.npz       the synthetic codec, or DIR/codec/ a converted higgs-audio-v2 tokenizer
  DIR/tokenizer.json  the caption tokenizer (HF tokenizers)
  DIR/encoders/{eva_clip,synchformer}/   converted video encoders (features-mode models only)

Written by the main job (`runs/synthetic/model`) and by tools/export_model.py from a training workdir;
read by `tools/generate.py --model DIR`, tools/demo.py and `build_generator` below. A directory that is
incomplete, or whose parts belong to different models, fails `load` with one line naming each problem.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Optional

import numpy as np

MANIFEST = "model.json"
FORMAT = "dreamfoley_jax.model"
VERSION = 1
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "cfg_scale", "window_s", "context_s")
ENCODERS = {"eva_clip": "use_clip", "synchformer": "use_sync"}   # features mode: which flag needs which
DEFAULT_DIR = "runs/synthetic/model"                              # what the README's main job writes


class ModelDirError(ValueError):
  """The directory is not a (complete, self-consistent) model directory."""


@dataclasses.dataclass
class ModelDir:
  path: pathlib.Path
  manifest: dict
  exp: Any                       # ml_collections.ConfigDict: model, sample, data

  def file(self, key: str) -> pathlib.Path:
    return self.path / self.manifest["files"][key]

  @property
  def encoders(self) -> dict[str, pathlib.Path]:
    return {k: self.path / v for k, v in self.manifest.get("encoders", {}).items()}

  @property
  def sampling(self) -> dict:
    return dict(self.manifest.get("sampling", {}))


# --------------------------------------------------------------------------------------------------
# Facts read from each part (cheap: metadata only, no weights loaded)
# --------------------------------------------------------------------------------------------------

def codec_info(path) -> dict:
  """{kind, num_codebooks, codebook_size, sample_rate, frame_rate} of a codec file / checkpoint."""
  p = pathlib.Path(path)
  if p.is_file():
    try:
      with np.load(p, allow_pickle=False) as z:
        cfg = json.loads(str(z["config"]))
        books = z["codebooks"].shape
    except Exception as e:
      raise ModelDirError(f"{p}: not a synthetic codec file ({e})") from e
    return {"kind": "synthetic", "num_codebooks": int(books[0]), "codebook_size": int(books[1]),
            "sample_rate": int(cfg.get("sample_rate", 24000)),
            "frame_rate": float(cfg.get("sample_rate", 24000)) / float(cfg.get("hop_length", 960))}
  from dreamfoley_jax.audio.higgs import HiggsTokenizerConfig
  from dreamfoley_jax.convert import common, higgs

  meta = common.read_metadata(p) if p.is_dir() else {}
  if meta.get("family") != higgs.FAMILY or not (p / "params").is_dir():
    raise ModelDirError(f"{p}: neither a synthetic codec .npz nor a converted higgs-audio-v2 tokenizer "
                        "(tools/convert_checkpoint.py --family higgs)")
  c = common.config_from_dict(HiggsTokenizerConfig, meta["config"])
  return {"kind": "higgs", "num_codebooks": int(c.num_quantizers), "codebook_size": int(c.codebook_size),
          "sample_rate": int(c.sample_rate), "frame_rate": float(c.frame_rate)}


def tokenizer_vocab(path) -> int:
  from dreamfoley_jax import text

  try:
    return int(text.load_tokenizer(path).get_vocab_size())
  except (FileNotFoundError, ValueError) as e:
    raise ModelDirError(str(e)) from e


def param_shapes(path) -> dict[str, tuple[int, ...]]:
  """{flat/key: shape} of a params checkpoint, from its orbax metadata."""
  from dreamfoley_jax.convert import common

  item = pathlib.Path(path).absolute() / "params"
  if not item.is_dir():
    raise ModelDirError(f"{path}: not a params checkpoint (no 'params' inside)")
  return {k: tuple(m.shape) for k, m in common.flatten(_tree_metadata(item)).items()}


def _tree_metadata(item) -> dict:
  """The {name: ArrayMetadata} tree of an orbax StandardCheckpointer item."""
  import orbax.checkpoint as ocp

  meta = ocp.StandardCheckpointer().metadata(item)
  meta = getattr(meta, "item_metadata", meta)
  return dict(getattr(meta, "tree", meta))


def expected_shapes(cfg, scanned: Optional[bool] = None) -> dict[str, tuple[int, ...]]:
  """{flat/key: shape} the config's model has (in the checkpoint's layer layout when `scanned` is given)."""
  import flax.linen as nn

  from dreamfoley_jax.convert import common
  from dreamfoley_jax.models import params as foley_params

  if scanned is not None and scanned != cfg.decoder.scan_layers:
    cfg = dataclasses.replace(cfg, decoder=cfg.decoder.replace(scan_layers=scanned))
  return {k: tuple(v.shape) for k, v in common.flatten(nn.unbox(foley_params.abstract_params(cfg))).items()}


def compare_shapes(want: Mapping[str, tuple], got: Mapping[str, tuple], limit: int = 4) -> list[str]:
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k]))
  out = []
  if missing:
    out.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
  if extra:
    out.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:limit])})")
  if wrong:
    out.append(f"{len(wrong)} of other shapes (e.g. " + ", ".join(
        f"{k} {got[k]} vs config {want[k]}" for k in wrong[:limit]) + ")")
  return out


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------

def check_parts(exp, *, params=None, codec=None, tokenizer=None, encoders=None, where: str = "") -> None:
  """Raises ModelDirError naming every part that does not belong to the model `exp.model` describes."""
  from dreamfoley_jax import configs

  cfg = configs.model_config(exp.model)
  problems = []
  if params is not None:
    got = param_shapes(params)
    scanned = any(k.startswith("decoder/layers/layer/") for k in got)
    bad = compare_shapes(expected_shapes(cfg, scanned), got)
    if bad:
      problems.append(f"params {params} are from another model than config: " + "; ".join(bad))
  if codec is not None:
    info = codec_info(codec)
    if info["codebook_size"] != cfg.codebook_size:
      problems.append(f"codec {codec} has codebook_size={info['codebook_size']}, the model needs {cfg.codebook_size}")
    # A model may predict the first k of the codec's K residual levels (Table 4: 1, 4, 8).
    if info["num_codebooks"] < cfg.num_codebooks:
      problems.append(f"codec {codec} has num_codebooks={info['num_codebooks']}, the model needs at least "
                      f"{cfg.num_codebooks}")
    if abs(info["frame_rate"] - 25.0) > 1e-6:
      problems.append(f"codec {codec} runs at {info['frame_rate']:g} Hz, the model needs 25 Hz")
  if tokenizer is not None:
    v = tokenizer_vocab(tokenizer)
    if v > cfg.decoder.vocab_size:
      problems.append(f"tokenizer {tokenizer} has {v} tokens, more than the model's vocab_size "
                      f"{cfg.decoder.vocab_size} (a tokenizer from another model?)")
  if cfg.vision_mode == "features" and encoders is not None:
    from dreamfoley_jax.convert import common

    for name, flag in ENCODERS.items():
      if not getattr(cfg, flag):
        continue
      flag_name = "--eva_ckpt" if name == "eva_clip" else "--sync_ckpt"
      e = encoders.get(name)
      if not e:
        problems.append(f"a features-mode model needs the {name} encoder ({flag_name}: a tools/convert_checkpoint.py "
                        f"--family {name} output)")
      elif common.read_metadata(e).get("family") != name:
        problems.append(f"{flag_name} {e}: not a converted {name} checkpoint "
                        f"(tools/convert_checkpoint.py --family {name})")
  if problems:
    raise ModelDirError((f"{where}: " if where else "") + "; ".join(problems))


def load(path, *, check: bool = True) -> ModelDir:
  """Reads and checks a model directory (files present, format, and that every part fits the config)."""
  import ml_collections

  p = pathlib.Path(path).expanduser()
  if not p.is_dir():
    raise ModelDirError(f"{p}: no such model directory (the main job writes runs/synthetic/model; "
                        "tools/export_model.py makes one from a training workdir)")
  mf = p / MANIFEST
  if not mf.exists():
    raise ModelDirError(f"{p}: not a model directory: no {MANIFEST} (tools/export_model.py writes one)")
  try:
    manifest = json.loads(mf.read_text())
  except json.JSONDecodeError as e:
    raise ModelDirError(f"{mf}: not valid JSON ({e})") from e
  if manifest.get("format") != FORMAT:
    raise ModelDirError(f"{mf}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  if int(manifest.get("version", 0)) > VERSION:
    raise ModelDirError(f"{mf}: version {manifest['version']} is newer than this code reads ({VERSION})")
  files = dict(manifest.get("files", {}))
  needed = {k: files.get(k) for k in ("config", "params", "codec", "tokenizer")}
  needed.update({f"encoder {k}": v for k, v in manifest.get("encoders", {}).items()})
  missing = [f"{k} ({v or 'not listed in ' + MANIFEST})" for k, v in needed.items() if not v or not (p / v).exists()]
  if missing:
    raise ModelDirError(f"{p}: incomplete model directory, missing " + ", ".join(missing))
  try:
    exp = ml_collections.ConfigDict(json.loads((p / files["config"]).read_text()))
  except json.JSONDecodeError as e:
    raise ModelDirError(f"{p / files['config']}: not valid JSON ({e})") from e
  md = ModelDir(p, manifest, exp)
  if check:
    check_parts(exp, params=md.file("params"), codec=md.file("codec"), tokenizer=md.file("tokenizer"),
                encoders=md.encoders, where=str(p))
  return md


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def _config_dict(exp) -> dict:
  d = exp.to_dict() if hasattr(exp, "to_dict") else dict(exp)
  data = dict(d.get("data", {}))
  return {"model": d["model"], "sample": dict(d.get("sample", {})),
          "data": {"max_text_len": int(data.get("max_text_len", 64))}}


def _copy(src, dst: pathlib.Path) -> None:
  src = pathlib.Path(src)
  if src.is_dir():
    shutil.copytree(src, dst)
  else:
    shutil.copy2(src, dst)


def write(out, exp, *, codec, tokenizer, params=None, params_dir=None, eva_ckpt=None, sync_ckpt=None,
          sampling: Optional[Mapping[str, Any]] = None, source: Optional[Mapping[str, Any]] = None,
          overwrite: bool = False) -> pathlib.Path:
  """Writes a model directory at `out` (atomically: a temp sibling renamed into place once it checks).

  params: a param pytree (saved here), or params_dir: a saved params checkpoint (copied). codec: a
  synthetic codec .npz or a converted higgs tokenizer directory. tokenizer: a tokenizer.json (or a
  directory holding one). eva_ckpt / sync_ckpt: converted encoders (features-mode models). sampling:
  overrides of the config's sample section stored as the model's defaults. source: provenance.
  """
  import jax
  import ml_collections

  from dreamfoley_jax.convert import common

  if (params is None) == (params_dir is None):
    raise ValueError("give exactly one of params / params_dir")
  cfg_d = _config_dict(exp)
  unknown = sorted(set(sampling or {}) - set(SAMPLING_KEYS))
  if unknown:
    raise ValueError(f"sampling: unknown keys {unknown}; known: {list(SAMPLING_KEYS)}")
  cfg_d["sample"].update({k: v for k, v in (sampling or {}).items() if v is not None})
  tok = pathlib.Path(tokenizer)
  tok = tok / "tokenizer.json" if tok.is_dir() else tok
  codec_p = pathlib.Path(codec)
  codec_p = codec_p if codec_p.exists() or codec_p.suffix else codec_p.with_suffix(".npz")
  for what, v in (("codec", codec_p), ("tokenizer", tok), ("params_dir", params_dir), ("eva_ckpt", eva_ckpt),
                  ("sync_ckpt", sync_ckpt)):
    if v is not None and not pathlib.Path(v).exists():
      raise FileNotFoundError(f"{what} {v}: not found")
  exp_c = ml_collections.ConfigDict(cfg_d)
  # The parts given, checked before anything is written (the params once saved, below).
  check_parts(exp_c, codec=codec_p, tokenizer=tok, encoders={"eva_clip": eva_ckpt, "synchformer": sync_ckpt},
              where=f"{out} (not written)")
  with common.atomic_output_dir(out, overwrite=overwrite) as tmp:
    info = codec_info(codec_p)
    files = {"config": "config.json", "params": "params", "tokenizer": "tokenizer.json",
             "codec": "codec.npz" if info["kind"] == "synthetic" else "codec"}
    (tmp / files["config"]).write_text(json.dumps(cfg_d, indent=1, sort_keys=True))
    if params is not None:
      common.save_params(params, tmp / files["params"], metadata={"what": "DreamFoley params"})
    else:
      _copy(params_dir, tmp / files["params"])
    _copy(codec_p, tmp / files["codec"])
    _copy(tok, tmp / files["tokenizer"])
    encoders = {}
    for name, src in (("eva_clip", eva_ckpt), ("synchformer", sync_ckpt)):
      if src:
        (tmp / "encoders").mkdir(exist_ok=True)
        _copy(src, tmp / "encoders" / name)
        encoders[name] = f"encoders/{name}"
    shapes = param_shapes(tmp / files["params"])
    manifest = {
        "format": FORMAT, "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": files, "encoders": encoders,
        "codec": info, "tokenizer": {"vocab_size": tokenizer_vocab(tmp / files["tokenizer"])},
        "sampling": {k: cfg_d["sample"][k] for k in SAMPLING_KEYS if k in cfg_d["sample"]},
        "num_params": int(sum(int(np.prod(s)) for s in shapes.values())),
        "jax": jax.__version__, "source": dict(source or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    check_parts(exp_c, params=tmp / files["params"], where=f"{out} (not written)")
  return pathlib.Path(out)


def train_params(workdir, step: Optional[int] = None):
  """(step, params as host numpy) of a training workdir's checkpoint (default: the latest intact one),
  whatever mesh or optimizer wrote it: read from the checkpoint's own metadata, no config needed, and
  verified against the checksums the trainer wrote. A damaged newest step falls back to the previous
  intact one (a warning naming both); an asked-for step that fails is an error."""
  import jax
  import orbax.checkpoint as ocp
  from absl import logging

  from dreamfoley_jax import checkpoint as ckptlib

  ck = ckptlib.Checkpointer(str(workdir), async_save=False)
  try:
    steps = ck.all_steps()
    if not steps:
      raise ModelDirError(f"{workdir}: no training checkpoints (tools/train.py writes {workdir}/checkpoints/<step>/)")
    if step is not None and step not in steps:
      raise ModelDirError(f"{workdir}: no checkpoint at step {step} (has {steps})")
    bad = []
    for s in ([int(step)] if step is not None else steps[::-1]):
      item = ck.directory / str(s) / "state"
      try:
        meta = _tree_metadata(item)
        if "params" not in meta:
          raise ModelDirError(f"{item}: a checkpoint without 'params' (has {sorted(meta)})")
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)   # host numpy, any writer's mesh
        params = ocp.StandardCheckpointer().restore(item, target)["params"]
        if not ck.verify_part(s, "params", params):
          logging.warning("%s: step %d has no checksums (written before they existed): not verified", workdir, s)
      except ModelDirError:
        raise
      except Exception as e:   # orbax / tensorstore errors for missing or damaged files, checksum mismatch
        bad.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        logging.warning("%s: checkpoint %s: corrupt or incomplete, not used", workdir, bad[-1])
        continue
      if bad:
        logging.warning("%s: using the previous intact checkpoint step %d (%s)", workdir, s, "; ".join(bad))
      return s, params
    raise ModelDirError(f"{workdir}: no intact checkpoint ({'; '.join(bad)})")
  finally:
    ck.close()


def export_from_workdir(workdir, config, out, *, codec, tokenizer, step: Optional[int] = None,
                        eva_ckpt=None, sync_ckpt=None, sampling=None, overwrite: bool = False,
                        config_name: Optional[str] = None) -> pathlib.Path:
  """A model directory from a training workdir's checkpoint (default: the latest step) and the experiment
  config (a path or a ConfigDict) it trained with."""
  from dreamfoley_jax import configs

  exp = configs.load_config(config) if isinstance(config, (str, os.PathLike)) else config
  step, params = train_params(workdir, step)
  src = {"workdir": str(pathlib.Path(workdir).absolute()), "step": step,
         "config": config_name or (str(config) if isinstance(config, (str, os.PathLike)) else "<ConfigDict>")}
  return write(out, exp, params=params, codec=codec, tokenizer=tokenizer, eva_ckpt=eva_ckpt,
               sync_ckpt=sync_ckpt, sampling=sampling, source=src, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------
# Reading into a Generator
# --------------------------------------------------------------------------------------------------

def build_generator(model, *, config: Optional[str] = None, checkpoint=None, codec_checkpoint=None,
                    tokenizer=None, eva_ckpt=None, sync_ckpt=None, sample_overrides=None, **kw):
  """A `generate.Generator` from a model directory; each path / config given replaces that part.

  The model's sampling defaults (manifest `sampling`) apply unless `sample_overrides` / window_s /
  context_s say otherwise; `kw` goes to `generate.build_generator` (batch_size, seed, mesh, ...).
  """
  import ml_collections

  from dreamfoley_jax import configs
  from dreamfoley_jax import generate as G

  md = load(model, check=False)
  if config:
    exp = configs.load_config(config)
  else:
    exp = ml_collections.ConfigDict(md.exp.to_dict())
    exp.sample.update(md.sampling)          # the manifest's sampling defaults win over config.json's
  enc = md.encoders
  paths = dict(checkpoint=checkpoint or md.file("params"), codec_checkpoint=codec_checkpoint or md.file("codec"),
               tokenizer=tokenizer or md.file("tokenizer"), eva_ckpt=eva_ckpt or enc.get("eva_clip"),
               sync_ckpt=sync_ckpt or enc.get("synchformer"))
  check_parts(exp, params=paths["checkpoint"], codec=paths["codec_checkpoint"], tokenizer=paths["tokenizer"],
              encoders={"eva_clip": paths["eva_ckpt"], "synchformer": paths["sync_ckpt"]}, where=str(md.path))
  return G.build_generator(exp, **{k: (str(v) if v else None) for k, v in paths.items()},
                           sample_overrides=sample_overrides, **kw)
