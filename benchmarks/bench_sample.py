"""Sampling speed: our jitted while_loop sampler vs the PyTorch DreamFoley users run (the exported model
directory's modeling_dreamfoley.py on transformers' Qwen2Model, its own CFG sampling with a KV cache, loaded
with trust_remote_code; docs/convert.md), same random weights.

  JAX_PLATFORMS=cpu python benchmarks/bench_sample.py                    # tiny + small, batch 1 and 8, 10 s
  JAX_PLATFORMS=cpu python benchmarks/bench_sample.py --configs=tiny --batches=1 --reps=1 --seconds=2

10 s of audio = 250 frames -> 258 decode steps (+ K - 1 staircase + EOS) after a prefill of
[text 16 | video 250]; CFG doubles the batch. JAX and torch runs are interleaved (the CPU is shared) and
medians are reported, with each side's process CPU time. Also prints the decode rooflines: weight + KV
bytes read per step / step time against the machine's read bandwidth (a jitted sum over 256 MiB), matmul
FLOPs per step / step time against XLA's fp32 GEMM throughput, and the GEMV-stream floor: the step's
weights at the rate a chain of XLA matmuls with the step's row count streams them (+ every slot of the KV
cache at the read bandwidth), next to the decode step measured by difference (the same program at full
and half length) and what 3x against torch leaves for it after the measured prefill, all in the same run.
`--kernels` (default on) prints that GEMV probe for XLA and torch in fp32 and bf16.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import os
import statistics
import time

import numpy as np
from absl import app, flags

import bench_common

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["tiny", "small"], "tiny | small")
flags.DEFINE_list("batches", ["1", "8"], "batch sizes (clips; CFG doubles them)")
flags.DEFINE_float("seconds", 10.0, "audio seconds to generate")
flags.DEFINE_integer("reps", 3, "timed repetitions per side (interleaved)")
flags.DEFINE_bool("scanned", False, "instead of the torch comparison: time the JAX sampler on the scan_layers layout "
                  "(as paper_7b trains) against foley_params.inference_layout of the same params (unrolled)")
flags.DEFINE_bool("kernels", True, "also print the GEMV probe: weight-streaming GB/s of XLA and torch matmul chains "
                  "at each batch's row count (2B with CFG), fp32 and bf16 (what bounds a decode step on a CPU)")
flags.DEFINE_integer("probe_mb", 96, "MiB of distinct weights in the GEMV probe's chain, whatever the dtype (more "
                     "than the CPU's last-level cache, so they stream from memory as a decode step's do)")
flags.DEFINE_enum("torch_cache", "dynamic", ["static", "dynamic"], "the PyTorch model's KV cache (generate's "
                  "cache_implementation). dynamic: the faster one on CPU (tiny, 4 s clip, 1 thread: 0.32 vs 0.45 "
                  "process-CPU s); static is the one for torch.compile on a GPU")
flags.DEFINE_list("threads", ["1", "2"], "torch intra-op thread counts to try (0 = os.cpu_count()); the baseline is "
                  "torch's fastest median among them, per config and batch. On an idle 2-core machine 2 threads win "
                  "at batch 8; on oversubscribed cores OpenMP spin-waits and 2 threads can be 30x slower")


configs = bench_common.sample_configs
batch = bench_common.random_prompt_batch


class TorchFoley:
  """The PyTorch baseline: the DreamFoley users run (the exported directory's modeling_dreamfoley.py on
  transformers' Qwen2Model, same weights), sampled through its own `generate` (CFG, KV cache)."""

  def __init__(self, cfg, params):
    self.model = bench_common.torch_dreamfoley(cfg, params)

  def sample(self, b, lengths, sc, seed=0):
    import torch

    prompt = {k: torch.from_numpy(np.asarray(b[k])) for k in ("text_ids", "text_mask", "sync_feats", "clip_feats",
                                                               "video_mask")}
    prompt["text_ids"] = prompt["text_ids"].long()
    out = self.model.generate(**prompt, lengths=lengths, cache_implementation=FLAGS.torch_cache,
                              sampling={"temperature": sc.temperature, "top_k": sc.top_k, "top_p": sc.top_p,
                                        "cfg_scale": sc.cfg_scale}, generator=torch.Generator().manual_seed(seed))
    return out.delayed


def flops_per_step(cfg, params, B, S):
  """Matmul FLOPs of one decode step for 2B rows: every decoder/head weight once per row + attention."""
  from dreamfoley_jax import sampling

  n = sum(x.size for x in sampling.decode_weights(params))
  d = cfg.decoder
  attn = 2 * 2 * d.num_hidden_layers * d.num_attention_heads * d.head_size * S
  return 2 * B * (2 * n + attn)


def gemm_gflops():
  """fp32 GEMM throughput of XLA:CPU on this machine now (2048x512 @ 512x1536): the compute roofline."""
  import jax
  import jax.numpy as jnp

  a, b = jnp.ones((2048, 512), jnp.float32), jnp.ones((512, 1536), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = 0.0
  for _ in range(10):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = max(best, 2 * 2048 * 512 * 1536 / (time.perf_counter() - t) / 1e9)
  return best


def compare_scanned(sc, frames):
  """scan_layers params vs their foley_params.inference_layout (unrolled), same weights, interleaved medians."""
  from dreamfoley_jax import sampling as S
  from dreamfoley_jax.models import params as foley_params

  for name in FLAGS.configs:
    cfg = configs()[name]
    cfg = cfg.replace(decoder=cfg.decoder.replace(scan_layers=True))
    params = foley_params.init_params(cfg, 0)
    cfg2, p2 = foley_params.inference_layout(cfg, params)
    for B in (int(x) for x in FLAGS.batches):
      b = batch(cfg, B, frames)
      runs = {"scanned": [], "unrolled": []}
      for c, p in ((cfg, params), (cfg2, p2)):
        S.sample(c, p, b, [frames] * B, sample_cfg=sc)            # compile
      for _ in range(FLAGS.reps):
        for key, c, p in (("scanned", cfg, params), ("unrolled", cfg2, p2)):
          t = time.perf_counter()
          S.sample(c, p, b, [frames] * B, sample_cfg=sc)
          runs[key].append(time.perf_counter() - t)
      ms, mu = statistics.median(runs["scanned"]), statistics.median(runs["unrolled"])
      print(f"{name} B={B}: scan_layers {ms:.2f} s, inference_layout (unrolled) {mu:.2f} s, ratio {ms / mu:.2f}x "
            f"(load average {os.getloadavg()[0]:.1f})", flush=True)


def main(argv):
  del argv
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np
  import torch

  from dreamfoley_jax import sampling as S
  from dreamfoley_jax.models import params as foley_params

  thread_counts = [int(t) or os.cpu_count() for t in FLAGS.threads]
  frames = int(round(FLAGS.seconds * 25))
  bw, copy_bw = bench_common.measured_bandwidth()
  peak = gemm_gflops()
  print(f"machine: {os.cpu_count()} cpus, measured memory bandwidth: read (XLA sum) {bw:.1f} GB/s, copy (numpy, read+write) "
        f"{copy_bw:.1f} GB/s; XLA fp32 GEMM {peak:.0f} GFLOP/s (2048x512x1536); "
        f"load average {os.getloadavg()[0]:.1f}; torch threads tried {thread_counts} (baseline = fastest), XLA:CPU uses all "
        f"{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  sc = S.SampleConfig(temperature=1.0, top_k=25, top_p=0.9, cfg_scale=3.0)
  if FLAGS.scanned:
    return compare_scanned(sc, frames)
  batches = [int(x) for x in FLAGS.batches]
  # The decode floor on a CPU: the step's weights streamed at the rate XLA's matmuls reach for its row count.
  stream = {2 * B: bench_common.gemv_gbs(2 * B, total_mb=FLAGS.probe_mb) for B in batches}
  if FLAGS.kernels:
    print(f"GEMV probe (chain of distinct 512x1536 kernels, {FLAGS.probe_mb} MiB; GB/s of weights read):")
    for rows in sorted(stream):
      rates = {"XLA fp32": stream[rows], "XLA bf16": bench_common.gemv_gbs(rows, "bfloat16", total_mb=FLAGS.probe_mb)}
      for n in thread_counts:
        for dt, short in (("float32", "fp32"), ("bfloat16", "bf16")):
          rates[f"torch {short} {n}t"] = bench_common.gemv_gbs(rows, dt, total_mb=FLAGS.probe_mb,
                                                                      torch_threads=n)
      print(f"  {rows:2d} rows: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), flush=True)
  rows = []
  for name in FLAGS.configs:
    cfg = configs()[name]
    params = foley_params.init_params(cfg, 0)
    tm = TorchFoley(cfg, jax.tree.map(np.asarray, params))
    # Same computation: greedy tokens of a short clip agree between the two implementations.
    gb, gl = batch(cfg, 2, 25, seed=1), [25, 20]
    g = S.sample(cfg, params, gb, gl, sample_cfg=sc.replace(temperature=0.0))["delayed"]
    gt = tm.sample(gb, gl, sc.replace(temperature=0.0)).numpy()
    agree = float((g == gt).mean())
    print(f"{name}: greedy JAX vs torch token agreement {100 * agree:.1f}% ({g.size} cells)", flush=True)
    for B in batches:
      b = batch(cfg, B, frames)
      lengths = [frames] * B
      steps = S.num_columns(frames, cfg.num_codebooks) - 1

      def run_jax(ls=lengths):
        return S.sample(cfg, params, b, ls, sample_cfg=sc, seed=0, max_frames=frames)

      # Same program at half the length (the loop stops when every clip is done): the difference gives the
      # decode step alone, and the rest of the full call is prefill + launch.
      half = [frames // 2] * B
      steps_half = S.num_columns(frames // 2, cfg.num_codebooks) - 1

      t0 = time.perf_counter()
      r = run_jax()
      compile_s = time.perf_counter() - t0
      assert int(r["steps"]) == steps
      assert int(run_jax(half)["steps"]) == steps_half
      tj, cj, th = [], [], []
      tt = {n: [] for n in thread_counts}
      ct = {n: [] for n in thread_counts}
      for _ in range(FLAGS.reps):
        t0, c0 = time.perf_counter(), time.process_time()
        run_jax()
        tj.append(time.perf_counter() - t0)
        cj.append(time.process_time() - c0)
        t0 = time.perf_counter()
        run_jax(half)
        th.append(time.perf_counter() - t0)
        for n in thread_counts:
          torch.set_num_threads(n)
          t0, c0 = time.perf_counter(), time.process_time()
          tm.sample(b, lengths, sc)
          tt[n].append(time.perf_counter() - t0)
          ct[n].append(time.process_time() - c0)
      best_n = min(thread_counts, key=lambda n: statistics.median(tt[n]))
      mj, mt = statistics.median(tj), statistics.median(tt[best_n])
      mcj, mct = statistics.median(cj), statistics.median(ct[best_n])
      torch_runs = {n: [round(x, 2) for x in v] for n, v in tt.items()}
      # the KV cache the step's attention reads: every allocated slot (the mask hides the unfilled ones)
      slots = S.cache_slots(b["text_ids"].shape[1] + frames, steps + 1)
      wb, kvb = bench_common.weight_bytes(params), bench_common.kv_bytes(cfg, 2 * B, slots)
      gbs = (wb + kvb) / (mj / steps) / 1e9
      floor_ms = 1e3 * (wb / stream[2 * B] + kvb / bw) / 1e9
      step_ms = 1e3 * (mj - statistics.median(th)) / (steps - steps_half)     # decode step, by difference
      prefill_s = max(0.0, mj - steps * step_ms / 1e3)
      need_ms = 1e3 * (mt / 3 - prefill_s) / steps       # the decode step 3x needs, given this prefill
      gfs = flops_per_step(cfg, params, B, b["text_ids"].shape[1] + frames + steps // 2) / (mj / steps) / 1e9
      rows.append((name, B, steps, mj, mt, best_n, mt / mj, 1e3 * mj / steps, gbs, 100 * gbs / bw, mct / mcj, gfs,
                   100 * gfs / peak, step_ms, prefill_s, floor_ms, need_ms))
      print(f"{name:6s} B={B}: jax {mj:6.2f} s  torch {mt:6.2f} s ({best_n} threads)  ratio {mt / mj:5.2f}x  "
            f"(process cpu s: jax {mcj:.2f} torch {mct:.2f}, ratio {mct / mcj:.2f}x)  "
            f"({1e3 * mj / steps:.2f} ms/step, {gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of bw, {gfs:.1f} GFLOP/s = "
            f"{100 * gfs / peak:.0f}% of GEMM; decode step by difference {step_ms:.2f} ms, prefill + launch "
            f"{prefill_s:.2f} s; GEMV-stream floor {floor_ms:.2f} ms/step, 3x needs {need_ms:.2f}; first call "
            f"{compile_s:.1f} s)  jax runs {[round(x, 2) for x in tj]} torch runs by thread count {torch_runs}",
            flush=True)
  print("\n| config | batch (x2 CFG) | steps | JAX s | torch s (threads) | torch/JAX | cpu-time ratio | JAX ms/step | "
        "weight+KV GB/s | % of read bw | GFLOP/s | % of GEMM | decode ms/step (by difference) | prefill s | "
        "GEMV-stream floor ms/step | 3x needs decode ms/step |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  for n, B, st, mj, mt, th, r, ms, g, pct, cr, gf, gpct, dms, pre, fl, need in rows:
    print(f"| {n} | {B} | {st} | {mj:.3f} | {mt:.3f} ({th}) | {r:.2f}x | {cr:.2f}x | {ms:.2f} | {g:.1f} | {pct:.0f}% | "
          f"{gf:.1f} | {gpct:.0f}% | {dms:.2f} | {pre:.2f} | {fl:.2f} | {need:.2f} |")


if __name__ == "__main__":
  app.run(main)
