"""AudioSet labels for balancing (paper 4.2): AST (transformers' ASTForAudioClassification, the reference
run as it is, weights by local path, e.g. MIT/ast-finetuned-audioset-10-10-0.4593 saved with
save_pretrained) on the clip at 16 kHz; its feature extractor pads / cuts to 1024 frames (10.24 s).

AudioSet is multi-label: probabilities are sigmoid(logits). The record gets `ast_class` (int16: the top
class), `ast_label` (its name), `ast_top` (int16, the `top_k` best classes) and `score_ast_prob`; nothing is
rejected here: `data.balance_by='ast_class'` in the training pipeline (data/balance.py) uses the labels.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint

RATE = 16000


@dataclasses.dataclass(frozen=True)
class TagsConfig:
  NOT_IN_HASH = ("device",)   # a rerun may change these and resume
  model: str = ""          # a local AST directory (config.json, model.safetensors, preprocessor_config.json)
  top_k: int = 5
  device: str = "cpu"      # torch device


class TagsStage(ModelStage):
  name = "ast"

  def load(self):
    import torch
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    if not self.cfg.model:
      raise ValueError("the ast stage needs --ast_model (a local ASTForAudioClassification directory)")
    self.extractor = ASTFeatureExtractor.from_pretrained(self.cfg.model, local_files_only=True)
    self.tagger = ASTForAudioClassification.from_pretrained(self.cfg.model, local_files_only=True).eval()
    self.tagger.to(torch.device(self.cfg.device))
    self.labels = [self.tagger.config.id2label[i] for i in range(self.tagger.config.num_labels)]

  def identity(self):
    return {"model": path_fingerprint(self.cfg.model)}

  def probs(self, clips) -> np.ndarray:
    """(B, classes) sigmoid probabilities for a batch of clips."""
    import torch

    wavs = [resample_np(c.mono(), c.audio_rate, RATE) for c in clips]
    feats = self.extractor(wavs, sampling_rate=RATE, return_tensors="pt").input_values
    with torch.no_grad():
      logits = self.tagger(feats.to(self.tagger.device)).logits.float().cpu().numpy()
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

  def process_batch(self, clips):
    if not self._loaded:
      super().process_batch([])   # loads once
    p = self.probs(clips)
    out = []
    for c, pr in zip(clips, p):
      top = np.argsort(-pr, kind="stable")[:self.cfg.top_k]
      out.append(c.with_scores(ast_prob=float(pr[top[0]])).with_fields(
          ast_class=np.int16(top[0]), ast_label=self.labels[top[0]], ast_top=top.astype(np.int16)))
    return out

  def process(self, clip: Clip) -> Clip | Rejection:
    return self.process_batch([clip])[0]
