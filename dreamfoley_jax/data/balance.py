"""Class-balanced sampling for the training pipeline (paper 4.2: AST labels balance the data).

`data.balance_by='ast_class'` (a record field the build's `ast` stage writes) makes pipeline.make_dataset
draw the records with replacement, record i with probability proportional to
count(label_i) ** -balance_power (1.0: every class equally likely; 0.5: square-root smoothing; 0: as the
data is). The draw is seeded by the pipeline's seed and fixed: the same len(records) draws on every host
and in every epoch, reshuffled per epoch by the pipeline's own shuffle, so the global batches stay a
function of (seed, position). Reading the labels decodes every record once at start-up, on each host.
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np


def record_labels(source, field: str) -> np.ndarray:
  """The `field` of every record of a grain source (raw msgpack records), as an int64 array."""
  from dreamfoley_jax.data import records

  out = np.empty(len(source), np.int64)
  for i in range(len(source)):
    rec = records.decode_example(source[i])
    if field not in rec:
      raise KeyError(f"data.balance_by={field!r}: record {i} ({rec.get('clip_id', '?')}) has no such field; "
                     f"build the records with the ast stage (tools/build_dataset.py --stages=+ast)")
    out[i] = int(np.asarray(rec[field]).reshape(-1)[0])
  return out


def sample_weights(labels: Sequence[int], power: float = 1.0) -> np.ndarray:
  """Per-record probabilities proportional to count(label) ** -power (sum 1)."""
  labels = np.asarray(labels)
  counts = collections.Counter(labels.tolist())
  w = np.array([counts[x] for x in labels.tolist()], np.float64) ** -float(power)
  return w / w.sum()


def balanced_indices(labels: Sequence[int], seed: int, power: float = 1.0, n: int | None = None) -> np.ndarray:
  """`n` (default len(labels)) record indices drawn with replacement by `sample_weights`, seeded."""
  p = sample_weights(labels, power)
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xBA1]))
  return rng.choice(len(p), size=len(p) if n is None else n, replace=True, p=p)


class Reindexed:
  """A grain random-access source: source[indices[i]]."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def __getitems__(self, idx):
    get = getattr(self.source, "__getitems__", None)   # ArrayRecord: one batched read
    j = [int(self.indices[i]) for i in idx]
    return list(get(j)) if get is not None else [self.source[k] for k in j]
