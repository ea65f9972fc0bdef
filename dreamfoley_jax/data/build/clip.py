"""What flows through the build pipeline: a `Clip`, or a `Rejection` that names its stage, reason and value.

A stage is a pure function Clip -> Clip | Rejection (stages.py); it adds scores and record fields with
`with_scores` / `with_fields` and never mutates its input. A clip's record (`to_record`) holds the fields
the trainer reads (records.py) plus `score_<name>` for every score a stage measured.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

DROPPED_BEFORE_RECORD = ("video_mp4", "audio")   # standardised media: not stored in the record


@dataclasses.dataclass(frozen=True)
class Clip:
  clip_id: str               # <source id>-<chunk index, 3 digits>
  file_key: str              # content hash of the source file + stage-config hash (the resume key)
  source: str                # input path or URL
  index: int                 # chunk index within the source
  start_sec: float           # chunk start, seconds after the source's first video frame
  duration_sec: float
  caption: str
  video_mp4: bytes           # standardised video stream only: H.264 mp4, constant fps, short side N
  audio: np.ndarray          # standardised audio stream only: float32 (C, N) at audio_rate
  audio_rate: int
  fps: float
  scores: Mapping[str, float] = dataclasses.field(default_factory=dict)
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # record fields added by stages

  def with_scores(self, **scores: float) -> "Clip":
    return dataclasses.replace(self, scores={**self.scores, **{k: float(v) for k, v in scores.items()}})

  def with_fields(self, **fields: Any) -> "Clip":
    return dataclasses.replace(self, fields={**self.fields, **fields})

  def mono(self) -> np.ndarray:
    """(N,) float32: the channels averaged."""
    return self.audio.mean(axis=0).astype(np.float32) if self.audio.shape[0] > 1 else self.audio[0]

  def to_record(self) -> dict[str, Any]:
    """The training record (data/records.py fields + score_* + provenance)."""
    rec = {"clip_id": self.clip_id, "caption": self.caption, "duration": np.float32(self.duration_sec),
           "source": self.source, "source_key": self.file_key, "start_sec": np.float32(self.start_sec)}
    rec.update({f"score_{k}": np.float32(v) for k, v in sorted(self.scores.items())})
    rec.update(self.fields)
    return rec


@dataclasses.dataclass(frozen=True)
class Rejection:
  stage: str                 # the stage that rejected ("input", "standardise", "silence", ...)
  reason: str                # short machine-readable reason, e.g. "silence_ratio"
  value: float | None        # the measured value that failed the threshold (None when not a number)
  source: str
  file_key: str
  clip_id: str | None = None   # None: the whole file
  detail: str = ""             # one line for people

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FileSummary:
  """One per source file that reached standardisation: what was found and done (the report's per-file row)."""
  source: str
  file_key: str
  clips: int = 0
  duration_sec: float = 0.0
  probe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  notes: tuple[str, ...] = ()

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["notes"] = list(self.notes)
    return d


def is_rejection(x) -> bool:
  return isinstance(x, Rejection)
