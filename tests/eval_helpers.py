"""Embedders whose features depend only on the clip's name (and role): metrics can be recomputed by hand, and
any host computes the same numbers (tests/test_eval_conventions.py, tests/test_hosts.py)."""
import pathlib
import zlib

import numpy as np

from dreamfoley_jax.eval.embedders import base


def vec(name, key, dim, scale=3.0):
  """A fixed pseudo-random vector per (clip name, feature)."""
  return np.random.default_rng(zlib.crc32(f"{name}|{key}".encode())).normal(size=dim) * scale


def role_name(path):
  p = pathlib.Path(path)
  return f"{p.parent.name}/{p.stem}"


class NameEmbedder(base.Embedder):
  """Audio features vec(<folder>/<stem>, key, dim); text features from the caption."""

  def __init__(self, name, keys, text_key=None, **kw):
    super().__init__(name=name, native=False, needs_text=text_key is not None, **kw)
    self.keys, self.text_key = keys, text_key

  def audio_features(self, wav, sr, dur, path):
    return {k: vec(role_name(path), k, d) for k, d in self.keys.items()}

  def text_features(self, caption):
    return {self.text_key: vec("caption/" + caption, self.text_key, 4)}

  def fingerprint(self):
    return f"name-{self.name}"


class NameSync(NameEmbedder):
  """DeSync stand-in: video features from the decoded frames' means, logits from both."""

  def __init__(self):
    super().__init__("synchformer", {"sync_audio": 3}, needs_video=True)

  def video_features(self, video, path):
    return {"sync_video": np.asarray(video["sync_frames"], np.float64).mean(axis=(1, 2, 3))[:, None]}

  def sync_logits(self, video, audio):
    a = float(np.sum(audio))
    return np.stack([np.sin(np.arange(21) * (1 + float(video.sum())) + a), np.cos(np.arange(21) * a)])
