"""DreamFoley trainer: mesh -> data -> eval_shape -> shardings -> jit(init) -> jit(update) -> resume -> loop.

  python tools/train.py --config experiments/tiny.py --workdir /tmp/df_tiny --config.train.steps=10

Gradient accumulation (`train.grad_accum` = A) is a `lax.scan` over A microbatches inside the one
jitted step, not `optax.MultiSteps`: the optimizer, the lr schedule and the checkpoint step all count
global batches; the accumulator lives only as temporaries of the step (MultiSteps keeps a
parameter-sized fp32 buffer in the optimizer state, i.e. in every checkpoint); and the loss is
normalised by the target count of the WHOLE global batch, so the accumulated gradient equals the
big-batch gradient (tests/test_train.py checks it to fp32 tolerance), whereas averaging per-microbatch
means would weight microbatches with few targets too much.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from dreamfoley_jax import checkpoint as ckptlib
from dreamfoley_jax import optim, sharding
from dreamfoley_jax.models import foley


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # fp32 master weights (param_dtype)
  opt_state: Any
  rng: jax.Array           # uint32[2] raw key from train.seed; per-step keys are fold_in(rng, step)


class NonFiniteLossError(FloatingPointError):
  pass


# --------------------------------------------------------------------------------------------------
# Pieces (used by the trainer, tools/aot_compile.py, tools/bench_train.py and the tests)
# --------------------------------------------------------------------------------------------------

def model_config(c) -> foley.FoleyConfig:
  return foley.config_from_dict(c.model)


def pipeline_config(c, fcfg: foley.FoleyConfig, local_batch: int | None = None):
  from dreamfoley_jax.data import pipeline

  B = int(c.train.global_batch) // jax.process_count() if local_batch is None else local_batch
  return pipeline.config_from(c, fcfg, B, int(c.train.get("data_seed", c.train.seed)))


def global_batch_spec(c, fcfg) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract global batch of the largest length bucket (for eval_shape / AOT compiles)."""
  from dreamfoley_jax.data import pipeline

  p = pipeline_config(c, fcfg, local_batch=int(c.train.global_batch))
  return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in pipeline.batch_spec(p).items()}


def make_init_fn(model: foley.DreamFoley, tx: optax.GradientTransformation, fcfg: foley.FoleyConfig,
                 seed: int) -> Callable[[], TrainState]:
  """Pure function building a fresh TrainState (params boxed with logical axis names)."""
  def init():
    rng = jax.random.PRNGKey(seed)
    ex = foley.dummy_batch(fcfg, text_len=fcfg.null_text_len, video_frames=fcfg.null_video_len,
                           audio_cols=fcfg.num_codebooks + 2)
    params = model.init(jax.random.fold_in(rng, 1 << 30), ex)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(nn.unbox(params)),
                      rng=rng)
  return init


def unbox_abstract(tree):
  """nn.unbox for abstract (eval_shape) trees: no sharding constraint applied to ShapeDtypeStructs."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def state_shardings(abstract_state: TrainState, mesh, tx=None) -> TrainState:
  """NamedShardings of the (unboxed) state: params by logical names, optimizer moments like their params.

  An optimizer-state leaf whose key path ends with a param's path (and has its shape) takes that
  param's sharding (Adam mu/nu, also inside multi_transform's inner states); the rest is replicated.
  """
  param_sh = sharding.shardings_for(abstract_state.params, mesh)
  repl = NamedSharding(mesh, P())
  params = unbox_abstract(abstract_state.params)
  by_path = {}
  for (path, x), (_, sh) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree_util.tree_flatten_with_path(param_sh)[0]):
    by_path[tuple(optim.path_str(path).split("/"))] = (tuple(x.shape), sh)

  def for_opt_leaf(path, x):
    parts = tuple(optim.path_str(path).split("/"))
    for i in range(len(parts)):
      hit = by_path.get(parts[i:])
      if hit is not None and hit[0] == tuple(x.shape):
        return hit[1]
    return repl

  opt_sh = jax.tree_util.tree_map_with_path(for_opt_leaf, unbox_abstract(abstract_state.opt_state))
  return TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl)


def batch_shardings(batch_spec: dict, mesh) -> dict:
  return {k: sharding.data_sharding(mesh, len(v.shape)) for k, v in batch_spec.items()}


def _target_counts(fcfg, batch):
  return foley.target_mask(fcfg, batch).sum(axis=(0, 1)).astype(jnp.float32)       # (K,)


def make_train_step(model: foley.DreamFoley, fcfg: foley.FoleyConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, labels, grad_accum: int = 1):
  """update(state, batch) -> (state, metrics). `labels`: optim.param_labels tree (frozen => no grads)."""
  K = fcfg.num_codebooks
  w = np.asarray(fcfg.loss_weights[:K], np.float32)   # numpy: no array on the (maybe abstract) devices

  def loss_fn(params, mb, drop_t, drop_v, denom_K):
    params = jax.tree.map(lambda p, l: jax.lax.stop_gradient(p) if l == optim.FROZEN else p, params, labels)
    logits, _ = model.apply({"params": params}, mb, drop_t, drop_v)
    _, aux = foley.weighted_loss(fcfg, logits, mb)
    n = jnp.maximum(_target_counts(fcfg, mb), 1.0)
    # Per-codebook sums over this microbatch, normalised by the global batch's counts: sums of these
    # microbatch losses are exactly the global weighted loss.
    nll_sum, acc_sum = aux["ce_per_codebook"] * n, aux["acc_per_codebook"] * n
    loss = jnp.sum(w * nll_sum / denom_K)
    return loss, (nll_sum, acc_sum)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def update(state: TrainState, batch: dict):
    B = batch["audio_ids"].shape[0]
    key = jax.random.fold_in(state.rng, state.step)
    drop_t, drop_v = foley.cfg_drop(key, B, fcfg.cfg_drop_text, fcfg.cfg_drop_video)
    counts = _target_counts(fcfg, batch)
    denom = jnp.maximum(counts, 1.0)
    if grad_accum <= 1:
      grads, (nll, acc) = grad_fn(state.params, batch, drop_t, drop_v, denom)
    else:
      A = grad_accum
      if B % A:
        raise ValueError(f"global batch {B} is not divisible by train.grad_accum={A}")

      def split(x):  # interleaved: microbatch a = rows a, a+A, ...: each device keeps its own rows
        x = x.reshape((B // A, A) + x.shape[1:]).swapaxes(0, 1)
        return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

      mbs = jax.tree.map(split, (batch, drop_t, drop_v))

      def body(carry, mb):
        g_acc, nll_acc, acc_acc = carry
        b, dt, dv = mb
        g, (nll_k, acc_k) = grad_fn(state.params, b, dt, dv, denom)
        return (jax.tree.map(jnp.add, g_acc, g), nll_acc + nll_k, acc_acc + acc_k), None

      zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      zK = jnp.zeros((K,), jnp.float32)
      (grads, nll, acc), _ = jax.lax.scan(body, (zeros, zK, zK), mbs)
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    trainable = jax.tree.map(lambda g, l: g if l == optim.TRAIN else jnp.zeros((), g.dtype), grads, labels)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ce = nll / denom
    metrics = {"loss": jnp.sum(w * ce), "ce_per_codebook": ce, "acc_per_codebook": acc / denom,
               "num_targets": counts.sum(), "grad_norm": optim.global_norm(trainable),
               "lr": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), metrics

  return update


def abstract_state(c, mesh):
  """(abstract TrainState with the shardings of `mesh`, model, FoleyConfig): restore targets on any mesh."""
  fcfg = model_config(c)
  model = foley.DreamFoley(fcfg)
  ap = foley.abstract_params(fcfg)
  tx, _ = optim.make_optimizer(c.optim, int(c.train.steps), ap, c.train.get("frozen_regex") or None)
  with sharding.use_mesh(mesh):
    a = jax.eval_shape(make_init_fn(model, tx, fcfg, int(c.train.seed)))
    sh = state_shardings(a, mesh, tx)
  return ckptlib.abstract_with_shardings(unbox_abstract(a), sh), model, fcfg


def load_checkpoint(c, workdir: str, mesh=None, step: int | None = None) -> TrainState:
  """The TrainState of `workdir`'s checkpoint `step` (default latest), placed on `mesh` (any shape)."""
  mesh = mesh or sharding.make_mesh(dict(c.mesh))
  target, _, _ = abstract_state(c, mesh)
  ck = ckptlib.Checkpointer(workdir, async_save=False)
  try:
    with sharding.use_mesh(mesh):
      return ck.restore(target, None, step)
  finally:
    ck.close()


# --------------------------------------------------------------------------------------------------
# FLOPs / MFU
# --------------------------------------------------------------------------------------------------

# Dense bf16 peak per chip (vendor figures), FLOP/s.
PEAK_FLOPS = {"tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v5": 459e12,
              "tpu v6 lite": 918e12, "tpu v6e": 918e12, "nvidia h100": 989e12, "nvidia h200": 989e12,
              "nvidia a100": 312e12}


def peak_flops_per_device(device=None) -> tuple[float, str]:
  """(peak FLOP/s of one device, source). CPU: one measured fp32 GEMM rate shared by all CPU devices."""
  d = device or jax.devices()[0]
  kind = d.device_kind.lower()
  for k in sorted(PEAK_FLOPS, key=len, reverse=True):
    if kind.startswith(k) or k in kind:
      return PEAK_FLOPS[k], f"table[{k}]"
  if d.platform == "cpu":
    rate = measure_cpu_gemm()
    return rate / max(len(jax.devices("cpu")), 1), f"measured CPU GEMM {rate / 1e9:.0f} GFLOP/s"
  return float("nan"), f"unknown device kind {d.device_kind!r}"


@functools.lru_cache(None)
def measure_cpu_gemm(n: int = 1024, reps: int = 5) -> float:
  a = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices("cpu")[0])
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def matmul_params(params) -> int:
  """Parameters that take part in matmuls (all but the token / audio-code lookup tables)."""
  n = 0
  for path, x in jax.tree_util.tree_flatten_with_path(unbox_abstract(params))[0]:
    name = optim.path_str(path)
    if not (name.endswith("embed_tokens/embedding") or name == "audio_embed"):
      n += int(np.prod(x.shape))
  return n


def step_flops(fcfg: foley.FoleyConfig, n_matmul_params: int, batch: int, seq: int) -> float:
  """Model FLOPs of one train step: 6 N per token + causal-free attention 12 L H Dh S (PaLM appendix B)."""
  d = fcfg.decoder
  attn = 12 * d.num_hidden_layers * d.num_attention_heads * d.head_size * seq
  return float(batch * seq * (6 * n_matmul_params + attn))


def seq_len(batch_shapes: dict) -> int:
  return int(batch_shapes["text_ids"][1] + batch_shapes["video_mask"][1] + batch_shapes["audio_ids"][1])


# --------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------

class MetricWriter:
  """absl log line + TensorBoard scalars + workdir/metrics.jsonl (process 0 only) + tty rate line."""

  def __init__(self, workdir: str, total_steps: int):
    self.total = total_steps
    self.main = jax.process_index() == 0
    self.tty = sys.stderr.isatty()
    self.tb = None
    self.jsonl = None
    if self.main:
      pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
      self.jsonl = open(pathlib.Path(workdir) / "metrics.jsonl", "a")
      try:
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(pathlib.Path(workdir) / "tb"))
      except ImportError:
        logging.warning("tensorboardX not installed: no TensorBoard events (pip install tensorboardX)")

  def write(self, step: int, scalars: dict[str, float]):
    if not self.main:
      return
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
    keys = ("loss", "grad_norm", "lr", "steps_per_s", "tokens_per_s", "mfu")
    line = " ".join(f"{k}={scalars[k]:.4g}" for k in keys if k in scalars)
    logging.info("step %d/%d %s", step, self.total, line)
    if self.tty:
      sys.stderr.write(f"\r[{step}/{self.total}] {line}   ")
      sys.stderr.flush()

  def close(self):
    if self.tty and self.main:
      sys.stderr.write("\n")
    if self.tb is not None:
      self.tb.close()
    if self.jsonl is not None:
      self.jsonl.close()


def _scalars(m: dict) -> dict[str, float]:
  out = {}
  for k, v in m.items():
    v = np.asarray(v)
    if v.ndim == 0:
      out[k] = float(v)
    else:
      name = k.replace("_per_codebook", "")
      for i, x in enumerate(v.reshape(-1)):
        out[f"{name}/k{i}"] = float(x)
  return out


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
  step: int                 # steps completed (= the state's step)
  status: str               # finished | preempted
  last_checkpoint: int | None
  state: Any = None


def train(c, workdir: str, *, mesh=None, max_steps_this_run: int | None = None) -> TrainResult:
  """Trains `c` (an experiment ConfigDict) in `workdir`, resuming from its latest checkpoint.

  Raises NonFiniteLossError (after waiting for pending checkpoint writes, saving nothing new) when a
  loss or gradient norm is not finite. `max_steps_this_run` stops early without a checkpoint (tests).
  """
  t = c.train
  workdir = str(workdir)
  total_steps = int(t.steps)
  seed = int(t.seed)

  # Initial weights (a fresh run only): one-line errors for a missing checkpoint before anything compiles.
  init_entries = [] if ckptlib.has_checkpoint(workdir) else ckptlib.initial_weight_entries(t)

  # --- mesh ---------------------------------------------------------------------------------------
  mesh = mesh or sharding.make_mesh(dict(c.mesh))
  logging.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].device_kind)

  # --- model + optimizer --------------------------------------------------------------------------
  fcfg = model_config(c)
  model = foley.DreamFoley(fcfg)
  abstract_params = foley.abstract_params(fcfg)
  tx, schedule = optim.make_optimizer(c.optim, total_steps, abstract_params, t.get("frozen_regex") or None)
  labels = optim.param_labels(abstract_params, t.get("frozen_regex") or None)

  # --- data ---------------------------------------------------------------------------------------
  from dreamfoley_jax.data import pipeline

  if int(t.global_batch) % jax.process_count():
    raise ValueError(f"train.global_batch={t.global_batch} not divisible by {jax.process_count()} hosts")
  pcfg = pipeline_config(c, fcfg)
  dataset = pipeline.make_dataset(pcfg, c.data.train_records, process_index=jax.process_index(),
                                  process_count=jax.process_count(), num_workers=int(c.data.get("num_workers", 0)))
  data_iter = iter(dataset)

  peak, peak_src = peak_flops_per_device()   # outside the mesh: the CPU probe runs on one device

  with sharding.use_mesh(mesh):
    # --- eval_shape -> shardings -> jit(init) -------------------------------------------------------
    init_fn = make_init_fn(model, tx, fcfg, seed)
    abstract_state = jax.eval_shape(init_fn)
    state_sh = state_shardings(abstract_state, mesh, tx)
    abstract_state = unbox_abstract(abstract_state)

    # --- jit(update) with donated state ------------------------------------------------------------
    update = make_train_step(model, fcfg, tx, schedule, labels, int(t.get("grad_accum", 1)))
    spec0 = global_batch_spec(c, fcfg)
    b_sh = batch_shardings(spec0, mesh)
    p_update = jax.jit(update, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, None), donate_argnums=0)

    # --- resume or init ---------------------------------------------------------------------------
    ckpt = ckptlib.Checkpointer(workdir, every=int(t.get("ckpt_every", 1000)), keep=int(t.get("keep_ckpts", 3)),
                                async_save=bool(t.get("async_ckpt", True)))
    latest = ckpt.latest_step()
    if latest is not None:
      logging.info("resuming from %s/%d", ckpt.directory, latest)
      state = ckpt.restore(ckptlib.abstract_with_shardings(abstract_state, state_sh), data_iter, latest)
    else:
      state = nn.unbox(jax.jit(init_fn, out_shardings=state_sh)())
      if init_entries:
        state = state.replace(params=ckptlib.load_initial_weights(state.params, state_sh.params, init_entries))
    start = int(jax.device_get(state.step))

    # --- loop ---------------------------------------------------------------------------------------
    writer = MetricWriter(workdir, total_steps)
    guard = ckptlib.PreemptionGuard()
    n_mm = matmul_params(abstract_params)
    logging.info("model FLOPs/step (largest bucket) %.3g; peak %.3g FLOP/s per device (%s)",
                 step_flops(fcfg, n_mm, int(t.global_batch), seq_len({k: v.shape for k, v in spec0.items()})),
                 peak, peak_src)
    log_every = max(int(t.get("log_every", 50)), 1)
    last_ckpt = latest
    status = "finished"
    pending = None          # (step, metrics) of the previous step, checked one step late (async dispatch)
    t_last, steps_since, tokens_since, flops_since = time.perf_counter(), 0, 0, 0.0

    def check(step_m):
      s, m = step_m
      loss, gn = jax.device_get((m["loss"], m["grad_norm"]))
      if not (np.isfinite(loss) and np.isfinite(gn)):
        ckpt.wait()
        good = ckpt.latest_step()
        raise NonFiniteLossError(
            f"non-finite loss={loss} / grad_norm={gn} at step {s}; stopping. The last good checkpoint is "
            f"step {good} in {ckpt.directory} (nothing was saved after it). Lower optim.lr or check the data.")

    try:
      step = start
      end = total_steps if max_steps_this_run is None else min(total_steps, start + max_steps_this_run)
      while step < end:
        local = next(data_iter)
        batch = {k: jax.make_array_from_process_local_data(b_sh[k], v) for k, v in local.items()}
        S = seq_len({k: v.shape for k, v in local.items()})
        tokens = S * int(t.global_batch)
        flops_since += step_flops(fcfg, n_mm, int(t.global_batch), S)
        state, metrics = p_update(state, batch)
        step += 1
        steps_since += 1
        tokens_since += tokens
        if pending is not None:
          check(pending)
        pending = (step, metrics)
        if step % log_every == 0 or step == end:
          check(pending)
          now = time.perf_counter()
          dt = (now - t_last) / steps_since
          sc = _scalars(jax.device_get(metrics))
          sc.update(step_time_s=dt, steps_per_s=1.0 / dt, tokens_per_s=tokens_since / (now - t_last),
                    mfu=flops_since / (now - t_last) / (peak * jax.device_count()))
          writer.write(step, sc)
          t_last, steps_since, tokens_since, flops_since = time.perf_counter(), 0, 0, 0.0
        stop = guard.should_stop(step)
        if ckpt.should_save(step) or stop or step == total_steps:
          check(pending)
          if ckpt.save(step, state, data_iter, force=True):
            last_ckpt = step
        if stop:
          status = "preempted"
          logging.warning("preempted: checkpoint written at step %d, exiting", step)
          break
    finally:
      ckpt.close()
      writer.close()
      guard.restore()
  return TrainResult(step=step, status=status, last_checkpoint=last_ckpt, state=state)
