"""Writing training records (`records.encode_example`) to ArrayRecord shards."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable, Mapping

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
