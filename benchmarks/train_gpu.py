r"""Training throughput on one GPU: the DreamFoley train step at Qwen2.5-0.5B / 1.5B decoder shapes, JAX and the
PyTorch module, with tokens/s, step time, peak memory and MFU.

  python benchmarks/train_gpu.py --framework=jax --json_out=/tmp/train_jax.json          # 1.5B then 0.5B
  python benchmarks/train_gpu.py --framework=torch --batches_from=/tmp/train_jax.json    # same batch / remat
  JAX_PLATFORMS=cpu python benchmarks/train_gpu.py --sizes=smoke --framework=jax,torch --dtype=float32 \
      --batch=2 --steps=2                                                                # CPU smoke run

The step is the trainer's (`train.make_train_step`: decoder + video projector + K heads + weighted loss, CFG
drops, global-norm clipping, AdamW from experiments/paper_7b.py's optim section), bf16 compute on fp32 master
weights, on one batch of the 10 s bucket (`pipeline.batch_spec`: text 64 + video 250 + audio 259 positions),
scan_layers=True. PyTorch: the exported DreamFoley module (`bench_common.torch_dreamfoley`), bf16 autocast on
fp32 weights, fused AdamW with the same hyperparameters and clipping, each decoder layer torch.compile'd
(regional compilation: one compile serves all layers) unless --notorch_compile.

Batch "auto" (JAX): compile the step at --probe_batch, read XLA's memory analysis (arguments + temporaries),
extrapolate the temporaries linearly to the largest batch (a multiple of 8) that fits --mem_fraction of the
chip, compile that and shrink while the analysis says it does not fit. Remat "auto": no rematerialisation if
that batch is >= --min_batch_no_remat, else remat_policy=full. PyTorch reuses the JAX run's batch and remat
(--batches_from) and halves the batch on out-of-memory.

FLOPs: `bench_common.train_step_flops` (by parts; attention counted as XLA's dense kernel computes it, every
query against every key) is checked against XLA's cost analysis of the same step lowered with unrolled
layers, no remat and XLA attention (`cost_analysis` counts a scanned body once). MFU = model FLOPs per
second / the chip's dense bf16 datasheet peak (train.PEAK_FLOPS; measured GEMM rate printed beside it).
"""
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.gpu_memory_env()

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("framework", ["jax"], "jax and/or torch (in this order, in this process)")
flags.DEFINE_list("sizes", ["1.5b", "0.5b"], "decoder shapes: 0.5b, 1.5b (Qwen2.5), smoke (CPU test)")
flags.DEFINE_string("batch", "auto", "examples per step: an int, or auto (largest that fits; JAX)")
flags.DEFINE_string("remat", "auto", "JAX remat policy: auto | none | full | dots | dots_no_batch")
flags.DEFINE_list("attention", ["xla"], "JAX attention_impl variants, measured one after the other at the same "
                  "batch (e.g. xla,cudnn: before / after)")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "compute dtype (master weights stay fp32)")
flags.DEFINE_integer("steps", 10, "timed steps")
flags.DEFINE_integer("warmup", 2, "untimed steps after the compile (PyTorch: includes torch.compile)")
flags.DEFINE_integer("probe_batch", 8, "batch of the memory probe compile (batch=auto)")
flags.DEFINE_integer("min_batch_no_remat", 16, "remat=auto keeps no remat when at least this batch fits")
flags.DEFINE_float("mem_fraction", 0.9, "share of the device memory limit a batch may plan to use")
flags.DEFINE_bool("check_flops", True, "XLA cost analysis of the unrolled step vs the model FLOP count")
flags.DEFINE_bool("torch_compile", True, "torch.compile each decoder layer (regional compilation)")
flags.DEFINE_string("batches_from", "", "a JSON of a JAX run: its batch and remat per size (PyTorch side)")
flags.DEFINE_bool("check_loss", False, "JAX and PyTorch loss of the same initial weights and batch (both "
                  "frameworks in this process; CPU smoke)")
flags.DEFINE_float("deadline_s", 0, "time budget of this process (0 = none): work that would not fit is skipped")
flags.DEFINE_string("json_out", "", "write the rows here (after every row)")


def experiment(size: str, dtype: str):
  """(experiment ConfigDict, FoleyConfig): experiments/paper_7b.py with the decoder of `size`."""
  from dreamfoley_jax import configs, train

  c = configs.load_config(str(bench_common.ROOT / "experiments/paper_7b.py"))
  d = c.model.decoder
  d.dtype = dtype
  d.scan_layers = True
  c.train.from_scratch = True
  if size == "smoke":                       # a few seconds on a CPU; matmuls still dominate the FLOPs
    d.preset = ""
    d.update(dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    c.model.update(dict(codebook_size=64, sync_dim=32, clip_dim=16, null_text_len=2, null_video_len=2))
    c.data.max_text_len = 8
    c.data.update(dict(bucket_seconds=(1.0,), crop_min_s=0.5, crop_max_s=1.0))
  else:
    d.preset = {"0.5b": "qwen2.5-0.5b", "1.5b": "qwen2.5-1.5b"}[size]
  return c, train.model_config(c)


def random_batch(c, fcfg, B, seed=0):
  """A batch of the largest bucket: random caption lengths, random codes, all video and audio real."""
  import numpy as np

  from dreamfoley_jax import train
  from dreamfoley_jax.data import pipeline

  spec = pipeline.batch_spec(train.pipeline_config(c, fcfg, batch_size=B))
  rng = np.random.default_rng(seed)
  b = {}
  for k, (s, dt) in spec.items():
    if dt == np.bool_:
      b[k] = np.ones(s, bool)
    elif k == "text_ids":
      b[k] = rng.integers(0, fcfg.decoder.vocab_size, s).astype(np.int32)
    elif k == "audio_ids":
      b[k] = rng.integers(0, fcfg.codebook_size, s).astype(np.int32)
    else:
      b[k] = rng.normal(size=s).astype(dt)
  Lt = b["text_mask"].shape[1]
  b["text_mask"] = np.arange(Lt)[None] < rng.integers(max(2, Lt // 4), Lt + 1, (B, 1))
  b["audio_vacant"][:] = False
  return b


def _gib(x):
  return "-" if x is None else f"{x:.1f} GiB"


def seq_parts(batch):
  return batch["text_ids"].shape[1], batch["video_mask"].shape[1], batch["audio_ids"].shape[1]


def model_flops(fcfg, batch):
  return bench_common.train_step_flops(fcfg, batch["text_ids"].shape[0], *seq_parts(batch))


def peak_flops(device_kind: str):
  """(dense bf16 peak FLOP/s, source) of a device kind by train.PEAK_FLOPS (the CPU: its measured GEMM rate)."""
  from dreamfoley_jax import train

  k = device_kind.lower()
  for name in sorted(train.PEAK_FLOPS, key=len, reverse=True):
    if name in k or name.replace("nvidia ", "") in k:
      return train.PEAK_FLOPS[name], f"datasheet {name}"
  if "cpu" in k or not k:
    rate = train.measure_cpu_gemm()
    return rate, f"measured CPU fp32 GEMM {rate / 1e9:.0f} GFLOP/s"
  return float("nan"), f"unknown device kind {device_kind!r}"


def mem_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


# --------------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------------

class JaxTrainer:
  """The real train step of one (size, remat, attention) on one device, compiled ahead of time."""

  def __init__(self, c, fcfg):
    import jax

    from dreamfoley_jax import optim, sharding, train
    from dreamfoley_jax.models import foley
    from dreamfoley_jax.models import params as foley_params

    self.c, self.fcfg = c, fcfg
    self.mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    self.model = foley.DreamFoley(fcfg)
    ap = foley_params.abstract_params(fcfg)
    self.tx, self.sched = optim.make_optimizer(c.optim, int(c.train.steps), ap, None)
    self.labels = optim.param_labels(ap, None)
    self.update = train.make_train_step(self.model, fcfg, self.tx, self.sched, self.labels)
    with sharding.use_mesh(self.mesh):
      self.init = train.make_init_fn(self.model, self.tx, fcfg, 0)
      a = jax.eval_shape(self.init)
      self.state_sh = train.state_shardings(a, self.mesh)
      self.abstract_state = train.unbox_abstract(a)
    self.n_params = sum(int(x.size) for x in jax.tree.leaves(self.abstract_state.params))
    self.n_matmul = train.matmul_params(ap)

  def compile(self, batch):
    import jax

    from dreamfoley_jax import sharding, train

    b_sh = train.batch_shardings(batch, self.mesh)
    ab = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=b_sh[k]) for k, v in batch.items()}
    st = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.abstract_state,
                      self.state_sh)
    t = time.perf_counter()
    with sharding.use_mesh(self.mesh):
      compiled = jax.jit(self.update, in_shardings=(self.state_sh, b_sh), out_shardings=(self.state_sh, None),
                         donate_argnums=0).lower(st, ab).compile()
    return compiled, b_sh, time.perf_counter() - t

  def fresh_state(self):
    import flax.linen as nn
    import jax

    from dreamfoley_jax import sharding

    with sharding.use_mesh(self.mesh):
      return nn.unbox(jax.jit(self.init, out_shardings=self.state_sh)())


def xla_flops(c, fcfg, batch) -> tuple[float, float]:
  """(XLA's cost-analysis flops, the FLOPs of its dot ops) of the same train step lowered with unrolled layers,
  no remat and XLA attention: what the model FLOP count must match (a scanned program's analysis counts one
  layer). Lowered only, not compiled: the module is backend-independent."""
  import jax

  from dreamfoley_jax import sharding

  d = fcfg.decoder.replace(scan_layers=False, remat_policy="none", attention_impl="xla")
  tw = JaxTrainer(c, fcfg.replace(decoder=d))
  ab = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  with sharding.use_mesh(tw.mesh):
    lowered = jax.jit(tw.update).lower(tw.abstract_state, ab)
  return float(lowered.cost_analysis()["flops"]), bench_common.hlo_dot_flops(lowered.as_text(dialect="hlo"))


def device_limit_bytes():
  import jax

  s = jax.devices()[0].memory_stats() or {}
  return s.get("bytes_limit")


def peak_bytes_in_use():
  import jax

  s = jax.devices()[0].memory_stats() or {}
  return s.get("peak_bytes_in_use")


def batch_that_fits(planned: float, args: float, fixed: float, b0: int, budget: float, multiple: int = 8):
  """(bytes per example, the largest multiple of `multiple` that fits `budget`) from a compile at batch b0 that
  plans `planned` bytes, of which `args` are arguments and `fixed` temporaries independent of the batch."""
  per_ex = max((planned - args - fixed) / b0, 1.0)
  return per_ex, int((budget - args - fixed) // per_ex) // multiple * multiple


def choose_batch(c, fcfg, trainer_for, deadline, log):
  """(batch, remat, compiled, b_sh, notes) for batch=auto: the largest multiple of 8 whose step fits."""
  limit = device_limit_bytes()
  if limit is None:
    raise SystemExit("--batch=auto needs the device's memory limit (jax memory_stats); pass --batch=N on this backend")
  budget = FLAGS.mem_fraction * limit
  policies = ["none", "full"] if FLAGS.remat == "auto" else [FLAGS.remat]
  for policy in policies:
    tr = trainer_for(policy)
    b0 = FLAGS.probe_batch
    comp, _, ct = tr.compile(random_batch(c, tr.fcfg, b0))
    args = comp.memory_analysis().argument_size_in_bytes
    fixed = tr.n_params * (4 + 2)    # temporaries that do not grow with the batch: fp32 grads, bf16 weights
    per_ex, est = batch_that_fits(mem_bytes(comp), args, fixed, b0, budget)
    log(f"  probe [{policy}] batch {b0}: {mem_bytes(comp) / 2**30:.1f} GiB planned (args {args / 2**30:.1f}), "
        f"~{per_ex / 2**20:.0f} MiB per example -> batch {est} (budget {budget / 2**30:.1f} GiB; compile {ct:.0f} s)")
    if est < FLAGS.min_batch_no_remat and policy != policies[-1]:
      continue
    B = max(est, 8)
    while True:
      if not deadline.fits(2 * ct):
        raise TimeoutError(f"no time left to compile batch {B}")
      comp, b_sh, ct = tr.compile(random_batch(c, tr.fcfg, B))
      planned = mem_bytes(comp)
      if planned <= budget or B <= 8:
        return B, policy, tr, comp, b_sh, ct, planned
      B2 = max(8, int(B * (budget - args - fixed) / max(planned - args - fixed, 1)) // 8 * 8)
      log(f"  batch {B}: {planned / 2**30:.1f} GiB planned > budget; trying {B2}")
      B = B2 if B2 < B else B - 8
  raise AssertionError("unreachable")


def run_jax(sizes, res, deadline, log):
  import jax
  import numpy as np

  dev = jax.devices()[0]
  peak, peak_src = peak_flops(dev.device_kind if dev.platform != "cpu" else "cpu")
  log(f"jax device {dev.device_kind}, peak {peak / 1e12:.1f} TFLOP/s ({peak_src})")
  for attn in FLAGS.attention:                 # every size with the first variant, then the others
    for size in sizes:
      what = f"jax {size} attention={attn}"
      if not deadline.fits(30 if size == "smoke" else 90):
        res.skip(what, f"{deadline.left():.0f} s left in this process's budget")
        continue
      try:
        row = jax_one(size, attn, peak, peak_src, res, deadline, log)
      except Exception as e:                  # one variant failing (e.g. cuDNN refusing a shape) is a result
        res.skip(what, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        continue
      res.add(row)
      log(f"{what}: batch {row['batch']} x {row['seq']} tokens, remat {row['remat']}: {row['step_ms']:.1f} ms/step, "
          f"{row['tokens_per_s']:,.0f} tokens/s, {row['model_tflops_per_s']:.1f} TFLOP/s = MFU "
          f"{100 * row['mfu']:.1f}%; peak memory {_gib(row.get('peak_mem_gib'))}; "
          f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}")


_CHOSEN = {}     # size -> (batch, remat): the first attention variant's choice serves the others


def jax_one(size, attn, peak, peak_src, res, deadline, log):
  import jax
  import numpy as np

  c, fcfg0 = experiment(size, FLAGS.dtype)

  def trainer_for(policy):
    d = fcfg0.decoder.replace(remat_policy=policy, attention_impl=attn)
    return JaxTrainer(c, fcfg0.replace(decoder=d))

  t0 = time.perf_counter()
  if size in _CHOSEN:
    B, policy = _CHOSEN[size]
    tr = trainer_for(policy)
    comp, b_sh, ct = tr.compile(random_batch(c, tr.fcfg, B))
    planned = mem_bytes(comp)
  elif FLAGS.batch == "auto":
    B, policy, tr, comp, b_sh, ct, planned = choose_batch(c, fcfg0, trainer_for, deadline, log)
  else:
    B, policy = int(FLAGS.batch), ("none" if FLAGS.remat == "auto" else FLAGS.remat)
    tr = trainer_for(policy)
    comp, b_sh, ct = tr.compile(random_batch(c, tr.fcfg, B))
    planned = mem_bytes(comp)
  _CHOSEN.setdefault(size, (B, policy))
  batch = random_batch(c, tr.fcfg, B)
  gb = {k: jax.device_put(x, b_sh[k]) for k, x in batch.items()}
  state = tr.fresh_state()
  losses = []
  state, m = comp(state, gb)
  losses.append(float(m["loss"]))
  for _ in range(FLAGS.warmup - 1):
    state, m = comp(state, gb)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, m = comp(state, gb)
  jax.block_until_ready(m)
  step = (time.perf_counter() - t) / FLAGS.steps
  losses.append(float(m["loss"]))
  flops = model_flops(tr.fcfg, batch)
  Lt, Tv, La = seq_parts(batch)
  row = dict(framework="jax", size=size, attention=attn, remat=policy, dtype=FLAGS.dtype, params=tr.n_params,
             matmul_params=tr.n_matmul, batch=B, seq=Lt + Tv + La, seq_parts=[Lt, Tv, La],
             tokens_per_step=B * (Lt + Tv + La), compile_s=ct, step_ms=1e3 * step,
             tokens_per_s=B * (Lt + Tv + La) / step, model_flops=flops, model_tflops_per_s=flops / step / 1e12,
             peak_flops=peak, peak_src=peak_src, mfu=flops / step / peak, planned_mem_gib=planned / 2**30,
             loss_first=losses[0], loss_last=losses[-1], wall_s=time.perf_counter() - t0)
  pk = peak_bytes_in_use()
  row["peak_mem_gib"] = None if pk is None else pk / 2**30
  if FLAGS.check_flops and attn == FLAGS.attention[0] and deadline.fits(60):
    t = time.perf_counter()
    x, dots = xla_flops(c, tr.fcfg, batch)
    row.update(xla_flops=x, xla_over_model=x / flops, xla_dot_flops=dots, xla_dots_over_model=dots / flops)
    log(f"  FLOPs per step: model {flops:.6g}; XLA (same step unrolled, no remat, XLA attention): its dot ops "
        f"{dots:.6g} (ratio {dots / flops:.6f}), cost analysis {x:.6g} (ratio {x / flops:.4f}: elementwise ops "
        f"on top) ({time.perf_counter() - t:.0f} s)")
  del state, gb
  return row


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------

def torch_batch(batch, device):
  import numpy as np
  import torch

  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = torch.from_numpy(v.astype(np.int64) if v.dtype.kind in "iu" else v).to(device)
  return out


def torch_optimizer(model, c, device):
  """AdamW as experiments/paper_7b.py's optim section: fused, decay on matrices and embedding tables (not
  biases or norm scales), the trainer's lr schedule (warmup + cosine) as a LambdaLR."""
  import torch

  from dreamfoley_jax import optim

  o = c.optim
  named = list(model.named_parameters())
  decay = [p for n, p in named if p.dim() >= 2 and not n.endswith("bias")]
  rest = [p for n, p in named if not (p.dim() >= 2 and not n.endswith("bias"))]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(o.weight_decay)},
                           {"params": rest, "weight_decay": 0.0}], lr=float(o.lr), betas=(float(o.b1), float(o.b2)),
                          eps=float(o.eps), fused=device.type == "cuda")
  sched = optim.make_schedule(o, int(c.train.steps))
  n = FLAGS.warmup + FLAGS.steps + 1
  lrs = [float(sched(i)) / float(o.lr) for i in range(n)]       # host values (JAX on CPU in this process)
  return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lrs[min(s, n - 1)])


def torch_model(fcfg, device, params=None):
  import torch

  import bench_common

  if params is None and device.type == "cuda":
    with torch.device(device):
      m = bench_common.torch_dreamfoley(fcfg, dtype=torch.float32)
  else:
    m = bench_common.torch_dreamfoley(fcfg, params, dtype=torch.float32)
  return m.to(device).train()


def run_torch(sizes, res, deadline, log, chosen):
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  peak, peak_src = peak_flops(torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
  log(f"torch device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else bench_common.cpu_model()}), "
      f"peak {peak / 1e12:.1f} TFLOP/s ({peak_src})")
  for size in sizes:
    what = f"torch {size}"
    if not deadline.fits(30 if size == "smoke" else 90):
      res.skip(what, f"{deadline.left():.0f} s left in this process's budget")
      continue
    if size in chosen:
      B, policy = chosen[size]
    elif FLAGS.batch != "auto":
      B, policy = int(FLAGS.batch), ("none" if FLAGS.remat == "auto" else FLAGS.remat)
    else:
      res.skip(what, "batch=auto needs --batches_from (the JAX run's choice) on the PyTorch side")
      continue
    compile_layers, error = FLAGS.torch_compile, None
    while True:
      try:
        row = torch_one(size, B, policy, device, peak, peak_src, log, compile_layers)
        break
      except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        if B <= 1:
          raise
        log(f"  torch {size}: batch {B} out of memory; trying {B // 2}")
        B //= 2
      except Exception as e:              # torch.compile failing is a finding: report it, time eager instead
        if not compile_layers:
          raise
        error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        log(f"  torch {size}: torch.compile'd layers failed ({error}); timing eager")
        compile_layers = False
        torch._dynamo.reset()
    row["compile_error"] = error
    res.add(row)
    log(f"{what}: batch {row['batch']} x {row['seq']} tokens, checkpointing {row['remat']}, compile "
        f"{row['torch_compile']}: {row['step_ms']:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, MFU "
        f"{100 * row['mfu']:.1f}%; peak memory {_gib(row.get('peak_mem_gib'))}; "
        f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}")


def torch_one(size, B, policy, device, peak, peak_src, log, compile_layers):
  import torch

  c, fcfg = experiment(size, FLAGS.dtype)
  t0 = time.perf_counter()
  model = torch_model(fcfg, device)
  if policy != "none":
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
  if compile_layers:
    for layer in model.model.layers:
      layer.compile()
  opt, lr_sched = torch_optimizer(model, c, device)
  batch = random_batch(c, fcfg, B)
  tb = torch_batch(batch, device)
  bf16 = FLAGS.dtype == "bfloat16"
  clip = float(c.optim.clip_norm)
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()

  def step():
    dt, dv = model.cfg_drop(B)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = model(**tb, drop_text=dt, drop_video=dv).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    lr_sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  losses = [float(step())]
  for _ in range(FLAGS.warmup - 1):
    step()
  sync()
  warm_s = time.perf_counter() - t0
  t = time.perf_counter()
  for _ in range(FLAGS.steps):
    loss = step()
  sync()
  dt = (time.perf_counter() - t) / FLAGS.steps
  losses.append(float(loss))
  flops = model_flops(fcfg, batch)
  Lt, Tv, La = seq_parts(batch)
  n = sum(p.numel() for p in model.parameters())
  row = dict(framework="torch", size=size, attention="sdpa", remat=policy, dtype=FLAGS.dtype, params=n, batch=B,
             seq=Lt + Tv + La, seq_parts=[Lt, Tv, La], tokens_per_step=B * (Lt + Tv + La),
             torch_compile=compile_layers, compile_s=warm_s, step_ms=1e3 * dt,
             tokens_per_s=B * (Lt + Tv + La) / dt, model_flops=flops, model_tflops_per_s=flops / dt / 1e12,
             peak_flops=peak, peak_src=peak_src, mfu=flops / dt / peak, loss_first=losses[0], loss_last=losses[-1],
             peak_mem_gib=(torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None),
             torch_version=torch.__version__)
  del model, opt
  if device.type == "cuda":
    torch.cuda.empty_cache()
  return row


def check_loss(log):
  """JAX and PyTorch weighted loss of the same initial weights and batch (no CFG drops)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from dreamfoley_jax.models import foley
  from dreamfoley_jax.models import loss as foley_loss
  from dreamfoley_jax.models import params as foley_params

  c, fcfg = experiment(FLAGS.sizes[0], FLAGS.dtype)
  params = jax.device_get(foley_params.init_params(fcfg, seed=3))
  batch = random_batch(c, fcfg, 2, seed=5)
  logits, _ = foley.DreamFoley(fcfg).apply({"params": params}, jax.tree.map(jnp.asarray, batch))
  lj = float(foley_loss.weighted_loss(fcfg, logits, jax.tree.map(jnp.asarray, batch))[0])
  device = torch.device("cpu")
  tm = torch_model(fcfg, device, params=jax.tree.map(np.asarray, params))
  with torch.no_grad():
    lt = float(tm(**torch_batch(batch, device)).loss)
  log(f"loss check ({FLAGS.sizes[0]}, {FLAGS.dtype}, same weights and batch): JAX {lj:.6f}, PyTorch {lt:.6f}, "
      f"|diff| {abs(lj - lt):.2e}")
  return {"jax": lj, "torch": lt, "abs_diff": abs(lj - lt)}


def main(argv):
  del argv
  log = lambda s: print(s, flush=True)
  deadline = bench_common.Deadline(FLAGS.deadline_s)
  res = bench_common.Results(FLAGS.json_out, bench="train_gpu", argv=sys.argv[1:])
  fw = [f.strip() for f in FLAGS.framework]
  bad = [f for f in fw if f not in ("jax", "torch")]
  if bad:
    raise app.UsageError(f"--framework: unknown {bad}; accepted: jax, torch")
  bad = [s for s in FLAGS.sizes if s not in ("0.5b", "1.5b", "smoke")]
  if bad:
    raise app.UsageError(f"--sizes: unknown {bad}; accepted: 0.5b, 1.5b, smoke")
  if FLAGS.batch != "auto" and not FLAGS.batch.isdigit():
    raise app.UsageError(f"--batch must be a positive integer or auto, got {FLAGS.batch!r}")
  if "jax" not in fw:
    os.environ["JAX_PLATFORMS"] = "cpu"     # host-side helpers only: no JAX allocation on the GPU PyTorch uses
  chosen = {}
  if FLAGS.batches_from:
    import json

    p = pathlib.Path(FLAGS.batches_from)
    if not p.exists():
      raise app.UsageError(f"--batches_from={p}: no such file")
    for r in json.loads(p.read_text())["rows"]:
      chosen.setdefault(r["size"], (int(r["batch"]), r["remat"]))
  if "jax" in fw:
    import jax

    res.doc["machine"] = bench_common.machine_line(jax.devices()[0].device_kind)
    res.doc["jax_version"] = jax.__version__
    log(f"train_gpu [jax {jax.__version__}]: {res.doc['machine']}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    if jax.default_backend() != "cpu":
      res.doc["measured_bf16_matmul_flops"] = bench_common.matmul_rate("bfloat16")
      log(f"measured bf16 matmul (8192^3): {res.doc['measured_bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")
    run_jax(FLAGS.sizes, res, deadline, log)
    for r in res.doc["rows"]:
      chosen.setdefault(r["size"], (r["batch"], r["remat"]))
  if "torch" in fw:
    import torch

    res.doc.setdefault("machine", bench_common.machine_line(torch.cuda.get_device_name() if torch.cuda.is_available()
                                                          else "cpu"))
    log(f"train_gpu [torch {torch.__version__}]")
    run_torch(FLAGS.sizes, res, deadline, log, chosen)
  if FLAGS.check_loss:
    res.doc["loss_check"] = check_loss(log)
  res.flush()
  cols = [("framework", "framework", None), ("size", "size", None), ("attention", "attention", None),
          ("remat", "remat", None), ("batch", "batch", None), ("tokens/step", "tokens_per_step", "{:,}"),
          ("step ms", "step_ms", "{:.1f}"), ("tokens/s", "tokens_per_s", "{:,.0f}"),
          ("model TFLOP/s", "model_tflops_per_s", "{:.1f}"), ("MFU", "mfu", "{:.1%}"),
          ("peak mem GiB", "peak_mem_gib", "{:.1f}"), ("XLA/model FLOPs", "xla_over_model", "{:.4f}")]
  print("\n" + bench_common.table(res.doc["rows"], cols))


if __name__ == "__main__":
  app.run(main)
