"""The stage chain, composed in one place: which stages exist, their order, their configs, the config hash.

Every stage is a pure function clip -> clip | rejection(stage, reason, value). `STAGES` lists them in
pipeline order (cheap filters first, the accelerator-heavy encode last); `--stages` switches them
(`silence,clipping,static,speech,encode`, or `+asr` / `-static` relative to the default). Part 2's model
stages (separation, PAM, AST, ImageBind, captions) go into `STAGES` before "encode" with their config
class: the Beam pipeline, the config hash, the report and the record's `score_*` fields pick them up
from here.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

from dreamfoley_jax.data.build import encode, quality, speech
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, stable_json
from dreamfoley_jax.data.build.standardise import StandardiseConfig

# name -> (config class, factory(config, BuildConfig) -> stage)
STAGES: dict[str, tuple[type, Callable[[Any, "BuildConfig"], Any]]] = {
    "silence": (quality.SilenceConfig, lambda c, b: quality.SilenceStage(c)),
    "clipping": (quality.ClippingConfig, lambda c, b: quality.ClippingStage(c)),
    "static": (quality.StaticConfig, lambda c, b: quality.StaticStage(c)),
    "speech": (speech.SpeechConfig, lambda c, b: speech.SpeechStage(c, b.batch_size)),
    "asr": (speech.AsrConfig, lambda c, b: speech.AsrStage(c, b.batch_size)),
    "encode": (encode.EncodeConfig, lambda c, b: encode.EncodeStage(
        dataclasses.replace(c, clip_seconds=b.standardise.clip_seconds), b.batch_size)),
}
DEFAULT_STAGES = ("silence", "clipping", "static", "speech", "encode")
FORMAT_VERSION = 1   # bump when a change alters records for the same config


def parse_stages(spec: str | Sequence[str] | None) -> tuple[str, ...]:
  """'a,b,c' (exactly these), '+asr,-static' (relative to the default) -> names in pipeline order."""
  if spec is None or spec == "":
    return DEFAULT_STAGES
  parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
  rel = [p for p in parts if p[0] in "+-"]
  if rel and len(rel) != len(parts):
    raise ValueError(f"--stages {spec!r}: either a list of names or +name/-name edits, not both")
  names = set(DEFAULT_STAGES) if rel else set()
  for p in parts:
    n = p.lstrip("+-")
    if n not in STAGES:
      raise ValueError(f"--stages: unknown stage {n!r} (stages: {', '.join(STAGES)})")
    (names.discard if p.startswith("-") else names.add)(n)
  return tuple(n for n in STAGES if n in names)


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  standardise: StandardiseConfig = StandardiseConfig()
  stages: tuple[str, ...] = DEFAULT_STAGES
  stage_configs: tuple[tuple[str, Any], ...] = ()   # (name, config) overrides; others default
  batch_size: int = 4                                # clips per model-stage call (RunInference batch)

  def __post_init__(self):
    for n in self.stages:
      if n not in STAGES:
        raise ValueError(f"unknown stage {n!r} (stages: {', '.join(STAGES)})")
    for n, c in self.stage_configs:
      if n not in STAGES or not isinstance(c, STAGES[n][0]):
        raise ValueError(f"stage_configs: {n!r} needs a {STAGES.get(n, (type(None),))[0].__name__}")

  def stage_config(self, name: str):
    return dict(self.stage_configs).get(name) or STAGES[name][0]()


def build_stages(cfg: BuildConfig) -> list:
  """The enabled stages, in pipeline order."""
  return [STAGES[n][1](cfg.stage_config(n), cfg) for n in cfg.stages]


def identity(cfg: BuildConfig, stages: Sequence | None = None) -> dict:
  """Everything the records depend on: the standardisation, each enabled stage's config and weights."""
  stages = build_stages(cfg) if stages is None else stages
  out = {"format": FORMAT_VERSION, "standardise": dataclasses.asdict(cfg.standardise), "stages": []}
  for st in stages:
    d = {"name": st.name, "config": dataclasses.asdict(st.cfg)}
    if isinstance(st, ModelStage):
      d["weights"] = st.identity()
    out["stages"].append(d)
  return out


def config_hash(ident: dict) -> str:
  return hashlib.sha256(stable_json(ident).encode()).hexdigest()[:12]


def run_chain(clip: Clip, stages: Sequence) -> Clip | Rejection:
  """The chain applied to one clip in this process (tests, benchmarks); Beam runs the same stages."""
  for st in stages:
    clip = st(clip)
    if isinstance(clip, Rejection):
      return clip
  return clip
