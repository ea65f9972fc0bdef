"""Scores a folder of generated audio with the paper's metrics (av-benchmark definitions).

  python tools/evaluate.py --config experiments/eval_vggsound.py \
      --config.gen_dir OUT --config.video_dir VIDEOS --config.captions_csv CAPTIONS.csv \
      --config.weights_dir WEIGHTS [--config.metrics=panns,vggish]

Writes <out>.json (metrics under av-benchmark's names + "KL", the pairing report, counts) and <out>.md
(the paper's column order). Per-clip embeddings are cached, so a re-run only computes what changed.
On many hosts (a TPU slice: add --distributed to the same command on every host) each host embeds its
share of the clips and process 0 writes the outputs.
"""
import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # runnable from a checkout too

from dreamfoley_jax import hosts  # noqa: E402
from dreamfoley_jax.eval import embedders, harness  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/eval_vggsound.py", "evaluation config")
# Many hosts (dreamfoley_jax/hosts.py): every host runs this command, computes the features of its share of
# the clips, and all hosts get every feature; process 0 writes the outputs.
flags.DEFINE_bool("distributed", False, "join a multi-host JAX job found by cluster detection (TPU slice, SLURM)")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0 (with the two flags below)")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  c = _CONFIG.value
  if not c.gen_dir:
    raise app.UsageError("--config.gen_dir is required")
  hosts.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed)
  names = [n.strip() for n in c.metrics.split(",") if n.strip()]
  built = {}
  for n in names:
    key = embedders.metric_key(n)  # passt_torch / synchformer_torch score what passt / synchformer do
    path = c.weights.get(key) or c.weights_dir or None
    kwargs = {}
    if n not in embedders.NATIVE_FLAX:
      kwargs["device"] = c.device
    if n in ("clap", "clap_torch"):
      kwargs["seed"] = c.clap_seed
    if n == "clap":
      kwargs["tokenizer"] = c.get("clap_tokenizer") or None
    built[key] = embedders.build(n, path, **kwargs)
    logging.info("%s: %s", n, "Flax port" if built[key].native else "PyTorch reference model")
  inputs = harness.EvalInputs(gen_dir=c.gen_dir, video_dir=c.video_dir or None,
                              captions_csv=c.captions_csv or None, gt_audio_dir=c.gt_audio_dir or None,
                              duration_s=c.duration_s, cache_dir=c.cache_dir or None,
                              ref_cache_dir=c.ref_cache_dir or None, fd_method=c.fd_method,
                              pairing=c.get("pairing", "stem"))
  result = harness.evaluate(inputs, built)
  if hosts.index_count()[0] != 0:   # every host holds the same result; one writes it
    return
  out = c.out or str(pathlib.Path(c.gen_dir).expanduser() / "eval_metrics.json")
  table = harness.write_outputs(result, out, row_name=c.row_name, ib_scale=c.ib_scale)
  for k, v in sorted(result["metrics"].items()):
    logging.info("%-18s %.6f", k, v)
  print(table)
  print(f"wrote {out} and {pathlib.Path(out).with_suffix('.md')}")


if __name__ == "__main__":
  app.run(main)
