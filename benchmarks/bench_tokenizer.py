"""Encode throughput of the JAX higgs-audio-v2 tokenizer vs transformers' HiggsAudioV2TokenizerModel.

Both run on this CPU in one invocation: the JAX side in this process, the PyTorch reference in a
subprocess of a separate venv (transformers' tokenizer module imports torchaudio at import time, and
PyPI's torchaudio only loads beside the torch it was built for). Prints, for the small golden config
(same weights on both sides) and the full-size config (random weights, same geometry on both sides),
seconds of audio encoded per second of wall time and the ratio JAX / torch.

Reference venv (once; ~7 GB because PyPI's torch 2.9.1 pulls CUDA wheels, which also run on CPU):
  python3.11 -m venv /work/venv_ta
  /work/venv_ta/bin/pip install torch==2.9.1 'torchaudio==2.9.*' transformers numpy safetensors

Run (from the repo root, in the project venv):
  python benchmarks/bench_tokenizer.py --torch_python=/work/venv_ta/bin/python
  python benchmarks/bench_tokenizer.py --torch_python=/work/venv_ta/bin/python --seconds=10 --repeats=3 --threads=2
Without --torch_python only the JAX side runs.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"

TORCH_SIDE = textwrap.dedent(r'''
    import json, sys, time, statistics
    import numpy as np, torch
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel, DacConfig, HubertConfig
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    out = {"torch": torch.__version__}
    def bench(model, x):
        with torch.inference_mode():
            model.encode(x, return_dict=False)  # warm-up
            ts = []
            for _ in range(args["repeats"]):
                t = time.perf_counter(); model.encode(x, return_dict=False); ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    # small: the golden's tiny model with its weights
    d = json.load(open(args["config"]))["tiny_config"]["config_to_dict"]
    cfg = HiggsAudioV2TokenizerConfig.from_dict(d)
    m = HiggsAudioV2TokenizerModel(cfg).eval()
    f = np.load(args["npz"])
    sd = {k[6:]: torch.from_numpy(f[k]) for k in f.files if k.startswith("param/")}
    m.load_state_dict(sd, strict=True)
    x = torch.from_numpy(np.load(args["audio"])).float()[:, None]
    out["small"] = bench(m, x)
    if args["full"]:
        real = HiggsAudioV2TokenizerConfig(
            target_bandwidths=[0.5, 1, 1.5, 2],
            acoustic_model_config=DacConfig(encoder_hidden_size=64, downsampling_ratios=[8, 5, 4, 2, 3],
                                            decoder_hidden_size=1024, upsampling_ratios=[8, 5, 4, 2, 3],
                                            hidden_size=256),
            semantic_model_config=HubertConfig(mask_time_prob=0.0))
        m = HiggsAudioV2TokenizerModel(real).eval()
        x = torch.from_numpy(np.load(args["audio_full"])).float()[:, None]
        out["full"] = bench(m, x)
    print("RESULT " + json.dumps(out))
''')


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--torch_python", default=None, help="python of the torch==2.9.1 + torchaudio venv")
  ap.add_argument("--seconds", type=float, default=10.0, help="clip length")
  ap.add_argument("--batch", type=int, default=2, help="clips per encode call (small config)")
  ap.add_argument("--full_batch", type=int, default=1, help="clips per encode call (full-size config)")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--skip_full", action="store_true")
  args = ap.parse_args()

  import jax
  import numpy as np

  sys.path.insert(0, str(REPO))
  from dreamfoley_jax.audio.higgs import HiggsAudioV2Tokenizer, HiggsTokenizerConfig, init_params
  from dreamfoley_jax.convert.higgs import convert_state_dict
  import flax.linen as nn

  rng = np.random.default_rng(0)
  n = int(round(args.seconds * 24000))
  t = np.arange(n) / 24000
  def clips(b):
    return np.stack([0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.normal(size=n)
                     for i in range(b)]).astype(np.float32)
  x_small, x_full = clips(args.batch), clips(args.full_batch)

  def bench_jax(cfg, params, x):
    m = HiggsAudioV2Tokenizer(cfg)
    enc = jax.jit(lambda p, a: m.apply({"params": p}, a, method=m.encode)[0])
    t0 = time.perf_counter()
    jax.block_until_ready(enc(params, x))
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(enc(params, x))
      ts.append(time.perf_counter() - t0)
    return statistics.median(ts), compile_s

  cfg_json = FIXTURES / "higgs_audio_v2_tokenizer_config.json"
  npz = FIXTURES / "higgs_audio_v2_tokenizer_tiny.npz"
  small_cfg = HiggsTokenizerConfig.from_hf_config(json.loads(cfg_json.read_text())["tiny_config"])
  with np.load(npz) as f:
    small_params = convert_state_dict({k[6:]: f[k] for k in f.files if k.startswith("param/")}, small_cfg)
  res = {"jax": {}, "jax_bucketed": {}, "torch": {}}
  res["jax"]["small"], small_compile = bench_jax(small_cfg, small_params, x_small)
  # the data-prep path: AudioTokenizer (length buckets + padding masks), same clips
  from dreamfoley_jax.audio.tokenizer import AudioTokenizer
  tok = AudioTokenizer(small_params, small_cfg, buckets_s=(args.seconds,), batch_size=args.batch)
  tok.encode(list(x_small))
  ts = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    tok.encode(list(x_small))
    ts.append(time.perf_counter() - t0)
  res["jax_bucketed"] = {"small": statistics.median(ts)}
  full_compile = None
  if not args.skip_full:
    full_cfg = HiggsTokenizerConfig.real()
    full_params = nn.meta.unbox(jax.jit(lambda: init_params(full_cfg))())
    res["jax"]["full"], full_compile = bench_jax(full_cfg, full_params, x_full)
    del full_params

  if args.torch_python:
    with tempfile.TemporaryDirectory() as d:
      np.save(f"{d}/a.npy", x_small)
      np.save(f"{d}/b.npy", x_full)
      script = pathlib.Path(d) / "torch_side.py"
      script.write_text(TORCH_SIDE)
      targs = {"threads": args.threads, "repeats": args.repeats, "config": str(cfg_json), "npz": str(npz),
               "audio": f"{d}/a.npy", "audio_full": f"{d}/b.npy", "full": not args.skip_full}
      env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
      p = subprocess.run([args.torch_python, str(script), json.dumps(targs)], capture_output=True, text=True,
                         env=env, cwd=d)
      line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
      if p.returncode or not line:
        print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"torch side failed (rc={p.returncode})")
      tres = json.loads(line[0][7:])
      res["torch"] = {k: v for k, v in tres.items() if k in ("small", "full")}
      torch_version = tres["torch"]
  else:
    torch_version = None

  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch_version}, {os.cpu_count()} CPUs, "
        f"torch threads {args.threads}, load avg {os.getloadavg()[0]:.2f}")
  print(f"clip {args.seconds:g} s; small config batch {args.batch}, full-size batch {args.full_batch}; "
        f"median of {args.repeats} after warm-up (JAX compile excluded: small {small_compile:.1f} s"
        + (f", full {full_compile:.1f} s)" if full_compile else ")"))
  print(f"{'config':<10} {'impl':<12} {'s/call':>9} {'audio s/s':>10} {'s per audio s':>14} {'JAX/torch':>10}")
  for key, b in (("small", args.batch), ("full", args.full_batch)):
    if key not in res["jax"]:
      continue
    audio_s = b * args.seconds
    for impl in ("jax", "jax_bucketed", "torch"):
      if key in res[impl]:
        s = res[impl][key]
        ratio = f"{res['torch'][key] / s:.2f}x" if impl != "torch" and key in res["torch"] else ""
        print(f"{key:<10} {impl:<12} {s:9.3f} {audio_s / s:10.1f} {s / audio_s:14.4f} {ratio:>10}")


if __name__ == "__main__":
  main()
