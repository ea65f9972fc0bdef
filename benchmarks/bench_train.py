"""Train-step throughput of the full DreamFoley model (tiny config) on this machine, for regression tracking.

  python benchmarks/bench_train.py                       # experiments/tiny.py, global batch 8, largest bucket
  python benchmarks/bench_train.py --steps 20 --config.train.global_batch=4

Runs the real jitted update (model + weighted loss + AdamW) on a fixed batch of the largest length
bucket over all local devices; prints steps/s, tokens/s and model TFLOP/s.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/tiny.py", "experiment config", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after one warm-up/compile step)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats; the best is reported")


def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import numpy as np

  from dreamfoley_jax import optim, sharding, train
  from dreamfoley_jax.data import pipeline
  from dreamfoley_jax.models import foley
  from dreamfoley_jax.models import params as foley_params

  c = _CONFIG.value
  mesh = sharding.make_mesh({"data": -1})
  fcfg = train.model_config(c)
  model = foley.DreamFoley(fcfg)
  ap = foley_params.abstract_params(fcfg)
  tx, sched = optim.make_optimizer(c.optim, int(c.train.steps), ap, c.train.get("frozen_regex") or None)
  labels = optim.param_labels(ap, c.train.get("frozen_regex") or None)
  B = int(c.train.global_batch)
  p = train.pipeline_config(c, fcfg, batch_size=B)
  spec = pipeline.batch_spec(p)
  rng = np.random.default_rng(0)
  batch = {k: (rng.integers(0, 16, s).astype(d) if d == np.int32 else
               np.ones(s, d) if d == np.bool_ else rng.normal(size=s).astype(d)) for k, (s, d) in spec.items()}
  batch["audio_vacant"][:] = False
  S = train.seq_len({k: v.shape for k, v in batch.items()})
  with sharding.use_mesh(mesh):
    init = train.make_init_fn(model, tx, fcfg, 0)
    sh = train.state_shardings(jax.eval_shape(init), mesh)
    state = nn.unbox(jax.jit(init, out_shardings=sh)())
    b_sh = train.batch_shardings(batch, mesh)
    gb = {k: jax.device_put(v, b_sh[k]) for k, v in batch.items()}
    step = jax.jit(train.make_train_step(model, fcfg, tx, sched, labels, int(c.train.get("grad_accum", 1))),
                   in_shardings=(sh, b_sh), out_shardings=(sh, None), donate_argnums=0)
    t0 = time.perf_counter()
    state, m = step(state, gb)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(_REPEATS.value):
      t0 = time.perf_counter()
      for _ in range(_STEPS.value):
        state, m = step(state, gb)
      jax.block_until_ready(m)
      best = min(best, (time.perf_counter() - t0) / _STEPS.value)
  flops = train.step_flops(fcfg, train.matmul_params(ap), B, S)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  print(f"bench_train: {c.model.decoder.preset} decoder, {n:,} params, batch {B} x {S} tokens, "
        f"{len(jax.devices())} x {jax.devices()[0].device_kind} device(s)")
  print(f"first step (compile) {compile_s:.1f} s; best of {_REPEATS.value} x {_STEPS.value} steps: "
        f"{best * 1e3:.1f} ms/step = {1 / best:.2f} steps/s, {B * S / best:,.0f} tokens/s, "
        f"{flops / best / 1e12:.3f} model TFLOP/s; loss {float(m['loss']):.4f}")


if __name__ == "__main__":
  app.run(main)
