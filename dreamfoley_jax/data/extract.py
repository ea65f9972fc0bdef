"""Offline feature extraction: videos -> one training record per clip (EVA-CLIP 4 fps + Synchformer 25 Hz).

Output layout: `<out_dir>/<clip_id>.msgpack`, one `data.records` example per clip, each written to a
temporary name and renamed, so a killed run leaves only whole records and a rerun skips every clip whose
file exists. Per-clip files keep resuming a plain existence check; ArrayRecord shards cannot be appended
to safely after a crash, so they are packed afterwards by `write_array_record_shards` (also atomic).

The encoders are injected as callables on uint8 frames (see `Encoders`), so this module does not depend
on the model code; `make_jax_encoder` turns any Flax apply function into such a callable: fixed batch
shape (one compile), batch sharded over the mesh's data axes, params placed by their logical axes.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax import checks, sharding
from dreamfoley_jax.data import records
from dreamfoley_jax.video import io as vio
from dreamfoley_jax.video import preprocess as vpre

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".msgpack"


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
  clip_batch: int = 32                  # EVA-CLIP images per call (rounded up to the data-parallel size)
  sync_batch: int = 8                   # Synchformer 16-frame windows per call (same rounding)
  max_duration_sec: float | None = None  # cap per clip (e.g. 8.0 or 10.0); None = whole video
  rule: str = "nearest"                 # frame sampling rule, see dreamfoley_jax.video.io
  num_workers: int = 2                  # decode threads (PyAV and PIL release the GIL)
  store_frames: bool = False            # also store frames_clip / frames_sync uint8 (large)


@dataclasses.dataclass(frozen=True)
class ClipItem:
  path: str
  caption: str = ""
  clip_id: str = ""
  error: str = ""        # found unusable while listing (e.g. a caption file that is not UTF-8): reported, skipped


@dataclasses.dataclass
class Encoders:
  """clip: uint8 (N, 224, 224, 3) -> (N, Dc); sync: uint8 (N, 16, 224, 224, 3) -> (N, 8, Ds)."""
  clip: Callable[[np.ndarray], np.ndarray]
  sync: Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------- inputs

def safe_clip_id(name: str) -> str:
  """A file-name-safe clip id (path separators and odd characters become '_')."""
  s = re.sub(r"[^A-Za-z0-9._=+-]", "_", name).strip(".")
  if not s:
    raise ValueError(f"clip id {name!r} is empty after sanitising")
  return s


def scan_folder(folder: str | os.PathLike) -> list[ClipItem]:
  """Every video file under `folder` (recursive, sorted); caption from a sidecar `<name>.txt` if any.

  The clip id is the path below `folder` without suffix (with it, where two videos differ only by
  extension), sanitised by `safe_clip_id`.
  """
  root = pathlib.Path(folder)
  if not root.exists():
    raise FileNotFoundError(f"--input {root}: no such folder or CSV")
  if not root.is_dir():
    raise checks.InputError(f"--input {root}: neither a folder of videos nor a .csv manifest")
  paths = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in vio.VIDEO_EXTENSIONS]
  stems = collections.Counter(str(p.relative_to(root).with_suffix("")) for p in paths)
  items = []
  for p in paths:
    side = p.with_suffix(".txt")
    caption, error = "", ""
    if side.exists():
      try:
        caption = checks.read_text(side, "caption file").strip()
      except (checks.InputError, OSError) as e:
        error = f"caption {checks.one_line(e)}"
    rel = p.relative_to(root)
    # the path without suffix, unless two videos differ only by extension (a.mp4, a.mkv)
    cid = str(rel.with_suffix("")) if stems[str(rel.with_suffix(""))] == 1 else str(rel)
    items.append(ClipItem(str(p), caption, safe_clip_id(cid), error))
  return items


def read_manifest(path: str | os.PathLike) -> list[ClipItem]:
  """CSV with a header: `video` (or `path`), `caption`, optional `clip_id`; relative paths are resolved
  against the CSV's folder. A missing clip_id defaults to the video's path below that folder (without
  suffix) or, for videos elsewhere, its file stem."""
  path = pathlib.Path(path)
  cols, rows = checks.read_csv(path, "manifest")
  vcol = "video" if "video" in cols else ("path" if "path" in cols else None)
  if vcol is None or "caption" not in cols:
    raise checks.InputError(f"{path}: manifest needs columns 'video' (or 'path') and 'caption'; has {cols}")
  items = []
  for n, row in rows:
    v = (row.get(vcol) or "").strip()
    if not v:
      items.append(ClipItem(f"{path}:{n}", "", f"row{n}", f"empty '{vcol}'"))
      continue
    vp = pathlib.Path(v)
    if not vp.is_absolute():
      vp = path.parent / vp
    cid = (row.get("clip_id") or "").strip()
    if not cid:   # default: the path below the manifest's folder without suffix, else the stem
      try:
        cid = str(vp.resolve().relative_to(path.parent.resolve()).with_suffix(""))
      except ValueError:
        cid = vp.stem
    try:
      cid = safe_clip_id(cid)
    except ValueError as e:
      items.append(ClipItem(str(vp), "", f"row{n}", str(e)))
      continue
    items.append(ClipItem(str(vp), row.get("caption") or "", cid))
  return items


def collect_items(source: str | os.PathLike) -> list[ClipItem]:
  """A folder of videos or a .csv manifest; duplicate clip ids are an error."""
  p = pathlib.Path(source)
  items = read_manifest(p) if p.is_file() and p.suffix.lower() in (".csv", ".tsv") else scan_folder(p)
  seen = collections.Counter(it.clip_id for it in items)
  dups = [k for k, n in seen.items() if n > 1]
  if dups:
    raise checks.InputError(f"{source}: duplicate clip ids {dups[:10]} (give each a unique clip_id)")
  return items


def items_for_this_host(items: Sequence[ClipItem]) -> list[ClipItem]:
  """Host i of n takes items i, i + n, ... (extraction needs no cross-host communication)."""
  return list(items[jax.process_index()::jax.process_count()])


def record_path(out_dir: str | os.PathLike, clip_id: str) -> pathlib.Path:
  return pathlib.Path(out_dir) / f"{clip_id}{RECORD_SUFFIX}"


def write_record_atomic(out_dir: str | os.PathLike, example: dict) -> pathlib.Path:
  final = record_path(out_dir, example["clip_id"])
  tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
  tmp.write_bytes(records.encode_example(example))
  os.replace(tmp, final)
  return final


# --------------------------------------------------------------------------------------- encoders

def place_params(module, params, mesh, *example_args):
  """Puts (unboxed) `params` on `mesh` by the logical axes `module.init` declares; returns the tree."""
  def init_fn(r):
    return module.init(r, *example_args)

  with sharding.use_mesh(mesh):
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = sharding.shardings_for(abstract, mesh)
  return sharding.shard_tree(params, shardings)


def make_jax_encoder(apply_fn: Callable[[Any, jax.Array], jax.Array], params, mesh, *, batch: int,
                     kind: str) -> Callable[[np.ndarray], np.ndarray]:
  """Wraps `apply_fn(params, pixels) -> features` as a numpy callable on uint8 frames.

  kind: "clip" (OpenAI mean/std) or "sync" ([-1, 1]). Inputs are padded to a fixed batch (a multiple
  of the mesh's data x fsdp size) so one compilation serves every call; the batch is sharded over
  (data, fsdp); `params` should already be placed (see `place_params`).
  """
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  batch = -(-batch // dp) * dp
  lut = jnp.asarray(vpre.normalize_lut(kind))
  ch = jnp.arange(3)

  def fn(p, u8):
    x = lut[u8.astype(jnp.int32), ch]          # gather: same bits as the numpy normalisation
    x = sharding.constrain(x, ("batch",) + (None,) * (x.ndim - 1))
    return apply_fn(p, x).astype(jnp.float32)

  jitted = jax.jit(fn)

  def call(u8: np.ndarray) -> np.ndarray:
    n = u8.shape[0]
    outs = []
    for s in range(0, n, batch):
      chunk = u8[s:s + batch]
      pad = batch - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      with sharding.use_mesh(mesh):
        x = jax.device_put(chunk, sharding.data_sharding(mesh, chunk.ndim))
        y = jitted(params, x)
      outs.append(np.asarray(jax.device_get(y))[:batch - pad])
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

  call.batch = batch
  call.params = params
  return call


# ------------------------------------------------------------------------------------- extraction

@dataclasses.dataclass
class _Pending:
  item: ClipItem
  frames: vpre.VideoFrames
  clip_feats: list
  sync_feats: list
  n_clip: int
  n_sync: int


def _decode(item: ClipItem, cfg: ExtractConfig):
  try:
    return vpre.load_video_frames(item.path, max_duration_sec=cfg.max_duration_sec, rule=cfg.rule)
  except Exception as e:  # noqa: BLE001 -- any decode failure is this clip's (reported, the rest go on)
    return e if isinstance(e, vio.VideoError) else vio.VideoError(f"{item.path}: {checks.one_line(e)}")


def _load_tokenizer(tokenizer):
  if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
    return tokenizer
  from tokenizers import Tokenizer

  p = pathlib.Path(tokenizer)
  if p.is_dir():
    p = p / "tokenizer.json"
  if not p.exists():
    raise FileNotFoundError(f"--tokenizer {p}: tokenizer.json not found")
  try:
    return Tokenizer.from_file(str(p))
  except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception
    raise checks.InputError(f"--tokenizer {p}: not a tokenizer.json ({checks.one_line(e, 200)})") from None


def extract_features(items: Sequence[ClipItem], out_dir: str | os.PathLike, encoders: Encoders,
                     cfg: ExtractConfig = ExtractConfig(), *, tokenizer=None,
                     audio_tokenizer: Callable[[str, float], np.ndarray] | None = None,
                     progress: bool = True, strict: bool = False) -> dict:
  """Extracts both streams for every item not yet written; returns {'written','skipped','failed'}.

  tokenizer: None, a path to tokenizer.json (HF `tokenizers`) or an object with `.encode(text).ids`.
  audio_tokenizer(path, duration_sec) -> int (K, Ta) codes at 25 Hz, stored as audio_codes int16.
  Clips that fail (decode, caption, tokenizer, audio codes) are listed in `failed` (path, message), in
  `<out_dir>/failures.json` ([{"item", "reason", "clip_id"}]) and `<out_dir>/_failed.tsv`; the others
  finish. strict=True: the first failure raises (after writing failures.json).
  """
  from tqdm.auto import tqdm

  out_dir = checks.writable_dir(out_dir, "--output_dir")
  tok = _load_tokenizer(tokenizer)
  failures = checks.Failures(out_dir, strict=strict)
  todo = [it for it in items if not record_path(out_dir, it.clip_id).exists()]
  stats = {"written": 0, "skipped": len(items) - len(todo), "failed": []}

  def fail(item: ClipItem, reason) -> None:
    msg = reason if isinstance(reason, str) else checks.one_line(reason)
    stats["failed"].append((item.path, msg if item.path in msg else f"{item.path}: {msg}"))
    log.warning("skipping %s", stats["failed"][-1][1])
    failures.add(item.path, msg, clip_id=item.clip_id)

  bad = [it for it in todo if it.error]
  todo = [it for it in todo if not it.error]
  bar = tqdm(total=len(items), initial=stats["skipped"], disable=not progress, unit="clip",
             desc="extract")

  clip_q: list = []      # (pending, row) waiting for the CLIP encoder
  sync_q: list = []
  clip_batch = getattr(encoders.clip, "batch", cfg.clip_batch)
  sync_batch = getattr(encoders.sync, "batch", cfg.sync_batch)

  def finish(p: _Pending):
    fr = p.frames
    ex = {"clip_id": p.item.clip_id, "caption": p.item.caption,
          "clip_feats": np.stack(p.clip_feats).astype(np.float16),
          # one token per 25 fps frame (the length rule, video.preprocess.sync_cover_indices)
          "sync_feats": np.concatenate(p.sync_feats)[:fr.sync_u8.shape[0]].astype(np.float16),
          "duration": np.float32(fr.duration_sec)}
    try:
      if tok is not None:
        ex["text_ids"] = np.asarray(tok.encode(checks.utf8_text(p.item.caption, "caption")).ids, np.int32)
      if audio_tokenizer is not None:
        ex["audio_codes"] = np.asarray(audio_tokenizer(p.item.path, fr.duration_sec)).astype(np.int16)
      if cfg.store_frames:
        ex["frames_clip"], ex["frames_sync"] = fr.clip_u8, fr.sync_u8
      write_record_atomic(out_dir, ex)
    except Exception as e:  # noqa: BLE001 -- this clip's record cannot be made; the others go on
      fail(p.item, e)
    else:
      stats["written"] += 1
    bar.update(1)
    bar.set_postfix(written=stats["written"], failed=len(stats["failed"]))

  def drain(q, fn, batch, attr, force):
    while len(q) >= batch or (force and q):
      take, q[:] = q[:batch], q[batch:]
      x = np.stack([row for _, row in take])
      y = fn(x)
      for (p, _), feat in zip(take, y):
        getattr(p, attr).append(feat)
        if len(p.clip_feats) == p.n_clip and len(p.sync_feats) == p.n_sync:
          finish(p)

  with concurrent.futures.ThreadPoolExecutor(max(1, cfg.num_workers)) as pool:
    inflight: collections.deque = collections.deque()
    it = iter(todo)

    def refill():
      while len(inflight) < 2 * max(1, cfg.num_workers):
        nxt = next(it, None)
        if nxt is None:
          return
        inflight.append((nxt, pool.submit(_decode, nxt, cfg)))

    for b in bad:
      fail(b, b.error)
      bar.update(1)
    refill()
    while inflight:
      item, fut = inflight.popleft()
      refill()
      fr = fut.result()
      if isinstance(fr, Exception):
        fail(item, fr)
        bar.update(1)
        continue
      windows = vpre.sync_cover_windows(fr.sync_u8)
      p = _Pending(item, fr, [], [], fr.clip_u8.shape[0], windows.shape[0])
      clip_q.extend((p, row) for row in fr.clip_u8)
      sync_q.extend((p, row) for row in windows)
      drain(clip_q, encoders.clip, clip_batch, "clip_feats", False)
      drain(sync_q, encoders.sync, sync_batch, "sync_feats", False)
    drain(clip_q, encoders.clip, clip_batch, "clip_feats", True)
    drain(sync_q, encoders.sync, sync_batch, "sync_feats", True)
  bar.close()
  failures.write()
  if stats["failed"]:
    (out_dir / "_failed.tsv").write_text("".join(f"{p}\t{m}\n" for p, m in stats["failed"]))
  return stats


def write_array_record_shards(record_dir: str | os.PathLike, out_prefix: str | os.PathLike,
                              num_shards: int = 1) -> list[pathlib.Path]:
  """Packs `<record_dir>/*.msgpack` (sorted by clip id) into `<prefix>-0000i-of-0000n.array_record`.

  Records go round-robin over shards; each shard is written to a temporary name and renamed.
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  files = sorted(pathlib.Path(record_dir).glob(f"*{RECORD_SUFFIX}"))
  files = [f for f in files if not f.name.startswith(".tmp-")]
  if not files:
    raise FileNotFoundError(f"{record_dir}: no {RECORD_SUFFIX} records to shard")
  prefix = pathlib.Path(out_prefix)
  prefix.parent.mkdir(parents=True, exist_ok=True)
  outs = []
  for s in range(num_shards):
    final = prefix.with_name(f"{prefix.name}-{s:05d}-of-{num_shards:05d}.array_record")
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    w = ArrayRecordWriter(str(tmp), "group_size:1")
    for f in files[s::num_shards]:
      w.write(f.read_bytes())
    w.close()
    os.replace(tmp, final)
    outs.append(final)
  return outs


def iter_records(record_dir: str | os.PathLike) -> Iterable[dict]:
  for f in sorted(pathlib.Path(record_dir).glob(f"*{RECORD_SUFFIX}")):
    if not f.name.startswith(".tmp-"):
      yield records.decode_example(f.read_bytes())


# ------------------------------------------------------------------------ real encoders (by path)

def _module_config(module_cls, overrides: dict):
  """Builds the frozen config dataclass a model module takes, from its defaults plus `overrides`."""
  import sys
  import typing

  hints = typing.get_type_hints(module_cls, vars(sys.modules[module_cls.__module__]))
  for name in ("config", "cfg"):
    if name in hints and dataclasses.is_dataclass(hints[name]):
      cls = hints[name]
      known = {f.name for f in dataclasses.fields(cls)}
      unknown = sorted(set(overrides) - known)
      if unknown:
        raise ValueError(f"{cls.__name__}: unknown config fields {unknown} in checkpoint metadata")
      return cls(**overrides)
  raise TypeError(f"{module_cls.__name__}: no dataclass 'config'/'cfg' field to build")


def _restore_placed(ckpt, module, mesh, example, flag: str = "checkpoint"):
  """Restores an orbax params checkpoint directly into the sharded layout `module.init` declares."""
  from dreamfoley_jax.convert import common

  def init_fn(r):
    return module.init(r, example)

  with sharding.use_mesh(mesh):
    abstract = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = sharding.shardings_for(abstract, mesh)
  import flax.linen as nn

  abstract = nn.unbox(abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                        shardings)
  found = _checkpoint_shapes(ckpt, flag)
  bare = not any(k.startswith("params/") for k in found)   # saved without the {'params': ...} wrapper
  want = {k: tuple(v.shape) for k, v in common.flatten(target["params"] if bare else target).items()}
  checks.tree_mismatch(want, found, f"{flag} {ckpt} does not fit {type(module).__name__}")
  return {"params": common.load_params(ckpt, target["params"])} if bare else common.load_params(ckpt, target)


def _checkpoint_shapes(ckpt, flag: str) -> dict:
  """{path: shape} of a params checkpoint from orbax's metadata (nothing loaded)."""
  import orbax.checkpoint as ocp

  from dreamfoley_jax.convert import common

  item = pathlib.Path(ckpt).absolute() / "params"
  if not item.is_dir():
    raise checks.InputError(f"{flag} {ckpt}: not a params checkpoint (no 'params' directory inside; "
                            "tools/convert_checkpoint.py --family eva_clip / synchformer writes one)")
  try:
    meta = ocp.StandardCheckpointer().metadata(item)
  except Exception as e:  # noqa: BLE001
    raise checks.InputError(f"{flag} {ckpt}: unreadable orbax checkpoint ({checks.one_line(e, 200)})") from None
  meta = getattr(meta, "item_metadata", meta)
  return {k: tuple(v.shape) for k, v in common.flatten(dict(meta)).items() if hasattr(v, "shape")}


def build_real_encoders(eva_ckpt: str, sync_ckpt: str, mesh, cfg: ExtractConfig) -> Encoders:
  """EVA-CLIP-g/14 and Synchformer from converted orbax checkpoints (tools/convert_checkpoint.py).

  Config fields stored under "config" in a checkpoint's dreamfoley_meta.json override the module's
  config defaults. Needs dreamfoley_jax.models.eva_clip / synchformer (issue 4, items 1-3).
  """
  try:
    from dreamfoley_jax.models import eva_clip, synchformer
  except ImportError as e:
    raise ImportError("extract_features needs dreamfoley_jax.models.eva_clip and .synchformer (the EVA-CLIP "
                      f"and Synchformer ports); they are not in this checkout ({e})") from e
  from dreamfoley_jax.convert import common

  for flag, p in (("--eva_ckpt", eva_ckpt), ("--sync_ckpt", sync_ckpt)):
    if not p or not pathlib.Path(p).exists():
      raise FileNotFoundError(f"{flag} {p!r}: encoder checkpoint directory not found")
  eva = eva_clip.EvaVisionTower(_module_config(eva_clip.EvaVisionTower,
                                               common.read_metadata(eva_ckpt).get("config", {})))
  syn = synchformer.Synchformer(_module_config(synchformer.Synchformer,
                                               common.read_metadata(sync_ckpt).get("config", {})))
  eva_params = _restore_placed(eva_ckpt, eva, mesh, jnp.zeros((1, 224, 224, 3), jnp.float32), "--eva_ckpt")
  syn_params = _restore_placed(sync_ckpt, syn, mesh, jnp.zeros((1, 1, 16, 224, 224, 3), jnp.float32),
                               "--sync_ckpt")
  return Encoders(
      clip=make_jax_encoder(lambda p, x: eva.apply(p, x)[0], eva_params, mesh, batch=cfg.clip_batch,
                            kind="clip"),
      sync=make_jax_encoder(lambda p, x: syn.apply(p, x[:, None])[0][:, 0], syn_params, mesh,
                            batch=cfg.sync_batch, kind="sync"))
