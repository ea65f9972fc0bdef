"""DeSync fully in Flax: Synchformer video extractor (models/synchformer.py), audio extractor
(sync_audio.py) and offset classifier (sync_head.py), all read from synchformer_state_dict.pth.

Legend: S segments (0.64 s windows every 0.32 s), Tv/Ta tokens per segment (8/6), D width (768).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from dreamfoley_jax.convert import synchformer as video_convert
from dreamfoley_jax.convert.common import TensorSource
from dreamfoley_jax.eval import frontends, metrics
from dreamfoley_jax.eval.embedders import sync_audio, sync_head
from dreamfoley_jax.eval.embedders.base import Embedder, checkpoint_source, find_checkpoint, random_state_dict
from dreamfoley_jax.models import synchformer as video_model
from dreamfoley_jax.video import preprocess as vpre

CHECKPOINT_FILES = ("synchformer_state_dict.pth",)


@dataclasses.dataclass(frozen=True)
class DeSyncConfig:
  video: video_model.SynchformerConfig = video_model.SynchformerConfig()
  audio: sync_audio.SyncAudioConfig = sync_audio.SyncAudioConfig()
  head: sync_head.SyncHeadConfig = sync_head.SyncHeadConfig()
  window_batch: int = 8  # video windows per jitted call (memory bound: 16 x 224^2 frames each)

  @classmethod
  def tiny(cls):
    """Width 64 everywhere, real input sizes (224^2 x 16 frames, 66 x 128 spectrograms), 198 head tokens."""
    return cls(video=video_model.PRESETS["tiny"],
               audio=sync_audio.SyncAudioConfig(width=64, num_layers=1, num_heads=4, mlp_dim=128),
               head=sync_head.SyncHeadConfig(width=64, num_layers=1, num_heads=4), window_batch=4)


def torch_shapes(c: DeSyncConfig) -> dict[str, tuple[int, ...]]:
  s = {f"vfeat_extractor.{k}": v for k, v in video_convert.torch_shapes(c.video, with_2d_patch_embed=False).items()}
  s.update(sync_audio.torch_shapes(c.audio))
  s.update(sync_head.torch_shapes(c.head))
  return s


class SynchformerEmbedder(Embedder):
  """DeSync from Flax ports only (no PyTorch packages); features (S, T, D) per clip, logits (2, 21)."""

  def __init__(self, path: str | os.PathLike | None = None, *, config: DeSyncConfig = DeSyncConfig(),
               seed: int | None = None, device: str | None = None):
    del device  # JAX places arrays itself
    super().__init__(name="synchformer", native=True, needs_video=True)
    self.config = c = config
    if seed is not None:  # random weights: tests and smoke runs only
      sd = random_state_dict(torch_shapes(c), seed)
      src = TensorSource.from_dict(sd)
      vsrc = TensorSource.from_dict(sd, strip_prefix="vfeat_extractor.")
      self.source = f"<random seed {seed}>"
    else:
      ckpt = find_checkpoint("synchformer", path, CHECKPOINT_FILES)
      src = TensorSource(ckpt)
      vsrc = TensorSource(ckpt, strip_prefix="vfeat_extractor.")
      self.source = checkpoint_source(ckpt)
    self.video_params = jax.tree.map(np.asarray, video_convert.convert_state_dict(vsrc, c.video))
    self.audio_vars = sync_audio.convert_sync_audio(src, c.audio)
    self.head_vars = sync_head.convert_sync_head(src, c.head)
    vm, am, hm = video_model.Synchformer(c.video), sync_audio.SyncAudioEncoder(c.audio), sync_head.SyncHead(c.head)
    self._video = jax.jit(lambda p, w: vm.apply({"params": p}, w)[0])
    self._audio = jax.jit(lambda v, x: am.apply(v, x)[0])
    self._head = jax.jit(lambda v, a, b: hm.apply(v, a, b)[0])

  def fingerprint(self) -> str:
    return f"synchformer-flax|{self.source}|{self.config}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    segs = frontends.check_sync_audio(wav_CxT, sr, duration_s, name).astype(np.float32)  # (S, 66, 128)
    return {"sync_audio": np.asarray(self._audio(self.audio_vars, segs[None]))[0]}

  def video_features(self, video, name):
    v = np.asarray(video["sync_frames"], np.float32).transpose(0, 2, 3, 1)  # (T, H, W, C) in [-1, 1]
    idx = vpre.sync_window_indices(len(v), metrics.SYNC_VIDEO_SEGMENT, metrics.SYNC_VIDEO_STEP)
    wins = v[idx]  # (S, 16, H, W, C)
    n, out = self.config.window_batch, []
    for i in range(0, len(wins), n):
      chunk = wins[i:i + n]
      pad = n - len(chunk)
      if pad:  # one compiled shape for every call
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(self._video(self.video_params, chunk[:, None]))[: n - pad, 0])
    return {"sync_video": np.concatenate(out)}  # (S, Tv, D)

  def sync_logits(self, video_SxTxD, audio_SxTxD) -> np.ndarray:
    return np.stack([np.asarray(self._head(self.head_vars, v[None].astype(np.float32), a[None].astype(np.float32)))[0]
                     for v, a in metrics.desync_window_pairs(video_SxTxD, audio_SxTxD)])
