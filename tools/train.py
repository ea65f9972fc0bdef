"""Trains DreamFoley: resumes from the latest checkpoint in --workdir if there is one.

  python tools/train.py --config experiments/tiny.py --workdir /tmp/df_tiny \
      --config.data.train_records='/data/train-*.array_record' --config.train.steps=10

SIGTERM (TPU preemption notice) finishes the current step, writes a checkpoint and exits with status 0.
A non-finite loss exits with status 3 and leaves the last good checkpoint in place.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard events go here")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from dreamfoley_jax import train

  if os.environ.get("DREAMFOLEY_DISTRIBUTED") == "1":  # multi-host: coordinator from the environment
    import jax

    jax.distributed.initialize()
  try:
    res = train.train(_CONFIG.value, _WORKDIR.value)
  except train.NonFiniteLossError as e:
    logging.error("%s", e)
    print(f"ERROR: {e}", file=sys.stderr)
    sys.exit(3)
  logging.info("%s at step %d (last checkpoint: %s)", res.status, res.step, res.last_checkpoint)


if __name__ == "__main__":
  app.run(main)
