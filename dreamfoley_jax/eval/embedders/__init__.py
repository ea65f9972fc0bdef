"""Registry of metric embedders (all Flax ports) and what each feeds.

| name        | metric(s)                  | implementation                         | checkpoint file                              |
|-------------|----------------------------|----------------------------------------|----------------------------------------------|
| panns       | FD_PANNs, KL_PANNs, IS     | Flax port (panns.py) + converter       | Cnn14_16k_mAP=0.438.pth                      |
| vggish      | FD_VGG                     | Flax port (vggish.py) + converter      | vggish-10086976.pth                          |
| passt       | FD_PaSST, KL_PaSST         | Flax port (passt.py) + converter       | passt-s-f128-p16-s10-ap.476-swa.pt           |
| clap        | CLAP                       | Flax port (clap.py: HTSAT + RoBERTa) + converter; captions need roberta-base's tokenizer files | music_speech_audioset_epoch_15_esc_89.98.pt |
| imagebind   | IB-score                   | Flax port (imagebind.py: vision + audio towers) + converter | imagebind_huge.pth      |
| synchformer | DeSync                     | Flax ports: video (models/synchformer), audio (sync_audio), head (sync_head) | synchformer_state_dict.pth |

The PyTorch cross-checks `clap_torch`, `imagebind_torch`, `synchformer_torch` and `passt_torch` (the reference
models themselves) live outside the package, in tests/torch_embedders.py; its `register()` adds them here
(tools/evaluate.py does when one is asked for). They produce the same feature names as their Flax
counterparts and score the same metrics.
"""
from __future__ import annotations

from typing import Callable

from dreamfoley_jax.eval.embedders.base import (Embedder, MissingPackageError, MissingWeightsError,
                                                find_checkpoint)
from dreamfoley_jax.eval.embedders.imagebind import ImageBindEmbedder
from dreamfoley_jax.eval.embedders.clap import ClapEmbedder
from dreamfoley_jax.eval.embedders.panns import PannsEmbedder
from dreamfoley_jax.eval.embedders.passt import PasstEmbedder
from dreamfoley_jax.eval.embedders.synchformer import CHECKPOINT_FILES as SYNCHFORMER_FILES
from dreamfoley_jax.eval.embedders.synchformer import SynchformerEmbedder
from dreamfoley_jax.eval.embedders.vggish import VGGishEmbedder
from dreamfoley_jax.eval.frontends import AudioTooShortError

REGISTRY: dict[str, Callable[..., Embedder]] = {
    "panns": PannsEmbedder,
    "vggish": VGGishEmbedder,
    "passt": PasstEmbedder,
    "clap": ClapEmbedder,
    "imagebind": ImageBindEmbedder,
    "synchformer": SynchformerEmbedder,
}
NATIVE_FLAX = ("panns", "vggish", "passt", "clap", "imagebind", "synchformer")
EXPECTED_FILES = {
    "panns": __import__("dreamfoley_jax.eval.embedders.panns", fromlist=["x"]).CHECKPOINT_FILES,
    "vggish": __import__("dreamfoley_jax.eval.embedders.vggish", fromlist=["x"]).CHECKPOINT_FILES,
    "passt": PasstEmbedder.FILES,
    "clap": ClapEmbedder.FILES,
    "imagebind": ImageBindEmbedder.FILES,
    "synchformer": SYNCHFORMER_FILES,
}


def metric_key(name: str) -> str:
  """The embedder slot a registry name fills: 'passt_torch' scores what 'passt' does."""
  return name[:-len("_torch")] if name.endswith("_torch") else name


def register(name: str, factory: Callable[..., Embedder], files: tuple[str, ...]) -> None:
  """Adds an embedder defined outside the package (the PyTorch cross-checks, tests/torch_embedders.py)."""
  REGISTRY[name] = factory
  EXPECTED_FILES[name] = tuple(files)


def build(name: str, path=None, **kwargs) -> Embedder:
  """The embedder `name` loading its checkpoint from `path` (a file, or a directory holding it)."""
  if name not in REGISTRY:
    raise KeyError(f"unknown embedder {name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[name](path, **kwargs)


__all__ = ["Embedder", "MissingPackageError", "MissingWeightsError", "AudioTooShortError", "REGISTRY",
           "NATIVE_FLAX", "EXPECTED_FILES", "build", "find_checkpoint", "metric_key", "register"]
