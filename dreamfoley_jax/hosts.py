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

  Keys come back in the order of `names`, as one process would make them; a name fn gave None for (an
  item it could not compute) is left out."""
  names = list(names)
  mine = {n: v for n, v in ((names[i], fn(names[i])) for i in share(names)) if v is not None}
  import jax

  if jax.process_count() == 1:
    return mine
  got = allgather_features(mine)
  return {n: got[n] for n in names if n in got}


# --------------------------------------------------------------------------------------------------
# generate --csv over hosts
# --------------------------------------------------------------------------------------------------

def generate(gen, items: Sequence, out_dir, *, index_name: str = "generated.csv", failures=None,
             prepare: Optional[Callable] = None, allow_longer: bool = False) -> list[dict]:
  """`gen.run` on this host's share of `items`; returns every host's results in item order (Generator.run's
  form: a failed item is {"name", "error"}; paths as written by their host, so put `out_dir` on storage all
  hosts see) and process 0 writes `out_dir/index_name` and `out_dir/failures.json` (every host's failures).

  gen: a Generator, or a callable that builds one (called only when this host has an item to generate).
  prepare(items, failures, allow_longer=...): validates this host's share before `gen` is built (a Preflight's
  `prepare`, tools/generate.py). failures: the run's checks.Failures (rows the CSV reader rejected, the
  same on every host); every host's failed items are added to it on every host, so all hosts end with the
  same report. Its strict=True stops each host at its own first failure; after the gather every host raises.

  Names and per-clip sampling seeds are fixed over the whole list first, so the clips (and their random
  streams) are the same whatever the host count."""
  import csv

  from dreamfoley_jax import checks
  from dreamfoley_jax import generate as G

  items = list(items)
  names = G._unique_names(items)
  items = [dataclasses.replace(it, name=n, seed=i if it.seed is None else it.seed,
                               where=it.where or it.video or f"item {i}")
           for i, (it, n) in enumerate(zip(items, names))]
  failures = checks.Failures() if failures is None else failures
  idx = share(items)
  host, count = index_count()
  mine = [items[i] for i in idx]
  # This host's failures: printed as they happen, reported after the gather (process 0 writes the file).
  local = checks.Failures(strict=failures.strict, log=failures.log)
  results = [{"name": it.name} for it in mine]
  crash = None     # an unexpected error here: raised after the gather, so no other host waits for this one
  try:
    prepared = prepare(mine, local, allow_longer=allow_longer) if prepare is not None and mine else None
    if mine and (prepared is None or prepared):
      g = gen() if callable(gen) and not hasattr(gen, "run") else gen
      results = g.run(mine, out_dir, failures=local, prepared=prepared, allow_longer=allow_longer,
                      write_failures=False)
  except Exception as e:  # noqa: BLE001 -- --strict stopped this host; the others still meet it at the gather
    if not (failures.strict and len(local)):
      if count == 1:
        raise
      crash = e
  done = [(i, r) for i, r in zip(idx, results) if "wav" in r]
  rows = [{"index": i, "name": r["name"], "video": items[i].video or "", "caption": items[i].caption,
           "seconds": r["frames"] / G.AUDIO_FRAME_RATE, "wav": str(r["wav"]), "mp4": str(r.get("mp4", "")),
           "png": str(r.get("png", "")), "host": host} for i, r in done]
  parts = allgather_json({"rows": rows, "failures": local.items,
                          "crash": None if crash is None else f"{type(crash).__name__}: {crash}"[:500]})
  if crash is not None:
    raise crash
  crashed = [(h, p["crash"]) for h, p in enumerate(parts) if p.get("crash")]
  if crashed:
    h, why = crashed[0]
    raise RuntimeError(f"host {h} failed ({why}); host {host} stops too: nothing was written (rerun after "
                       f"fixing it; see host {h}'s log)")
  merged = sorted((r for part in parts for r in part["rows"]), key=lambda r: r["index"])
  failed = [f for part in parts for f in part["failures"]]
  pos = {it.where: i for i, it in enumerate(items)}
  failed.sort(key=lambda f: pos.get(f["item"], -1))    # item order, as one process lists them
  failures.items.extend(failed)
  if host == 0:
    out = pathlib.Path(out_dir) / index_name
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=["index", "name", "video", "caption", "seconds", "wav", "mp4", "png", "host"])
      w.writeheader()
      w.writerows(merged)
    os.replace(tmp, out)
    failures.write(out_dir)
  if failures.strict and failed:
    raise checks.InputError(f"{failed[0]['item']}: {failed[0]['reason']} (--strict: stopped at the first failure)")
  by_index = {i: r for i, r in done}
  reasons = {f["item"]: f["reason"] for f in failures.items}
  got = {r["index"]: r for r in merged}
  out = []
  for i, it in enumerate(items):   # Generator.run's result form; "codes" only for this host's clips
    if i not in got:
      out.append({"name": it.name, "error": reasons.get(it.where, "failed")})
      continue
    r = got[i]
    d = {k: v for k, v in r.items() if v != "" or k not in ("mp4", "png")}
    d["frames"] = int(round(r["seconds"] * G.AUDIO_FRAME_RATE))
    d.update({k: by_index[i][k] for k in ("codes",) if i in by_index})
    out.append(d)
  return out
