"""VGGish in Flax (av-benchmark variant: no final ReLU, no PCA), its converter and the embedder.

Legend: P patches (0.96 s each), T frames (96), M mel bins (64), C channels, D embedding width (128).
Param names follow torchvggish's nn.Sequential indices (`features.0` -> `features_0`), so the converter
table reads one-to-one with vggish-10086976.pth.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np

from dreamfoley_jax.convert.common import TensorSource, check_keys, conv_to_jax, linear_to_jax
from dreamfoley_jax.eval import frontends
from dreamfoley_jax.eval.embedders.base import Embedder, random_state_dict, resolve_variables

CHECKPOINT_FILES = ("vggish-10086976.pth", "vggish.pth")


@dataclasses.dataclass(frozen=True)
class VGGishConfig:
  widths: tuple[int, ...] = (64, 128, 256, 256, 512, 512)  # conv layers; pools after 1st, 2nd, 4th, 6th
  hidden: int = 4096
  embed_dim: int = 128

  @classmethod
  def tiny(cls):
    return cls(widths=(4, 4, 8, 8, 8, 8), hidden=16, embed_dim=8)


_POOL_AFTER = (0, 1, 3, 5)
# torch Sequential index of each conv (ReLU and MaxPool take the indices in between).
_CONV_INDEX = (0, 3, 6, 8, 11, 13)
_FC_INDEX = (0, 2, 4)


class VGGish(nn.Module):
  """Log-mel patches (P, 96, 64) -> ((P, D) embeddings, aux); `features` and `embed` are its two halves."""
  config: VGGishConfig

  def setup(self):
    c = self.config
    conv_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out"))
    self.convs = [nn.Conv(w, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{_CONV_INDEX[i]}", kernel_init=conv_init,
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))
                  for i, w in enumerate(c.widths)]
    self.fcs = [nn.Dense(n, name=f"embeddings_{idx}",
                         kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))
                for idx, n in zip(_FC_INDEX, (c.hidden, c.hidden, c.embed_dim))]

  def features(self, x_PxTxM):
    x = x_PxTxM[..., None]
    for i, conv in enumerate(self.convs):
      x = nn.relu(conv(x))
      if i in _POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return x.reshape(x.shape[0], -1)  # (P, 6, 4, C) flattened H, W, C: torchvggish's transposes

  def embed(self, flat_PxF):
    h = flat_PxF
    for j, fc in enumerate(self.fcs):
      h = fc(h)
      if j < 2:  # the final ReLU is removed (av-benchmark, following audioldm_eval)
        h = nn.relu(h)
    return h

  def __call__(self, x_PxTxM):
    flat_PxF = self.features(x_PxTxM)
    return self.embed(flat_PxF), {"flat": flat_PxF}


def torch_shapes(c: VGGishConfig) -> dict[str, tuple[int, ...]]:
  s = {}
  cin = 1
  for idx, w in zip(_CONV_INDEX, c.widths):
    s[f"features.{idx}.weight"] = (w, cin, 3, 3)
    s[f"features.{idx}.bias"] = (w,)
    cin = w
  fin = cin * 6 * 4
  for idx, n in zip(_FC_INDEX, (c.hidden, c.hidden, c.embed_dim)):
    s[f"embeddings.{idx}.weight"] = (n, fin)
    s[f"embeddings.{idx}.bias"] = (n,)
    fin = n
  return s


def convert_vggish(src: TensorSource | Mapping, c: VGGishConfig = VGGishConfig()) -> dict:
  """torchvggish state dict -> flax variables; PCA post-processing params (pproc.*) are ignored."""
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  check_keys(torch_shapes(c), src.shapes(), source=src.path, ignore=lambda k: k.startswith("pproc."))
  p = {}
  for idx in _CONV_INDEX[:len(c.widths)]:
    p[f"features_{idx}"] = {"kernel": conv_to_jax(src.get(f"features.{idx}.weight")),
                            "bias": src.get(f"features.{idx}.bias")}
  for idx in _FC_INDEX:
    p[f"embeddings_{idx}"] = {"kernel": linear_to_jax(src.get(f"embeddings.{idx}.weight")),
                              "bias": src.get(f"embeddings.{idx}.bias")}
  return {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), p)}


class VGGishEmbedder(Embedder):
  """FD_VGG: one 128-d embedding per 0.96 s patch of 16 kHz audio truncated to the clip length."""

  def __init__(self, path: str | os.PathLike | None = None, *, config: VGGishConfig = VGGishConfig(),
               variables=None, seed: int | None = None):
    super().__init__(name="vggish", native=True)
    self.config = config
    self.model = VGGish(config)
    self.variables, self.source, _ = resolve_variables(
        "vggish", path, CHECKPOINT_FILES, variables=variables, seed=seed,
        random_fn=lambda s: convert_vggish(random_state_dict(torch_shapes(config), s), config),
        checkpoint_fn=lambda ckpt: convert_vggish(TensorSource(ckpt), config))
    # Two jitted halves: one XLA:CPU program holding both the convolutions and the 12288x4096 matmul ran
    # ~7x slower than the halves run separately (4.5 s vs 0.7 s per 8 s clip, measured on this machine).
    feats = jax.jit(lambda v, x: self.model.apply(v, x, method=VGGish.features))
    embed = jax.jit(lambda v, f: self.model.apply(v, f, method=VGGish.embed))
    self._apply = lambda v, x: embed(v, feats(v, x))

  def fingerprint(self) -> str:
    return f"vggish|{self.source}|{self.config}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    x = frontends.prepare_audio(wav_CxT, sr, 16000, duration_s)
    ex = frontends.vggish_examples(x).astype(np.float32)
    if ex.shape[0] == 0:
      return {"vggish": np.zeros((0, self.config.embed_dim), np.float32)}
    return {"vggish": np.asarray(self._apply(self.variables, ex))}
