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
import os
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
from dreamfoley_jax import configs, optim, sharding
from dreamfoley_jax.models import foley
from dreamfoley_jax.models import loss as foley_loss
from dreamfoley_jax.models import params as foley_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # fp32 master weights (param_dtype)
  opt_state: Any
  rng: jax.Array           # uint32[2] raw key from train.seed; per-step keys are fold_in(rng, step)


class NonFiniteLossError(FloatingPointError):
  pass


class ConfigError(ValueError):
  """An impossible config value (one line naming the key and what is accepted)."""


def validate(c, mesh=None, process_count: int | None = None) -> None:
  """Rejects impossible values before anything is built or compiled (ConfigError naming the key)."""
  t = c.train
  configs.check_keys(t, configs.TRAIN_KEYS, "train", ConfigError)
  configs.check_keys(c.optim, configs.OPTIM_KEYS, "optim", ConfigError)
  configs.check_keys(c.data, configs.DATA_KEYS, "data", ConfigError)

  def need(ok, msg):
    if not ok:
      raise ConfigError(msg)

  def integer(key, v):
    try:
      return int(v) if float(v) == int(v) else None
    except (TypeError, ValueError):
      return None

  vals = {}
  for key, default, lo in (("steps", None, 0), ("global_batch", None, 1), ("ckpt_every", 1000, 1),
                           ("keep_ckpts", 3, 1), ("log_every", 50, 1), ("grad_accum", 1, 1)):
    raw = t.get(key, default)
    v = integer(key, raw)
    need(v is not None and v >= lo, f"train.{key}={raw!r}: must be an integer >= {lo}")
    vals[key] = v
  workers = integer("num_workers", c.data.get("num_workers", 0))
  need(workers is not None and workers >= 0, f"data.num_workers={c.data.get('num_workers')!r}: must be an integer >= 0")
  G, A = vals["global_batch"], vals["grad_accum"]
  need(G % A == 0, f"train.global_batch={G} is not divisible by train.grad_accum={A}")
  n = jax.process_count() if process_count is None else process_count
  need(G % n == 0, f"train.global_batch={G} is not divisible by the {n} processes (each reads an equal share)")
  if mesh is not None:
    shards = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
    need((G // A) % shards == 0,
         f"train.global_batch={G}" + (f" / grad_accum={A}" if A > 1 else "") +
         f" is not divisible by the {shards} batch shards of mesh {dict(mesh.shape)} (data x fsdp)")


# --------------------------------------------------------------------------------------------------
# Pieces (used by the trainer, tools/aot_compile.py, benchmarks/bench_train.py and the tests)
# --------------------------------------------------------------------------------------------------

def model_config(c) -> foley.FoleyConfig:
  """The FoleyConfig of `c`; a bad model section is a ConfigError (tools/train.py: one line, exit 2)."""
  try:
    return configs.model_config(c.model)
  except (ValueError, KeyError) as e:
    raise ConfigError(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from e


def pipeline_config(c, fcfg: foley.FoleyConfig, batch_size: int | None = None):
  """The data pipeline's config; `batch_size` defaults to the GLOBAL batch (hosts read their rows of it)."""
  B = int(c.train.global_batch) if batch_size is None else batch_size
  return configs.pipeline_config(c, fcfg, B, data_seed(c))


def data_seed(c) -> int:
  return int(c.train.get("data_seed", c.train.seed))


def global_batch_spec(c, fcfg) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract global batch of the largest length bucket (for eval_shape / AOT compiles)."""
  from dreamfoley_jax.data import pipeline

  p = pipeline_config(c, fcfg)
  return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in pipeline.batch_spec(p).items()}


def host_rows_of(mesh, global_batch: int) -> tuple[int, ...]:
  """Rows of each global batch that live on this process's devices, in the order
  `jax.make_array_from_process_local_data` expects them (sorted global row index)."""
  sh = sharding.data_sharding(mesh, 1)
  rows = set()
  for (sl,) in sh.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(*sl.indices(global_batch)))
  return tuple(sorted(rows))


def make_init_fn(model: foley.DreamFoley, tx: optax.GradientTransformation, fcfg: foley.FoleyConfig,
                 seed: int) -> Callable[[], TrainState]:
  """Pure function building a fresh TrainState (params boxed with logical axis names)."""
  def init():
    rng = jax.random.PRNGKey(seed)
    ex = foley_params.dummy_batch(fcfg, text_len=fcfg.null_text_len, video_frames=fcfg.null_video_len,
                           audio_cols=fcfg.num_codebooks + 2)
    params = model.init(jax.random.fold_in(rng, 1 << 30), ex)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(nn.unbox(params)),
                      rng=rng)
  return init


def unbox_abstract(tree):
  """nn.unbox for abstract (eval_shape) trees: no sharding constraint applied to ShapeDtypeStructs."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def state_shardings(abstract_state: TrainState, mesh) -> TrainState:
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
  return foley_loss.target_mask(fcfg, batch).sum(axis=(0, 1)).astype(jnp.float32)       # (K,)


def make_train_step(model: foley.DreamFoley, fcfg: foley.FoleyConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, labels, grad_accum: int = 1):
  """update(state, batch) -> (state, metrics). `labels`: optim.param_labels tree (frozen => no grads)."""
  K = fcfg.num_codebooks
  w = np.asarray(fcfg.loss_weights[:K], np.float32)   # numpy: no array on the (maybe abstract) devices

  def loss_fn(params, mb, drop_t, drop_v, denom_K):
    params = jax.tree.map(lambda p, l: jax.lax.stop_gradient(p) if l == optim.FROZEN else p, params, labels)
    logits, _ = model.apply({"params": params}, mb, drop_t, drop_v)
    _, aux = foley_loss.weighted_loss(fcfg, logits, mb)
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
    drop_t, drop_v = foley_loss.cfg_drop(key, B, fcfg.cfg_drop_text, fcfg.cfg_drop_video)
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
  ap = foley_params.abstract_params(fcfg)
  tx, _ = optim.make_optimizer(c.optim, int(c.train.steps), ap, c.train.get("frozen_regex") or None)
  with sharding.use_mesh(mesh):
    a = jax.eval_shape(make_init_fn(model, tx, fcfg, int(c.train.seed)))
    sh = state_shardings(a, mesh)
  return ckptlib.abstract_with_shardings(unbox_abstract(a), sh), model, fcfg


def load_checkpoint(c, workdir: str, mesh=None, step: int | None = None) -> TrainState:
  """The TrainState of `workdir`'s checkpoint `step` (default latest), placed on `mesh` (any shape)."""
  mesh = mesh or sharding.make_mesh(dict(c.mesh))
  target, _, _ = abstract_state(c, mesh)
  ck = ckptlib.Checkpointer(workdir, async_save=False)
  try:
    with sharding.use_mesh(mesh):
      if step is not None:
        return ck.restore(target, step)[0]
      found = ck.restore_intact(target, reject=False)
      if found is None:
        raise FileNotFoundError(f"{ck.directory}: no checkpoint to restore")
      return found[0]
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
      local = pathlib.Path(workdir)
      if "://" in str(workdir):
        # Checkpoints go to the bucket (orbax); an append-only log cannot (objects are immutable): the
        # metrics stay on process 0's disk, and the log says where.
        local = pathlib.Path("metrics") / str(workdir).replace("://", "/")
        logging.warning("workdir %s is remote: metrics.jsonl and TensorBoard events go to %s on process 0",
                        workdir, local.absolute())
      local.mkdir(parents=True, exist_ok=True)
      self.jsonl = open(local / "metrics.jsonl", "a")
      try:
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(local / "tb"))
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
# Multi-process launch
# --------------------------------------------------------------------------------------------------

DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def detected_cluster() -> str | None:
  """Name of the cluster environment jax.distributed auto-detects here (TPU pod, SLURM, ...), if any."""
  try:
    from jax._src import clusters
  except ImportError:   # private module moved: let jax.distributed.initialize() decide
    return None
  for env in clusters.ClusterEnv._cluster_types:
    if not env.opt_in_only_method and env.is_env_present():
      return env.__name__
  return None


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, heartbeat_timeout_s: int = 100,
                     init_timeout_s: int = 300) -> str:
  """Starts jax.distributed when the job is several processes; returns what it did (for the log).

  Explicit values (flags) win over JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; with
  none of them, a TPU pod / SLURM / Open MPI environment is auto-detected by jax; else one process.
  A process that stops sending heartbeats for `heartbeat_timeout_s` ends every other process (JAX
  terminates them with "the JAX distributed service detected fatal errors").
  """
  env = dict(zip(("coordinator_address", "num_processes", "process_id"), (os.environ.get(k) for k in DISTRIBUTED_ENV)))
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
  vals = {k: given[k] if given[k] is not None else env[k] for k in given}
  timeouts = dict(heartbeat_timeout_seconds=int(heartbeat_timeout_s), initialization_timeout=int(init_timeout_s),
                  shutdown_timeout_seconds=int(heartbeat_timeout_s))
  if any(v is not None for v in vals.values()):
    cluster = detected_cluster()
    missing = [k for k, v in vals.items() if v is None]
    if missing and cluster is None:
      flag_env = ", ".join(f"--{k} (or {DISTRIBUTED_ENV[i]})" for i, k in enumerate(vals) if vals[k] is None)
      raise ConfigError(f"multi-process launch: {flag_env} not set; give all of --coordinator_address, "
                        "--num_processes and --process_id (or their JAX_* variables), or none on a TPU pod / SLURM")
    try:
      n = None if vals["num_processes"] is None else int(vals["num_processes"])
      i = None if vals["process_id"] is None else int(vals["process_id"])
    except ValueError:
      raise ConfigError(f"--num_processes={vals['num_processes']!r} / --process_id={vals['process_id']!r}: "
                        "must be integers") from None
    if n is not None and (n < 1 or (i is not None and not 0 <= i < n)):
      raise ConfigError(f"--process_id={i} with --num_processes={n}: need num_processes >= 1 and "
                        "0 <= process_id < num_processes")
    jax.distributed.initialize(vals["coordinator_address"], n, i, **timeouts)
    how = "flags/environment" + (f" + {cluster}" if missing else "")
  else:
    cluster = detected_cluster()
    if cluster is None:
      return "single process (no coordinator given, no cluster detected)"
    jax.distributed.initialize(**timeouts)
    how = f"auto-detected {cluster}"
  return (f"jax.distributed: process {jax.process_index()} of {jax.process_count()} ({how}), "
          f"{jax.local_device_count()} local / {jax.device_count()} global devices")


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
  """Trains `c` (an experiment ConfigDict) in `workdir`, resuming from its latest intact checkpoint.

  Raises ConfigError for impossible values (before anything compiles), CheckpointError when
  checkpoints exist but none verifies, and NonFiniteLossError (after waiting for pending checkpoint
  writes, saving nothing new) when a loss or gradient norm is not finite. `max_steps_this_run` stops
  early without a checkpoint (tests).
  """
  t = c.train
  workdir = str(workdir)
  validate(c)
  total_steps = int(t.steps)
  seed = int(t.seed)
  G = int(t.global_batch)

  # Initial weights (a fresh run only): one-line errors for a missing checkpoint before anything compiles.
  init_entries = [] if ckptlib.has_checkpoint(workdir) else ckptlib.initial_weight_entries(t)

  # --- mesh ---------------------------------------------------------------------------------------
  mesh = mesh or sharding.make_mesh(dict(c.mesh))
  validate(c, mesh)
  logging.info("mesh %s over %d devices (%s), %d process(es)", dict(mesh.shape), mesh.size,
               jax.devices()[0].device_kind, jax.process_count())

  # --- model + optimizer --------------------------------------------------------------------------
  fcfg = model_config(c)
  model = foley.DreamFoley(fcfg)
  abstract_params = foley_params.abstract_params(fcfg)
  tx, schedule = optim.make_optimizer(c.optim, total_steps, abstract_params, t.get("frozen_regex") or None)
  labels = optim.param_labels(abstract_params, t.get("frozen_regex") or None)

  # --- data (records checked now; the iterator starts where the checkpoint says) -------------------
  from dreamfoley_jax.data import pipeline

  pcfg = pipeline_config(c, fcfg)
  num_records = pipeline.count_records(c.data.train_records)
  if num_records < G:
    raise ConfigError(f"data.train_records: {num_records} records, fewer than one global batch "
                      f"(train.global_batch={G})")
  rows = host_rows_of(mesh, G)

  peak, peak_src = peak_flops_per_device()   # outside the mesh: the CPU probe runs on one device

  ckpt = ckptlib.Checkpointer(workdir, every=int(t.get("ckpt_every", 1000)), keep=int(t.get("keep_ckpts", 3)),
                              async_save=bool(t.get("async_ckpt", True)))
  data_iter, writer, guard = None, None, None
  ckptlib.sync_processes("start")     # processes start seconds apart; later steps run in lockstep
  try:
    with sharding.use_mesh(mesh):
      # --- eval_shape -> shardings -> jit(init) -----------------------------------------------------
      init_fn = make_init_fn(model, tx, fcfg, seed)
      abstract_state = jax.eval_shape(init_fn)
      state_sh = state_shardings(abstract_state, mesh)
      abstract_state = unbox_abstract(abstract_state)

      # --- jit(update) with donated state ----------------------------------------------------------
      update = make_train_step(model, fcfg, tx, schedule, labels, int(t.get("grad_accum", 1)))
      spec0 = global_batch_spec(c, fcfg)
      b_sh = batch_shardings(spec0, mesh)
      p_update = jax.jit(update, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, None), donate_argnums=0)

      # --- resume or init ---------------------------------------------------------------------------
      found = ckpt.restore_intact(ckptlib.abstract_with_shardings(abstract_state, state_sh))
      position = {}
      if found is not None:
        state, position, latest = found
        logging.info("resuming from %s/%d", ckpt.directory, latest)
      else:
        latest = None
        state = nn.unbox(ckptlib.run_aligned(jax.jit(init_fn, out_shardings=state_sh)))
        if init_entries:
          state = state.replace(params=ckptlib.load_initial_weights(state.params, state_sh.params, init_entries))
      start = int(jax.device_get(state.step))
      start_example = _start_example(position, start, G, data_seed(c), num_records)
      dataset = pipeline.make_dataset(pcfg, c.data.train_records, rows=rows, start_batch=start,
                                      start_example=start_example, num_workers=int(c.data.get("num_workers", 0)))
      data_iter = iter(dataset)

      # --- loop ---------------------------------------------------------------------------------------
      writer = MetricWriter(workdir, total_steps)
      guard = ckptlib.PreemptionGuard()
      n_mm = matmul_params(abstract_params)
      logging.info("model FLOPs/step (largest bucket) %.3g; peak %.3g FLOP/s per device (%s)",
                   step_flops(fcfg, n_mm, G, seq_len({k: v.shape for k, v in spec0.items()})), peak, peak_src)
      log_every = int(t.get("log_every", 50))
      last_ckpt = latest
      # The newest checkpoint is confirmed good once the step after it had a finite loss; until then a
      # divergence at that next step discards it (its params may already be blown up).
      unconfirmed = latest
      status = "finished"
      pending = None          # (step, metrics, inputs finite) of the previous step, checked one step late
      t_last, steps_since, tokens_since, flops_since = time.perf_counter(), 0, 0, 0.0

      def position_at(step):
        return {"next_batch": step, "next_example": start_example + (step - start) * G, "global_batch": G,
                "seed": data_seed(c), "records": num_records}

      def check(step_m):
        nonlocal unconfirmed
        s, m, inputs_ok = step_m
        loss, gn = jax.device_get((m["loss"], m["grad_norm"]))
        if np.isfinite(loss) and np.isfinite(gn):
          if unconfirmed is not None and s == unconfirmed + 1:
            unconfirmed = None
            ckpt.prune()
          return
        ckpt.wait()
        data_ok = ckptlib._all_hosts_ok(inputs_ok)
        note = ""
        if not data_ok:
          note = " (its batch holds non-finite input features: check the records)"
        elif unconfirmed is not None and s == unconfirmed + 1:
          ckpt.discard(unconfirmed, "diverged")
          note = (f"; checkpoint step {unconfirmed} was written just before it and is discarded (moved to "
                  f"{ckpt.rejected_dir}): its next step diverged")
        good = ckpt.latest_step()
        where = (f"step {good} in {ckpt.directory} (finite params; the step after it had a finite loss)"
                 if good is not None else f"none: {ckpt.directory} holds no checkpoint")
        raise NonFiniteLossError(
            f"non-finite loss={loss} / grad_norm={gn} at step {s}{note}; stopping. The last good checkpoint is "
            f"{where}; nothing was saved after it. Lower optim.lr or check the data.")

      step = start
      end = total_steps if max_steps_this_run is None else min(total_steps, start + max_steps_this_run)
      while step < end:
        local = next(data_iter)
        inputs_ok = all(np.isfinite(v).all() for v in local.values() if np.issubdtype(v.dtype, np.floating))
        # global_shape given: with it JAX checks this host's rows against the sharding instead of inferring
        # the global batch from them (an inference that goes wrong silently when hosts hold unequal rows)
        batch = {k: jax.make_array_from_process_local_data(b_sh[k], v, (G,) + v.shape[1:]) for k, v in local.items()}
        S = seq_len({k: v.shape for k, v in local.items()})
        tokens = S * G
        flops_since += step_flops(fcfg, n_mm, G, S)
        state, metrics = ckptlib.run_aligned(p_update, state, batch)
        step += 1
        steps_since += 1
        tokens_since += tokens
        if pending is not None:
          check(pending)
        pending = (step, metrics, inputs_ok)
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
          try:
            saved = ckpt.save(step, state, position_at(step), force=True)
          except FloatingPointError as e:
            good = ckpt.latest_step()
            raise NonFiniteLossError(f"{e}; stopping. The last good checkpoint is step {good} in {ckpt.directory}. "
                                     "Lower optim.lr or check the data.") from None
          if saved:
            last_ckpt = unconfirmed = step
        if stop:
          status = "preempted"
          logging.warning("preempted: checkpoint written at step %d, exiting", step)
          break
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
    if guard is not None:
      guard.restore()
    if data_iter is not None and hasattr(data_iter, "close"):
      data_iter.close()
  return TrainResult(step=step, status=status, last_checkpoint=last_ckpt, state=state)


def _start_example(position: dict, step: int, G: int, seed: int, num_records: int) -> int:
  """Where the data stream resumes, in examples of the global stream (any host count, any batch size)."""
  if not position:
    return step * G
  if int(position.get("next_batch", step)) != step:
    raise ckptlib.CheckpointError(f"checkpoint data position {position} does not match its train step {step}")
  if position.get("seed") != seed or position.get("records") != num_records:
    logging.warning("the data changed since the checkpoint (seed %s -> %s, records %s -> %s): the example stream "
                    "resumes at the same position of the new order", position.get("seed"), seed,
                    position.get("records"), num_records)
  if position.get("global_batch") != G:
    logging.warning("train.global_batch changed from %s to %d: resuming the example stream at example %d",
                    position.get("global_batch"), G, int(position["next_example"]))
  return int(position["next_example"])
