r"""Batched generation on one GPU: the 7B-shaped DreamFoley (random bf16 weights) generating 10 s clips with CFG
at batch 1 / 8 / 32 / 64 / the largest that fits, JAX and the PyTorch module, plus a 60 s windowed clip.

  python benchmarks/generate_gpu.py --framework=jax --json_out=/tmp/gen_jax.json
  python benchmarks/generate_gpu.py --framework=torch --batches=1,64 --json_out=/tmp/gen_torch.json
  JAX_PLATFORMS=cpu python benchmarks/generate_gpu.py --config=tiny --framework=jax,torch --batches=1,2 \
      --seconds=1 --long_seconds=2 --reps=1                                              # CPU smoke run

JAX runs the path tools/generate.py runs (`sampling.sample_long`: video fused on the host, one window for a
10 s clip; `foley_params.inference_layout`-style bf16 weights, unrolled layers), with the paper's sampling settings
(CFG 3 as a doubled batch, top-k 25, top-p 0.9, temperature 1). PyTorch: the exported module's
`generate(cache_implementation="static", compile=True)` (torch.compile, CUDA graphs on a GPU).

Per batch, one compiled program (max_frames = the window) is timed at three lengths: full (10 s: 258 decode
steps), half (133 steps) and 1 frame (9 steps). Decode step = (t_full - t_half) / 125; prefill = t_1 - 9
steps (prefill + host work); clips/s = batch / t_full (the whole call). Floors per step: weight + KV bytes over
the measured read bandwidth, and rows x FLOPs per row over the measured matmul rates (bf16, and fp32 for the
heads' last layer, which runs at HIGHEST precision); the larger one binds, and the step's ratio to it is the
figure the goal (<= 1.25) is about. HBM: the process's peak bytes in use after the batch (batches run in
increasing order). "max" = the largest multiple of 8 that the measured per-clip memory says fits
--mem_fraction of the chip, capped at --max_batch.

--variants adds attention_impl variants (e.g. cudnn: the flash kernel for prefill) at --variant_batches,
each measured beside the default in the same run (before / after).
"""
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_common  # noqa: E402

bench_common.gpu_memory_env()

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("framework", ["jax"], "jax and/or torch (in this order, in this process)")
flags.DEFINE_enum("config", "7b", ["7b", "small", "tiny"], "model shape (small / tiny: smoke runs)")
flags.DEFINE_list("batches", ["1", "64", "max", "long", "8", "32"], "clips per call (CFG doubles the rows), run in "
                  "this order (the priority under --deadline_s); max = the largest that fits by the memory of the "
                  "largest batch before it (JAX; capped at --max_batch); long = the --long_seconds clip here")
flags.DEFINE_integer("max_batch", 256, "cap of the 'max' batch")
flags.DEFINE_float("mem_fraction", 0.9, "share of the device memory limit the 'max' batch may plan to use")
flags.DEFINE_float("seconds", 10.0, "clip length (the window: experiments/paper_7b.py's window_s)")
flags.DEFINE_integer("reps", 2, "timed (full, half) pairs after the first calls; medians")
flags.DEFINE_list("variants", ["xla"], "JAX attention_impl variants; the first runs at every batch, the others at "
                  "--variant_batches (e.g. xla,cudnn: cuDNN flash attention in prefill)")
flags.DEFINE_list("variant_batches", ["max"], "batches at which the extra --variants run")
flags.DEFINE_float("long_seconds", 60.0, "the windowed clip of the 'long' entry of --batches (0 = none; JAX)")
flags.DEFINE_integer("long_batch", 1, "clips of the windowed run")
flags.DEFINE_bool("check", True, "JAX: greedy sampler == argmax of the teacher-forced guided logits on a tiny model, "
                  "on this device, first")
flags.DEFINE_bool("check_flops", True, "JAX: the floors' FLOP count vs the dot ops of the lowered sampler (batch 1)")
flags.DEFINE_bool("check_torch", False, "greedy codes of JAX and PyTorch with the same fp32 weights (both "
                  "frameworks in this process; CPU smoke)")
flags.DEFINE_string("batches_from", "", "a JSON of a JAX run: its 'max' batch (PyTorch side)")
flags.DEFINE_float("deadline_s", 0, "time budget of this process (0 = none): work that would not fit is skipped")
flags.DEFINE_string("json_out", "", "write the rows here (after every row)")

TEXT_LEN = 16


def model_config(name, variant="xla"):
  """FoleyConfig in its sampling layout: bf16 weights and compute, unrolled layers (7b / small), fp32 (tiny)."""
  from dreamfoley_jax.models import foley, qwen2

  import bench_common

  if name == "7b":   # experiments/paper_7b.py's model, as foley_params.inference_layout lays it out
    dec = qwen2.PRESETS["qwen2.5-7b"].replace(dtype="bfloat16", param_dtype="bfloat16", attention_impl=variant)
    return foley.FoleyConfig(decoder=dec)
  cfg = bench_common.sample_configs()[name]
  dt = "bfloat16" if name == "small" else "float32"
  return cfg.replace(decoder=cfg.decoder.replace(dtype=dt, param_dtype=dt, attention_impl=variant))


def steps_for(frames, K):
  """Decode steps of a clip of `frames` frames (every clip of the batch that long): frames + K."""
  return frames + K


def context_frames(window):
  """experiments/paper_7b.py's 3 s of context (less for short smoke windows)."""
  return min(75, window // 3)


def prompt(cfg, B, frames, seed=0):
  import bench_common

  return bench_common.random_prompt_batch(cfg, B, frames, seed=seed, text_len=TEXT_LEN)


def time_lengths(run, frames, K, reps):
  """Times `run(n)` (blocking) at n = frames, frames // 2, 1: {first_s, full_s, half_s, one_s, step_s,
  prefill_s, runs}. The first call (compile) is at full length."""
  half = frames // 2
  t = time.perf_counter()
  run(frames)
  first = time.perf_counter() - t
  ones = []
  for _ in range(2):                        # the first short call after a compile pays host-side warm-up
    t = time.perf_counter()
    run(1)
    ones.append(time.perf_counter() - t)
  one = min(ones)
  full, halves = [], []
  for _ in range(reps):
    for n, acc in ((frames, full), (half, halves)):
      t = time.perf_counter()
      run(n)
      acc.append(time.perf_counter() - t)
  mf, mh = statistics.median(full), statistics.median(halves)
  step = (mf - mh) / (steps_for(frames, K) - steps_for(half, K))
  prefill = one - steps_for(1, K) * step
  return dict(first_s=first, full_s=mf, half_s=mh, one_s=one, step_s=step, step_ms=1e3 * step,
              prefill_s=prefill, prefill_ms=1e3 * prefill, runs_full=full, runs_half=halves)


class Ceilings:
  """Measured device ceilings: read bandwidth (GB/s), bf16 and fp32 (HIGHEST) matmul FLOP/s."""

  def __init__(self, log):
    import jax

    import bench_common

    self.read_gbs, self.copy_gbs = bench_common.measured_bandwidth()
    self.bf16 = bench_common.matmul_rate("bfloat16")
    self.fp32 = bench_common.matmul_rate("float32", precision="highest")
    kind = jax.devices()[0].device_kind
    self.datasheet_gbs = bench_common.datasheet(kind, bench_common.DATASHEET_HBM_GBS)
    self.datasheet_flops = bench_common.datasheet(kind, bench_common.DATASHEET_BF16_FLOPS)
    log(f"measured: read {self.read_gbs:.0f} GB/s (elementwise read+write {self.copy_gbs:.0f}), bf16 matmul "
        f"{self.bf16 / 1e12:.1f} TFLOP/s, fp32 HIGHEST matmul {self.fp32 / 1e12:.2f} TFLOP/s; datasheet "
        f"{self.datasheet_gbs} GB/s, {None if self.datasheet_flops is None else self.datasheet_flops / 1e12} TFLOP/s")

  def as_dict(self):
    return dict(read_gbs=self.read_gbs, copy_gbs=self.copy_gbs, bf16_flops=self.bf16, fp32_flops=self.fp32,
                datasheet_gbs=self.datasheet_gbs, datasheet_bf16_flops=self.datasheet_flops)


def sampler_dot_flops(cfg, params, B, frames):
  """FLOPs of the dot ops of the sampler program (`sampling.sample_program` lowered as sample_long calls it for one
  window, not compiled): its prefill, plus one decode step (the loop body appears once)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dreamfoley_jax import sampling as S

  b = prompt(cfg, B, frames)
  v, m = S.fused_video(cfg, b)
  batch = {"text_ids": jnp.asarray(b["text_ids"]), "text_mask": jnp.asarray(b["text_mask"]),
           "video_feats": jnp.asarray(v), "video_mask": jnp.asarray(m)}
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B, dtype=jnp.uint32))
  pr = S.make_prompt(cfg, batch, np.full((B,), frames, np.int32))
  lowered = S.sample_program.lower(params, pr, keys, cfg=cfg, sc=S.SampleConfig(), max_frames=frames,
                                   return_logits=False)
  return bench_common.hlo_dot_flops(lowered.as_text(dialect="hlo"))


def floors(cfg, ceil, B, frames, weight_bytes, kv_bytes, slots):
  """Per-step and prefill floors (s) of B clips with CFG (2B rows)."""
  rows = 2 * B
  bf, f32 = bench_common.decode_flops(cfg, slots)
  pbf, _ = bench_common.prefill_flops(cfg, TEXT_LEN + frames, TEXT_LEN + cfg.null_video_len, frames, slots)
  bw = (weight_bytes + kv_bytes) / (ceil.read_gbs * 1e9)
  compute = rows * (bf / ceil.bf16 + f32 / ceil.fp32)
  prefill = max(B * pbf / ceil.bf16, weight_bytes / (ceil.read_gbs * 1e9))
  return dict(bw_floor_s=bw, compute_floor_s=compute, floor_s=max(bw, compute), bw_floor_ms=1e3 * bw,
              compute_floor_ms=1e3 * compute, bound="compute" if compute > bw else "bandwidth",
              decode_flops_per_row=bf + f32, decode_fp32_flops_per_row=f32, prefill_flops_per_clip=pbf,
              prefill_floor_s=prefill, prefill_floor_ms=1e3 * prefill)


# --------------------------------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------------------------------

def run_jax(res, deadline, log):
  import jax
  import numpy as np

  from dreamfoley_jax import sampling as S

  import bench_common

  dev = jax.devices()[0]
  res.doc["machine"] = bench_common.machine_line(dev.device_kind)
  res.doc["jax_version"] = jax.__version__
  log(f"generate_gpu [jax {jax.__version__}]: {res.doc['machine']}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if FLAGS.check:
    t = time.perf_counter()
    agree, n = bench_common.check_greedy(model_config("tiny"))
    res.doc["greedy_check"] = {"agree": agree, "cells": n}
    log(f"check: greedy sampler tokens == argmax of full-forward guided logits: {100 * agree:.2f}% of {n} code "
        f"cells ({time.perf_counter() - t:.1f} s)")
    if agree < 1.0:
      raise SystemExit("check failed: the sampler disagrees with the full forward on this device")
  ceil = Ceilings(log)
  res.doc["ceilings"] = ceil.as_dict()
  cfg0 = model_config(FLAGS.config)
  t = time.perf_counter()
  params = bench_common.device_random_params(cfg0)
  jax.block_until_ready(params)
  wb = bench_common.weight_bytes(params)
  res.doc["params"] = sum(int(x.size) for x in jax.tree.leaves(params))
  log(f"{FLAGS.config}: {res.doc['params'] / 1e9:.2f} B params, {wb / 1e9:.2f} GB read per decode step "
      f"({time.perf_counter() - t:.1f} s)")
  frames = int(round(FLAGS.seconds * 25))
  K = cfg0.num_codebooks
  slots = S.cache_slots(TEXT_LEN + frames, S.num_columns(frames, K))
  if FLAGS.check_flops:
    t = time.perf_counter()
    dots = sampler_dot_flops(cfg0, params, 1, frames)
    fl = floors(cfg0, ceil, 1, frames, wb, 0, slots)
    want = fl["prefill_flops_per_clip"] + 2 * fl["decode_flops_per_row"]
    res.doc["flops_check"] = {"batch": 1, "xla_dot_flops": dots, "model_flops": want, "ratio": dots / want}
    log(f"FLOPs of the sampler program at batch 1 (prefill + one decode step): its dot ops {dots:.6g}, the floors' "
        f"count {want:.6g}: ratio {dots / want:.6f} ({time.perf_counter() - t:.0f} s)")
  limit = (dev.memory_stats() or {}).get("bytes_limit")
  st = {"per_clip": None, "last": None, "max": None}   # HBM per clip of the largest batch so far; last row

  def one(B, variant, flag):
    what = f"jax batch {B} [{variant}]"
    last = st["last"]
    est = 60.0 if last is None else (1.3 * last["first_s"] +
                                     (2 + 2 * FLAGS.reps) * last["full_s"] * max(1.0, B / last["batch"]))
    if not deadline.fits(est):
      res.skip(what, f"~{est:.0f} s needed, {deadline.left():.0f} s left in this process's budget")
      return
    try:
      row = jax_batch(model_config(FLAGS.config, variant), params, B, frames, K, slots, wb, ceil, log)
    except Exception as e:                  # a variant the device refuses (e.g. a cuDNN shape) is a result
      res.skip(what, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
      return
    row.update(variant=variant, batch_flag=flag)
    st["last"] = row
    res.add(row)
    pk = row.get("hbm_peak_gib")
    if variant == FLAGS.variants[0] and pk is not None:
      st["per_clip"] = max((pk * 2**30 - wb) / B, 1.0)    # batches run in increasing order: the largest so far
    log(f"{what}: {row['clips_per_s']:.2f} clips/s (call {row['full_s']:.2f} s), decode {row['step_ms']:.2f} "
        f"ms/step ({row['bound']}-bound floor {1e3 * row['floor_s']:.2f} ms: x{row['step_over_floor']:.2f}), "
        f"prefill {row['prefill_ms']:.0f} ms (floor {row['prefill_floor_ms']:.0f}), HBM peak "
        f"{pk if pk is None else round(pk, 1)} GiB; first call {row['first_s']:.1f} s")

  def resolve(b):
    if b != "max":
      return int(b)
    if st["max"] is None:
      if st["per_clip"] is None or limit is None:
        res.skip("jax batch max", "no memory measurement yet (run a numeric batch first) or no device memory limit")
        return None
      fit = int((FLAGS.mem_fraction * limit - wb) // st["per_clip"]) // 8 * 8
      st["max"] = max(8, min(fit, FLAGS.max_batch))
      res.doc["max_batch_fit_estimate"] = fit
      log(f"max batch: {fit} clips fit by the measured {st['per_clip'] / 2**20:.0f} MiB per clip; running "
          f"{st['max']} (--max_batch {FLAGS.max_batch})")
    return st["max"]

  # 1. the batches and the long clip in --batches order ('max' sized from the largest batch measured before it);
  # 2. the other variants at --variant_batches.
  done = set()
  for b in FLAGS.batches:
    if b == "long":
      if FLAGS.long_seconds > 0:
        long_clip(cfg0, params, res, deadline, log, min(res.doc["rows"], key=lambda r: r["batch"], default=None))
      continue
    B = resolve(b)
    if B is not None and B not in done:
      done.add(B)
      one(B, FLAGS.variants[0], b)
  for variant in FLAGS.variants[1:]:
    for b in FLAGS.variant_batches:
      B = resolve(b)
      if B is not None:
        one(B, variant, b)
  return params


def jax_batch(cfg, params, B, frames, K, slots, wb, ceil, log):
  import jax

  from dreamfoley_jax import sampling as S

  import bench_common

  b = prompt(cfg, B, frames)
  sc = S.SampleConfig()                     # paper settings: CFG 3, top-k 25, top-p 0.9, temperature 1
  dt, dv = [False] * B, [False] * B

  def run(n):
    r = S.sample_long(cfg, params, b, [n] * B, window_frames=frames, context_frames=context_frames(frames),
                      sample_cfg=sc, seed=0, drop_text=dt, drop_video=dv)
    return r["codes"]

  tm = time_lengths(run, frames, K, FLAGS.reps)
  kvb = bench_common.kv_bytes(cfg, 2 * B, slots)
  fl = floors(cfg, ceil, B, frames, wb, kvb, slots)
  st = jax.devices()[0].memory_stats() or {}
  row = dict(framework="jax", config=FLAGS.config, batch=B, rows=2 * B, frames=frames,
             steps=steps_for(frames, K), weight_gb=wb / 1e9, kv_gb=kvb / 1e9, **tm, **fl,
             clips_per_s=B / tm["full_s"], step_over_floor=tm["step_s"] / fl["floor_s"],
             achieved_gbs=(wb + kvb) / tm["step_s"] / 1e9,
             achieved_tflops=2 * B * fl["decode_flops_per_row"] / tm["step_s"] / 1e12,
             hbm_peak_gib=st["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in st else None)
  return row


def long_clip(cfg, params, res, deadline, log, last):
  """A --long_seconds clip in windows (window = --seconds, context = experiments/paper_7b.py's 3 s): wall time of
  a warm run (after one run that compiles) and its real-time factor."""
  from dreamfoley_jax import sampling as S

  frames = int(round(FLAGS.long_seconds * 25))
  window = int(round(FLAGS.seconds * 25))
  context = context_frames(window)
  B = FLAGS.long_batch
  what = f"jax {FLAGS.long_seconds:g} s clip x{B}"
  n_win = len(S.window_plan(frames, window, context))
  # `last`: the smallest batch measured (its call time ~ one window's); one more compile for the continuation.
  est = 60.0 if last is None else last["first_s"] + 2 * n_win * last["full_s"] * max(1.0, B / last["batch"])
  if not deadline.fits(est):
    res.skip(what, f"~{est:.0f} s needed, {deadline.left():.0f} s left")
    return
  b = prompt(cfg, B, frames, seed=7)
  sc = S.SampleConfig()
  times = []
  for _ in range(2):
    t = time.perf_counter()
    r = S.sample_long(cfg, params, b, [frames] * B, window_frames=window, context_frames=context, sample_cfg=sc,
                      seed=1, drop_text=[False] * B, drop_video=[False] * B)
    times.append(time.perf_counter() - t)
  n = len(r["windows"])
  row = dict(framework="jax", config=FLAGS.config, kind="long_clip", batch=B, seconds=FLAGS.long_seconds,
             frames=frames, window_frames=window, context_frames=context, windows=n, first_s=times[0],
             wall_s=times[1], real_time_factor=FLAGS.long_seconds * B / times[1],
             codes_shape=list(r["codes"].shape))
  res.add(row)
  log(f"{what}: {n} windows of {window} frames (context {context}): {times[1]:.2f} s warm "
      f"({times[0]:.1f} s with compiles) = {row['real_time_factor']:.1f}x real time")


# --------------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------------

def torch_inputs(b, device):
  import numpy as np
  import torch

  return {k: torch.from_numpy(np.asarray(v).astype(np.int64) if np.asarray(v).dtype.kind in "iu"
                              else np.array(v)).to(device) for k, v in b.items()}


def run_torch(res, deadline, log, jax_rows):
  import torch

  import bench_common

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  res.doc.setdefault("machine", bench_common.machine_line(torch.cuda.get_device_name() if device.type == "cuda"
                                                        else "cpu"))
  log(f"generate_gpu [torch {torch.__version__}] on {device}")
  cfg = model_config(FLAGS.config)
  dtype = getattr(torch, cfg.decoder.dtype)
  t = time.perf_counter()
  if device.type == "cuda":
    with torch.device(device):
      model = bench_common.torch_dreamfoley(cfg, dtype=dtype)
  else:
    model = bench_common.torch_dreamfoley(cfg, dtype=dtype)
  model = model.to(device)
  log(f"{FLAGS.config}: PyTorch module built ({time.perf_counter() - t:.1f} s)")
  frames = int(round(FLAGS.seconds * 25))
  K = cfg.num_codebooks
  sampling = {"temperature": 1.0, "top_k": 25, "top_p": 0.9, "cfg_scale": 3.0}
  last = None
  compile_ok = [True]
  for b in FLAGS.batches:
    if b == "long":
      continue
    if b == "max":
      cand = [r["batch"] for r in jax_rows if r.get("batch_flag") == "max"]
      if not cand:
        res.skip("torch batch max", "no JAX 'max' batch to match (--batches_from)")
        continue
      B = cand[0]
    else:
      B = int(b)
    what = f"torch batch {B}"
    est = (last or 60) * 1.3
    if not deadline.fits(est):
      res.skip(what, f"~{est:.0f} s needed, {deadline.left():.0f} s left in this process's budget")
      continue
    tb = torch_inputs(prompt(cfg, B, frames), device)
    gen = torch.Generator(device=device).manual_seed(0)
    state = {"compile": device.type == "cuda" and compile_ok[0], "error": None}

    def run(n):
      out = model.generate(**tb, lengths=[n] * B, max_frames=frames, sampling=sampling, generator=gen,
                           cache_implementation="static", compile=state["compile"])
      if device.type == "cuda":
        torch.cuda.synchronize()
      return out.codes

    if device.type == "cuda":
      torch.cuda.reset_peak_memory_stats()
    try:
      try:
        tm = time_lengths(run, frames, K, FLAGS.reps)
      except torch.OutOfMemoryError:
        raise
      except Exception as e:                # torch.compile failing is a finding: report it, time eager instead
        if not state["compile"]:
          raise
        state.update(compile=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        compile_ok[0] = False
        log(f"  torch.compile'd generate failed ({state['error']}); timing the eager static-cache decode")
        model._compiled_step = None
        tm = time_lengths(run, frames, K, FLAGS.reps)
    except torch.OutOfMemoryError as e:
      torch.cuda.empty_cache()
      res.skip(what, f"out of memory: {str(e).splitlines()[0][:200]}")
      continue
    last = tm["first_s"]
    row = dict(framework="torch", config=FLAGS.config, batch=B, rows=2 * B, frames=frames,
               steps=steps_for(frames, K), **tm, clips_per_s=B / tm["full_s"], compiled=state["compile"],
               compile_error=state["error"],
               hbm_peak_gib=(torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None),
               torch_version=torch.__version__)
    res.add(row)
    log(f"{what}: {row['clips_per_s']:.2f} clips/s (call {tm['full_s']:.2f} s), decode {1e3 * tm['step_s']:.2f} "
        f"ms/step, prefill {1e3 * tm['prefill_s']:.0f} ms; first call {tm['first_s']:.1f} s; compiled "
        f"{row['compiled']}")


def check_torch(log):
  """Greedy codes (CFG 3) of JAX and PyTorch from the same fp32 weights: the share of equal codes."""
  import numpy as np
  import torch

  from dreamfoley_jax import sampling as S

  import bench_common

  cfg = model_config(FLAGS.config)
  cfg = cfg.replace(decoder=cfg.decoder.replace(dtype="float32", param_dtype="float32"))
  params = bench_common.random_params(cfg)
  frames = int(round(FLAGS.seconds * 25))
  b = prompt(cfg, 2, frames, seed=2)
  lengths = [frames, frames - 3]
  rj = S.sample(cfg, params, b, lengths, sample_cfg=S.SampleConfig(temperature=0.0, cfg_scale=3.0))
  tm = bench_common.torch_dreamfoley(cfg, params, dtype=torch.float32)
  rt = tm.generate(**torch_inputs(b, torch.device("cpu")), lengths=lengths,
                   sampling={"temperature": 0.0, "cfg_scale": 3.0})
  eq = float((rt.codes.numpy() == rj["codes"]).mean())
  log(f"greedy check ({FLAGS.config}, fp32, same weights): JAX and PyTorch codes equal in {100 * eq:.2f}% of "
      f"{rj['codes'].size}")
  return {"equal": eq, "codes": int(rj["codes"].size)}


def main(argv):
  del argv
  log = lambda s: print(s, flush=True)
  fw = [f.strip() for f in FLAGS.framework]
  bad = [f for f in fw if f not in ("jax", "torch")]
  if bad:
    raise app.UsageError(f"--framework: unknown {bad}; accepted: jax, torch")
  for b in FLAGS.batches + FLAGS.variant_batches:
    if b not in ("max", "long") and not (b.isdigit() and int(b) > 0):
      raise app.UsageError(f"--batches / --variant_batches: {b!r} is not a positive integer, max or long")
  if "jax" not in fw:
    os.environ["JAX_PLATFORMS"] = "cpu"     # host-side helpers only: no JAX allocation on the GPU PyTorch uses
  deadline = bench_common.Deadline(FLAGS.deadline_s)
  res = bench_common.Results(FLAGS.json_out, bench="generate_gpu", argv=sys.argv[1:], config=FLAGS.config,
                           seconds=FLAGS.seconds)
  if "jax" in fw:
    run_jax(res, deadline, log)
  if "torch" in fw:
    jax_rows = [r for r in res.doc["rows"] if r["framework"] == "jax"]
    if FLAGS.batches_from:
      import json

      p = pathlib.Path(FLAGS.batches_from)
      if not p.exists():
        raise app.UsageError(f"--batches_from={p}: no such file")
      jax_rows += json.loads(p.read_text())["rows"]
    run_torch(res, deadline, log, jax_rows)
  if FLAGS.check_torch:
    res.doc["torch_greedy_check"] = check_torch(log)
  res.flush()
  rows = [r for r in res.doc["rows"] if r.get("kind") != "long_clip"]
  for r in rows:
    r.setdefault("variant", "-")
  cols = [("framework", "framework", None), ("variant", "variant", None), ("batch", "batch", None),
          ("clips/s", "clips_per_s", "{:.2f}"), ("10 s call s", "full_s", "{:.2f}"),
          ("decode ms/step", "step_ms", "{:.3g}"), ("bw floor ms", "bw_floor_ms", "{:.3g}"),
          ("compute floor ms", "compute_floor_ms", "{:.3g}"), ("bound", "bound", None),
          ("step / floor", "step_over_floor", "{:.2f}"), ("prefill ms", "prefill_ms", "{:.3g}"),
          ("prefill floor ms", "prefill_floor_ms", "{:.3g}"), ("HBM peak GiB", "hbm_peak_gib", "{:.1f}")]
  print("\n" + bench_common.table(rows, cols))
  for r in res.doc["rows"]:
    if r.get("kind") == "long_clip":
      print(f"{r['seconds']:g} s clip x{r['batch']}: {r['windows']} windows, {r['wall_s']:.2f} s = "
            f"{r['real_time_factor']:.1f}x real time")


if __name__ == "__main__":
  app.run(main)
