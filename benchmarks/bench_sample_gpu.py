"""Decode roofline on an accelerator: the 7B-shaped DreamFoley (Qwen2.5-7B decoder, K = 8 two-layer heads,
random bf16 weights) sampling 10 s of audio with CFG, steps/s against the device's memory-bandwidth roofline.

  python benchmarks/bench_sample_gpu.py                                  # 7b, batch 1 and 8, both decoder variants
  python benchmarks/bench_sample_gpu.py --config=small --batches=1 --reps=1   # smoke run (CPU works too)

A decode step must read every decoder-layer and head weight once (plus the KV cache), so the fastest
possible step takes (weight + KV bytes) / bandwidth. The bandwidth is measured here, on the same device, as
a jitted sum over a large array (bytes read; `bench_common.measured_bandwidth`) and also compared with the
datasheet figure (--peak_gbs).

Per-step time is taken by difference, so the prefill and the host transfers drop out: the same compiled
program (max_frames = 250) samples every clip at the full length (258 decode steps) and at half length
(133 steps); step = (t_full - t_half) / (258 - 133). The whole-call time is printed too.

Also checks correctness on the device before timing (--check): with temperature 0, the sampler's tokens
equal the argmax of the teacher-forced guided logits of the full forward (no cache) on a tiny model.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import json
import os
import statistics
import time

from absl import app, flags

import bench_common

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "7b", ["7b", "small", "tiny"], "model shape")
flags.DEFINE_list("batches", ["1", "8"], "batch sizes (clips; CFG doubles the rows)")
flags.DEFINE_list("variants", ["xla", "fused"], "decoder variants: xla = separate q/k/v and gate/up matmuls; "
                  "fused = fuse_projections (one q|k|v and one gate|up matmul)")
flags.DEFINE_float("seconds", 10.0, "audio seconds to generate")
flags.DEFINE_integer("reps", 3, "timed repetitions of each length")
flags.DEFINE_float("peak_gbs", 3350.0, "datasheet memory bandwidth in GB/s (H100 SXM HBM3: 3350)")
flags.DEFINE_bool("check", True, "greedy-vs-teacher-forced correctness check on the device first")
flags.DEFINE_bool("flax_init", False, "build the weights with the model's own init (foley_params.init_params; slow for "
                  "7B) instead of random_params")
flags.DEFINE_string("json_out", "", "write the rows here as JSON")


def model_config(name, variant):
  from dreamfoley_jax.models import foley, qwen2

  opts = dict(fuse_projections=variant == "fused")
  if name == "7b":   # experiments/paper_7b.py's model, bf16 weights and compute, unscanned layers for decode
    dec = qwen2.PRESETS["qwen2.5-7b"].replace(dtype="bfloat16", param_dtype="bfloat16", scan_layers=False, **opts)
    return foley.FoleyConfig(decoder=dec)
  if name == "small":
    dec = qwen2.Qwen2Config(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                            num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                            dtype="bfloat16", param_dtype="bfloat16", **opts)
    return foley.FoleyConfig(decoder=dec, sync_dim=64, clip_dim=32)
  return foley.FoleyConfig(decoder=qwen2.PRESETS["tiny"].replace(**opts), codebook_size=64, sync_dim=32,
                           clip_dim=16, null_text_len=2, null_video_len=2)


random_batch = bench_common.random_prompt_batch


random_params = bench_common.device_random_params


def check_greedy(variant):
  return bench_common.check_greedy(model_config("tiny", variant))


def main(argv):
  del argv
  import jax

  from dreamfoley_jax import sampling as S
  from dreamfoley_jax.models import params as foley_params

  dev = jax.devices()[0]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {dev.device_kind} x{jax.device_count()}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  if FLAGS.check:
    for v in FLAGS.variants:
      t = time.perf_counter()
      agree, n = check_greedy(v)
      print(f"check [{v}]: greedy sampler tokens == argmax of full-forward guided logits: {100 * agree:.2f}% of "
            f"{n} code cells ({time.perf_counter() - t:.1f} s)", flush=True)
      if agree < 1.0:
        raise SystemExit(f"check [{v}] failed: the sampler disagrees with the full forward on this device")
  bw, copy_bw = bench_common.measured_bandwidth()
  print(f"measured bandwidth: read (sum) {bw:.0f} GB/s, elementwise (read + write) {copy_bw:.0f} GB/s; datasheet "
        f"{FLAGS.peak_gbs:.0f} GB/s", flush=True)
  frames = int(round(FLAGS.seconds * 25))
  half = frames // 2
  K = 8
  steps_full, steps_half = S.num_columns(frames, K) - 1, S.num_columns(half, K) - 1
  sc = S.SampleConfig()                       # paper settings: CFG 3, top-k 25, top-p 0.9, temperature 1
  rows = []
  params = None
  for v in FLAGS.variants:
    cfg = model_config(FLAGS.config, v)
    if params is None:                        # the variants share the parameters
      t = time.perf_counter()
      params = (foley_params.init_params if FLAGS.flax_init else random_params)(cfg)
      jax.block_until_ready(params)
      print(f"init {FLAGS.config}: {sum(x.size for x in jax.tree.leaves(params)) / 1e9:.2f} B params "
            f"({time.perf_counter() - t:.1f} s)", flush=True)
    wb = bench_common.weight_bytes(params)
    for B in (int(x) for x in FLAGS.batches):
      b = random_batch(cfg, B, frames)
      P = 16 + frames
      kvb = bench_common.kv_bytes(cfg, 2 * B, S.cache_slots(P, S.num_columns(frames, K)))

      def run(n):
        r = S.sample(cfg, params, b, [n] * B, sample_cfg=sc, max_frames=frames, seed=0)
        return int(r["steps"])

      t = time.perf_counter()
      assert run(frames) == steps_full
      first = time.perf_counter() - t
      assert run(half) == steps_half
      tf, th = [], []
      for _ in range(FLAGS.reps):
        for n, acc in ((frames, tf), (half, th)):
          t = time.perf_counter()
          run(n)
          acc.append(time.perf_counter() - t)
      mf, mh = statistics.median(tf), statistics.median(th)
      step = (mf - mh) / (steps_full - steps_half)
      floor = (wb + kvb) / (bw * 1e9)
      row = dict(config=FLAGS.config, variant=v, batch=B, rows=2 * B, steps=steps_full, call_s=mf,
                 step_ms=1e3 * step, steps_per_s=1 / step, weight_gb=wb / 1e9, kv_gb=kvb / 1e9,
                 achieved_gbs=(wb + kvb) / step / 1e9, roofline_steps_per_s=1 / floor,
                 pct_of_measured=100 * floor / step, pct_of_datasheet=100 * (wb + kvb) / step / 1e9 / FLAGS.peak_gbs,
                 first_call_s=first, runs_full=tf, runs_half=th)
      rows.append(row)
      print(f"{FLAGS.config} [{v}] B={B}: {row['step_ms']:.2f} ms/step = {row['steps_per_s']:.0f} steps/s, "
            f"{row['achieved_gbs']:.0f} GB/s = {row['pct_of_measured']:.0f}% of measured bw "
            f"({row['pct_of_datasheet']:.0f}% of datasheet); whole 10 s call {mf:.2f} s; first call {first:.1f} s; "
            f"full {[round(x, 3) for x in tf]} half {[round(x, 3) for x in th]}", flush=True)
  print(f"\ndevice {dev.device_kind}, measured read bandwidth {bw:.0f} GB/s (elementwise read+write {copy_bw:.0f} "
        f"GB/s), datasheet {FLAGS.peak_gbs:.0f} GB/s; roofline = (weight + KV bytes) / measured read bandwidth")
  print("| config | variant | batch (x2 CFG) | weights GB | KV GB | ms/step | steps/s | roofline steps/s | "
        "% of measured bw | % of datasheet | 10 s call s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['variant']} | {r['batch']} | {r['weight_gb']:.2f} | {r['kv_gb']:.3f} | "
          f"{r['step_ms']:.2f} | {r['steps_per_s']:.0f} | {r['roofline_steps_per_s']:.0f} | "
          f"{r['pct_of_measured']:.0f}% | {r['pct_of_datasheet']:.0f}% | {r['call_s']:.2f} |")
  if FLAGS.json_out:
    pathlib.Path(FLAGS.json_out).write_text(json.dumps(dict(device=dev.device_kind, read_gbs=bw, copy_gbs=copy_bw, rows=rows),
                                                       indent=1))


if __name__ == "__main__":
  app.run(main)
