"""Music-speech separation (paper 4.1): the residual speech of a kept clip removed with Demucs (htdemucs).

The clip's audio becomes `mix - vocals` (everything the model did not put in the vocals stem); the
removed stem's energy is recorded (`score_vocals_ratio` = energy(vocals) / energy(mix),
`score_vocals_dbfs` = its RMS level) so training can filter on it later, and `max_vocals_ratio`
(off by default) rejects clips that were mostly voice.

Reference model, run as published: demucs 4.0.1's HTDemucs and `apply_model` (7.8 s segments, 25% overlap,
shifts=0 so a clip always separates the same way), with the input normalised by the mix's mean and std
as `demucs.separate` does. Weights by path: the single-model file of the htdemucs bag
(`955717e8-8726e21a.th`), read with torch.load(weights_only=True) allowing only the HTDemucs class and
fractions.Fraction (its segment) as globals.
"""
from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint

INSTALL = "pip install demucs==4.0.1 julius==0.2.8 --no-deps"


def _stand_in(name: str, **attrs) -> types.ModuleType:
  m = types.ModuleType(name)
  m.__dict__.update(attrs)
  m.__dreamfoley_stand_in__ = True
  return m


def _unavailable(what: str):
  def fail(*a, **k):
    raise RuntimeError(f"{what} is not installed (dreamfoley_jax registered a stand-in: HTDemucs inference "
                       f"never calls it)")
  return fail


def import_demucs():
  """(HTDemucs class, apply_model) from demucs 4.0.1.

  demucs's model modules import three packages that inference never calls into: openunmix (whose
  package __init__ imports torchaudio, which has no build for every torch; only `wiener` is used, when
  wiener_iters > 0, and htdemucs has 0), dora (only `log.fatal`, for diffq-quantised models) and
  omegaconf (only when saving). Where one is missing, a stand-in module whose functions raise is
  registered, so `pip install demucs==4.0.1 julius==0.2.8 --no-deps` is enough.
  """
  try:
    import openunmix.filtering  # noqa: F401
  except ImportError:
    sys.modules["openunmix"] = _stand_in("openunmix")
    sys.modules["openunmix.filtering"] = _stand_in("openunmix.filtering", wiener=_unavailable("openunmix"))
  try:
    import dora.log  # noqa: F401
  except ImportError:
    sys.modules["dora"] = _stand_in("dora")
    sys.modules["dora.log"] = _stand_in("dora.log", fatal=_unavailable("dora"), bold=str)
  try:
    import omegaconf  # noqa: F401
  except ImportError:
    sys.modules["omegaconf"] = _stand_in("omegaconf", OmegaConf=types.SimpleNamespace(
        to_container=_unavailable("omegaconf"), create=_unavailable("omegaconf")))
  try:
    from demucs.apply import apply_model
    from demucs.htdemucs import HTDemucs
  except ImportError as e:
    raise ImportError(f"the separation stage needs demucs ({INSTALL}): {e}") from e
  return HTDemucs, apply_model


def load_htdemucs(path: str):
  """An HTDemucs (eval mode) from a demucs model file {klass, args, kwargs, state}; weights_only load."""
  import inspect
  import pickle
  from fractions import Fraction

  import torch

  HTDemucs, _ = import_demucs()
  try:
    with torch.serialization.safe_globals([HTDemucs, Fraction]):
      pkg = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
    raise ValueError(f"{path}: not a demucs HTDemucs model file readable with torch.load(weights_only=True) "
                     f"({str(e).splitlines()[0][:200]}); expected the htdemucs file 955717e8-8726e21a.th") from None
  if not isinstance(pkg, dict) or not {"klass", "kwargs", "state"} <= set(pkg):
    raise ValueError(f"{path}: a demucs model file holds klass/args/kwargs/state; found "
                     f"{sorted(pkg) if isinstance(pkg, dict) else type(pkg).__name__}")
  if pkg["klass"] is not HTDemucs:
    raise ValueError(f"{path}: holds a {getattr(pkg['klass'], '__name__', pkg['klass'])}, not an HTDemucs")
  state = pkg["state"]
  if state.get("__quantized"):
    raise ValueError(f"{path}: a diffq-quantised model; use the float htdemucs file (955717e8-8726e21a.th)")
  sig = inspect.signature(HTDemucs)
  kwargs = {k: v for k, v in pkg["kwargs"].items() if k in sig.parameters}   # as demucs.states.load_model
  model = HTDemucs(*pkg.get("args", ()), **kwargs)
  check_state(model.state_dict(), state, path)
  model.load_state_dict({k: v.float() for k, v in state.items()})
  return model.eval()


def check_state(expected, found, where) -> None:
  """One-line errors naming missing / unexpected / mis-shaped keys of a state dict."""
  exp = {k: tuple(v.shape) for k, v in expected.items()}
  got = {k: tuple(v.shape) for k, v in found.items()}
  missing, extra = sorted(set(exp) - set(got)), sorted(set(got) - set(exp))
  bad = sorted(k for k in set(exp) & set(got) if exp[k] != got[k])
  if missing or extra or bad:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
      parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if bad:
      parts.append(f"{len(bad)} mis-shaped (e.g. {bad[0]}: {got[bad[0]]} vs {exp[bad[0]]})")
    raise ValueError(f"{where}: state does not match the HTDemucs its kwargs build: {'; '.join(parts)}")


@dataclasses.dataclass(frozen=True)
class SeparationConfig:
  NOT_IN_HASH = ("device",)   # a rerun may change these and resume
  model: str = ""                  # demucs htdemucs model file (955717e8-8726e21a.th)
  stem: str = "vocals"             # the stem removed
  overlap: float = 0.25            # demucs' default split overlap
  max_vocals_ratio: float | None = None   # reject above this energy share (None: never; OUR CHOICE)
  device: str = "cpu"              # torch device: cpu, cuda, cuda:1


def energy_ratio(part: np.ndarray, whole: np.ndarray) -> float:
  e = float(np.sum(np.square(whole, dtype=np.float64)))
  return float(np.sum(np.square(part, dtype=np.float64)) / e) if e > 0 else 0.0


def rms_dbfs(x: np.ndarray) -> float:
  return float(10 * np.log10(max(float(np.mean(np.square(x, dtype=np.float64))), 1e-20)))


class SeparationStage(ModelStage):
  name = "separation"

  def load(self):
    import torch

    if not self.cfg.model:
      raise ValueError("the separation stage needs --separation_model (the htdemucs file "
                       "955717e8-8726e21a.th)")
    self.model = self.separator = load_htdemucs(self.cfg.model).to(torch.device(self.cfg.device))
    if self.cfg.stem not in self.model.sources:
      raise ValueError(f"--separation_stem {self.cfg.stem!r}: the model's stems are {self.model.sources}")

  def identity(self):
    return {"model": path_fingerprint(self.cfg.model)}

  def separate(self, audio_CxN: np.ndarray, rate: int) -> np.ndarray:
    """The removed stem, (C, N) float32 at `rate`, the clip's channels."""
    import torch

    _, apply_model = import_demucs()
    m = self.separator
    x = resample_np(audio_CxN, rate, m.samplerate) if rate != m.samplerate else audio_CxN
    c = x.shape[0]
    # the model's channel count: a mono clip is duplicated, a stereo clip for a mono model averaged
    x = np.repeat(x, m.audio_channels, axis=0) if c == 1 else x.mean(0, keepdims=True) if m.audio_channels == 1 else x
    wav = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std()   # torch's (unbiased) std, as demucs.separate
    if float(std) == 0.0:   # digital silence: nothing to separate
      return np.zeros_like(audio_CxN)
    wav = ((wav - mean) / std)[None]
    with torch.no_grad():
      stems = apply_model(m, wav, shifts=0, split=True, overlap=self.cfg.overlap, progress=False,
                          device=self.cfg.device)[0]
    stem = (stems[m.sources.index(self.cfg.stem)].cpu() * std + mean).numpy()   # as demucs.separate
    stem = stem.mean(0, keepdims=True) if c == 1 else stem
    stem = resample_np(stem, m.samplerate, rate) if rate != m.samplerate else stem
    return stem[:, :audio_CxN.shape[1]].astype(np.float32)

  def process(self, clip: Clip) -> Clip | Rejection:
    voc = self.separate(clip.audio, clip.audio_rate)
    ratio, level = energy_ratio(voc, clip.audio), rms_dbfs(voc)
    if self.cfg.max_vocals_ratio is not None and ratio > self.cfg.max_vocals_ratio:
      return Rejection(self.name, "vocals_ratio", ratio, clip.source, clip.file_key, clip.clip_id,
                       f"the {self.cfg.stem} stem holds {100 * ratio:.1f}% of the energy "
                       f"(max {100 * self.cfg.max_vocals_ratio:g}%)")
    out = dataclasses.replace(clip, audio=(clip.audio - voc).astype(np.float32))
    return out.with_scores(vocals_ratio=ratio, vocals_dbfs=level)
