"""Table 3 ablation: which vision encoders feed the model.

  python tools/train.py --config experiments/ablation_vision.py:sync --workdir DIR \
      --config.train.pretrained_decoder=/ckpt/qwen7b_jax --config.data.train_records='/data/records/train-*'
  python tools/train.py --config experiments/ablation_vision.py:clip ...   # text-aligned only (same flags)
  python tools/train.py --config experiments/ablation_vision.py:both ...   # both (= paper_7b)
  python tools/generate.py --config experiments/ablation_vision.py:sync --checkpoint DIR --codec_checkpoint DIR \
      --tokenizer DIR --sync_ckpt DIR --csv clips.csv --out_dir out_sync     (clip: --eva_ckpt instead)
"""
import pathlib

from dreamfoley_jax.configs import load_config

VARIANTS = {"sync": (True, False), "clip": (False, True), "both": (True, True)}


def apply(c, variant="both"):
  """The ablation on any base config (tests apply it to experiments/synthetic.py)."""
  if variant not in VARIANTS:
    raise ValueError(f"ablation_vision: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
  c.model.use_sync, c.model.use_clip = VARIANTS[variant]
  return c


def get_config(variant="both"):
  return apply(load_config(str(pathlib.Path(__file__).with_name("paper_7b.py"))), variant)
