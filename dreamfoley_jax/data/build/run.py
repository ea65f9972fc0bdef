"""The driver: list inputs, check the output folder, run the Beam pipeline, write the report."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Sequence

from dreamfoley_jax.data.build import beam_pipeline, progress, report as report_lib, shards, stages as stages_lib
from dreamfoley_jax.data.build import standardise

log = logging.getLogger(__name__)
DATASET_JSON = "dataset.json"


def check_out_dir(out_dir: str, ident: dict, cfg_hash: str):
  """Creates out_dir/dataset.json, or checks that the folder was built with this same config."""
  from apache_beam.io.filesystems import FileSystems

  path = shards.join(out_dir, DATASET_JSON)
  if not shards.is_remote(out_dir):
    os.makedirs(out_dir, exist_ok=True)
  if FileSystems.exists(path):
    with FileSystems.open(path) as f:
      old = json.loads(f.read().decode())
    if old.get("config_hash") != cfg_hash:
      changed = _diff(old.get("config", {}), ident)
      raise ValueError(f"{out_dir}: holds records built with another config (hash {old.get('config_hash')} vs "
                       f"{cfg_hash}; changed: {', '.join(changed[:6]) or '?'}): use a new --out_dir")
    return
  shards._write_bytes_atomic(path, json.dumps({"config_hash": cfg_hash, "config": ident}, indent=1,
                                              sort_keys=True).encode())


def _diff(a, b, prefix="") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{prefix}{i}.")]
  return [] if a == b else [f"{prefix.rstrip('.')}={b!r}"]


def _counter(result, namespace, name) -> int:
  try:
    from apache_beam.metrics.metric import MetricsFilter

    res = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    return int(sum(r.committed or r.attempted or 0 for r in res))
  except Exception:
    return 0


def build_dataset(input_spec: str, out_dir: str, cfg: stages_lib.BuildConfig, *, runner: str = "DirectRunner",
                  beam_options: Sequence[str] = (), num_workers: int = 0, name: str = "train",
                  files_per_shard: int = 64, show_progress: bool = True, share_model: bool = False,
                  strict: bool = False, pipeline_hook=None) -> dict:
  """Runs the whole build; returns the report (also written to out_dir/report.json and report.png).

  strict: the first file or clip that cannot be used stops the pipeline: raises beam_pipeline.StrictFailure
  after writing out_dir/failures.json (that item, plus any failure recorded in shards finished before it);
  shards already written stay (complete; a rerun without --strict resumes from them).
  pipeline_hook(pipeline_options) -> options lets tests pick the in-process runner.
  """
  import apache_beam as beam

  items = standardise.list_inputs(input_spec)
  stage_objs = stages_lib.build_stages(cfg)
  ident = stages_lib.identity(cfg, stage_objs)
  cfg_hash = stages_lib.config_hash(ident)
  check_out_dir(out_dir, ident, cfg_hash)
  stale = shards.remove_stale_temps(out_dir)
  if stale:
    log.warning("%s: removed %d temporary files of an interrupted run", out_dir, stale)
  done = frozenset(shards.done_keys(shards.read_indexes(out_dir, name)))
  local = runner in ("DirectRunner", "direct") and show_progress
  pdir = tempfile.mkdtemp(prefix="dreamfoley_progress_") if local else None
  spec = beam_pipeline.PipelineSpec(items=tuple(items), std=cfg.standardise, stages=tuple(stage_objs),
                                    cfg_hash=cfg_hash, done=done, out_dir=out_dir, name=name,
                                    files_per_shard=files_per_shard, progress_dir=pdir, share_model=share_model,
                                    strict=strict)
  opts = beam_pipeline.pipeline_options(runner, beam_options, num_workers)
  if pipeline_hook is not None:
    opts = pipeline_hook(opts)
  t0 = time.time()
  p = beam.Pipeline(options=opts)
  beam_pipeline.build(p, spec)
  outcome: dict = {}

  def go():
    try:
      res = p.run()
      res.wait_until_finish()
      outcome["result"] = res
    except BaseException as e:   # re-raised in the caller's thread
      outcome["error"] = e

  bars = progress.Bars(pdir, ["standardise"] + [s.name for s in stage_objs] + ["write"], len(items)) \
      if pdir else None
  processes = None
  try:
    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join()
  finally:
    if bars is not None:
      bars.close()
    if pdir:
      processes = len({f.split("-")[0] for f in os.listdir(pdir) if f.endswith(".json")})
      shutil.rmtree(pdir, ignore_errors=True)
  if "error" in outcome:
    failure = beam_pipeline.StrictFailure.find(outcome["error"]) if strict else None
    if failure is not None:
      earlier = [f for f in report_lib.failures(out_dir, name) if f["item"] != failure.failure["item"]]
      report_lib.write_failures(out_dir, [failure.failure] + earlier)
      raise failure from None
    raise outcome["error"]
  res = outcome["result"]
  run = {"inputs": len(items), "skipped_done": _counter(res, "input", "skipped_done"),
         "duplicates": _counter(res, "input", "duplicates"), "seconds": round(time.time() - t0, 2),
         "runner": runner, "config_hash": cfg_hash, "worker_processes": processes}
  rep = report_lib.build_report(out_dir, name, [s.name for s in stage_objs], ident, run)
  rep["failures"] = report_lib.failures(out_dir, name)   # also out_dir/failures.json (issue 19)
  report_lib.write_report(rep, out_dir, rep["failures"])
  return rep
