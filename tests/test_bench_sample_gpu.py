"""benchmarks/bench_sample_gpu.py stays runnable: a tiny-config CPU run of the whole script (its device check,
bandwidth probe, random weights and the by-difference step timing)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow   # the older GPU bench; benchmarks/generate_gpu.py has the default smoke test (test_benchmarks_gpu)
def test_bench_sample_gpu_tiny_cpu(tmp_path):
  out = tmp_path / "rows.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  r = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_sample_gpu.py"), "--config=tiny", "--batches=2",
                      "--variants=xla", "--reps=1", "--seconds=1", f"--json_out={out}"],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "check [xla]: greedy sampler tokens == argmax of full-forward guided logits: 100.00%" in r.stdout
  d = json.loads(out.read_text())
  (row,) = d["rows"]
  assert row["batch"] == 2 and row["rows"] == 4 and row["steps"] == 25 + 8
  assert d["read_gbs"] > 0          # (step_ms is a difference of two short timings: not asserted, noisy)
  # bytes per step: every decoder-layer and head weight once (tiny: fp32), not the token embedding
  assert 0.0 < row["weight_gb"] < 1e-3 and row["kv_gb"] > 0
