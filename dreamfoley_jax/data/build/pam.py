"""PAM audio-quality score (paper 4.2): MS-CLAP 2023 prompted with PAM's antonym pair (eval/embedders/msclap.py).

score = mean over 7 s windows (PAM's AudioDataset: whole windows, then the last 7 s) of
softmax(exp(logit_scale) * cos(audio, [clear prompt, noisy prompt]))[clear]; a clip is rejected when the
score is below `min_score`. The paper's 0.3 is a threshold for THIS model (MS-CLAP 2023 weights and PAM's
two prompts): another CLAP, other prompts or other windows shift the score and need their own threshold.

Weights by path: `CLAP_weights_2023.pth` (microsoft/msclap; read with torch.load(weights_only=True)) or a
safetensors file of its state dict, and the GPT-2 tokenizer files (tokenizer.json, or vocab.json +
merges.txt) of the 'gpt2' model msclap's text tower uses. Runs the Flax port under jit (TPU/GPU/CPU).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint


@dataclasses.dataclass(frozen=True)
class PamConfig:
  model: str = ""          # CLAP_weights_2023.pth (or a safetensors file of its state dict)
  tokenizer: str = ""      # GPT-2 tokenizer: tokenizer.json, or a folder with it / vocab.json + merges.txt
  min_score: float = 0.3   # paper's threshold, for MS-CLAP 2023 + PAM's prompts only
  geometry: str = "2023"   # "2023" (the published model); "tiny": the test fixture's geometry


def model_config(geometry: str):
  from dreamfoley_jax.eval.embedders import msclap

  if geometry not in ("2023", "tiny"):
    raise ValueError(f"--pam_geometry {geometry!r}: expected 2023 (or tiny, for tests)")
  return msclap.MsClapConfig() if geometry == "2023" else msclap.MsClapConfig.tiny()


class PamStage(ModelStage):
  name = "pam"

  def load(self):
    import jax
    import jax.numpy as jnp

    from dreamfoley_jax.eval.embedders import msclap

    c = self.cfg
    if not c.model or not c.tokenizer:
      raise ValueError("the pam stage needs --pam_model (CLAP_weights_2023.pth) and --pam_tokenizer (GPT-2's "
                       "tokenizer.json or vocab.json + merges.txt)")
    mc = model_config(c.geometry)
    variables = jax.tree.map(jnp.asarray, msclap.convert_msclap(msclap.read_checkpoint(c.model), mc))
    ids, mask = msclap.Gpt2Prompts(c.tokenizer, length=mc.text_len)(list(msclap.PROMPTS))
    self.pam_cfg, self.pam_variables = mc, variables
    self.pam_prompts = (jnp.asarray(ids), jnp.asarray(mask))
    self.pam_fn = msclap.jitted_pam(mc)

  def identity(self):
    return {"model": path_fingerprint(self.cfg.model), "tokenizer": path_fingerprint(self.cfg.tokenizer)}

  def window_scores(self, clip: Clip) -> np.ndarray:
    from dreamfoley_jax.eval.embedders import msclap

    if not self._loaded:
      self.process_batch([])   # loads once
    x = clip.mono()
    if clip.audio_rate != self.pam_cfg.sample_rate:
      x = resample_np(x, clip.audio_rate, self.pam_cfg.sample_rate)
    wins = msclap.pam_windows(x, self.pam_cfg.window_samples)
    return np.asarray(self.pam_fn(self.pam_variables, wins, *self.pam_prompts)[0], np.float64)

  def process(self, clip: Clip) -> Clip | Rejection:
    score = float(np.mean(self.window_scores(clip)))
    if score < self.cfg.min_score:
      return Rejection(self.name, "pam", score, clip.source, clip.file_key, clip.clip_id,
                       f"PAM {score:.3f} < {self.cfg.min_score:g} (MS-CLAP 2023, PAM's prompts)")
    return clip.with_scores(pam=score)
