"""The build as an Apache Beam pipeline: the same graph on the DirectRunner (multi-process) and on
Dataflow / Flink / Spark (`--runner` and Beam's own options).

  inputs -> Reshuffle -> content hash -> GroupByKey(hash): duplicates -> skip finished files
    -> standardise (1 file -> n clips) -> one step per stage (filters: ParDo; model stages: RunInference,
       batched, weights loaded once per worker) -> records
    -> (records, rejections, file summaries) keyed by shard -> GroupByKey -> write shard + index

Every step catches its own failures: an exception on one file or clip becomes that item's rejection
(reason "error"), the rest of the run goes on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import traceback
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from dreamfoley_jax.data import records as rec_lib
from dreamfoley_jax.data.build import progress, shards, standardise
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage

log = logging.getLogger(__name__)
REJECTED = "rejected"
FILES = "files"
INPUT = "input"


def _error(stage: str, source: str, file_key: str, clip_id, e: BaseException) -> Rejection:
  log.warning("%s: %s failed on %s: %s", stage, clip_id or "file", source, traceback.format_exc(limit=3))
  return Rejection(stage, "error", None, source, file_key, clip_id, f"{type(e).__name__}: {e}"[:300])


class StrictFailure(RuntimeError):
  """--strict: the first file or clip that could not be used stops the build (item, reason, stage)."""
  MARK = "dreamfoley-strict-failure:"

  def __init__(self, failure: dict):
    self.failure = dict(failure)
    super().__init__(f"{failure['item']}: {failure['reason']}")

  @classmethod
  def raise_for(cls, r: dict) -> dict:
    from dreamfoley_jax.data.build import report

    f = report.as_failure(r)
    if f is not None:   # the JSON between marks survives Beam's re-raising in the driver (only text does)
      raise RuntimeError(f"{cls.MARK}{json.dumps(f)}{cls.MARK}")
    return r

  @classmethod
  def find(cls, e: BaseException) -> "StrictFailure | None":
    """The failure a worker raised, from the driver's exception (whatever Beam wrapped it in), or None."""
    text = str(e)
    i = text.find(cls.MARK)
    j = text.find(cls.MARK, i + len(cls.MARK)) if i >= 0 else -1
    if j < 0:
      return None
    try:
      return cls(json.loads(text[i + len(cls.MARK):j]))
    except (ValueError, KeyError):
      return None


def file_key(sha: str, cfg_hash: str) -> str:
  return f"{sha[:32]}-{cfg_hash}"


class HashFn(beam.DoFn):
  """item -> (content sha256, item); an unreadable path becomes a rejection keyed by its path."""

  def __init__(self, cfg_hash: str, progress_dir: str | None):
    self.cfg_hash, self.progress_dir = cfg_hash, progress_dir

  def process(self, item: standardise.InputItem):
    try:
      yield standardise.content_hash(item.path), item
    except Exception as e:  # missing / permission denied: the file ends in the report
      fk = file_key("nohash" + hashlib.sha256(item.path.encode()).hexdigest(), self.cfg_hash)
      r = Rejection(INPUT, "unreadable", None, item.path, fk, None, f"{type(e).__name__}: {e}"[:300])
      progress.tick(self.progress_dir, "standardise", "rejected")
      yield beam.pvalue.TaggedOutput(REJECTED, r)


class DedupeFn(beam.DoFn):
  """(sha, items): the first path (sorted) goes on, the others are 'duplicate' rejections; files whose
  key is in `done` (finished by an earlier run) are skipped."""

  def __init__(self, cfg_hash: str, done: frozenset, progress_dir: str | None):
    self.cfg_hash, self.done, self.progress_dir = cfg_hash, done, progress_dir
    self.skipped = beam.metrics.Metrics.counter(INPUT, "skipped_done")
    self.dups = beam.metrics.Metrics.counter(INPUT, "duplicates")

  def process(self, kv):
    sha, items = kv
    items = sorted(items, key=lambda it: it.path)
    fk = file_key(sha, self.cfg_hash)
    if fk in self.done:
      self.skipped.inc(len(items))
      progress.tick(self.progress_dir, "standardise", "skipped", len(items))
      return
    yield fk, items[0]
    for it in items[1:]:
      self.dups.inc()
      progress.tick(self.progress_dir, "standardise", "rejected")
      yield beam.pvalue.TaggedOutput(REJECTED, Rejection(
          INPUT, "duplicate", None, it.path, fk, None, f"same content as {items[0].path}"))

  def finish_bundle(self):
    if self.progress_dir:
      progress.flush(self.progress_dir)


class StandardiseFn(beam.DoFn):
  def __init__(self, cfg: standardise.StandardiseConfig, progress_dir: str | None):
    self.cfg, self.progress_dir = cfg, progress_dir

  def process(self, kv):
    fk, item = kv
    try:
      clips, rejections, summary = standardise.standardise(item, fk, self.cfg)
    except Exception as e:
      clips, rejections, summary = [], [_error(standardise.STAGE, item.path, fk, None, e)], None
    progress.tick(self.progress_dir, standardise.STAGE, "kept" if clips else "rejected")
    if summary is not None:
      yield beam.pvalue.TaggedOutput(FILES, summary.to_json())
    for r in rejections:
      yield beam.pvalue.TaggedOutput(REJECTED, r)
    yield from clips

  def finish_bundle(self):
    if self.progress_dir:
      progress.flush(self.progress_dir)


def _route(stage_name: str, clip: Clip, out: Clip | Rejection, progress_dir):
  beam.metrics.Metrics.counter(stage_name, "rejected" if isinstance(out, Rejection) else "kept").inc()
  progress.tick(progress_dir, stage_name, "rejected" if isinstance(out, Rejection) else "kept")
  if isinstance(out, Rejection):
    return beam.pvalue.TaggedOutput(REJECTED, out)
  return out


class StageFn(beam.DoFn):
  """A pure per-clip stage as one Beam step."""

  def __init__(self, stage, progress_dir: str | None):
    self.stage, self.progress_dir = stage, progress_dir

  def process(self, clip: Clip):
    try:
      out = self.stage(clip)
    except Exception as e:
      out = _error(self.stage.name, clip.source, clip.file_key, clip.clip_id, e)
    yield _route(self.stage.name, clip, out, self.progress_dir)

  def finish_bundle(self):
    if self.progress_dir:
      progress.flush(self.progress_dir)


class StageModelHandler(ModelHandler):
  """Beam RunInference handler for a ModelStage: `load_model` builds its weights once per worker
  (`share_model=True`: once per machine, for an accelerator one process must own), batches of up
  to `stage.batch_size` clips go through `process_batch`."""

  def __init__(self, stage: ModelStage, share_model: bool = False):
    super().__init__(min_batch_size=1, max_batch_size=stage.batch_size, large_model=share_model)
    self.stage = stage

  def load_model(self):
    import copy

    # the stage loads its weights on its first batch (once per process and config, model_stage.py), so a
    # worker that gets no clip loads nothing
    return copy.deepcopy(self.stage)

  def run_inference(self, batch: Sequence[Clip], model, inference_args=None):
    try:
      return list(zip(batch, model.process_batch(batch)))
    except Exception:   # find the clip that failed: the others are kept
      out = []
      for c in batch:
        try:
          out.append((c, model.process_batch([c])[0]))
        except Exception as e:
          out.append((c, _error(model.name, c.source, c.file_key, c.clip_id, e)))
      return out

  def get_metrics_namespace(self):
    return f"RunInference_{self.stage.name}"

  def get_num_bytes(self, batch):
    return sum(len(c.video_mp4) + c.audio.nbytes for c in batch)


class RouteFn(beam.DoFn):
  def __init__(self, name: str, progress_dir: str | None):
    self.name, self.progress_dir = name, progress_dir

  def process(self, pair):
    clip, out = pair
    yield _route(self.name, clip, out, self.progress_dir)

  def finish_bundle(self):
    if self.progress_dir:
      progress.flush(self.progress_dir)


def to_record(clip: Clip):
  """(clip_id, file_key, record bytes, what the index keeps of it: duration and scores)."""
  meta = {"clip_id": clip.clip_id, "duration": round(clip.duration_sec, 4),
          "scores": {k: round(v, 6) for k, v in sorted(clip.scores.items())}}
  return clip.clip_id, clip.file_key, rec_lib.encode_example(clip.to_record()), meta


def _shard_of(key: str, num_shards: int) -> int:
  return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % max(1, num_shards)


class WriteShardFn(beam.DoFn):
  def __init__(self, out_dir: str, name: str, cfg_hash: str, progress_dir: str | None):
    self.out_dir, self.name, self.cfg_hash, self.progress_dir = out_dir, name, cfg_hash, progress_dir

  def process(self, kv):
    _, items = kv
    recs, rejs, files = [], [], []
    for kind, x in items:
      (recs if kind == "r" else rejs if kind == "x" else files).append(x)
    idx = shards.write_shard(self.out_dir, self.name, self.cfg_hash, recs, rejs, files)
    progress.tick(self.progress_dir, "write", "kept", len(recs))
    yield {"shard": idx["shard"], "records": idx["records"], "files": len(idx["files"])}

  def finish_bundle(self):
    if self.progress_dir:
      progress.flush(self.progress_dir)


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  """Everything the graph needs (picklable)."""
  items: tuple
  std: standardise.StandardiseConfig
  stages: tuple
  cfg_hash: str
  done: frozenset
  out_dir: str
  name: str = "train"
  files_per_shard: int = 64
  progress_dir: str | None = None
  share_model: bool = False
  strict: bool = False          # the first failure (report.as_failure) stops the pipeline


def clip_stages(root, spec: PipelineSpec):
  """inputs -> (kept clips, [rejection PCollections], file summaries): everything before the write."""
  pd = spec.progress_dir
  hashed = (root | "Inputs" >> beam.Create(list(spec.items))
            | "Spread" >> beam.Reshuffle()
            | "Hash" >> beam.ParDo(HashFn(spec.cfg_hash, pd)).with_outputs(REJECTED, main="ok"))
  uniq = (hashed.ok | "ByContent" >> beam.GroupByKey()
          | "Dedupe" >> beam.ParDo(DedupeFn(spec.cfg_hash, spec.done, pd)).with_outputs(REJECTED, main="todo"))
  std = (uniq.todo | "Reshuffle files" >> beam.Reshuffle()
         | "Standardise" >> beam.ParDo(StandardiseFn(spec.std, pd)).with_outputs(REJECTED, FILES, main="clips"))
  rejected = [hashed[REJECTED], uniq[REJECTED], std[REJECTED]]
  clips = std.clips
  for st in spec.stages:
    if isinstance(st, ModelStage):
      out = (clips | f"{st.name}" >> RunInference(StageModelHandler(st, spec.share_model))
             | f"{st.name} route" >> beam.ParDo(RouteFn(st.name, pd)).with_outputs(REJECTED, main="kept"))
    else:
      out = clips | f"{st.name}" >> beam.ParDo(StageFn(st, pd)).with_outputs(REJECTED, main="kept")
    clips = out.kept
    rejected.append(out[REJECTED])
  return clips, rejected, std[FILES], uniq.todo


def build(p: beam.Pipeline, spec: PipelineSpec):
  """Adds the build to pipeline `p`; returns the PCollection of written-shard summaries."""
  clips, rejected, files, todo = clip_stages(p, spec)
  num_files = todo | "CountFiles" >> beam.combiners.Count.Globally()
  recs = clips | "Record" >> beam.Map(to_record)
  n_shards = beam.pvalue.AsSingleton(
      num_files | "Shards" >> beam.Map(lambda n, fps: max(1, math.ceil(n / fps)), spec.files_per_shard))
  tagged = (
      (recs | "Tag records" >> beam.Map(lambda r: (r[1], ("r", r))),
       _strict(rejected | "All rejections" >> beam.Flatten(), spec.strict)
       | "Tag rejections" >> beam.Map(lambda r: (r.file_key, ("x", r.to_json()))),
       files | "Tag files" >> beam.Map(lambda f: (f["file_key"], ("f", f))))
      | "Outcomes" >> beam.Flatten()
      | "Key by shard" >> beam.Map(lambda kv, n: (_shard_of(kv[0], n), kv[1]), n_shards))
  return tagged | "ByShard" >> beam.GroupByKey() | "Write" >> beam.ParDo(
      WriteShardFn(spec.out_dir, spec.name, spec.cfg_hash, spec.progress_dir))


def _strict(rejections, strict: bool):
  if not strict:
    return rejections
  return rejections | "Strict" >> beam.Map(lambda r: StrictFailure.raise_for(r.to_json()) and r)


class KeptRecords(beam.PTransform):
  """pipeline root -> (clip_id, record bytes) of every kept clip (the TFDS builder's examples)."""

  def __init__(self, spec: PipelineSpec):
    super().__init__()
    self.spec = spec

  def expand(self, root):
    clips, _, _, _ = clip_stages(root, self.spec)
    return clips | "Record" >> beam.Map(lambda c: (c.clip_id, to_record(c)[2], c.duration_sec))


def pipeline_options(runner: str, extra: Iterable[str] = (), num_workers: int = 0):
  """PipelineOptions: `runner` plus Beam flags; the DirectRunner runs multi-process by default."""
  import os

  from apache_beam.options.pipeline_options import PipelineOptions

  flags = [f"--runner={runner}"] + [f if f.startswith("--") else f"--{f}" for f in extra if f]
  if runner == "DirectRunner":
    if not any(f.startswith("--direct_running_mode") for f in flags):
      flags.append("--direct_running_mode=multi_processing")
    if not any(f.startswith("--direct_num_workers") for f in flags):
      flags.append(f"--direct_num_workers={num_workers or os.cpu_count() or 1}")
  return PipelineOptions(flags)
