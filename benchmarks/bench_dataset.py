r"""Clips/s per stage of the data pipeline on this machine, and what 1M clips cost (docs/data.md).

  python benchmarks/bench_dataset.py                      # ~3 min on a 2-core CPU
  python benchmarks/bench_dataset.py --sources 4 --seconds 30 --out /tmp/bench_dataset.json

Sources: generated 1280x720 30 fps H.264 + 48 kHz stereo AAC files (a panning texture and noise),
standardised with the real defaults (10 s clips, 360 p, 44.1 kHz mono). Every stage runs in this process,
one clip at a time, after a warm-up (compiles), with the real Silero weights; the encode stage runs the
tiny converted fixture encoders at the real frame geometry (224 px), so its time here says nothing about
the real models: their FLOPs per clip come from XLA's cost analysis of the real-size EVA-CLIP-g/14,
Synchformer and higgs tokenizer (counted at depth 1 and 2 and extrapolated linearly in depth, the models
being stacks of identical blocks) and are turned into accelerator time at a stated MFU.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402

from bench_common import cpu_model  # noqa: E402

PEAKS = {"TPU v5e (197 TFLOP/s bf16)": 197e12, "TPU v5p (459 TFLOP/s bf16)": 459e12,
         "H100 SXM (989 TFLOP/s bf16 dense)": 989e12}


def make_sources(d: pathlib.Path, n: int, seconds: float):
  import media_synth as ms

  paths = []
  for i in range(n):
    audio = np.concatenate([ms.noise(seconds, 48000, amp=0.2, seed=2 * i + c) for c in range(2)])
    paths.append(ms.write_media(d / f"src{i}.mp4", seconds=seconds, fps=30, size=(720, 1280), audio=audio,
                                audio_rate=48000, shift_px=1.5))
  return paths


def flops(fn, *shapes) -> float:
  import jax

  return float(jax.jit(fn).lower(*shapes).compile().cost_analysis()["flops"])


def encoder_flops_per_clip(clip_seconds: float) -> dict[str, float]:
  """FLOPs of one clip through each real-size encoder (depth extrapolated from depths 1 and 2)."""
  import jax
  import jax.numpy as jnp

  from dreamfoley_jax.audio.higgs import HiggsAudioV2Tokenizer, HiggsTokenizerConfig
  from dreamfoley_jax.models import eva_clip, synchformer
  from dreamfoley_jax.video import preprocess as vpre

  n_img = int(np.ceil(clip_seconds * vpre.CLIP_FPS))
  n_win = vpre.sync_cover_indices(int(round(clip_seconds * vpre.SYNC_FPS))).shape[0]   # the length rule
  out = {}

  def by_depth(build, full_depth, x):
    f = []
    for d in (1, 2):
      m = build(d)
      p = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
      f.append(flops(lambda p, x: m.apply(p, x)[0], p, x))
    return f[0] + (f[1] - f[0]) * (full_depth - 1)

  e = eva_clip.PRESETS["eva01-g-14"]
  out["EVA-CLIP-g/14 (4 fps)"] = by_depth(lambda d: eva_clip.EvaVisionTower(e.replace(depth=d)), e.depth,
                                          jax.ShapeDtypeStruct((n_img, 224, 224, 3), jnp.float32))
  s = synchformer.PRESETS["synchformer"]
  out["Synchformer (25 fps)"] = by_depth(lambda d: synchformer.Synchformer(s.replace(depth=d)), s.depth,
                                         jax.ShapeDtypeStruct((1, n_win, 16, 224, 224, 3), jnp.float32))
  h = HiggsTokenizerConfig.real()
  n = int(round(clip_seconds * h.sample_rate))
  tok = HiggsAudioV2Tokenizer(h)
  x = jax.ShapeDtypeStruct((1, n), jnp.float32)
  lens = jax.ShapeDtypeStruct((1,), jnp.int32)
  p = jax.eval_shape(lambda x, n: tok.init(jax.random.key(0), x, n, method=tok.encode), x, lens)
  out["higgs tokenizer encode (8 codebooks)"] = flops(lambda p, x, n: tok.apply(p, x, n, method=tok.encode)[0],
                                                      p, x, lens)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sources", type=int, default=2)
  ap.add_argument("--seconds", type=float, default=20.0, help="length of each generated source")
  ap.add_argument("--reps", type=int, default=2, help="timed passes over the clips per stage")
  ap.add_argument("--mfu", type=float, default=0.3, help="assumed accelerator utilisation for the projection")
  ap.add_argument("--chips", type=int, default=64, help="accelerator count for the 1M-clip projection")
  ap.add_argument("--no_flops", action="store_true", help="skip the real-size FLOP count (a few minutes)")
  ap.add_argument("--flops_only", action="store_true", help="only the real-size FLOP count and projection")
  ap.add_argument("--out", default=None, help="also write the results as JSON here")
  args = ap.parse_args(argv)

  from dreamfoley_jax.data.build import standardise

  tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_dataset_"))
  print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
  cfg = standardise.StandardiseConfig()
  result = {"machine": cpu_model(), "cores": os.cpu_count()}
  if not args.flops_only:
    result.update(measure_stages(args, tmp, cfg))
  if not args.no_flops:
    result.update(project(args, cfg))
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1))


def measure_stages(args, tmp, cfg) -> dict:
  import build_helpers

  from dreamfoley_jax.data.build import encode, quality, speech, standardise

  srcs = make_sources(tmp, args.sources, args.seconds)
  rows = []   # (stage, wall s per clip, CPU s per clip: all threads of this process, robust to a loaded machine)
  t, c0 = time.perf_counter(), time.process_time()
  clips = []
  for i, p in enumerate(srcs):
    c, rej, _ = standardise.standardise(standardise.InputItem(str(p), "", f"s{i}"), f"k{i}", cfg)
    assert c, rej
    clips += c
  rows.append(("standardise (720p30 H.264 + 48 kHz AAC -> 360p + 44.1 kHz)", (time.perf_counter() - t) / len(clips),
               (time.process_time() - c0) / len(clips)))
  ck = build_helpers.make_tiny_checkpoints(tmp / "ckpt")

  class HostPrep:   # what the encode stage does on the host before its device calls
    def __call__(self, clip):
      from dreamfoley_jax.audio.resample import resample_np
      from dreamfoley_jax.video import preprocess as vpre

      with standardise.MediaFile(clip.video_mp4) as path:
        fr = vpre.load_video_frames(path, max_duration_sec=clip.duration_sec)
      vpre.sync_cover_windows(fr.sync_u8)
      resample_np(clip.mono(), clip.audio_rate, 24000)

  stage_list = [("silence", quality.SilenceStage()), ("clipping", quality.ClippingStage()),
                ("static (4 fps luma differences)", quality.StaticStage()),
                ("speech (Silero VAD, Flax, real weights)", speech.SpeechStage(speech.SpeechConfig())),
                ("encode: host-side input (224 px frames at 4 + 25 fps, 24 kHz audio)", HostPrep()),
                ("encode (TINY encoders at real geometry; real FLOPs below)",
                 encode.EncodeStage(encode.EncodeConfig(mesh="data=1", clip_seconds=cfg.clip_seconds, **ck)))]
  for name, st in stage_list:
    st(clips[0])                                          # warm-up: compile, load
    t, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.reps):
      for c in clips:
        st(c)
    n = args.reps * len(clips)
    rows.append((name, (time.perf_counter() - t) / n, (time.process_time() - c0) / n))
  print(f"\n{len(clips)} clips of {cfg.clip_seconds:g} s from {len(srcs)} sources, one process "
        f"(load average now {os.getloadavg()[0]:.1f}):\n")
  print("| stage | wall s per clip | CPU s per clip | core-hours for 1M clips (from CPU s) |")
  print("|---|---:|---:|---:|")
  for name, wall, cpu in rows:
    print(f"| {name} | {wall:.3f} | {cpu:.3f} | {1e6 * cpu / 3600:,.0f} |")
  return {"clips": len(clips), "per_clip_s": {n: {"wall": w, "cpu": c} for n, w, c in rows}}


def project(args, cfg) -> dict:
  result = {}
  fl = encoder_flops_per_clip(cfg.clip_seconds)
  total = sum(fl.values())
  result["flops_per_clip"] = fl
  print(f"\nreal-size encoder FLOPs per {cfg.clip_seconds:g} s clip (XLA cost analysis):\n")
  print("| model | GFLOP per clip |")
  print("|---|---:|")
  for k, v in fl.items():
    print(f"| {k} | {v / 1e9:,.0f} |")
  print(f"| total | {total / 1e9:,.0f} |")
  print(f"\n1M clips at {100 * args.mfu:.0f}% MFU (assumed, not measured):\n")
  print(f"| accelerator | clips/s per chip | hours on {args.chips} chips |")
  print("|---|---:|---:|")
  result["projection"] = {}
  for k, peak in PEAKS.items():
    per_chip = peak * args.mfu / total
    hours = 1e6 / (per_chip * args.chips) / 3600
    result["projection"][k] = {"clips_per_s_per_chip": per_chip, f"hours_on_{args.chips}": hours}
    print(f"| {k} | {per_chip:,.1f} | {hours:,.2f} |")
  return result


if __name__ == "__main__":
  main()
