"""Sampling settings: `SampleConfig` and the strict reading of an experiment's `sample` section."""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  temperature: float = 1.0          # paper sec. 5.1 sampling settings (experiments/paper_7b.py c.sample)
  top_k: int = 25                   # 0 = off
  top_p: float = 0.9                # 1.0 = off
  cfg_scale: Optional[float] = 3.0  # None = no unconditional pass (single batch)

  def replace(self, **kw) -> "SampleConfig":
    return dataclasses.replace(self, **kw)


# Keys of an experiment's `sample` section read by the windowed sampler's callers (main_job.py,
# generate.py), not by SampleConfig: window / context seconds and the text-to-audio overrides.
SECTION_KEYS = ("window_s", "context_s", "text_only")


def sample_config_from_dict(d, where: str = "sample") -> SampleConfig:
  """A `sample` config section (dict or ConfigDict) -> SampleConfig; an unknown key is an error.

  The section may also hold SECTION_KEYS (read by the callers); `text_only` holds SampleConfig fields only.
  """
  d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
  known = tuple(f.name for f in dataclasses.fields(SampleConfig))
  accepted = known + SECTION_KEYS
  for k in d:
    if k not in accepted:
      raise ValueError(f"config {where}: unknown key {k!r}; accepted: {', '.join(sorted(accepted))}")
  over = d.get("text_only") or {}
  over = dict(over.to_dict() if hasattr(over, "to_dict") else over)
  for k in over:
    if k not in known:
      raise ValueError(f"config {where}.text_only: unknown key {k!r}; accepted: {', '.join(sorted(known))}")
  return SampleConfig(**{k: v for k, v in d.items() if k in known})
