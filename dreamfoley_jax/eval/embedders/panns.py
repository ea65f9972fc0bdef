"""PANNs Cnn14 (16 kHz) in Flax, its converter from Cnn14_16k_mAP=0.438.pth, and the embedder.

Legend: B batch, T log-mel frames, M mel bins, C channels, E embedding width (2048), K classes (527).
The network follows av-benchmark's Cnn14 in eval mode (no SpecAugment, no dropout); the STFT and mel
front end is `frontends.panns_logmel` (the checkpoint's fixed STFT/mel buffers are checked, not used).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import flax.linen as nn
import jax
import numpy as np

from dreamfoley_jax.convert.common import ConversionError, TensorSource, check_keys, conv_to_jax, linear_to_jax
from dreamfoley_jax.eval import frontends
from dreamfoley_jax.eval.embedders.base import Embedder, random_state_dict, resolve_variables

CHECKPOINT_FILES = ("Cnn14_16k_mAP=0.438.pth", "Cnn14_16k_mAP%3D0.438.pth", "cnn14_16k.pth")


@dataclasses.dataclass(frozen=True)
class Cnn14Config:
  widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
  embed_dim: int = 2048
  num_classes: int = 527
  mel_bins: int = 64
  bn_eps: float = 1e-5

  @classmethod
  def tiny(cls):
    return cls(widths=(4, 8, 8, 8, 8, 16), embed_dim=16)


def _bn(name, eps):
  return nn.BatchNorm(use_running_average=True, epsilon=eps, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _conv(features, name):
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=name,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                          (None, None, "conv_in", "conv_out")))


def _dense(features, name, axes=("embed", "mlp")):
  return nn.Dense(features, name=name,
                  kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))


class ConvBlock(nn.Module):
  features: int
  eps: float
  pool: int

  @nn.compact
  def __call__(self, x_BxTxMxC):
    x = nn.relu(_bn("bn1", self.eps)(_conv(self.features, "conv1")(x_BxTxMxC)))
    x = nn.relu(_bn("bn2", self.eps)(_conv(self.features, "conv2")(x)))
    if self.pool > 1:
      x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool), padding="VALID")
    return x


class Cnn14(nn.Module):
  """Log-mel (B, T, M) -> ({'2048': (B, E), 'logits': (B, K)}, aux)."""
  config: Cnn14Config

  @nn.compact
  def __call__(self, logmel_BxTxM):
    c = self.config
    x = _bn("bn0", c.bn_eps)(logmel_BxTxM)[..., None]  # bn0 normalises per mel bin
    for i, w in enumerate(c.widths):
      x = ConvBlock(w, c.bn_eps, pool=2 if i < len(c.widths) - 1 else 1, name=f"conv_block{i + 1}")(x)
    x_BxTxC = x.mean(axis=2)
    x_BxC = x_BxTxC.max(axis=1) + x_BxTxC.mean(axis=1)
    emb_BxE = nn.relu(_dense(c.embed_dim, "fc1")(x_BxC))
    # 527 classes: not divisible by a tensor axis, so the logits width is replicated
    logits_BxK = _dense(c.num_classes, "fc_audioset", ("embed", "embed_out"))(emb_BxE)
    return {"2048": emb_BxE, "logits": logits_BxK}, {"pooled": x_BxC}


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------

_FIXED_BUFFERS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight",
                  "logmel_extractor.melW")


def _bn_keys(prefix, n):
  return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
          f"{prefix}.running_var": (n,)}


def torch_shapes(c: Cnn14Config) -> dict[str, tuple[int, ...]]:
  """Every learned key of the reference Cnn14 state dict with its shape."""
  s = dict(_bn_keys("bn0", c.mel_bins))
  cin = 1
  for i, w in enumerate(c.widths):
    p = f"conv_block{i + 1}"
    s[f"{p}.conv1.weight"] = (w, cin, 3, 3)
    s[f"{p}.conv2.weight"] = (w, w, 3, 3)
    s.update(_bn_keys(f"{p}.bn1", w))
    s.update(_bn_keys(f"{p}.bn2", w))
    cin = w
  s["fc1.weight"] = (c.embed_dim, cin)
  s["fc1.bias"] = (c.embed_dim,)
  s["fc_audioset.weight"] = (c.num_classes, c.embed_dim)
  s["fc_audioset.bias"] = (c.num_classes,)
  return s


def _ignored(k: str) -> bool:
  return k.endswith("num_batches_tracked") or k in _FIXED_BUFFERS


def convert_cnn14(src: TensorSource | Mapping, c: Cnn14Config = Cnn14Config()) -> dict:
  """Reference state dict -> flax variables {'params', 'batch_stats'}; checks keys and the mel matrix."""
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  check_keys(torch_shapes(c), src.shapes(), source=src.path, ignore=_ignored)
  if "logmel_extractor.melW" in src:
    ref = frontends.mel_filterbank(16000, 512, c.mel_bins, 50, 8000, htk=False, slaney_norm=True)
    got = src.get("logmel_extractor.melW")
    if got.shape != ref.shape or not np.allclose(got, ref, rtol=1e-4, atol=1e-7):
      raise ConversionError(f"{src.path}: logmel_extractor.melW is not the 16 kHz / 512 / 64 mel 50-8000 Hz "
                            f"filterbank; is this the 16 kHz Cnn14 checkpoint (Cnn14_16k_mAP=0.438.pth)?")
  params: dict = {}
  stats: dict = {}

  def bn(tname, path):
    node_p, node_s = params, stats
    for part in path:
      node_p = node_p.setdefault(part, {})
      node_s = node_s.setdefault(part, {})
    node_p["scale"] = src.get(f"{tname}.weight")
    node_p["bias"] = src.get(f"{tname}.bias")
    node_s["mean"] = src.get(f"{tname}.running_mean")
    node_s["var"] = src.get(f"{tname}.running_var")

  bn("bn0", ["bn0"])
  for i in range(len(c.widths)):
    p = f"conv_block{i + 1}"
    params.setdefault(p, {})
    for j in (1, 2):
      params[p][f"conv{j}"] = {"kernel": conv_to_jax(src.get(f"{p}.conv{j}.weight"))}
      bn(f"{p}.bn{j}", [p, f"bn{j}"])
  for name in ("fc1", "fc_audioset"):
    params[name] = {"kernel": linear_to_jax(src.get(f"{name}.weight")), "bias": src.get(f"{name}.bias")}
  tree = {"params": params, "batch_stats": stats}
  return jax.tree.map(lambda a: np.asarray(a, np.float32), tree)


# --------------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------------


class PannsEmbedder(Embedder):
  """FD_PANNs (2048-d), KL_PANNs and IS (527 logits) from 16 kHz audio truncated to the clip length."""

  def __init__(self, path: str | os.PathLike | None = None, *, config: Cnn14Config = Cnn14Config(),
               variables=None, seed: int | None = None):
    super().__init__(name="panns", native=True)
    self.config = config
    self.model = Cnn14(config)
    self.variables, self.source, _ = resolve_variables(
        "panns", path, CHECKPOINT_FILES, variables=variables, seed=seed,
        random_fn=lambda s: convert_cnn14(random_state_dict(torch_shapes(config), s), config),
        checkpoint_fn=lambda ckpt: convert_cnn14(TensorSource(ckpt), config))
    self._apply = jax.jit(lambda v, x: self.model.apply(v, x)[0])

  def fingerprint(self) -> str:
    return f"panns|{self.source}|{self.config}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    x = frontends.prepare_audio(wav_CxT, sr, 16000, duration_s)
    logmel = frontends.panns_logmel(x)[None].astype(np.float32)
    out = self._apply(self.variables, logmel)
    return {"panns_2048": np.asarray(out["2048"][0]), "panns_logits": np.asarray(out["logits"][0])}
