"""The embedder interface, checkpoint lookup and the errors every embedder raises the same way."""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np


class MissingWeightsError(FileNotFoundError):
  """A metric model's checkpoint is not where the user said it is."""


class MissingPackageError(ImportError):
  """A delegated embedder needs its PyTorch reference package."""


def find_checkpoint(name: str, path: str | os.PathLike | None, expected: Sequence[str]) -> pathlib.Path:
  """`path` itself if it is a file, else the first of `expected` inside the directory `path`.

  Never downloads: a miss raises MissingWeightsError listing every file name that would be accepted.
  """
  want = ", ".join(expected)
  if path is None or str(path) == "":
    raise MissingWeightsError(f"{name}: no checkpoint path given; pass the file ({want}) or its directory "
                              f"(--weights_dir / --{name}_weights)")
  p = pathlib.Path(path).expanduser()
  if p.is_file():
    return p
  if p.is_dir():
    for f in expected:
      if (p / f).is_file():
        return p / f
    raise MissingWeightsError(f"{name}: none of the expected files [{want}] is in {p}")
  raise MissingWeightsError(f"{name}: {p} does not exist (expected a file such as {want}); "
                            f"no weights are ever downloaded")


def checkpoint_source(ckpt: pathlib.Path) -> str:
  """path:size:mtime of a checkpoint: part of an embedder's fingerprint (changes when the file does)."""
  st = ckpt.stat()
  return f"{ckpt}:{st.st_size}:{int(st.st_mtime)}"


def resolve_variables(name: str, path, files: Sequence[str], *, variables=None, seed: int | None = None,
                      random_fn=None, checkpoint_fn=None) -> tuple[Any, str, pathlib.Path | None]:
  """(variables, source, checkpoint path or None) of a native embedder, from the first that applies:
  the given `variables`; `random_fn(seed)` (random weights: tests and smoke runs only); or
  `checkpoint_fn(path)` on the checkpoint `find_checkpoint(name, path, files)` finds."""
  if variables is not None:
    return variables, "<given variables>", None
  if seed is not None:
    return random_fn(seed), f"<random seed {seed}>", None
  ckpt = find_checkpoint(name, path, files)
  return checkpoint_fn(ckpt), checkpoint_source(ckpt), ckpt


def require(package: str, pip_name: str, embedder: str):
  """Imports `package` or raises MissingPackageError saying what to install."""
  import importlib

  try:
    return importlib.import_module(package)
  except ImportError as e:
    raise MissingPackageError(
        f"{embedder}: this embedder runs the PyTorch reference model and needs `{package}` "
        f"(`pip install {pip_name}`, plus `pip install torch==2.13.0`); or leave '{embedder}' out of "
        f"--metrics") from e


@dataclasses.dataclass
class Embedder:
  """Per-clip feature extractor for one metric family.

  `audio_features(wav_CxT, sr, duration_s, name)` returns {feature_name: array} for one generated
  (or ground-truth) clip; `video_features(frames, name)` and `text_features(caption)` likewise where the
  family has those towers. `native` says whether it runs as a Flax port (True) or delegates to PyTorch.
  """
  name: str = ""
  native: bool = False
  needs_video: bool = False
  needs_text: bool = False

  def audio_features(self, wav_CxT: np.ndarray, sr: int, duration_s: float | None, name: str
                     ) -> dict[str, np.ndarray]:
    return {}

  def video_features(self, video: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
    return {}

  def text_features(self, caption: str) -> dict[str, np.ndarray]:
    return {}

  def fingerprint(self) -> str:
    """Changes whenever the features would (checkpoint path/size/mtime, config): keys the caches."""
    return self.name


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  """Seeded random tensors in the reference (torch) layout; fed through the converter for tests.

  Cheaper than a jitted Flax init on a loaded CPU, and it exercises the converter. Variances of
  batch-norm running stats are kept positive; weights are scaled by 1/sqrt(fan_in).
  """
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in sorted(shapes.items()):
    if k.endswith("running_var"):
      out[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
    else:
      fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
      out[k] = (rng.normal(size=s) / np.sqrt(fan_in)).astype(np.float32)
  return out
