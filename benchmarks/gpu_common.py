"""Shared pieces of the GPU throughput benchmarks (train_gpu.py, generate_gpu.py, gpu_check.py).

Model FLOPs are counted by parts (what XLA's dense attention computes: every query against every key slot,
fwd + bwd = 3 x fwd for the matmuls), so a train step's count can be checked against XLA's cost analysis.
"""
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))            # bench_common (shared with the CPU benches)

DATASHEET_BF16_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12}   # dense, SXM parts
DATASHEET_HBM_GBS = {"h100": 3350.0, "h200": 4800.0, "a100": 2039.0}


def gpu_memory_env():
  """Let one JAX process use the chip's memory (the default preallocates 75%): set before importing jax."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def datasheet(kind: str, table: dict):
  k = kind.lower()
  for name, v in table.items():
    if name in k:
      return v
  return None


def machine_line(device_kind: str) -> str:
  """What ran: device, CPU, date (performance figures name the machine)."""
  smi = ""
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    pass
  return (f"{time.strftime('%Y-%m-%d')}: device {device_kind}" + (f" ({smi})" if smi else "") +
          f", host CPU {cpu_model()} x{os.cpu_count()}")


class Deadline:
  """A process's time budget: `left()` seconds remain; `fits(estimate)` says whether a step of work fits."""

  def __init__(self, seconds: float):
    self.end = time.monotonic() + (seconds if seconds > 0 else float("inf"))

  def left(self) -> float:
    return self.end - time.monotonic()

  def fits(self, estimate_s: float) -> bool:
    return estimate_s <= self.left()


class Results:
  """Rows written to a JSON file after every row (temp-then-rename), so a run cut short keeps what it measured."""

  def __init__(self, path: str, **meta):
    self.path = pathlib.Path(path) if path else None
    self.doc = dict(meta, rows=[], skipped=[])

  def add(self, row: dict):
    self.doc["rows"].append(row)
    self.flush()

  def skip(self, what: str, why: str):
    print(f"SKIPPED {what}: {why}", flush=True)
    self.doc["skipped"].append({"what": what, "why": why})
    self.flush()

  def flush(self):
    if self.path is None:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.path.with_suffix(self.path.suffix + ".tmp")
    tmp.write_text(json.dumps(self.doc, indent=1, default=float))
    os.replace(tmp, self.path)


def table(rows, cols) -> str:
  """A markdown table of `rows` (dicts); cols: [(header, key, format)]; missing values print as '-'."""
  out = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    cells = []
    for _, k, f in cols:
      v = r.get(k)
      cells.append("-" if v is None else (f.format(v) if f else str(v)))
    out.append("| " + " | ".join(cells) + " |")
  return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# FLOP counts by parts
# --------------------------------------------------------------------------------------------------

def layer_matmul_weights(d) -> int:
  """Kernel entries of one decoder layer (q, k, v, o, gate, up, down): each takes 2 FLOPs per token."""
  D, E, H, K, F = d.hidden_size, d.head_size, d.num_attention_heads, d.num_key_value_heads, d.intermediate_size
  return D * H * E + 2 * D * K * E + H * E * D + 3 * D * F


def head_weights(cfg) -> tuple[int, int]:
  """(compute-dtype, fp32) kernel entries of the K codebook heads per position (the last layer runs in fp32)."""
  D, K, V = cfg.decoder.hidden_size, cfg.num_codebooks, cfg.vocab_per_codebook
  Hh = cfg.head_hidden or D
  if cfg.head_depth == 1:
    return 0, K * D * V
  return K * D * Hh, K * Hh * V


def projector_weights(cfg) -> tuple[int, int]:
  """(first layer, the rest) kernel entries of the video projector per video position."""
  D = cfg.decoder.hidden_size
  return cfg.video_dim * D, (cfg.projector_depth - 1) * D * D


def forward_flops(cfg, n_text: int, n_video: int, n_audio: int) -> dict:
  """FLOPs of one example's training forward over [text | video | audio], by part (no KV cache)."""
  d = cfg.decoder
  S = n_text + n_video + n_audio
  hb, hf = head_weights(cfg)
  p1, p2 = projector_weights(cfg)
  return {"decoder": 2 * S * d.num_hidden_layers * layer_matmul_weights(d),
          "attention": 4 * d.num_hidden_layers * S * S * d.num_attention_heads * d.head_size,
          "projector_first": 2 * n_video * p1, "projector_rest": 2 * n_video * p2,
          "heads": 2 * n_audio * hb, "heads_fp32": 2 * n_audio * hf}


def train_step_flops(cfg, batch: int, n_text: int, n_video: int, n_audio: int) -> float:
  """Model FLOPs of one train step: backward = 2 x forward, except the projector's first layer, whose input
  (the video features) takes no gradient."""
  f = forward_flops(cfg, n_text, n_video, n_audio)
  return float(batch * (3 * sum(f.values()) - f["projector_first"]))


def decode_flops(cfg, slots: int) -> tuple[float, float]:
  """(compute-dtype, fp32) FLOPs of one decode step for one row: every layer and head weight once, attention
  over every allocated cache slot (the mask hides the unfilled ones)."""
  d = cfg.decoder
  hb, hf = head_weights(cfg)
  bf = 2 * (d.num_hidden_layers * layer_matmul_weights(d) + hb) + \
      4 * d.num_hidden_layers * slots * d.num_attention_heads * d.head_size
  return float(bf), float(2 * hf)


def prefill_flops(cfg, n_cond: int, n_uncond: int, n_video: int, slots: int) -> tuple[float, float]:
  """(compute-dtype, fp32) FLOPs of one clip's CFG prefill: the conditional row over its n_cond prompt
  positions, the unconditional row over its compacted n_uncond, attention against `slots` cache slots, the
  projector on the video of both rows. Prefill keeps only the KV cache, so the last layer computes just its
  keys and values (JAX drops the rest as dead code) and the heads do not run."""
  d = cfg.decoder
  L, D, E, H, K = d.num_hidden_layers, d.hidden_size, d.head_size, d.num_attention_heads, d.num_key_value_heads
  p1, p2 = projector_weights(cfg)
  n = n_cond + n_uncond
  bf = 2 * n * ((L - 1) * layer_matmul_weights(d) + 2 * D * K * E) + 4 * (L - 1) * n * slots * H * E + \
      2 * 2 * n_video * (p1 + p2)
  return float(bf), 0.0


_DEF = re.compile(r"^\s*(?:ROOT\s+)?(%?[\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_DOT = re.compile(r"=\s*\w+\[([\d,]*)\]\S*\s+dot\((.*?)\),.*?lhs_contracting_dims=\{([\d,]*)\}")
_INLINE = re.compile(r"^\s*\w+\[([\d,]*)\]")


def _dims(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def hlo_dot_flops(hlo_text: str) -> float:
  """2 x output size x contracted size, summed over the dot ops of an HLO module's text (each op once: a loop
  body counts once): the matmul share of what XLA computes (cost analysis adds every elementwise op)."""
  shapes = {}
  for line in hlo_text.splitlines():
    m = _DEF.match(line)
    if m:
      shapes[m.group(1)] = _dims(m.group(2))
  total = 0.0
  for line in hlo_text.splitlines():
    m = _DOT.search(line)
    if not m:
      continue
    operands = m.group(2)
    inline = _INLINE.match(operands)           # some HLO printers give operand shapes inline
    lhs = _dims(inline.group(1)) if inline else shapes[operands.split(",")[0].strip()]
    n = 1
    for x in _dims(m.group(1)):
      n *= x
    for i in _dims(m.group(3)):
      n *= lhs[i]
    total += 2.0 * n
  return total


# --------------------------------------------------------------------------------------------------
# Measured ceilings of the device (JAX)
# --------------------------------------------------------------------------------------------------

def matmul_rate(dtype: str = "bfloat16", n: int = 0, precision=None, reps: int = 10) -> float:
  """Best FLOP/s of a jitted n x n x n matmul on the default device (random data, warmed up); n defaults to
  8192 on accelerators, 512 on CPU. precision 'highest' for true fp32 (no TF32 / bf16 passes)."""
  import jax
  import jax.numpy as jnp

  cpu = jax.default_backend() == "cpu"
  n = n or (512 if cpu else 8192)
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, precision=precision))
  for _ in range(3):
    f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best
