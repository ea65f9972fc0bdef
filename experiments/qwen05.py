"""Mid-size DreamFoley: the paper's recipe on Qwen2.5-0.5B (for single-host TPU/GPU experiments).

  python tools/train.py --config experiments/qwen05.py --workdir /tmp/dreamfoley_qwen05
  python tools/aot_compile.py --config experiments/qwen05.py --topology v5p-8
"""
import pathlib

from dreamfoley_jax.configs import load_config


def get_config():
  c = load_config(str(pathlib.Path(__file__).with_name("paper_7b.py")))
  c.model.decoder.preset = "qwen2.5-0.5b"
  c.train.global_batch = 64
  c.mesh.fsdp = -1
  return c
