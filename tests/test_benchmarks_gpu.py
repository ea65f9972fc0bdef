"""benchmarks/ (issue 23: training MFU and batched generation on a GPU, beside PyTorch) on tiny shapes on CPU:
each script's printed figures are consistent with its raw timings, its FLOP counts equal the dot ops XLA
lowers, JAX and PyTorch agree on the same weights, and gpu_check's merged tables and goal verdicts follow
from the stages' JSON."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import bench_common  # noqa: E402

ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT))


def _run(script, *args, timeout=900):
  r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=ENV, capture_output=True,
                     text=True, timeout=timeout)
  assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
  return r.stdout


def _close(a, b, rel=1e-9):
  return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


@pytest.fixture(scope="module")
def train_doc(tmp_path_factory):
  out = tmp_path_factory.mktemp("train") / "train.json"
  _run("train_gpu.py", "--sizes=smoke", "--framework=jax,torch", "--dtype=float32", "--batch=2", "--steps=1",
       "--warmup=1", "--notorch_compile", "--check_loss", f"--json_out={out}")
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def gen_doc(tmp_path_factory):
  out = tmp_path_factory.mktemp("gen") / "gen.json"
  _run("generate_gpu.py", "--config=tiny", "--framework=jax,torch", "--batches=1,long,2", "--seconds=1",
       "--long_seconds=2", "--reps=1", "--nocheck", "--check_torch", f"--json_out={out}")
  return json.loads(out.read_text())


@pytest.mark.slow   # runs both GPU scripts on CPU (~70 s of the suite); -m slow
def test_train_rows_flops_and_loss_parity(train_doc):
  rows = {r["framework"]: r for r in train_doc["rows"]}
  assert set(rows) == {"jax", "torch"}
  j, t = rows["jax"], rows["torch"]
  # the 1 s bucket of the pipeline: text 8 + video 25 + audio 25 + K + 1 columns
  assert j["seq_parts"] == [8, 25, 34] and j["seq"] == 67 and j["tokens_per_step"] == 2 * 67
  assert t["batch"] == j["batch"] == 2 and t["seq"] == j["seq"]
  # the model FLOP count is exactly the dot ops of the lowered step; cost analysis adds elementwise ops
  assert j["xla_dot_flops"] == j["model_flops"]
  assert 1.0 < j["xla_over_model"] < 1.1
  for r in (j, t):
    s = r["step_ms"] / 1e3
    assert _close(r["tokens_per_s"], r["tokens_per_step"] / s)
    assert _close(r["model_tflops_per_s"], r["model_flops"] / s / 1e12)
    assert _close(r["mfu"], r["model_flops"] / s / r["peak_flops"])
    assert abs(r["loss_first"] - math.log(64 + 2)) < 0.05       # random heads: CE of a uniform V = 66
  assert t["model_flops"] == j["model_flops"]
  assert train_doc["loss_check"]["abs_diff"] < 1e-5             # same weights, same batch, fp32


@pytest.mark.slow   # runs both GPU scripts on CPU (~70 s of the suite); -m slow
def test_generate_rows_consistent_and_greedy_parity(gen_doc):
  from dreamfoley_jax import sampling as S

  assert gen_doc["torch_greedy_check"]["equal"] == 1.0
  fc = gen_doc["flops_check"]
  assert fc["xla_dot_flops"] == fc["model_flops"]               # the floors' FLOPs == the sampler's dot ops
  rows = [r for r in gen_doc["rows"] if r.get("kind") != "long_clip"]
  assert sorted((r["framework"], r["batch"]) for r in rows) == [("jax", 1), ("jax", 2), ("torch", 1), ("torch", 2)]
  K, frames = 8, 25
  ceil = gen_doc["ceilings"]
  for r in rows:
    assert r["steps"] == frames + K
    assert _close(r["clips_per_s"], r["batch"] / r["full_s"])
    assert _close(r["step_s"], (r["full_s"] - r["half_s"]) / ((frames + K) - (frames // 2 + K)))
    assert _close(r["prefill_s"], r["one_s"] - (1 + K) * r["step_s"])
    if r["framework"] == "jax":
      assert _close(r["bw_floor_s"], (r["weight_gb"] + r["kv_gb"]) * 1e9 / (ceil["read_gbs"] * 1e9))
      f32 = r["decode_fp32_flops_per_row"]
      want = r["rows"] * ((r["decode_flops_per_row"] - f32) / ceil["bf16_flops"] + f32 / ceil["fp32_flops"])
      assert _close(r["compute_floor_s"], want)
      assert _close(r["step_over_floor"], r["step_s"] / max(r["bw_floor_s"], r["compute_floor_s"]))
      assert r["bound"] == ("compute" if r["compute_floor_s"] > r["bw_floor_s"] else "bandwidth")
  (lc,) = [r for r in gen_doc["rows"] if r.get("kind") == "long_clip"]
  assert lc["windows"] == len(S.window_plan(50, 25, 8)) and lc["codes_shape"] == [1, K, 50]
  assert _close(lc["real_time_factor"], 2.0 / lc["wall_s"])


@pytest.mark.slow   # runs both GPU scripts on CPU (~70 s of the suite); -m slow
def test_summary_merges_stages(train_doc, gen_doc):
  docs = {"train_jax": {**train_doc, "rows": [r for r in train_doc["rows"] if r["framework"] == "jax"]},
          "train_torch": {**train_doc, "rows": [r for r in train_doc["rows"] if r["framework"] == "torch"]},
          "gen_jax": {**gen_doc, "rows": [r for r in gen_doc["rows"] if r["framework"] == "jax"]},
          "gen_torch": {**gen_doc, "rows": [r for r in gen_doc["rows"] if r["framework"] == "torch"]}}
  s = gpu_check.summarize(docs)
  (tr,) = s["train"]
  assert _close(tr["jax_over_torch"], tr["jax_tokens_per_s"] / tr["torch_tokens_per_s"])
  assert [g["batch"] for g in s["generate"]] == [1, 2]
  for g in s["generate"]:
    assert _close(g["jax_over_torch"], g["clips_per_s"] / g["torch_clips_per_s"])
  assert len(s["long_clips"]) == 1
  # tiny shapes never count toward the goals
  assert all(v == "not measured" for v, _ in s["goals"].values())
  md = gpu_check.summary_markdown(s)
  assert "| smoke | 2 | none | 67 |" in md and "Windowed clip: 2 s x1" in md


def _row(**kw):
  return dict(kw)


def test_summary_goals_and_variants():
  tj = {"rows": [_row(framework="jax", size="1.5b", attention="xla", batch=32, remat="none", seq=573, step_ms=400.0,
                      tokens_per_s=45840.0, mfu=0.52),
                 _row(framework="jax", size="0.5b", attention="xla", batch=64, remat="none", seq=573, step_ms=300.0,
                      tokens_per_s=122240.0, mfu=0.41),
                 _row(framework="jax", size="1.5b", attention="cudnn", batch=32, remat="none", seq=573,
                      step_ms=320.0, tokens_per_s=57300.0, mfu=0.65)]}
  tt = {"rows": [_row(framework="torch", size="1.5b", batch=32, step_ms=600.0, tokens_per_s=30560.0, mfu=0.35),
                 _row(framework="torch", size="0.5b", batch=64, step_ms=330.0, tokens_per_s=111127.0, mfu=0.37)]}
  gj = {"config": "7b", "rows": [
      _row(framework="jax", variant="xla", batch=1, clips_per_s=0.7, full_s=1.43, step_ms=5.0, step_over_floor=1.2,
           prefill_ms=40.0),
      _row(framework="jax", variant="xla", batch=256, clips_per_s=40.0, full_s=6.4, step_ms=12.0,
           step_over_floor=1.3, prefill_ms=1500.0),
      _row(framework="jax", variant="cudnn", batch=256, clips_per_s=42.0, full_s=6.1, step_ms=12.0,
           step_over_floor=1.3, prefill_ms=1200.0)]}
  gt = {"rows": [_row(framework="torch", batch=256, clips_per_s=10.0, full_s=25.6, step_ms=60.0, prefill_ms=3000.0)]}
  s = gpu_check.summarize({"train_jax": tj, "train_torch": tt, "gen_jax": gj, "gen_torch": gt})
  g = s["goals"]
  assert g["MFU >= 50% at 1.5B (JAX)"][0] == "met"
  assert g["JAX >= 1.2x PyTorch training tokens/s"][0] == "not met"        # 0.5b: 1.10x
  assert _close(min(g["JAX >= 1.2x PyTorch training tokens/s"][1]), 122240.0 / 111127.0)
  assert g[">= 17 clips/s at the best batch"][0] == "met"
  assert g["decode step <= 1.25x max(bandwidth, compute floor) at every batch"][0] == "not met"
  assert [r["size"] for r in s["train"]] == ["1.5b", "0.5b"]                 # the cudnn row is a variant
  v = [r for r in s["train_variants"] if r["attention"] == "cudnn"][0]
  assert _close(v["speedup"], 400.0 / 320.0)
  (gv,) = s["generate_variants"]
  assert gv["base_prefill_ms"] == 1500.0 and _close(gv["speedup"], 6.4 / 6.1)
  assert _close(s["generate"][1]["jax_over_torch"], 4.0) and "torch_clips_per_s" not in s["generate"][0]
  assert gpu_check.summarize({})["goals"][">= 17 clips/s at the best batch"][0] == "not measured"


def test_batch_that_fits():
  from train_gpu import batch_that_fits

  GiB = 2 ** 30
  # probe at 8: 30 GiB planned, 20 args, 2 fixed -> 1 GiB per example; 90 GiB budget -> 68 -> 64
  per, b = batch_that_fits(30 * GiB, 20 * GiB, 2 * GiB, 8, 90 * GiB)
  assert per == GiB and b == 64


def test_hlo_dot_flops_reads_both_operand_styles():
  t = ("  a.1 = f32[3,4]{1,0} parameter(0)\n"
       "  ROOT d = f32[3,5]{1,0} dot(a.1, b.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}\n"
       "  e = f32[2,3,5]{2,1,0} dot(f32[2,3,4]{2,1,0} %x, f32[2,4,5]{2,1,0} %y), lhs_batch_dims={0}, "
       "lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}\n")
  assert bench_common.hlo_dot_flops(t) == 2 * 3 * 5 * 4 + 2 * 2 * 3 * 5 * 4


def test_run_stage_logs_and_kills_at_the_limit(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(gpu_check, "GRACE_S", 1)
  with open(tmp_path / "log.txt", "w") as log:
    ok = gpu_check.run_stage("hello", [sys.executable, "-c", "print('hi')"], 30, tmp_path, log)
    slow = gpu_check.run_stage("slow", [sys.executable, "-c", "import time; print('start', flush=True); "
                                        "time.sleep(60)"], 1, tmp_path, log)
  assert ok["rc"] == 0 and not ok["timed_out"]
  assert slow["timed_out"] and slow["wall_s"] < 30
  text = (tmp_path / "log.txt").read_text()
  assert "hi" in text and "start" in text and "killed at its time limit" in text
  assert "[hello] hi" in capsys.readouterr().out


def test_gpu_check_plan_and_bad_flags(capsys):
  assert gpu_check.main(["--dry_run", "--budget_s", "540"]) == 0
  out = capsys.readouterr().out
  names = [line.split(":")[0] for line in out.splitlines()]
  assert names == ["gen_jax", "train_jax", "train_torch", "gen_torch", "parity"]
  slices = [float(line.split("slice ")[1].split(" s")[0]) for line in out.splitlines()]
  assert abs(sum(slices) - (540 - 10)) <= len(slices)                      # the budget less the summary reserve
  assert "--variants=xla,cudnn" in out and "--attention=xla,cudnn" in out
  with pytest.raises(SystemExit):
    gpu_check.main(["--dry_run", "--only", "gen_jax,nope"])
  assert "unknown stage(s) ['nope']" in capsys.readouterr().err
  assert gpu_check.main(["--dry_run", "--extra", "gen_jax=--max_batch=512", "--only", "gen_jax"]) == 0
  assert "--max_batch=512" in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_smoke_end_to_end(tmp_path):
  """The whole wrapper on CPU with tiny shapes: every stage runs and the summary is written (~4 min)."""
  r = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--smoke", "--budget_s", "1200",
                      "--out_dir", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, r.stdout[-3000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  assert [x["rc"] for x in s["stages"]] == [0, 0, 0, 0]
  assert s["train"][0]["torch_batch"] == s["train"][0]["batch"] and len(s["generate"]) == 2
