"""Compiles the DreamFoley train step for a TPU topology on a CPU machine and prints per-chip memory/FLOPs.

  pip install 'jax[tpu]==0.10.2'      # libtpu (compiler only; no TPU needed)
  python tools/aot_compile.py --config experiments/qwen05.py --topology v5p-8
  python tools/aot_compile.py --config experiments/paper_7b.py --topology v5p-64 --config.train.grad_accum=2
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")   # the host backend; the TPU compiler comes from libtpu
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # other jax processes on this host may hold libtpu

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "v5p-8", "v5p-N, v4-N (N TensorCores) or v5e-N (N chips)")
_JSON = flags.DEFINE_string("json", None, "also write the figures to this JSON file")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from dreamfoley_jax import aot

  r = aot.compile_train_step(_CONFIG.value, _TOPOLOGY.value)
  print(aot.format_report(r), flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(r, f, indent=1)
  if not r["fits"]:
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
