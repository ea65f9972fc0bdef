"""The parameter table of an experiment's model, from abstract shapes (no memory, no devices needed).

  python tools/model_summary.py --config experiments/paper_7b.py
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from absl import app
from ml_collections import config_flags

from dreamfoley_jax import configs
from dreamfoley_jax.models import params

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py[:arg]")


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (experiments/<name>.py)")
  try:
    cfg = configs.model_config(_CONFIG.value.model)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from e
  print(params.summary(cfg))


if __name__ == "__main__":
  app.run(main)
