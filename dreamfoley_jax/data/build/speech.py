"""Speech filter (paper 4.1): Silero VAD speech ratio (Flax port, audio/vad.py) and a Whisper ASR hook.

speech ratio = the share of 32 ms chunks (512 samples at 16 kHz) whose Silero probability is >= `threshold`
(0.5, Silero's default); a clip is rejected when the ratio > `max_ratio`.
ASR (off by default; `--stages=+asr`): Whisper (transformers, weights by local path, greedy decoding) on
the clip's first 30 s at 16 kHz; the transcript is stored in the record and a clip is rejected when it
has more than `max_words` words.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint

RATE = 16000


def to_16k(clip: Clip) -> np.ndarray:
  return resample_np(clip.mono(), clip.audio_rate, RATE)


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
  weights: str = ""           # silero_vad_16k.safetensors; "" = the one inside the installed silero-vad
  threshold: float = 0.5      # Silero's default
  max_ratio: float = 0.3      # OUR CHOICE: the paper drops speech clips without stating a ratio


class SpeechStage(ModelStage):
  name = "speech"

  def load(self):
    from dreamfoley_jax.audio import vad

    self.detector = vad.SpeechDetector(weights_path=self.cfg.weights or None)

  def identity(self):
    from dreamfoley_jax.audio import vad

    return {"weights": path_fingerprint(self.cfg.weights or vad.default_weights_path())}

  def process(self, clip: Clip) -> Clip | Rejection:
    from dreamfoley_jax.audio import vad

    x = to_16k(clip)
    # a fixed chunk count per clip length: one compile for every full-length clip
    n = -(-int(round(clip.duration_sec * RATE)) // vad.CHUNK)
    p = self.detector.probs(x, num_chunks=max(n, 1))
    ratio = float(np.mean(p >= self.cfg.threshold)) if p.size else 0.0
    if ratio > self.cfg.max_ratio:
      return Rejection(self.name, "speech_ratio", ratio, clip.source, clip.file_key, clip.clip_id,
                       f"speech in {100 * ratio:.1f}% of 32 ms frames (Silero p >= {self.cfg.threshold:g}; "
                       f"max {100 * self.cfg.max_ratio:g}%)")
    return clip.with_scores(speech_ratio=ratio)


@dataclasses.dataclass(frozen=True)
class AsrConfig:
  model: str = ""             # a local Whisper directory (save_pretrained layout)
  max_words: int = 2          # OUR CHOICE
  language: str = ""          # e.g. "en"; "" = let Whisper detect it
  max_new_tokens: int = 64


class AsrStage(ModelStage):
  name = "asr"

  def load(self):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if not self.cfg.model:
      raise ValueError("the asr stage needs --asr_model (a local Whisper directory)")
    self.processor = WhisperProcessor.from_pretrained(self.cfg.model, local_files_only=True)
    self.model = WhisperForConditionalGeneration.from_pretrained(self.cfg.model, local_files_only=True).eval()

  def identity(self):
    return {"model": path_fingerprint(self.cfg.model)}

  def transcribe(self, audio_16k: np.ndarray) -> str:
    import torch

    feats = self.processor(audio_16k[:30 * RATE], sampling_rate=RATE, return_tensors="pt").input_features
    kw = {"language": self.cfg.language} if self.cfg.language else {}
    with torch.no_grad():
      ids = self.model.generate(feats, max_new_tokens=self.cfg.max_new_tokens, do_sample=False, **kw)
    return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

  def process(self, clip: Clip) -> Clip | Rejection:
    text = self.transcribe(to_16k(clip))
    words = len(text.split())
    if words > self.cfg.max_words:
      return Rejection(self.name, "asr_words", float(words), clip.source, clip.file_key, clip.clip_id,
                       f"Whisper heard {words} words (max {self.cfg.max_words}): {text[:80]!r}")
    return clip.with_scores(asr_words=words).with_fields(transcript=text)
