"""Audio-video alignment (paper 4.2): ImageBind-huge's audio and vision towers (the project's Flax port,
eval/embedders/imagebind.py) on the standardised clip; score = cos(video embedding, audio embedding),
the IB-score of eval/harness.py per clip. A clip is rejected when the score is below `min_score`.

Inputs as the IB-score: vision at 0.5 fps, short side 224, three crops, consecutive frame pairs; audio:
the whole clip at 16 kHz, three 2 s fbank clips. A clip under 4 s has one 0.5 fps frame: it is paired
with itself (ImageBind's own PadIm2Video 'repeat' for a still). Weights by path: `imagebind_huge.pth`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint


@dataclasses.dataclass(frozen=True)
class AlignmentConfig:
  model: str = ""           # imagebind_huge.pth (or a folder holding it)
  min_score: float = 0.1    # OUR CHOICE (the paper filters on ImageBind without a number): see the report's histogram
  geometry: str = "huge"    # "huge" (the published model); "tiny": the test fixture's geometry


class AlignmentStage(ModelStage):
  name = "imagebind"

  def load(self):
    from dreamfoley_jax.eval.embedders import imagebind as ib

    if not self.cfg.model:
      raise ValueError("the imagebind stage needs --imagebind_model (imagebind_huge.pth)")
    if self.cfg.geometry not in ("huge", "tiny"):
      raise ValueError(f"--imagebind_geometry {self.cfg.geometry!r}: expected huge (or tiny, for tests)")
    conf = ib.ImageBindConfig.huge() if self.cfg.geometry == "huge" else ib.ImageBindConfig.tiny()
    self.ib = ib.ImageBindEmbedder(self.cfg.model, config=conf)

  def identity(self):
    return {"model": path_fingerprint(self.cfg.model)}

  def embeddings(self, clip: Clip) -> tuple[np.ndarray, np.ndarray]:
    from dreamfoley_jax.data.build import standardise
    from dreamfoley_jax.eval import media

    with standardise.MediaFile(clip.video_mp4) as path:
      crops = media.imagebind_video_input(path, clip.duration_sec)   # (3, T, 3, 224, 224)
    if crops.shape[1] == 1:
      crops = np.concatenate([crops, crops], axis=1)
    v = self.ib.video_features({"ib_crops": crops}, clip.clip_id)["ib_video"]
    a = self.ib.audio_features(clip.audio, clip.audio_rate, clip.duration_sec, clip.clip_id)["ib_audio"]
    return v, a

  def process(self, clip: Clip) -> Clip | Rejection:
    from dreamfoley_jax.eval import metrics

    v, a = self.embeddings(clip)
    score = metrics.mean_cosine(v[None], a[None])
    if score < self.cfg.min_score:
      return Rejection(self.name, "imagebind", score, clip.source, clip.file_key, clip.clip_id,
                       f"ImageBind audio-video cosine {score:.3f} < {self.cfg.min_score:g}")
    return clip.with_scores(imagebind=score)
