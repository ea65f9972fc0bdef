"""Shared helpers for the training tests: a tiny learnable record set and a tiny experiment config."""
import pathlib

import numpy as np

from dreamfoley_jax import configs
from dreamfoley_jax.data import writer

K, CB, DS, DC = 8, 64, 32, 16


def make_examples(n=32, seconds=3, seed=0, nan=False):
  """Clips whose codes follow from the caption id and the frame index (learnable), 25 Hz / 4 fps."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    c = int(rng.integers(0, 16))
    Ta = 25 * seconds
    t = np.arange(Ta)
    codes = np.stack([(c + t * (k + 1)) % CB for k in range(K)]).astype(np.int16)
    sync = rng.normal(size=(Ta, DS)).astype(np.float16)
    clip = rng.normal(size=(4 * seconds, DC)).astype(np.float16)
    if nan:
      sync[:] = np.nan
    yield {"clip_id": f"clip{i:03d}", "caption": f"class {c}", "text_ids": np.array([c + 1, 17, 3], np.int32),
           "sync_feats": sync, "clip_feats": clip, "audio_codes": codes, "duration": np.float32(seconds)}


def write_dataset(out_dir, n=32, nan=False, shards=2):
  paths = writer.write_records(make_examples(n, nan=nan), out_dir, num_shards=shards, overwrite=True)
  return str(pathlib.Path(out_dir) / "train-*.array_record"), paths


OVERRIDES = {
    "model.decoder.hidden_size": 32, "model.decoder.intermediate_size": 64, "model.decoder.num_attention_heads": 4,
    "model.decoder.num_key_value_heads": 2, "model.decoder.vocab_size": 64,
    "data.max_text_len": 4, "data.crop_min_s": 1.0, "data.crop_max_s": 2.0, "data.bucket_seconds": (1.5, 2.0),
    "data.num_workers": 0, "train.global_batch": 8, "train.log_every": 1, "train.ckpt_every": 4,
    "train.steps": 8, "optim.warmup_steps": 2,
}


def build(path, ov):
  c = configs.load_config(path)
  for k, v in ov.items():
    if k.startswith("model.decoder."):
      c.model.decoder[k.split(".")[-1]] = v      # Qwen2Config fields beyond the preset name
    else:
      configs.set_path(c, k, v)
  return c


def tiny_config(records, **extra):
  ov = dict(OVERRIDES, **{"data.train_records": records})
  ov.update(extra)
  return build("experiments/tiny.py", ov)


def config_file(path, records, **extra):
  """A python config file (for tools/train.py subprocesses) equal to tiny_config(records, **extra)."""
  ov = dict(OVERRIDES, **{"data.train_records": records})
  ov.update(extra)
  root = pathlib.Path(__file__).resolve().parents[1]
  pathlib.Path(path).write_text(
      f"import sys\nsys.path.insert(0, {str(root / 'tests')!r})\nimport train_helpers\n"
      f"def get_config():\n  return train_helpers.build({str(root / 'experiments/tiny.py')!r}, {ov!r})\n")
  return str(path)
