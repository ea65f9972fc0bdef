"""Compiles the DreamFoley train step (or, with --sample, the CFG sampling loop) for a TPU topology on a CPU
machine and prints per-chip memory/FLOPs.

  pip install 'jax[tpu]==0.10.2'      # libtpu (compiler only; no TPU needed)
  python tools/aot_compile.py --config experiments/qwen05.py --topology v5p-8
  python tools/aot_compile.py --config experiments/paper_7b.py --topology v5p-64 --config.train.grad_accum=2
  python tools/aot_compile.py --config experiments/paper_7b.py --topology v5e-8 --sample --batch 8 --seconds 10
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
_SAMPLE = flags.DEFINE_bool("sample", False, "compile the sampling loop (sampling.sample / tools/generate.py --mesh) "
                            "in the inference layout instead of the train step")
_BATCH = flags.DEFINE_integer("batch", 8, "--sample: clips per call (CFG doubles the rows)")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "--sample: seconds of audio per clip")
_MESH = flags.DEFINE_string("mesh", "", "--sample: mesh spec, e.g. 'data=2,tensor=4' (default: tensor = the largest "
                            "divisor of the chip count that divides the KV heads, the rest data)")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from dreamfoley_jax import aot

  from dreamfoley_jax import sharding

  stray = [f"--{f.name}" for f in (_BATCH, _SECONDS, _MESH) if flags.FLAGS[f.name].present]
  if stray and not _SAMPLE.value:
    raise app.UsageError(f"{', '.join(stray)}: only with --sample (they size the sampling loop)")
  try:
    if _SAMPLE.value:
      mesh = sharding.parse_mesh_spec(_MESH.value)
      aot.check_sample_args(_TOPOLOGY.value, _BATCH.value, _SECONDS.value, mesh)
    else:
      aot.parse_topology(_TOPOLOGY.value)
  except ValueError as e:      # a bad --topology / --mesh / --batch: a usage error, before any compile
    raise app.UsageError(str(e)) from e
  if _SAMPLE.value:
    r = aot.compile_sample(_CONFIG.value, _TOPOLOGY.value, batch=_BATCH.value, seconds=_SECONDS.value, mesh=mesh)
    print(aot.format_sample_report(r), flush=True)
  else:
    r = aot.compile_train_step(_CONFIG.value, _TOPOLOGY.value)
    print(aot.format_report(r), flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(r, f, indent=1)
  if not r["fits"]:
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
