"""DreamFoley's Hugging Face config: a Qwen2Config (the decoder, so the decoder alone also loads as a plain
Qwen2Model) plus the fields of the audio codebooks, the video projector, the heads and CFG.

Written into every directory dreamfoley_jax exports (tools/convert_checkpoint.py --family dreamfoley
--direction to_hf); the field names and defaults are those of dreamfoley_jax.models.foley.FoleyConfig.
"""
from transformers import Qwen2Config

PAPER_LOSS_WEIGHTS = [0.240, 0.192, 0.154, 0.123, 0.099, 0.079, 0.063, 0.050]   # paper section 5.1
PAPER_SAMPLING = {"temperature": 1.0, "top_k": 25, "top_p": 0.9, "cfg_scale": 3.0}  # paper section 5.1
UPSAMPLE_MODES = ("nearest", "nearest_exact", "linear")
POSITION_SCHEMES = ("sequential", "time_aligned")


class DreamFoleyConfig(Qwen2Config):
  model_type = "dreamfoley"

  def __init__(self, num_codebooks=8, codebook_size=1024, loss_weights=None, use_sync=True, use_clip=True,
               sync_dim=768, clip_dim=1024, sync_rate=25.0, clip_rate=4.0, upsample="nearest", projector_depth=2,
               head_hidden=0, head_depth=2, null_text_len=8, null_video_len=8, learnable_pad=True,
               cfg_drop_text=0.1, cfg_drop_video=0.1, position_scheme="sequential", sampling=None, **kwargs):
    self.num_codebooks = int(num_codebooks)
    self.codebook_size = int(codebook_size)
    self.loss_weights = [float(w) for w in (PAPER_LOSS_WEIGHTS if loss_weights is None else loss_weights)]
    self.use_sync, self.use_clip = bool(use_sync), bool(use_clip)
    self.sync_dim, self.clip_dim = int(sync_dim), int(clip_dim)
    self.sync_rate, self.clip_rate = float(sync_rate), float(clip_rate)
    self.upsample = upsample
    self.projector_depth, self.head_hidden, self.head_depth = int(projector_depth), int(head_hidden), int(head_depth)
    self.null_text_len, self.null_video_len = int(null_text_len), int(null_video_len)
    self.learnable_pad = bool(learnable_pad)
    self.cfg_drop_text, self.cfg_drop_video = float(cfg_drop_text), float(cfg_drop_video)
    self.position_scheme = position_scheme
    self.sampling = {**PAPER_SAMPLING, **(sampling or {})}
    problems = []
    if len(self.loss_weights) < self.num_codebooks:
      problems.append(f"loss_weights has {len(self.loss_weights)} entries, need num_codebooks={self.num_codebooks}")
    if upsample not in UPSAMPLE_MODES:
      problems.append(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
    if position_scheme not in POSITION_SCHEMES:
      problems.append(f"position_scheme must be one of {POSITION_SCHEMES}, got {position_scheme!r}")
    if self.head_depth not in (1, 2):
      problems.append(f"head_depth must be 1 or 2, got {self.head_depth}")
    if self.projector_depth < 1:
      problems.append(f"projector_depth must be >= 1, got {self.projector_depth}")
    if not (self.use_sync or self.use_clip):
      problems.append("at least one of use_sync / use_clip must be true")
    if problems:
      raise ValueError("DreamFoleyConfig: " + "; ".join(problems))
    super().__init__(**kwargs)

  @property
  def vocab_per_codebook(self) -> int:
    return self.codebook_size + 2          # codes, then BOS, then EOS

  @property
  def bos_id(self) -> int:
    return self.codebook_size

  @property
  def eos_id(self) -> int:
    return self.codebook_size + 1

  @property
  def video_dim(self) -> int:
    return (self.sync_dim if self.use_sync else 0) + (self.clip_dim if self.use_clip else 0)
