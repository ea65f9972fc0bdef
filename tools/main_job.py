r"""The project's main job on the embedded default (no downloads): synthetic world -> train -> CFG -> metrics.

  python tools/main_job.py --workdir runs/synthetic
  python tools/main_job.py --workdir /tmp/quick --config.train.steps=20 --config.main.num_train=64 \
      --config.main.num_eval=4

Writes to the workdir: samples/*.wav|mp4|png, metrics.json, params/ (trained weights), train/
(checkpoints, TensorBoard), data/, codec.npz, tokenizer.json. See experiments/synthetic.py for every
setting. SIGTERM during training checkpoints and stops the job (exit 1, nothing sampled or scored);
the same command again resumes the training. Then, for any video:

  python tools/generate.py --config experiments/synthetic.py --checkpoint runs/synthetic/params \
      --codec_checkpoint runs/synthetic/codec.npz --tokenizer runs/synthetic/tokenizer.json \
      --video runs/synthetic/samples/synth-1000003-000000.mp4 --caption "a metal ball bounces twice" --out_dir out
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/synthetic.py", "experiment config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/synthetic", "output directory")


class _QuietCheckpointing(logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the progress log (warnings still show)."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv):
  del argv
  from dreamfoley_jax.synthetic import job as main_job

  logging.getLogger("absl").addFilter(_QuietCheckpointing())
  try:
    main_job.run(_CONFIG.value, _WORKDIR.value)
  except main_job.Preempted as e:
    sys.exit(f"main job stopped: {e}")


if __name__ == "__main__":
  app.run(main)
