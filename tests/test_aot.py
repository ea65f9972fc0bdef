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


def test_default_sample_mesh_keeps_whole_kv_heads_per_chip():
  from dreamfoley_jax import configs, train

  cfg = train.model_config(configs.load_config("experiments/paper_7b.py"))     # 4 KV heads
  assert aot.default_sample_mesh(cfg, 8) == {"data": 2, "fsdp": 1, "tensor": 4}
  assert aot.default_sample_mesh(cfg, 4) == {"data": 1, "fsdp": 1, "tensor": 4}
  assert aot.default_sample_mesh(cfg, 2) == {"data": 1, "fsdp": 1, "tensor": 2}
  assert aot.default_sample_mesh(cfg, 6) == {"data": 3, "fsdp": 1, "tensor": 2}


def test_check_sample_args_names_the_bad_argument():
  assert aot.check_sample_args("v5e-8", 8, 10.0, {"tensor": 4, "data": 2}).chips == 8
  with pytest.raises(ValueError, match="unknown topology"):
    aot.check_sample_args("v5e-6", 8, 10.0, None)
  with pytest.raises(ValueError, match="batch must be >= 1"):
    aot.check_sample_args("v5e-8", 0, 10.0, None)
  with pytest.raises(ValueError, match="seconds must cover at least one 25 Hz audio frame"):
    aot.check_sample_args("v5e-8", 1, 0.01, None)
  with pytest.raises(ValueError, match=r"unknown axes \['model'\]"):
    aot.check_sample_args("v5e-8", 8, 10.0, {"model": 4})
  with pytest.raises(ValueError, match="needs 16 devices, have 8"):
    aot.check_sample_args("v5e-8", 8, 10.0, {"tensor": 4, "data": 4})


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu: pip install 'jax[tpu]'")
def test_tiny_sampler_compiles_for_v5e_4(monkeypatch):
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from dreamfoley_jax import configs, sampling, train

  c = configs.load_config("experiments/tiny.py")
  r = aot.compile_sample(c, "v5e-4", batch=4, seconds=2.0)
  cfg = train.model_config(c)
  kv = cfg.decoder.num_key_value_heads
  assert r["mesh"]["tensor"] == max(d for d in (1, 2, 4) if kv % d == 0) and r["chips"] == 4 and r["fits"]
  assert r["mesh"]["data"] == 2 and r["clips_split"]            # 4 clips over data = 2: split
  assert (r["frames"], r["decode_steps"], r["cfg_rows"]) == (50, sampling.num_columns(50, 8) - 1, 8)
  # The per-chip weights really are split: the whole model's bytes over the tensor axis (+ replicated norms)
  whole = r["params"] * 4          # tiny: fp32 params
  assert whole / r["mesh"]["tensor"] <= r["params_gib_per_chip"] * 1024 ** 3 < whole
  assert 0 < r["args_gib"] < 0.05 and r["ceiling_steps_per_s"] > 0
  # one batch row per clip per data shard does not divide: the clips are replicated, and it still compiles
  r1 = aot.compile_sample(c, "v5e-4", batch=1, seconds=1.0, mesh={"data": 4})
  assert r1["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and not r1["clips_split"] and r1["fits"]
