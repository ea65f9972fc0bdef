"""Table 4 ablation: how many RVQ codebooks the model predicts (levels 1, 1-4, 1-8).

  python tools/train.py --config experiments/ablation_rvq.py:1 --workdir DIR \
      --config.train.pretrained_decoder=/ckpt/qwen7b_jax --config.data.train_records='/data/records/train-*'
  python tools/train.py --config experiments/ablation_rvq.py:4 ...   (same flags)
  python tools/train.py --config experiments/ablation_rvq.py:8 ...   # = paper_7b
  python tools/generate.py --config experiments/ablation_rvq.py:1 --checkpoint DIR --codec_checkpoint DIR \
      --tokenizer DIR --eva_ckpt DIR --sync_ckpt DIR --csv clips.csv --out_dir out_k1

The records keep all 8 levels; the model trains on and samples the first k, and the audio is decoded from
those k levels alone (an RVQ decodes any prefix of its levels). The loss weights keep the paper's first k
entries (sec. 5.1); OUR CHOICE: not renormalised.
"""
import pathlib

from dreamfoley_jax.configs import load_config

LEVELS = (1, 4, 8)   # Table 4


def apply(c, num_codebooks="8"):
  """The ablation on any base config (tests apply it to experiments/synthetic.py)."""
  k = int(num_codebooks)
  if k not in LEVELS:
    raise ValueError(f"ablation_rvq: codebooks must be 1, 4 or 8 (Table 4), got {k}")
  c.model.num_codebooks = k
  c.model.loss_weights = tuple(c.model.loss_weights)[:k]
  return c


def get_config(num_codebooks="8"):
  return apply(load_config(str(pathlib.Path(__file__).with_name("paper_7b.py"))), num_codebooks)
