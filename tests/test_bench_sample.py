"""benchmarks/bench_sample.py stays runnable: a tiny-config CPU run of the whole script (bandwidth and GEMV
probes, the greedy JAX-vs-torch agreement check, the interleaved timing and the summary table)."""
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_sample_tiny_cpu():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  r = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_sample.py"), "--configs=tiny", "--batches=1",
                      "--reps=1", "--seconds=1", "--probe_mb=8", "--threads=1"],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  # the two implementations compute the same thing: greedy tokens agree everywhere
  assert "tiny: greedy JAX vs torch token agreement 100.0%" in out
  probe = re.search(r"^\s+2 rows: XLA fp32 ([\d.]+), XLA bf16 ([\d.]+), torch fp32 1t ([\d.]+), torch bf16 1t ([\d.]+)$",
                    out, re.M)
  assert probe and all(float(x) > 0 for x in probe.groups()), out
  (row,) = [line for line in out.splitlines() if line.startswith("| tiny | 1 |")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert len(cells) == 16 and cells[2] == "33"                 # 25 frames + K staircase = 33 decode steps
  ratio, step_ms, prefill_s = float(cells[5].rstrip("x")), float(cells[12]), float(cells[13])
  floor_ms = float(cells[14])
  # (step_ms is a difference of two ~10 ms timings here: its sign is noise at this size, not asserted;
  # tiny's floor can round to 0.00). The columns agree with each other: each printed value stands for an
  # interval (seconds to 3 decimals, ratio and ms to 2), and the ratio of the time intervals must meet the
  # ratio's interval (an exact interval, not a first-order bound: a JAX time of 0.01 s is half rounding)
  jax_s, torch_s, ms_step = float(cells[3]), float(cells[4].split()[0]), float(cells[7])
  assert ratio > 0 and prefill_s >= 0 and floor_ms >= 0 and math.isfinite(step_ms)
  assert len(cells[3].split(".")[1]) == 3 and len(cells[4].split()[0].split(".")[1]) == 3, row
  h = 0.0005
  lo = (torch_s - h) / (jax_s + h)
  hi = (torch_s + h) / (jax_s - h) if jax_s > h else math.inf
  assert lo - 0.005 - 1e-9 <= ratio <= hi + 0.005 + 1e-9, (ratio, lo, hi, row)
  assert 1e3 * (jax_s - h) / 33 - 0.005 - 1e-9 <= ms_step <= 1e3 * (jax_s + h) / 33 + 0.005 + 1e-9, row
  if prefill_s > 0:      # prefill = JAX time - steps x decode step
    assert abs(prefill_s + 33 * step_ms / 1e3 - jax_s) <= 0.02
