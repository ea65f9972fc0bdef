"""Batch work over every host of a multi-controller JAX job: each host takes a share of the items, works on
them with its own devices, and the small per-item results are gathered so every host holds all of them.

All hosts run the same command. Host i of n takes items i, i+n, i+2n, ... (`share`), so sorted or bucketed
lists stay balanced. `allgather` moves bytes with JAX's own collective (`multihost_utils.process_allgather`:
gloo between CPU hosts, the TPU/GPU network on a slice); one process gives the items back unchanged.

  python tools/generate.py --model M --csv clips.csv --out_dir /shared/out      # on every host of a slice
  python tools/evaluate.py --config experiments/eval_vggsound.py --config.gen_dir /shared/out ...

On a TPU slice `jax.distributed.initialize()` finds the hosts itself (`--distributed`); elsewhere pass
`--coordinator_address=HOST0:PORT --num_processes=N --process_id=I` on each host.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> int:
  """Joins the multi-controller job (explicit coordinator, or `auto`: cluster detection, e.g. a TPU slice or
  SLURM); returns the process count. Does nothing when neither is asked for."""
  import jax

  given = [v is not None and v != "" for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("multi-host: pass all of --coordinator_address, --num_processes and --process_id "
                     "(or --distributed on a TPU slice / SLURM, where JAX finds them)")
  if all(given):
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id))
  elif auto or os.environ.get("DREAMFOLEY_DISTRIBUTED") == "1":     # same as --distributed
    jax.distributed.initialize()
  return jax.process_count()


def index_count() -> tuple[int, int]:
  import jax

  return jax.process_index(), jax.process_count()


def share(items: Sequence[Any], index: Optional[int] = None, count: Optional[int] = None) -> list[int]:
  """Positions of this host's items: index, index + count, ..."""
  if index is None or count is None:
    index, count = index_count()
  return list(range(index, len(items), count))


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every host's `data`, in process order, on every host."""
  import jax

  if jax.process_count() == 1:
    return [data]
  from jax.experimental import multihost_utils as mu

  n = np.asarray(mu.process_allgather(np.array([len(data)], np.int64))).reshape(-1)
  buf = np.zeros(int(n.max()) or 1, np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  got = np.asarray(mu.process_allgather(buf))
  return [got[i, :int(n[i])].tobytes() for i in range(len(n))]


def allgather_json(obj) -> list:
  return [json.loads(b) for b in allgather_bytes(json.dumps(obj).encode())]


def allgather_features(local: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
  """{name: {key: array}} of every host merged (names are disjoint across hosts); npz on the wire, no pickle."""
  index, arrays = [], {}
  for name, feats in local.items():
    for key, v in feats.items():
      arrays[f"a{len(index)}"] = np.asarray(v)
      index.append([name, key])
  bio = io.BytesIO()
  np.savez(bio, __index__=np.frombuffer(json.dumps(index).encode(), np.uint8), **arrays)
  out: dict[str, dict[str, np.ndarray]] = {}
  for blob in allgather_bytes(bio.getvalue()):
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
      for i, (name, key) in enumerate(json.loads(z["__index__"].tobytes())):
        out.setdefault(name, {})[key] = z[f"a{i}"]
  return out


def map_features(names: Sequence[str], fn: Callable[[str], Mapping[str, np.ndarray]]) -> dict[str, dict]:
  """{name: fn(name)} for every name: this host computes its share, the rest come from the others.

  Keys come back in the order of `names`, as one process would make them."""
  names = list(names)
  mine = {names[i]: fn(names[i]) for i in share(names)}
  import jax

  if jax.process_count() == 1:
    return mine
  got = allgather_features(mine)
  return {n: got[n] for n in names}


# --------------------------------------------------------------------------------------------------
# generate --csv over hosts
# --------------------------------------------------------------------------------------------------

def generate(gen, items: Sequence, out_dir, *, index_name: str = "generated.csv") -> list[dict]:
  """`gen.run` on this host's share of `items`; returns every host's results in item order (paths as
  written by their host; put `out_dir` on storage all hosts see) and process 0 writes `out_dir/index_name`.

  Names and per-clip sampling seeds are fixed over the whole list first, so the clips (and their random
  streams) are the same whatever the host count."""
  import csv

  from dreamfoley_jax import generate as G

  items = list(items)
  names = G._unique_names(items)
  items = [dataclasses.replace(it, name=n, seed=i if it.seed is None else it.seed)
           for i, (it, n) in enumerate(zip(items, names))]
  idx = share(items)
  host, count = index_count()
  local = gen.run([items[i] for i in idx], out_dir) if idx else []
  rows = [{"index": i, "name": r["name"], "video": items[i].video or "", "caption": items[i].caption,
           "seconds": r["frames"] / G.AUDIO_FRAME_RATE, "wav": str(r["wav"]), "mp4": str(r.get("mp4", "")),
           "png": str(r.get("png", "")), "host": host} for i, r in zip(idx, local)]
  merged = sorted((r for part in allgather_json(rows) for r in part), key=lambda r: r["index"])
  if host == 0:
    out = pathlib.Path(out_dir) / index_name
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=["index", "name", "video", "caption", "seconds", "wav", "mp4", "png", "host"])
      w.writeheader()
      w.writerows(merged)
    os.replace(tmp, out)
  by_index = dict(zip(idx, local))
  out = []
  for r in merged:       # Generator.run's result form; "codes" only for this host's clips
    d = {k: v for k, v in r.items() if v != "" or k not in ("mp4", "png")}
    d["frames"] = int(round(r["seconds"] * G.AUDIO_FRAME_RATE))
    d.update({k: by_index[r["index"]][k] for k in ("codes",) if r["index"] in by_index})
    out.append(d)
  return out
