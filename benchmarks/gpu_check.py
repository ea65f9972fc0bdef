r"""Every GPU throughput measurement of issue 23 in one prepared run: training MFU and batched generation, JAX
beside the PyTorch module, the 60 s windowed clip and the cuDNN attention variants, within a time budget.

  python benchmarks/gpu_check.py --budget_s 540 --out_dir $OUT      # on a GPU machine (docs/gpu_benchmarks.md)
  python benchmarks/gpu_check.py --dry_run                         # the plan: stages, commands, time slices
  JAX_PLATFORMS=cpu python benchmarks/gpu_check.py --smoke --budget_s 900 --out_dir /tmp/gc   # CPU smoke

Stages run one after the other, each in its own process (JAX and PyTorch never share the chip's memory):
gen_jax (benchmarks/generate_gpu.py: 7B, batches 1/8/32/64/max, the 60 s clip, then cuDNN prefill at the max
batch), train_jax (benchmarks/train_gpu.py: 1.5B then 0.5B, largest batch, then cuDNN attention), train_torch
(the same sizes at the JAX run's batch), gen_torch (batches 1 / 64 / the JAX max), parity (torch_parity.py
on the small config, if time is left). Each stage gets a slice of what is left of the budget (by its share)
and skips, inside itself, work that would not fit; every stage writes its JSON after each row, so a stage cut
short keeps what it measured. At the end: summary.md (the merged tables, JAX / PyTorch ratios, each goal
met / not met / not measured) and summary.json in --out_dir, the merged tables on stdout.
"""
import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_common  # noqa: E402

GOALS = {"mfu_1.5b": 0.50, "train_ratio": 1.2, "clips_per_s": 17.0, "step_over_floor": 1.25}


def stages(smoke: bool):
  """[(name, share of the budget, argv)]: the order is the priority."""
  py = sys.executable
  gen, train = str(HERE / "generate_gpu.py"), str(HERE / "train_gpu.py")
  if smoke:
    g = ["--config=tiny", "--seconds=1", "--reps=1", "--long_seconds=2", "--nocheck", "--batches=1,2,long"]
    t = ["--sizes=smoke", "--dtype=float32", "--batch=2", "--steps=1", "--warmup=1"]
    return [("gen_jax", 0.30, [py, gen, "--framework=jax", *g, "--variants=xla"]),
            ("train_jax", 0.25, [py, train, "--framework=jax", *t]),
            ("train_torch", 0.20, [py, train, "--framework=torch", *t, "--notorch_compile",
                                   "--batches_from={out}/train_jax.json"]),
            ("gen_torch", 0.25, [py, gen, "--framework=torch", *g])]
  return [("gen_jax", 0.40, [py, gen, "--framework=jax", "--batches=1,64,max,long,8,32", "--reps=1",
                             "--variants=xla,cudnn", "--variant_batches=max"]),
          ("train_jax", 0.22, [py, train, "--framework=jax", "--sizes=1.5b,0.5b", "--attention=xla,cudnn"]),
          ("train_torch", 0.15, [py, train, "--framework=torch", "--sizes=1.5b,0.5b",
                                 "--batches_from={out}/train_jax.json"]),
          ("gen_torch", 0.18, [py, gen, "--framework=torch", "--batches=1,64,max", "--reps=1",
                               "--batches_from={out}/gen_jax.json"]),
          ("parity", 0.05, [py, str(HERE / "torch_parity.py"), "--config=small", "--seconds=4", "--batch=2"])]


GRACE_S = 20          # a stage's process may run this long past its slice (it checks its own deadline)


def run_stage(name, argv, slice_s, out_dir, log_file, echo=True) -> dict:
  """Runs one stage with `--deadline_s` = its slice (scripts of this directory) and a hard timeout; its output
  goes to `log_file` (and stdout, prefixed). Returns {name, rc, wall_s, timed_out}."""
  argv = [a.replace("{out}", str(out_dir)) for a in argv]
  # A stage reading an earlier stage's JSON runs without it when that stage left none (it says what it skips).
  missing = [a for a in argv if a.startswith("--batches_from=") and not pathlib.Path(a.split("=", 1)[1]).exists()]
  argv = [a for a in argv if a not in missing]
  if "benchmarks" in argv[1]:
    argv = argv + [f"--deadline_s={max(slice_s, 1):.0f}", f"--json_out={out_dir}/{name}.json"]
  t = time.monotonic()
  log_file.write(f"\n===== {name}: {' '.join(shlex.quote(a) for a in argv)} (slice {slice_s:.0f} s)"
                 + (f"; without {missing} (not written)" if missing else "") + "\n")
  log_file.flush()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
  timed_out = False
  deadline = t + slice_s + GRACE_S
  import selectors

  sel = selectors.DefaultSelector()
  sel.register(proc.stdout, selectors.EVENT_READ)
  while True:
    left = deadline - time.monotonic()
    if left <= 0:
      timed_out = True
      os.killpg(proc.pid, 9)
      break
    if sel.select(timeout=min(left, 5.0)):
      line = proc.stdout.readline()
      if not line:
        break
      log_file.write(line)
      log_file.flush()
      if echo and not line.startswith(("[transformers]", "Loading weights")):
        sys.stdout.write(f"[{name}] {line}")
        sys.stdout.flush()
  rc = proc.wait()
  wall = time.monotonic() - t
  msg = f"===== {name}: rc {rc}{' (killed at its time limit)' if timed_out else ''}, {wall:.0f} s\n"
  log_file.write(msg)
  sys.stdout.write(msg)
  return {"name": name, "rc": rc, "wall_s": wall, "timed_out": timed_out, "argv": argv}


# --------------------------------------------------------------------------------------------------
# Summary (pure: from the stages' JSON documents)
# --------------------------------------------------------------------------------------------------

def _rows(doc, **match):
  return [r for r in (doc or {}).get("rows", []) if all(r.get(k) == v for k, v in match.items())]


def summarize(docs: dict) -> dict:
  """Merged tables and goal verdicts from {stage: JSON document} (missing stages: not measured)."""
  tj, tt, gj, gt = (docs.get(k) for k in ("train_jax", "train_torch", "gen_jax", "gen_torch"))
  train = []
  base_attn = {}
  for r in _rows(tj):
    base_attn.setdefault(r["size"], r["attention"])
  for r in _rows(tj):
    if r["attention"] != base_attn[r["size"]]:
      continue
    t = next(iter(_rows(tt, size=r["size"])), None)
    row = {"size": r["size"], "batch": r["batch"], "remat": r["remat"], "seq": r["seq"],
           "jax_step_ms": r["step_ms"], "jax_tokens_per_s": r["tokens_per_s"], "jax_mfu": r["mfu"],
           "jax_peak_mem_gib": r.get("peak_mem_gib"), "xla_over_model": r.get("xla_over_model"),
           "xla_dots_over_model": r.get("xla_dots_over_model")}
    if t is not None:
      row.update(torch_batch=t["batch"], torch_step_ms=t["step_ms"], torch_tokens_per_s=t["tokens_per_s"],
                 torch_mfu=t["mfu"], torch_peak_mem_gib=t.get("peak_mem_gib"),
                 jax_over_torch=r["tokens_per_s"] / t["tokens_per_s"])
    train.append(row)
  train_variants = []
  for r in _rows(tj):
    base = next(x for x in _rows(tj, size=r["size"]) if x["attention"] == base_attn[r["size"]])
    train_variants.append({"size": r["size"], "attention": r["attention"], "batch": r["batch"],
                           "step_ms": r["step_ms"], "tokens_per_s": r["tokens_per_s"], "mfu": r["mfu"],
                           "peak_mem_gib": r.get("peak_mem_gib"), "speedup": base["step_ms"] / r["step_ms"]})
  gen, gen_variants, long_clips = [], [], []
  jrows = [r for r in _rows(gj) if r.get("kind") != "long_clip"]
  base_v = jrows[0]["variant"] if jrows else None
  for r in jrows:
    if r["variant"] != base_v:
      continue
    t = next(iter(_rows(gt, batch=r["batch"])), None)
    row = {k: r.get(k) for k in ("batch", "clips_per_s", "full_s", "step_ms", "bw_floor_ms", "compute_floor_ms",
                                 "bound", "step_over_floor", "prefill_ms", "prefill_floor_ms", "hbm_peak_gib",
                                 "kv_gb", "weight_gb")}
    if t is not None:
      row.update(torch_clips_per_s=t["clips_per_s"], torch_step_ms=t["step_ms"], torch_prefill_ms=t["prefill_ms"],
                 torch_hbm_peak_gib=t.get("hbm_peak_gib"), jax_over_torch=r["clips_per_s"] / t["clips_per_s"])
    gen.append(row)
  for r in jrows:
    if r["variant"] == base_v:
      continue
    base = next((x for x in jrows if x["batch"] == r["batch"] and x["variant"] == base_v), None)
    gen_variants.append({"batch": r["batch"], "variant": r["variant"], "clips_per_s": r["clips_per_s"],
                         "prefill_ms": r["prefill_ms"], "step_ms": r["step_ms"], "full_s": r["full_s"],
                         "base_prefill_ms": None if base is None else base["prefill_ms"],
                         "speedup": None if base is None else base["full_s"] / r["full_s"]})
  for r in _rows(gj, kind="long_clip"):
    long_clips.append({k: r[k] for k in ("seconds", "batch", "windows", "wall_s", "first_s", "real_time_factor")})

  def verdict(values, ok):
    if not values:
      return "not measured"
    return "met" if ok(values) else "not met"

  # The goals are about the real shapes: smoke rows (tiny configs) never count.
  mfu15 = [r["jax_mfu"] for r in train if r["size"] == "1.5b"]
  ratios = [r["jax_over_torch"] for r in train if "jax_over_torch" in r and r["size"] in ("0.5b", "1.5b")]
  real_gen = (gj or {}).get("config") == "7b"
  clips = [r["clips_per_s"] for r in gen] if real_gen else []
  sof = [r["step_over_floor"] for r in gen] if real_gen else []
  goals = {
      "MFU >= 50% at 1.5B (JAX)": (verdict(mfu15, lambda v: max(v) >= GOALS["mfu_1.5b"]), mfu15),
      "JAX >= 1.2x PyTorch training tokens/s": (verdict(ratios, lambda v: min(v) >= GOALS["train_ratio"]), ratios),
      ">= 17 clips/s at the best batch": (verdict(clips, lambda v: max(v) >= GOALS["clips_per_s"]), clips),
      "decode step <= 1.25x max(bandwidth, compute floor) at every batch":
          (verdict(sof, lambda v: max(v) <= GOALS["step_over_floor"]), sof),
  }
  skipped = [dict(s, stage=k) for k, d in docs.items() if d for s in d.get("skipped", [])]
  machine = next((d["machine"] for d in docs.values() if d and d.get("machine")), None)
  return {"machine": machine, "gen_config": (gj or {}).get("config"), "gen_seconds": (gj or {}).get("seconds"),
          "train": train, "train_variants": train_variants, "generate": gen,
          "generate_variants": gen_variants, "long_clips": long_clips, "goals": goals, "skipped": skipped,
          "ceilings": (gj or {}).get("ceilings")}


def summary_markdown(s: dict) -> str:
  T = bench_common.table
  out = [f"# GPU check: {s['machine']}", ""]
  if s.get("ceilings"):
    c = s["ceilings"]
    out += [f"Measured ceilings: read {c['read_gbs']:.0f} GB/s, bf16 matmul {c['bf16_flops'] / 1e12:.0f} TFLOP/s, "
            f"fp32 (HIGHEST) matmul {c['fp32_flops'] / 1e12:.1f} TFLOP/s.", ""]
  out += ["## Training (one step: decoder + projector + heads + weighted loss + AdamW)", "", T(s["train"], [
      ("size", "size", None), ("batch", "batch", None), ("remat", "remat", None), ("seq", "seq", None),
      ("JAX ms/step", "jax_step_ms", "{:.1f}"), ("JAX tokens/s", "jax_tokens_per_s", "{:,.0f}"),
      ("JAX MFU", "jax_mfu", "{:.1%}"), ("JAX peak GiB", "jax_peak_mem_gib", "{:.1f}"),
      ("PyTorch batch", "torch_batch", None), ("PyTorch ms/step", "torch_step_ms", "{:.1f}"),
      ("PyTorch tokens/s", "torch_tokens_per_s", "{:,.0f}"), ("PyTorch MFU", "torch_mfu", "{:.1%}"),
      ("PyTorch peak GiB", "torch_peak_mem_gib", "{:.1f}"), ("JAX / PyTorch", "jax_over_torch", "{:.2f}x"),
      ("XLA dots / model FLOPs", "xla_dots_over_model", "{:.4f}"), ("XLA cost / model", "xla_over_model",
                                                                     "{:.4f}")]), ""]
  if s["train_variants"]:
    out += ["Attention variants (JAX, same batch):", "", T(s["train_variants"], [
        ("size", "size", None), ("attention", "attention", None), ("batch", "batch", None),
        ("ms/step", "step_ms", "{:.1f}"), ("tokens/s", "tokens_per_s", "{:,.0f}"), ("MFU", "mfu", "{:.1%}"),
        ("peak GiB", "peak_mem_gib", "{:.1f}"), ("speed-up", "speedup", "{:.3f}x")]), ""]
  out += [f"## Generation ({s.get('gen_config')} model, {s.get('gen_seconds')} s clips, CFG 3, top-k 25, top-p 0.9)",
          "", T(s["generate"], [
      ("batch", "batch", None), ("JAX clips/s", "clips_per_s", "{:.2f}"), ("10 s call s", "full_s", "{:.2f}"),
      ("decode ms/step", "step_ms", "{:.2f}"), ("bw floor ms", "bw_floor_ms", "{:.2f}"),
      ("compute floor ms", "compute_floor_ms", "{:.2f}"), ("bound", "bound", None),
      ("step / floor", "step_over_floor", "{:.2f}"), ("prefill ms", "prefill_ms", "{:.0f}"),
      ("prefill floor ms", "prefill_floor_ms", "{:.0f}"), ("HBM peak GiB", "hbm_peak_gib", "{:.1f}"),
      ("PyTorch clips/s", "torch_clips_per_s", "{:.2f}"), ("PyTorch ms/step", "torch_step_ms", "{:.2f}"),
      ("PyTorch prefill ms", "torch_prefill_ms", "{:.0f}"), ("JAX / PyTorch", "jax_over_torch", "{:.2f}x")]), ""]
  if s["generate_variants"]:
    out += ["Prefill attention variants (JAX, same batch):", "", T(s["generate_variants"], [
        ("batch", "batch", None), ("variant", "variant", None), ("clips/s", "clips_per_s", "{:.2f}"),
        ("call s", "full_s", "{:.2f}"), ("prefill ms", "prefill_ms", "{:.0f}"),
        ("default prefill ms", "base_prefill_ms", "{:.0f}"), ("speed-up (call)", "speedup", "{:.3f}x")]), ""]
  for r in s["long_clips"]:
    out.append(f"Windowed clip: {r['seconds']:g} s x{r['batch']} in {r['windows']} windows: {r['wall_s']:.2f} s "
               f"warm ({r['first_s']:.1f} s with compiles) = {r['real_time_factor']:.1f}x real time.")
  out += ["", "## Goals", ""] + [f"- {k}: **{v}** ({', '.join(f'{x:.3g}' for x in vals) or '-'})"
                                 for k, (v, vals) in s["goals"].items()]
  if s["skipped"]:
    out += ["", "## Skipped", ""] + [f"- [{x['stage']}] {x['what']}: {x['why']}" for x in s["skipped"]]
  return "\n".join(out) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--budget_s", type=float, default=540, help="wall-clock budget of the whole run (default 540)")
  ap.add_argument("--out_dir", default=os.environ.get("OUT") or "runs/gpu_check", help="JSON, logs and summary "
                  "(default $OUT, else runs/gpu_check)")
  ap.add_argument("--only", default="", help="comma-separated stage names to run (default: all, in order)")
  ap.add_argument("--extra", action="append", default=[], metavar="STAGE=ARGS",
                  help="more flags for one stage (last one wins), e.g. --extra 'gen_jax=--max_batch=512'")
  ap.add_argument("--smoke", action="store_true", help="tiny configs (a CPU test of the whole pipeline)")
  ap.add_argument("--dry_run", action="store_true", help="print the stages, commands and slices; run nothing")
  args = ap.parse_args(argv)
  plan = stages(args.smoke)
  names = [n for n, _, _ in plan]
  if args.only:
    want = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in want if x not in names]
    if bad:
      ap.error(f"--only: unknown stage(s) {bad}; stages: {','.join(names)}")
    plan = [p for p in plan if p[0] in want]
  for e in args.extra:
    name, _, more = e.partition("=")
    if name not in names:
      ap.error(f"--extra {e!r}: unknown stage {name!r}; stages: {','.join(names)}")
    plan = [(n, sh, cmd + shlex.split(more) if n == name else cmd) for n, sh, cmd in plan]
  out = pathlib.Path(args.out_dir)
  start = time.monotonic()
  reserve = 10.0                                # the summary
  if args.dry_run:
    left = args.budget_s - reserve
    for i, (name, share, cmd) in enumerate(plan):
      sl = left * share / sum(s for _, s, _ in plan[i:])
      print(f"{name}: slice {sl:.0f} s (if the stages before use theirs): "
            + " ".join(shlex.quote(a.replace("{out}", str(out))) for a in cmd))
      left -= sl
    return 0
  out.mkdir(parents=True, exist_ok=True)
  results = []
  with open(out / "log.txt", "w") as log:
    for i, (name, share, cmd) in enumerate(plan):
      left = args.budget_s - reserve - (time.monotonic() - start)
      sl = left * share / sum(s for _, s, _ in plan[i:])
      if sl < 15:
        print(f"===== {name}: skipped ({left:.0f} s of the budget left)")
        results.append({"name": name, "rc": None, "skipped": True})
        continue
      results.append(run_stage(name, cmd, sl - GRACE_S, out, log))
  docs = {}
  for name in names:
    p = out / f"{name}.json"
    if p.exists():
      docs[name] = json.loads(p.read_text())
  s = summarize(docs)
  s["stages"] = results
  s["budget_s"], s["wall_s"] = args.budget_s, time.monotonic() - start
  (out / "summary.json").write_text(json.dumps(s, indent=1, default=float))
  md = summary_markdown(s)
  (out / "summary.md").write_text(md)
  print("\n" + md)
  print(f"gpu_check: {s['wall_s']:.0f} s of {args.budget_s:.0f}; stages "
        + ", ".join(f"{r['name']} rc={r['rc']}" for r in results) + f"; files in {out}")
  return 0 if all(r.get("rc") in (0, None) for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
