"""Table 3 ablation: which vision encoders feed the model.

  python tools/train.py --config experiments/ablation_vision.py:sync --workdir ...   # audio-aligned only
  python tools/train.py --config experiments/ablation_vision.py:clip --workdir ...   # text-aligned only
  python tools/train.py --config experiments/ablation_vision.py:both --workdir ...   # both (= paper_7b)
"""
import pathlib

from dreamfoley_jax.configs import load_config

VARIANTS = {"sync": (True, False), "clip": (False, True), "both": (True, True)}


def get_config(variant="both"):
  if variant not in VARIANTS:
    raise ValueError(f"ablation_vision: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
  c = load_config(str(pathlib.Path(__file__).with_name("paper_7b.py")))
  c.model.use_sync, c.model.use_clip = VARIANTS[variant]
  return c
