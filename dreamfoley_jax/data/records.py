"""The training-example record: one clip per record, msgpack-serialised dict of numpy arrays.

Fields (all optional except clip_id; rates are fixed by the model: audio codes and sync features at
25 Hz, CLIP frames/features at 4 fps):
  clip_id        str
  caption        str                      the audio description
  text_ids       int32   (Lt,)            Qwen2.5 BPE ids of the caption
  sync_feats     float16 (Tv, Ds)         Synchformer tokens, 25 Hz (8 per 16-frame window, stride 8)
  clip_feats     float16 (Tc, Dc)         EVA-CLIP image embeddings, 4 fps
  frames_sync    uint8   (Tf, H, W, 3)    raw frames at 25 fps (when encoders run in the model)
  frames_clip    uint8   (Tc, H, W, 3)    raw frames at 4 fps
  audio_codes    int16   (K, Ta)          residual codebook ids, 25 Hz, frame-aligned (no delay)
  duration       float32 ()               seconds
  event_times    float32 (E,)             ground-truth event onsets in seconds (synthetic data)
Any other str value (e.g. `source`, `transcript` from tools/build_dataset.py) is stored as a string;
`score_*` float32 () fields carry the data pipeline's per-stage scores (docs/data.md).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import serialization

STR_FIELDS = ("clip_id", "caption")


def encode_example(example: Mapping[str, Any]) -> bytes:
  if "clip_id" not in example:
    raise ValueError("example needs a 'clip_id'")
  out = {}
  for k, v in example.items():
    if k in STR_FIELDS or isinstance(v, str):
      out[k] = str(v)
    else:
      out[k] = np.asarray(v)
  return serialization.msgpack_serialize(out)


def decode_example(data: bytes) -> dict[str, Any]:
  ex = serialization.msgpack_restore(data)
  return {k: (v if k in STR_FIELDS or isinstance(v, str) else np.asarray(v)) for k, v in ex.items()}
