"""Per-stage progress bars for local runs: Beam workers count, the driver draws.

DirectRunner workers are separate processes, so each one writes its counts to a small JSON file in a
local folder (at most every 0.5 s, temp-then-rename) and the driver sums them into one tqdm bar per stage.
Other runners show per-step element counts in their own UI (and Beam metrics carry the same counts).
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
import uuid

_lock = threading.Lock()
_counts: dict[str, dict[str, collections.Counter]] = {}   # progress_dir -> stage -> outcome counts
_last_flush: dict[str, float] = {}
_tag = uuid.uuid4().hex[:8]


def tick(progress_dir: str | None, stage: str, outcome: str, n: int = 1):
  """Counts `n` items of `stage` ending as `outcome` ('kept' / 'rejected' / 'skipped' / 'in')."""
  if not progress_dir:
    return
  with _lock:
    _counts.setdefault(progress_dir, {}).setdefault(stage, collections.Counter())[outcome] += n
    now = time.monotonic()
    if now - _last_flush.get(progress_dir, 0.0) < 0.5:
      return
    _last_flush[progress_dir] = now
    data = {k: dict(v) for k, v in _counts[progress_dir].items()}
  flush(progress_dir, data)


def flush(progress_dir: str, data: dict | None = None):
  if data is None:
    with _lock:
      data = {k: dict(v) for k, v in _counts.get(progress_dir, {}).items()}
  path = os.path.join(progress_dir, f"{os.getpid()}-{_tag}.json")
  tmp = f"{path}.{threading.get_ident()}.tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(data, f)
    os.replace(tmp, path)
  except OSError:   # progress is best effort
    pass


def read(progress_dir: str) -> dict[str, collections.Counter]:
  total: dict[str, collections.Counter] = {}
  for name in os.listdir(progress_dir):
    if not name.endswith(".json"):
      continue
    try:
      with open(os.path.join(progress_dir, name)) as f:
        d = json.load(f)
    except (OSError, ValueError):
      continue
    for stage, c in d.items():
      total.setdefault(stage, collections.Counter()).update(c)
  return total


class Bars:
  """One tqdm bar per stage, refreshed from the progress folder until `close`."""

  def __init__(self, progress_dir: str, stage_names, total_files: int):
    from tqdm.auto import tqdm

    self.dir, self.names = progress_dir, list(stage_names)
    self.bars = {n: tqdm(total=total_files if i == 0 else None, desc=f"{n:>11}", position=i, leave=True,
                         unit="file" if i == 0 else "clip", dynamic_ncols=True)
                 for i, n in enumerate(self.names)}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()

  def refresh(self):
    counts = read(self.dir)
    for n, bar in self.bars.items():
      c = counts.get(n, collections.Counter())
      done = sum(v for k, v in c.items() if k != "in")
      bar.n = done
      bar.set_postfix({k: v for k, v in sorted(c.items()) if k != "in"}, refresh=False)
      bar.refresh()

  def _loop(self):
    while not self._stop.wait(0.5):
      self.refresh()

  def close(self):
    self._stop.set()
    self._thread.join()
    self.refresh()
    for bar in self.bars.values():
      bar.close()
