"""Table 5 ablation: the CFG scale at inference (1, 2, 3, 4); training is paper_7b's, unchanged.

  python tools/generate.py --config experiments/ablation_cfg.py:2 --checkpoint DIR --codec_checkpoint DIR \
      --tokenizer DIR --eva_ckpt DIR --sync_ckpt DIR --csv clips.csv --out_dir out_cfg2
  (the same as experiments/paper_7b.py with --cfg_scale 2)
"""
import pathlib

from dreamfoley_jax.configs import load_config

SCALES = (1.0, 2.0, 3.0, 4.0)   # Table 5


def apply(c, scale="3"):
  """The ablation on any base config (tests apply it to experiments/synthetic.py)."""
  s = float(scale)
  if s not in SCALES:
    raise ValueError(f"ablation_cfg: scale must be 1, 2, 3 or 4 (Table 5), got {scale}")
  c.sample.cfg_scale = s
  return c


def get_config(scale="3"):
  return apply(load_config(str(pathlib.Path(__file__).with_name("paper_7b.py"))), scale)
