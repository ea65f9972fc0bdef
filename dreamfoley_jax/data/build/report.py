"""report.json + report.png for an output folder, from its shard indexes (every run so far).

report.json: counts per stage (clips in / kept / rejected; files for standardise), every rejection
reason with the histogram of its values, per-file rows (what was found, what was done, why a file gave
nothing), the duration distributions and the kept clips' score distributions. report.png: the same as
one page of matplotlib plots.
"""
from __future__ import annotations

import collections
import json
from typing import Any, Sequence

import numpy as np

from dreamfoley_jax.data.build import shards

FILE_STAGES = ("input", "standardise")


def histogram(values: Sequence[float], bins: int = 20) -> dict[str, Any]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return {"n": 0}
  counts, edges = np.histogram(v, bins=bins)
  return {"n": int(v.size), "min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()),
          "edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def build_report(out_dir: str, name: str, stage_names: Sequence[str], identity: dict | None = None,
                 run: dict | None = None) -> dict:
  idxs = shards.read_indexes(out_dir, name)
  files: dict[str, dict] = {}
  seen = set()
  rejections = []
  for idx in idxs:
    for fk, f in idx["files"].items():
      files.setdefault(fk, f)
    for r in idx["rejections"]:
      k = (r["source"], r["clip_id"], r["stage"], r["reason"])
      if k not in seen:   # an unhashable path is reported again by each run
        seen.add(k)
        rejections.append(r)
  kept = [c for f in files.values() for c in f.get("kept", [])]
  # per stage: clips in / rejected / kept, in pipeline order
  by_stage = collections.Counter(r["stage"] for r in rejections if r["clip_id"] is not None)
  file_rej = [r for r in rejections if r["clip_id"] is None]
  n_in = len(kept) + sum(v for s, v in by_stage.items() if s not in FILE_STAGES)
  sources = {f["source"] for f in files.values()} | {r["source"] for r in rejections}
  stage_rows = [{"stage": "standardise", "unit": "file", "in": len(sources),
                 "rejected": len({r["source"] for r in file_rej}),
                 "kept": len(sources) - len({r["source"] for r in file_rej}),
                 "clips_out": n_in, "clips_dropped": by_stage.get("standardise", 0)}]
  for s in stage_names:
    rej = by_stage.get(s, 0)
    stage_rows.append({"stage": s, "unit": "clip", "in": n_in, "rejected": rej, "kept": n_in - rej})
    n_in -= rej
  reasons: dict[str, dict] = {}
  for r in rejections:
    d = reasons.setdefault(f"{r['stage']}/{r['reason']}", {"count": 0, "values": []})
    d["count"] += 1
    d["values"].append(r["value"])
  for d in reasons.values():
    d["histogram"] = histogram(d.pop("values"))
  per_file = []
  rej_by_source = collections.defaultdict(list)
  for r in rejections:
    rej_by_source[r["source"]].append(r)
  for src in sorted(sources):
    f = next((f for f in files.values() if f["source"] == src), {})
    rs = rej_by_source.get(src, [])
    whole = [r for r in rs if r["clip_id"] is None]
    n_kept = len(f.get("kept", []))
    row = {"source": src, "status": "rejected" if whole else "kept" if n_kept else "all_clips_rejected",
           "clips_kept": n_kept,
           "notes": f.get("notes", []), "probe": f.get("probe", {})}
    if whole:
      row.update(reason=whole[0]["reason"], value=whole[0]["value"], detail=whole[0]["detail"])
    row["clips_rejected"] = collections.Counter(f"{r['stage']}/{r['reason']}" for r in rs if r["clip_id"])
    per_file.append(row)
  scores: dict[str, list] = collections.defaultdict(list)
  for c in kept:
    for k, v in c["scores"].items():
      scores[k].append(v)
  report = {
      "out_dir": str(out_dir), "shards": sum(1 for i in idxs if i.get("shard")),
      "records": len(kept), "hours": round(sum(c["duration"] for c in kept) / 3600, 4),
      "files": {"total": len(sources), "with_records": sum(1 for f in files.values() if f.get("kept")),
                "rejected": len({r["source"] for r in file_rej})},
      "stages": stage_rows, "rejections": dict(sorted(reasons.items())),
      "durations": {"kept_clips": histogram([c["duration"] for c in kept]),
                    "sources": histogram([f.get("duration_sec") for f in files.values() if f.get("duration_sec")])},
      "scores": {k: histogram(v) for k, v in sorted(scores.items())},
      "per_file": per_file,
  }
  if identity is not None:
    report["config"] = identity
  if run is not None:
    report["last_run"] = run
  return report


def failures(out_dir: str, name: str) -> list[dict]:
  """The bad items of every run so far (issue 19's failures.json): files that gave nothing because they
  could not be used (unreadable, no video / audio, decode errors, too short, ...) and clips a stage failed
  on (reason "error"), as [{"item": source or source#clip_id, "reason", "stage"}]. The quality filters'
  rejections (silence, speech, ...) are the pipeline working, not failures: they are in report.json."""
  out, seen = [], set()
  for idx in shards.read_indexes(out_dir, name):
    for r in idx["rejections"]:
      f = as_failure(r)
      if f is not None and (f["item"], f["reason"]) not in seen:
        seen.add((f["item"], f["reason"]))
        out.append(f)
  return sorted(out, key=lambda f: f["item"])


def as_failure(r: dict) -> dict | None:
  """A rejection (Rejection.to_json()) as a failures.json entry, or None when it is not a failure (a quality
  rejection or a duplicate)."""
  if r["reason"] == "duplicate" or not (r["clip_id"] is None or r["reason"] == "error"):
    return None
  item = r["source"] if r["clip_id"] is None else f"{r['source']}#{r['clip_id']}"
  reason = f"{r['reason']}: {r['detail']}" if r.get("detail") else str(r["reason"])
  return {"item": item, "reason": reason, "stage": r["stage"]}


def write_failures(out_dir: str, failed: Sequence[dict]) -> None:
  shards._write_bytes_atomic(shards.join(out_dir, "failures.json"),
                             (json.dumps(list(failed), indent=1, ensure_ascii=False) + "\n").encode())


def write_report(report: dict, out_dir: str, failed: Sequence[dict] | None = None) -> tuple[str, str]:
  """report.json, report.png and, given `failed`, failures.json (temp-then-rename, local or remote out_dir)."""
  js = shards.join(out_dir, "report.json")
  shards._write_bytes_atomic(js, json.dumps(report, indent=1, sort_keys=False, default=str).encode())
  png = shards.join(out_dir, "report.png")
  shards._write_bytes_atomic(png, plot_page(report))
  if failed is not None:
    write_failures(out_dir, failed)
  return js, png


THRESHOLDS = {"silence/silence_ratio": ("silence", "max_ratio"), "clipping/clipping_ratio": ("clipping", "max_ratio"),
              "static/static": ("static", "threshold"), "speech/speech_ratio": ("speech", "max_ratio"),
              "asr/asr_words": ("asr", "max_words"), "separation/vocals_ratio": ("separation", "max_vocals_ratio"),
              "pam/pam": ("pam", "min_score"), "imagebind/imagebind": ("imagebind", "min_score"),
              "pam": ("pam", "min_score"), "imagebind": ("imagebind", "min_score"), "standardise/short_tail": ("standardise", "min_clip_seconds"),
              "standardise/too_short": ("standardise", "min_clip_seconds")}


def threshold_of(report: dict, key: str) -> float | None:
  """The configured threshold a rejection reason was judged against (from report['config'])."""
  if key not in THRESHOLDS or "config" not in report:
    return None
  stage, field = THRESHOLDS[key]
  conf = report["config"]
  if stage == "standardise":
    return conf["standardise"].get(field)
  for st in conf["stages"]:
    if st["name"] == stage:
      return st["config"].get(field)
  return None


def plot_page(report: dict) -> bytes:
  import io

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = ["stages", "durations"] + [f"rej:{k}" for k, v in report["rejections"].items()
                                      if v["histogram"].get("n")] + [f"score:{k}" for k in report["scores"]]
  cols = 3
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  for ax, p in zip(axes.flat, panels):
    if p == "stages":
      st = report["stages"]
      x = np.arange(len(st))
      ax.bar(x - 0.2, [s["kept"] for s in st], 0.4, label="kept")
      ax.bar(x + 0.2, [s["rejected"] for s in st], 0.4, label="rejected")
      ax.set_xticks(x, [f"{s['stage']}\n({s['unit']}s)" for s in st], fontsize=7)
      ax.set_title(f"counts per stage ({report['records']} records, {report['hours']:.2f} h)", fontsize=9)
      ax.legend(fontsize=7)
    elif p == "durations":
      for k, lab in (("kept_clips", "kept clips"), ("sources", "source files")):
        h = report["durations"][k]
        if h.get("n"):
          ax.stairs(h["counts"], h["edges"], label=f"{lab} (n={h['n']})")
      ax.set_xlabel("seconds", fontsize=8)
      ax.set_title("duration distribution", fontsize=9)
      ax.legend(fontsize=7)
    else:
      kind, key = p.split(":", 1)
      h = report["rejections"][key]["histogram"] if kind == "rej" else report["scores"][key]
      ax.stairs(h["counts"], h["edges"], fill=True, alpha=0.7)
      thr = threshold_of(report, key)   # rejections and kept scores: the same line
      if thr is not None:
        ax.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:g}")
        ax.legend(fontsize=7)
      ax.set_title(f"{'rejected: ' + key if kind == 'rej' else 'kept clips: ' + key} (n={h['n']})", fontsize=9)
    ax.tick_params(labelsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=80)
  plt.close(fig)
  return buf.getvalue()


def summary_lines(report: dict) -> list[str]:
  out = [f"{report['records']} records ({report['hours']:.2f} h) in {report['shards']} shards from "
         f"{report['files']['total']} files ({report['files']['rejected']} rejected whole)"]
  for s in report["stages"]:
    out.append(f"  {s['stage']:>11}: {s['in']} {s['unit']}s in, {s['kept']} kept, {s['rejected']} rejected")
  for k, v in report["rejections"].items():
    out.append(f"  rejected {k}: {v['count']}")
  return out

