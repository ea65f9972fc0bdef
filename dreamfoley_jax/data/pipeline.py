"""grain input pipeline: ArrayRecord shards -> shuffled, cropped, delayed, bucketed global batches.

  range(records) -> shuffle(seed) -> repeat (reshuffled per epoch) -> [examples already seen:]
  -> batch(GLOBAL batch of record indices) -> this host's rows, read -> BatchTransform
  -> to_iter_dataset [-> mp_prefetch]

Host-count independence: every host walks the same global stream of record indices (a function of
the seed alone) and reads only its rows of each global batch, the rows
`jax.make_array_from_process_local_data` places on its devices; so 1, 2 or 64 processes train on the
same global batches. The position in the stream is (global batch index, examples consumed), the same
on every host, which is what a checkpoint stores (any host count can resume from it).

Crops (paper 5.1: random 2-10 s): the crop START lies on the 1 s grid, the only grid shared by the
25 Hz streams (audio codes, Synchformer features) and the 4 fps CLIP features, so all three stay exactly
aligned and the model's nearest-previous CLIP upsampling (`foley.upsample_index`) sees the same
phase as in a full clip. The crop LENGTH is any whole number of 25 Hz frames; the CLIP features keep
ceil(len * 4 / 25) frames (the last one may cover a partial 0.25 s window, as it does at a clip's end).
Each example's crop comes from an rng seeded by (seed, batch index, its row in the global batch).

Length buckets: each batch index draws one bucket (upper edges `bucket_seconds`, chosen with
probability proportional to its share of [crop_min_s, crop_max_s], so crop lengths stay uniform over
the whole range) from an rng seeded by (seed, batch index); every host therefore builds the same shapes
for the same step, and a batch is padded only up to its bucket. Every random choice is a function of
(seed, batch index, global row), so the stream is deterministic.

Batches hold exactly the inputs `DreamFoley.__call__` takes: text_ids, text_mask, sync_feats and/or
clip_feats, video_mask, audio_ids (delayed, time-major), audio_mask, audio_vacant.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import math
from typing import Any, Mapping, Sequence

import numpy as np

from dreamfoley_jax.audio import delay
from dreamfoley_jax.data import records


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  batch_size: int                      # GLOBAL batch (examples per step, all hosts together)
  num_codebooks: int = 8
  codebook_size: int = 1024
  use_sync: bool = True
  use_clip: bool = True
  sync_dim: int = 768
  clip_dim: int = 1024
  max_text_len: int = 64
  null_text_len: int = 8
  null_video_len: int = 8
  crop_min_s: float = 2.0
  crop_max_s: float = 10.0
  bucket_seconds: tuple[float, ...] = (4.0, 7.0, 10.0)
  audio_rate: float = 25.0             # audio codes and sync features
  clip_rate: float = 4.0
  text_pad_id: int = 0
  seed: int = 0
  # frames mode (encoders inside the model): uint8 frames_sync (25 fps) / frames_clip (4 fps) instead of
  # encoder features; frame_size = H = W of the stored frames.
  vision_mode: str = "features"
  frame_size: int = 0
  # class balancing (data/balance.py): a record field holding a class id, e.g. 'ast_class'; "" = off
  balance_by: str = ""
  balance_power: float = 1.0

  def __post_init__(self):
    b = tuple(sorted(float(x) for x in self.bucket_seconds))
    object.__setattr__(self, "bucket_seconds", b)
    if not b or b[-1] < self.crop_max_s - 1e-9:
      raise ValueError(f"data.bucket_seconds={b}: the largest bucket must be >= crop_max_s={self.crop_max_s}")
    if self.crop_min_s <= 0 or self.crop_min_s > self.crop_max_s:
      raise ValueError(f"data.crop_min_s={self.crop_min_s} / crop_max_s={self.crop_max_s}: need 0 < min <= max")
    if self.audio_rate != 25.0 or self.clip_rate != 4.0:
      raise ValueError("the 1 s crop grid assumes 25 Hz audio/sync and 4 fps CLIP features")
    if self.vision_mode not in ("features", "frames"):
      raise ValueError(f"vision_mode must be 'features' or 'frames', got {self.vision_mode!r}")
    if self.vision_mode == "frames" and self.frame_size <= 0:
      raise ValueError("vision_mode='frames' needs frame_size (the stored frames' height = width)")
    if self.frames(self.crop_min_s) < self.null_video_len:
      raise ValueError(f"crop_min_s={self.crop_min_s}: shorter than the null video sequence "
                       f"({self.null_video_len} frames)")

  @property
  def bos_id(self) -> int:
    return self.codebook_size

  @property
  def eos_id(self) -> int:
    return self.codebook_size + 1

  @property
  def delay_pattern(self) -> delay.DelayPattern:
    """The model's delay pattern (its K codebooks, BOS / EOS ids): how audio_ids are laid out."""
    return delay.DelayPattern(self.num_codebooks, bos=self.bos_id, eos=self.eos_id)

  @property
  def text_len(self) -> int:
    return max(self.max_text_len, self.null_text_len)

  def frames(self, seconds: float) -> int:
    return int(round(seconds * self.audio_rate))

  def edges(self) -> list[tuple[float, float]]:
    """(lo, hi] seconds of each bucket that overlaps [crop_min_s, crop_max_s]."""
    out, lo = [], self.crop_min_s
    for hi in self.bucket_seconds:
      hi_c = min(hi, self.crop_max_s)
      if hi_c >= lo and (not out or hi_c > out[-1][1]):
        out.append((lo, hi_c))
        lo = hi_c
      if hi >= self.crop_max_s:
        break
    return out

  def bucket_shapes(self, bucket: int) -> tuple[int, int, int]:
    """(Tv, Tc, La) padded lengths of a bucket."""
    hi = self.edges()[bucket][1]
    tv = self.frames(hi)
    return tv, math.ceil(tv * self.clip_rate / self.audio_rate), self.delay_pattern.length(tv)


def batch_spec(p: PipelineConfig, batch_size: int | None = None, bucket: int = -1) -> dict[str, tuple[tuple, Any]]:
  """{key: (shape, dtype)} of a batch of `bucket` (default: the largest) and `batch_size` (default: global)."""
  B = p.batch_size if batch_size is None else batch_size
  tv, tc, la = p.bucket_shapes(bucket if bucket >= 0 else len(p.edges()) - 1)
  K = p.num_codebooks
  spec = {"text_ids": ((B, p.text_len), np.int32), "text_mask": ((B, p.text_len), np.bool_),
          "video_mask": ((B, tv), np.bool_), "audio_ids": ((B, la, K), np.int32),
          "audio_mask": ((B, la), np.bool_), "audio_vacant": ((B, la, K), np.bool_)}
  if p.vision_mode == "frames":
    H = p.frame_size
    if p.use_sync:
      spec["frames_sync"] = ((B, tv, H, H, 3), np.uint8)
      spec["frames_sync_mask"] = ((B, tv), np.bool_)
    if p.use_clip:
      spec["frames_clip"] = ((B, tc, H, H, 3), np.uint8)
      spec["frames_clip_mask"] = ((B, tc), np.bool_)
    return spec
  if p.use_sync:
    spec["sync_feats"] = ((B, tv, p.sync_dim), np.float32)
  if p.use_clip:
    spec["clip_feats"] = ((B, tc, p.clip_dim), np.float32)
  return spec


def _available_frames(p: PipelineConfig, ex: Mapping[str, Any]) -> int:
  if "audio_codes" not in ex:
    raise KeyError(f"record {ex.get('clip_id', '?')!r} has no 'audio_codes'")
  n = ex["audio_codes"].shape[-1]
  sync_key, clip_key = ("frames_sync", "frames_clip") if p.vision_mode == "frames" else ("sync_feats", "clip_feats")
  for key, used in ((sync_key, p.use_sync), (clip_key, p.use_clip)):
    if used and key not in ex:
      raise KeyError(f"record {ex.get('clip_id', '?')!r} has no {key!r} (model vision_mode={p.vision_mode!r})")
  if p.use_sync:
    n = min(n, ex[sync_key].shape[0])
  if p.use_clip:
    n = min(n, int(math.floor(ex[clip_key].shape[0] * p.audio_rate / p.clip_rate + 1e-6)))
  return int(n)


@dataclasses.dataclass(frozen=True)
class BatchTransform:
  """(batch index, serialized records[, their global rows]) -> padded numpy batch. Picklable (workers)."""
  p: PipelineConfig

  def choose_bucket(self, rng: np.random.Generator) -> int:
    widths = np.array([hi - lo for lo, hi in self.p.edges()], np.float64)
    if widths.sum() <= 0:
      return 0
    return int(rng.choice(len(widths), p=widths / widths.sum()))

  def __call__(self, index: int, raw: Sequence[bytes], rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    p = self.p
    rows = range(len(raw)) if rows is None else rows
    bucket = self.choose_bucket(np.random.default_rng([p.seed, int(index)]))
    lo_s, hi_s = p.edges()[bucket]
    spec = batch_spec(p, len(raw), bucket)
    out = {k: np.zeros(s, d) for k, (s, d) in spec.items()}
    out["text_ids"][:] = p.text_pad_id
    out["audio_ids"][:] = p.eos_id
    K = p.num_codebooks
    pattern = p.delay_pattern
    lo_f, hi_f = max(p.frames(lo_s), 1), p.frames(hi_s)
    for i, (data, row) in enumerate(zip(raw, rows)):
      rng = np.random.default_rng([p.seed, int(index), int(row)])   # per example: any host split
      ex = records.decode_example(data)
      avail = _available_frames(p, ex)
      want = int(rng.integers(lo_f, hi_f + 1))
      n = min(want, avail)
      if n <= 0:
        raise ValueError(f"record {ex.get('clip_id', '?')!r}: no audio/video frames")
      start_s = int(rng.integers(0, (avail - n) // 25 + 1))   # 1 s grid: 25 audio frames = 4 CLIP frames
      a0 = start_s * 25
      if "text_ids" in ex:
        t = np.asarray(ex["text_ids"], np.int32).reshape(-1)[:p.text_len]
        out["text_ids"][i, :len(t)] = t
        out["text_mask"][i, :len(t)] = True
      frames = p.vision_mode == "frames"
      if p.use_sync:
        key = "frames_sync" if frames else "sync_feats"
        out[key][i, :n] = ex[key][a0:a0 + n]
        if frames:
          out["frames_sync_mask"][i, :n] = True
      if p.use_clip:
        key = "frames_clip" if frames else "clip_feats"
        c0 = start_s * 4
        nc = min(math.ceil(n * p.clip_rate / p.audio_rate), ex[key].shape[0] - c0)
        out[key][i, :nc] = ex[key][c0:c0 + nc]
        if frames:
          out["frames_clip_mask"][i, :nc] = True
      out["video_mask"][i, :n] = True
      codes = np.asarray(ex["audio_codes"], np.int32)[:K, a0:a0 + n]
      if codes.shape[0] != K:
        raise ValueError(f"record {ex.get('clip_id', '?')!r}: audio_codes has {codes.shape[0]} codebooks, "
                         f"model needs {K}")
      d = pattern.build(codes)                                      # (K, n+2+K-1)
      L = d.shape[1]
      out["audio_ids"][i, :L] = d.T
      out["audio_mask"][i, :L] = True
      out["audio_vacant"][i, :L] = pattern.vacant(n).T
    return out


@dataclasses.dataclass(frozen=True)
class _ReadRows:
  """Global batch `j` of record indices -> {index, rows, raw}: this host's rows, read from the source."""
  source: Any
  rows: tuple[int, ...]
  first_index: int

  def __call__(self, j: int, idx_G: np.ndarray) -> dict[str, Any]:
    idx = [int(idx_G[r]) for r in self.rows]
    get = getattr(self.source, "__getitems__", None)        # ArrayRecord: one batched read
    raw = list(get(idx)) if get is not None else [self.source[i] for i in idx]
    return {"index": self.first_index + int(j), "rows": self.rows, "raw": raw}


@dataclasses.dataclass(frozen=True)
class _Build:
  transform: BatchTransform

  def __call__(self, el: dict[str, Any]) -> dict[str, np.ndarray]:
    return self.transform(el["index"], el["raw"], el["rows"])


def host_rows(global_batch: int, process_index: int = 0, process_count: int = 1) -> tuple[int, ...]:
  """The contiguous slice of a global batch that host `process_index` of `process_count` reads."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  n = global_batch // process_count
  return tuple(range(process_index * n, (process_index + 1) * n))


def _exit_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1):
  """grain worker init: exit as soon as the trainer is gone, however it ended (SIGKILL included).

  A thread polls getppid() rather than PR_SET_PDEATHSIG, which fires when the parent THREAD exits
  (grain starts workers from short-lived helper threads) and exists only on Linux.
  """
  import os
  import threading
  import time

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(0.25)
    os._exit(0)

  if os.getppid() != parent_pid:
    os._exit(0)
  threading.Thread(target=watch, daemon=True, name="exit-with-trainer").start()


def expand_paths(pattern: str | Sequence[str]) -> list[str]:
  pats = [pattern] if isinstance(pattern, str) else list(pattern)
  paths = []
  for pat in pats:
    for part in str(pat).split(","):
      part = part.strip()
      if part:
        hits = sorted(glob.glob(part))
        if not hits:
          raise FileNotFoundError(f"data.train_records: {part!r} matches no files")
        paths.extend(hits)
  if not paths:
    raise FileNotFoundError("data.train_records is empty: set it to a glob of ArrayRecord shards "
                            "(written by tools/write_records.py)")
  return paths


def records_source(paths: str | Sequence[str]):
  """ArrayRecord shards (globs, comma-separated), or 'tfds:DIR[:split]': a TFDS dataset written by
  tools/build_dataset.py --tfds_data_dir (its `record` feature holds these same records)."""
  if isinstance(paths, str) and paths.startswith("tfds:"):
    from dreamfoley_jax.data import tfds_source

    return tfds_source.TfdsRecordSource.from_spec(paths)
  import grain

  return grain.sources.ArrayRecordDataSource(expand_paths(paths))


def count_records(paths: str | Sequence[str]) -> int:
  return len(records_source(paths))


def make_dataset(p: PipelineConfig, paths: str | Sequence[str], *, process_index: int = 0, process_count: int = 1,
                 rows: Sequence[int] | None = None, start_batch: int = 0, start_example: int | None = None,
                 num_workers: int = 0, shuffle: bool = True):
  """Infinite grain IterDataset: element i = this host's `rows` of global batch `start_batch + i`.

  Global batches hold `p.batch_size` consecutive examples of the seed's shuffled, per-epoch reshuffled
  stream of record indices, starting at example `start_example` (default start_batch * batch size).
  `rows` (sorted global rows, default the process_index-th of process_count contiguous slices) must be
  the rows `jax.make_array_from_process_local_data` puts on this host (train.host_rows_of).
  """
  import os

  import grain

  G = p.batch_size
  rows = tuple(int(r) for r in (host_rows(G, process_index, process_count) if rows is None else rows))
  if not rows or list(rows) != sorted(set(rows)) or rows[0] < 0 or rows[-1] >= G:
    raise ValueError(f"rows {rows[:8]}...: need sorted distinct rows of the global batch of {G}")
  src = records_source(paths)
  n = len(src)
  if p.balance_by:   # the records redrawn class-balanced (data/balance.py); the same draws on every host
    from dreamfoley_jax.data import balance

    src = balance.Reindexed(src, balance.balanced_indices(balance.record_labels(src, p.balance_by), p.seed,
                                                          p.balance_power))
  if n < G:
    raise ValueError(f"data.train_records: {n} records, fewer than one global batch of {G} "
                     "(lower train.global_batch or add records)")
  start_example = start_batch * G if start_example is None else int(start_example)
  if start_batch < 0 or start_example < 0:
    raise ValueError(f"start_batch={start_batch} / start_example={start_example}: must be >= 0")
  idx = grain.MapDataset.range(n)
  if shuffle:
    idx = idx.shuffle(seed=p.seed)
  idx = idx.repeat(None)[start_example:].batch(G)
  ds = idx.map_with_index(_ReadRows(src, rows, int(start_batch))).map(_Build(BatchTransform(p)))
  it_ds = ds.to_iter_dataset()
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2),
                              worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
  return it_ds
