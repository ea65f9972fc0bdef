"""AOT compile of the real train step for a TPU topology (libtpu, no TPU): tiny config on v5e-4."""
import importlib.util

import pytest

from dreamfoley_jax import aot


def test_parse_topology():
  t = aot.parse_topology("v5p-128")
  assert (t.topology, t.chips, t.chip_config, t.hbm_gib) == ("v5:4x4x4", 64, "megacore", 95.0)
  assert aot.parse_topology("v5e-4").topology == "v5e:2x2"
  with pytest.raises(ValueError, match="unknown topology"):
    aot.parse_topology("v5p-6")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install 'jax[tpu]'")
def test_tiny_compiles_for_v5e_4(monkeypatch):
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from dreamfoley_jax import configs

  r = aot.compile_train_step(configs.load_config("experiments/tiny.py"), "v5e-4")
  assert r["chips"] == 4 and r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and r["fits"]
  assert 0 < r["total_gib"] < 1
  # XLA's FLOP count per chip agrees with the analytic model FLOPs (no scan in the tiny config).
  assert 0.8 < r["xla_flops_per_chip"] * r["chips"] / r["model_flops_per_step"] < 1.25
