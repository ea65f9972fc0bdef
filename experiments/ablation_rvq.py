"""Table 4 ablation: how many RVQ codebooks the model predicts (layers 1, 1-4, 1-8).

  python tools/train.py --config experiments/ablation_rvq.py:1 --workdir ...
  python tools/train.py --config experiments/ablation_rvq.py:4 --workdir ...
  python tools/train.py --config experiments/ablation_rvq.py:8 --workdir ...   # = paper_7b

The loss weights keep the paper's first-k entries (sec. 5.1); OUR CHOICE: not renormalised.
"""
import pathlib

from dreamfoley_jax.configs import load_config


def get_config(num_codebooks="8"):
  k = int(num_codebooks)
  if k not in (1, 4, 8):
    raise ValueError(f"ablation_rvq: codebooks must be 1, 4 or 8 (Table 4), got {k}")
  c = load_config(str(pathlib.Path(__file__).with_name("paper_7b.py")))
  c.model.num_codebooks = k
  c.model.loss_weights = c.model.loss_weights[:k]
  return c
