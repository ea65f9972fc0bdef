"""Table 5 ablation: CFG scale at inference (1, 2, 3, 4); training is unchanged (paper_7b).

  python tools/generate.py --config experiments/ablation_cfg.py:2 --ckpt ... --input ...
"""
import pathlib

from dreamfoley_jax.configs import load_config


def get_config(scale="3"):
  s = float(scale)
  if s not in (1.0, 2.0, 3.0, 4.0):
    raise ValueError(f"ablation_cfg: scale must be 1, 2, 3 or 4 (Table 5), got {scale}")
  c = load_config(str(pathlib.Path(__file__).with_name("paper_7b.py")))
  c.sample.cfg_scale = s
  return c
