"""Base of the stages that hold weights: loaded once per worker, applied to batches of clips.

A model stage is still a pure function clip -> clip | rejection (`__call__`); `process_batch` is the
same function over a list (Beam's RunInference hands it batches, see beam_pipeline.py). Weights are
loaded lazily in the worker (`load`) and never pickled, so the stage object itself is small.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading
from typing import Any, Sequence

from dreamfoley_jax.data.build.clip import Clip, Rejection


_MODELS: dict = {}   # (stage class, config) -> what `load` built: one copy per process and config


class ModelStage:
  name = "model"

  def __init__(self, cfg, batch_size: int = 4):
    self.cfg, self.batch_size = cfg, int(batch_size)
    self._loaded = False
    self._lock = threading.Lock()   # Beam may call one shared copy from several threads

  def __getstate__(self):
    return {"cfg": self.cfg, "batch_size": self.batch_size}

  def __setstate__(self, state):
    self.__init__(state["cfg"], state["batch_size"])

  def load(self) -> None:
    """Builds the models (in the worker process); called once before the first clip."""

  def identity(self) -> dict[str, Any]:
    """What the stage's output depends on beyond its config (e.g. weight fingerprints)."""
    return {}

  def process(self, clip: Clip) -> Clip | Rejection:
    raise NotImplementedError

  def process_batch(self, clips: Sequence[Clip]) -> list[Clip | Rejection]:
    if not self._loaded:
      with self._lock:
        if not self._loaded:
          self._load_shared()
          self._loaded = True
    return [self.process(c) for c in clips]

  def __call__(self, clip: Clip) -> Clip | Rejection:
    return self.process_batch([clip])[0]

  def _load_shared(self):
    """`load`, or the models an earlier copy of this stage with the same config loaded in this process
    (Beam builds a new DoFn, hence a new stage copy, per pipeline and per worker thread)."""
    import dataclasses

    key = (type(self).__qualname__, stable_json(dataclasses.asdict(self.cfg)))
    with _LOCK:
      if key not in _MODELS:
        before = set(vars(self))
        self.load()
        _MODELS[key] = {k: v for k, v in vars(self).items() if k not in before}
      vars(self).update(_MODELS[key])


_LOCK = threading.Lock()


def path_fingerprint(path: str | os.PathLike | None) -> str:
  """A short hash of a checkpoint: its metadata files' bytes and every file's name and size (cheap for
  multi-GB weights; a re-converted checkpoint changes its metadata)."""
  if not path:
    return ""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: checkpoint not found")
  h = hashlib.sha256()
  files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
  for f in files:
    h.update(f"{f.relative_to(p) if f != p else f.name}:{f.stat().st_size};".encode())
    if f.suffix == ".json" and f.stat().st_size < 1 << 20:
      h.update(f.read_bytes())
  return h.hexdigest()[:16]


def stable_json(x) -> str:
  return json.dumps(x, sort_keys=True, separators=(",", ":"), default=str)
