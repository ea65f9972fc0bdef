"""Trains DreamFoley: resumes from the latest intact checkpoint in --workdir if there is one.

  python tools/train.py --config experiments/tiny.py --workdir /tmp/df_tiny \
      --config.data.train_records='/data/train-*.array_record' --config.train.steps=10

Many processes (one per host): on a TPU pod or under SLURM nothing extra (jax.distributed detects
the cluster); elsewhere give every process --coordinator_address=HOST0:PORT --num_processes=N
--process_id=I (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). docs/training.md.

Exit status: 0 finished or preempted (SIGTERM on any host: all hosts checkpoint the same step);
2 bad config / no intact checkpoint; 3 non-finite loss (the last good checkpoint is kept);
4 lost another process. If a process dies, JAX ends the others after --heartbeat_timeout_s.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard events go here")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "HOST:PORT of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS)")
_NPROC = flags.DEFINE_integer("num_processes", None, "processes in the job (default $JAX_NUM_PROCESSES)")
_PID = flags.DEFINE_integer("process_id", None, "this process, 0..num_processes-1 (default $JAX_PROCESS_ID)")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 100,
                                  "a process silent this long is declared dead and the job ends")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 300, "how long processes wait for each other at start")
flags.mark_flags_as_required(["config", "workdir"])


_LOST_PEER = r"Gloo|Connection (closed|reset)|UNAVAILABLE|[Cc]oordination service|heartbeat|unhealthy"


def _fail(code, msg):
  print(f"ERROR: {msg}", file=sys.stderr, flush=True)
  sys.exit(code)


def main(argv):
  del argv
  import jax

  from dreamfoley_jax import checkpoint, train
  from dreamfoley_jax.convert.common import ConversionError

  try:
    logging.info("%s", train.init_distributed(_COORD.value, _NPROC.value, _PID.value,
                                              heartbeat_timeout_s=_HEARTBEAT.value, init_timeout_s=_INIT_TIMEOUT.value))
    res = train.train(_CONFIG.value, _WORKDIR.value)
  except (train.ConfigError, checkpoint.CheckpointError, ConversionError) as e:
    # ConversionError: initial weights (train.pretrained_decoder / init_from) that do not fit the model.
    _fail(2, str(e))
  except train.NonFiniteLossError as e:
    _fail(3, str(e))
  except jax.errors.JaxRuntimeError as e:
    # A peer died mid-collective: exit at once (JAX's shutdown barrier at exit would wait for the dead).
    if jax.process_count() > 1 and re.search(_LOST_PEER, str(e)):
      print(f"ERROR: lost contact with another process ({str(e).splitlines()[0][:200]}); restart the job, it "
            "resumes from the last checkpoint", file=sys.stderr, flush=True)
      os._exit(4)
    raise
  logging.info("%s at step %d (last checkpoint: %s)", res.status, res.step, res.last_checkpoint)


if __name__ == "__main__":
  app.run(main)
