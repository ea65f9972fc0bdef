"""Writing training records (`records.encode_example`) to ArrayRecord shards."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np

from dreamfoley_jax.data import records


def shard_paths(out_dir: str | os.PathLike, name: str, num_shards: int) -> list[pathlib.Path]:
  d = pathlib.Path(out_dir)
  return [d / f"{name}-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]


def write_records(examples: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, *, name: str = "train",
                  num_shards: int = 1, overwrite: bool = False) -> list[pathlib.Path]:
  """Writes examples round-robin into `num_shards` ArrayRecord files; returns their paths.

  Shards are written under temporary names and renamed at the end, so an interrupted run leaves no
  shard that looks complete.
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  paths = shard_paths(out_dir, name, num_shards)
  existing = [p for p in paths if p.exists()]
  if existing and not overwrite:
    raise FileExistsError(f"{existing[0]}: already exists (pass overwrite=True / --overwrite)")
  pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
  tmps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
  # group_size:1 keeps every record individually addressable: grain reads them in random order.
  writers = [ArrayRecordWriter(str(t), "group_size:1") for t in tmps]
  n = 0
  try:
    for i, ex in enumerate(examples):
      writers[i % num_shards].write(records.encode_example(ex))
      n += 1
  except BaseException:
    for w, t in zip(writers, tmps):
      w.close()
      t.unlink(missing_ok=True)
    raise
  for w in writers:
    w.close()
  if n == 0:
    for t in tmps:
      t.unlink(missing_ok=True)
    raise ValueError(f"write_records({out_dir}): no examples given")
  for t, p in zip(tmps, paths):
    os.replace(t, p)
  return paths


def toy_examples(n: int, *, num_codebooks: int = 8, codebook_size: int = 1024, sync_dim: int = 768,
                 clip_dim: int = 1024, seconds: int = 3, seed: int = 0):
  """Learnable toy clips (codes follow from the caption id and the frame index) for smoke runs."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    c = int(rng.integers(0, 16))
    t = np.arange(25 * seconds)
    codes = np.stack([(c + t * (k + 1)) % codebook_size for k in range(num_codebooks)]).astype(np.int16)
    yield {"clip_id": f"toy{i:05d}", "caption": f"class {c}", "text_ids": np.array([c + 1, 17, 3], np.int32),
           "sync_feats": rng.normal(size=(25 * seconds, sync_dim)).astype(np.float16),
           "clip_feats": rng.normal(size=(4 * seconds, clip_dim)).astype(np.float16),
           "audio_codes": codes, "duration": np.float32(seconds)}


def npz_examples(paths: Iterable[str]):
  """Record dicts from .npz files holding record fields (clip_id defaults to the file name)."""
  for p in paths:
    with np.load(p, allow_pickle=False) as z:
      ex = {k: z[k] for k in z.files}
    ex.setdefault("clip_id", pathlib.Path(p).stem)
    for k in records.STR_FIELDS:
      if k in ex:
        ex[k] = str(ex[k])
    yield ex
