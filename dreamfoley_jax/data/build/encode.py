"""Features and codes (paper 3.2): EVA-CLIP (4 fps), Synchformer (25 fps, 16-frame windows, stride 8) and
the higgs tokenizer's 8 codebooks, with the project's Flax ports restored from converted checkpoints.

Frames come from the standardised clip by exact-timestamp sampling (video/preprocess.py, each stream
resized as its reference does); audio is the clip's mono mix resampled 44.1 -> 24 kHz (audio/resample.py).
Every clip goes through fixed-shape device calls of its own (a 10 s clip: 40 CLIP images, 32 Synchformer
windows giving 250 tokens, one per frame (video/preprocess.py's length rule), one 10 s tokenizer bucket; shorter tails are padded into the same shapes and masked), so a
clip's features never depend on which clips shared its batch: records are bit-identical run to run.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
  codec_ckpt: str = ""         # converted higgs-audio-v2 tokenizer (tools/convert_checkpoint.py --family higgs)
  eva_ckpt: str = ""           # converted EVA-CLIP-g/14 ("" = no clip_feats)
  sync_ckpt: str = ""          # converted Synchformer ("" = no sync_feats)
  text_tokenizer: str = ""     # Qwen2.5 tokenizer.json (or its folder) for text_ids ("" = none)
  store_frames: bool = False   # also frames_clip / frames_sync uint8 224x224 (frames-mode configs)
  mesh: str = "data=-1"        # over this worker's local devices ("data=1": its first device only)
  clip_seconds: float = 10.0   # the full clip length (sets the fixed device batch shapes)


def parse_mesh(spec: str) -> dict:
  from dreamfoley_jax import sharding

  out = {}
  for part in filter(None, spec.split(",")):
    k, _, v = part.partition("=")
    if k.strip() not in sharding.MESH_AXES:
      raise ValueError(f"mesh {spec!r}: unknown axis {k!r} (axes: {sharding.MESH_AXES})")
    out[k.strip()] = int(v)
  return out


class EncodeStage(ModelStage):
  name = "encode"

  def identity(self):
    c = self.cfg
    return {k: path_fingerprint(getattr(c, k)) for k in ("codec_ckpt", "eva_ckpt", "sync_ckpt", "text_tokenizer")}

  def load(self):
    import jax

    from dreamfoley_jax import sharding
    from dreamfoley_jax.audio.tokenizer import AudioTokenizer
    from dreamfoley_jax.convert import higgs as conv_higgs
    from dreamfoley_jax.data import extract
    from dreamfoley_jax.video import preprocess as vpre

    c = self.cfg
    if not c.codec_ckpt:
      raise ValueError("the encode stage needs --codec_ckpt (the converted higgs tokenizer): records need "
                       "audio_codes")
    spec = parse_mesh(c.mesh)
    devices = jax.local_devices()
    if -1 not in spec.values():   # e.g. "data=1": the first N local devices
      devices = devices[:math.prod(spec.values())]
    self.mesh = sharding.make_mesh(spec, devices=devices)
    frames = int(round(c.clip_seconds * vpre.SYNC_FPS))
    ecfg = extract.ExtractConfig(clip_batch=math.ceil(c.clip_seconds * vpre.CLIP_FPS),
                                 sync_batch=vpre.sync_cover_indices(frames).shape[0])
    self.clip_enc = self.sync_enc = None
    if c.eva_ckpt or c.sync_ckpt:
      if not (c.eva_ckpt and c.sync_ckpt):
        raise ValueError("give both --eva_ckpt and --sync_ckpt (or neither)")
      enc = extract.build_real_encoders(c.eva_ckpt, c.sync_ckpt, self.mesh, ecfg)
      self.clip_enc, self.sync_enc = enc.clip, enc.sync
    tcfg, params = conv_higgs.load_orbax(c.codec_ckpt)
    self.codec = AudioTokenizer(params, tcfg, buckets_s=(c.clip_seconds,), batch_size=1, pad_short=True)
    self.text_tok = extract._load_tokenizer(c.text_tokenizer) if c.text_tokenizer else None

  def process(self, clip: Clip) -> Clip | Rejection:
    from dreamfoley_jax.data.build import standardise
    from dreamfoley_jax.video import io as vio
    from dreamfoley_jax.video import preprocess as vpre

    fields = {}
    if self.clip_enc is not None or self.cfg.store_frames:
      try:
        with standardise.MediaFile(clip.video_mp4) as path:
          fr = vpre.load_video_frames(path, max_duration_sec=clip.duration_sec)
      except vio.VideoError as e:
        return Rejection(self.name, "too_few_frames", clip.duration_sec, clip.source, clip.file_key,
                         clip.clip_id, str(e).split(": ", 1)[-1])
      if self.clip_enc is not None:
        fields["clip_feats"] = np.asarray(self.clip_enc(fr.clip_u8)).astype(np.float16)
        # the project's length rule: one Synchformer token per 25 fps frame (vpre.sync_cover_indices)
        sync = np.asarray(self.sync_enc(vpre.sync_cover_windows(fr.sync_u8)))
        fields["sync_feats"] = sync.reshape(-1, sync.shape[-1])[:fr.sync_u8.shape[0]].astype(np.float16)
      if self.cfg.store_frames:
        fields["frames_clip"], fields["frames_sync"] = fr.clip_u8, fr.sync_u8
    x24 = resample_np(clip.mono(), clip.audio_rate, self.codec.cfg.sample_rate)
    fields["audio_codes"] = np.asarray(self.codec.encode([x24])[0]).astype(np.int16)
    if self.text_tok is not None:
      fields["text_ids"] = np.asarray(self.text_tok.encode(clip.caption).ids, np.int32)
    return clip.with_fields(**fields)
