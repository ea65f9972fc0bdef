"""benchmarks/torch_parity.py (the GPU check of the PyTorch DreamFoley) stays runnable: a tiny fp32 CPU run, where the
two implementations must agree everywhere."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_torch_parity_tiny_cpu():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, str(ROOT / "benchmarks/torch_parity.py"), "--config=tiny", "--device=cpu",
                      "--dtype=float32", "--seconds=0.4", "--batch=2", "--nocompile"],
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  tf = re.search(r"teacher-forced argmax agreement ([\d.]+)% of (\d+) cells; max \|logit diff\| ([\d.e-]+)", out)
  assert tf and float(tf.group(1)) == 100.0 and int(tf.group(2)) > 0 and float(tf.group(3)) <= 1e-5, out
  g = re.search(r"greedy \(CFG 3.0\): codes equal ([\d.]+)% of (\d+); first differing column per clip \[(.*?)\]", out)
  assert g and float(g.group(1)) == 100.0 and g.group(3) == "-1, -1", out
