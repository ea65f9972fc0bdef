"""Tiny DreamFoley for CPU tests: the real architectures at toy width.

  python tools/model_summary.py --config experiments/tiny.py
"""
import pathlib

from dreamfoley_jax.configs import load_config


def get_config():
  c = load_config(str(pathlib.Path(__file__).with_name("paper_7b.py")))
  c.model.decoder.preset = "tiny"
  c.model.decoder.dtype = "float32"
  c.model.decoder.scan_layers = False
  c.model.decoder.remat_policy = "none"
  c.model.codebook_size = 64
  c.model.sync_dim = 32
  c.model.clip_dim = 16
  c.model.null_text_len = 2
  c.model.null_video_len = 2
  c.data.max_text_len = 16
  c.train.global_batch = 8
  c.train.from_scratch = True            # toy width: no pretrained decoder
  c.train.steps = 100
  c.optim.warmup_steps = 10
  c.optim.lr = 3e-3
  c.mesh.data = -1
  c.mesh.fsdp = 1
  return c
