"""Sampling settings: `SampleConfig` (an experiment's `sample` section becomes one in configs.sample_config)."""
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
