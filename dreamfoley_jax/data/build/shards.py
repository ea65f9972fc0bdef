"""Output shards: ArrayRecord files of training records plus an index that marks them finished.

A shard holds every clip of a set of source files (all clips of a file land in one shard, so a file is
the unit of resumption). It is written to a temporary name and renamed; its index (`.index.json`: the
files' keys, their kept clip ids and their rejections) is renamed after it, and is the only sign of a
finished shard: a killed run leaves at most temporary files (removed by the next run), never a final
name with partial content. The shard's name is a hash of its files' keys and the config hash, so the
same inputs give the same names. ArrayRecord cannot open object-store paths (gs://, s3://): for those
the shard is written locally and copied with Beam's FileSystems, then renamed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from typing import Iterable

INDEX_SUFFIX = ".index.json"
SHARD_SUFFIX = ".array_record"


def is_remote(path: str) -> bool:
  return "://" in str(path)


def join(a: str, b: str) -> str:
  return f"{str(a).rstrip('/')}/{b}" if is_remote(a) else os.path.join(a, b)


def _match(pattern: str) -> list[str]:
  from apache_beam.io.filesystems import FileSystems

  try:
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
  except Exception:  # no match raises on some filesystems
    return []


def _write_bytes_atomic(path: str, data: bytes):
  if is_remote(path):
    from apache_beam.io.filesystems import FileSystems

    tmp = join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    with FileSystems.create(tmp) as f:
      f.write(data)
    FileSystems.rename([tmp], [path])
    return
  tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _write_array_record_atomic(path: str, records: Iterable[bytes]) -> int:
  from array_record.python.array_record_module import ArrayRecordWriter

  local_dir = tempfile.mkdtemp(prefix="dreamfoley_shard_") if is_remote(path) else os.path.dirname(path)
  tmp = os.path.join(local_dir, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
  n = 0
  try:
    w = ArrayRecordWriter(tmp, "group_size:1")   # every record addressable: grain reads them at random
    for r in records:
      w.write(r)
      n += 1
    w.close()
    if is_remote(path):
      with open(tmp, "rb") as f:
        _write_bytes_atomic(path, f.read())
      os.unlink(tmp)
      os.rmdir(local_dir)
    else:
      os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return n


def shard_id(config_hash: str, file_keys: Iterable[str]) -> str:
  h = hashlib.sha256(config_hash.encode())
  for k in sorted(set(file_keys)):
    h.update(k.encode())
  return h.hexdigest()[:16]


def write_shard(out_dir: str, name: str, config_hash: str, records: list[tuple[str, str, bytes, dict]],
                rejections: list[dict], files: list[dict]) -> dict:
  """Writes one shard of (clip_id, file_key, record bytes, index entry), sorted by clip id, then its index."""
  keys = {f["file_key"] for f in files} | {r["file_key"] for r in rejections} | {r[1] for r in records}
  sid = shard_id(config_hash, keys)
  shard = f"{name}-{sid}{SHARD_SUFFIX}"
  records = sorted(records, key=lambda r: r[0])
  by_file: dict[str, dict] = {}
  for f in sorted(files, key=lambda f: (f["file_key"], f["source"])):
    by_file.setdefault(f["file_key"], {**f, "kept": []})
  for k in sorted(keys - set(by_file)):   # files rejected before standardisation made a summary
    by_file[k] = {"file_key": k, "source": min(r["source"] for r in rejections if r["file_key"] == k),
                  "kept": []}
  for _, fk, _, meta in records:
    by_file[fk]["kept"].append(meta)
  index = {"config_hash": config_hash, "shard": shard if records else None, "records": len(records),
           "files": by_file,
           "rejections": sorted(rejections, key=lambda r: (r["source"], str(r["clip_id"]), r["stage"]))}
  if records:
    _write_array_record_atomic(join(out_dir, shard), (r[2] for r in records))
  _write_bytes_atomic(join(out_dir, f"{name}-{sid}{INDEX_SUFFIX}"),
                      json.dumps(index, indent=1, sort_keys=True).encode())
  return index


def read_indexes(out_dir: str, name: str) -> list[dict]:
  """Every finished shard's index (sorted by name); an index whose shard file is missing is skipped."""
  from apache_beam.io.filesystems import FileSystems

  out = []
  for path in _match(join(out_dir, f"{name}-*{INDEX_SUFFIX}")):
    with FileSystems.open(path) as f:
      idx = json.loads(f.read().decode())
    if idx.get("shard") and not _match(join(out_dir, idx["shard"])):
      continue
    idx["_path"] = path
    out.append(idx)
  return out


def done_keys(indexes: Iterable[dict]) -> set[str]:
  return {k for idx in indexes for k in idx["files"]}


def remove_stale_temps(out_dir: str) -> int:
  """Deletes temporary files a killed run left behind; returns how many."""
  from apache_beam.io.filesystems import FileSystems

  stale = _match(join(out_dir, ".tmp-*"))
  if stale:
    FileSystems.delete(stale)
  return len(stale)


def shard_paths(out_dir: str, name: str) -> list[str]:
  return [join(out_dir, idx["shard"]) for idx in read_indexes(out_dir, name) if idx.get("shard")]
