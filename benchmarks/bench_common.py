"""Shared pieces of the benchmark scripts in benchmarks/: the CPU benches (bench_*.py), the GPU throughput
benches (train_gpu.py, generate_gpu.py, gpu_check.py) and the PyTorch parity check (torch_parity.py)."""
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


def random_prompt_batch(cfg, B, frames, seed=0, text_len=16):
  """A random [text | video] prompt batch for `sampling.sample`: text ids, 25 Hz sync and 4 fps clip features."""
  import numpy as np

  rng = np.random.default_rng(seed)
  return {"text_ids": rng.integers(0, cfg.decoder.vocab_size, (B, text_len)).astype(np.int32),
          "text_mask": np.ones((B, text_len), bool),
          "sync_feats": rng.normal(size=(B, frames, cfg.sync_dim)).astype(np.float32),
          "clip_feats": rng.normal(size=(B, frames * 4 // 25 + 1, cfg.clip_dim)).astype(np.float32),
          "video_mask": np.ones((B, frames), bool)}


def sample_configs():
  """The sampling benches' CPU configs: tiny (experiments/tiny.py's decoder) and small (d 512, 8 layers)."""
  from dreamfoley_jax.models import foley, qwen2

  return {
      "tiny": foley.FoleyConfig(decoder=qwen2.PRESETS["tiny"], codebook_size=64, sync_dim=32, clip_dim=16,
                                null_text_len=2, null_video_len=2),
      "small": foley.FoleyConfig(
          decoder=qwen2.Qwen2Config(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                    num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
          codebook_size=1024, sync_dim=64, clip_dim=32),
  }


def random_params(cfg, seed=0):
  """Random DreamFoley params (numpy fp32) with every leaf drawn, biases, norms and nulls too, and the heads
  scaled so logits have a trained model's size (test configs: max |logit| ~7-8): argmax ties
  are as rare as in a real model, so comparing two implementations' tokens means something."""
  import flax.linen as nn
  import jax
  import numpy as np

  from dreamfoley_jax.models import params as foley_params

  shapes = nn.unbox(foley_params.abstract_params(cfg))      # no init compile: every leaf is drawn here
  rng = np.random.default_rng(seed + 1)
  leaves, tdef = jax.tree_util.tree_flatten_with_path(shapes)
  new = []
  for path, x in leaves:
    name = jax.tree_util.keystr(path)
    scale = 0.5 if ("audio_embed" in name or "null" in name or "audio_pad" in name) else 0.08
    if "heads" in name and "kernel" in name:
      scale = 1.5 / np.sqrt(x.shape[-2])
    elif "kernel" in name and x.shape[-2] > 512:
      scale = 1.5 / np.sqrt(x.shape[-2])             # wide layers (0.5B): keep the residual stream O(1)
    v = (1.0 + 0.1 * rng.standard_normal(x.shape, np.float32)) if "norm" in name else \
        scale * rng.standard_normal(x.shape, np.float32)
    new.append(np.asarray(v, np.float32))
  return jax.tree_util.tree_unflatten(tdef, new)


def device_random_params(cfg, seed=0):
  """Random weights of the model's shapes and dtypes, drawn leaf by leaf on the device: N(0, 0.02), norm
  scales 1. Much faster to build than `foley_params.init_params` for 7B (its unrolled 28-layer init took 112 s on an H100,
  mostly compiling); for timing only."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from dreamfoley_jax.models import params as foley_params

  shapes = nn.unbox(foley_params.abstract_params(cfg))
  draw = jax.jit(lambda k, shape, dtype: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype),
                 static_argnums=(1, 2))
  flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
  out = []
  for i, (path, s) in enumerate(flat):
    name = jax.tree_util.keystr(path)
    if "norm" in name:
      out.append(jnp.ones(s.shape, s.dtype))
    else:
      out.append(draw(jax.random.fold_in(jax.random.key(seed), i), s.shape, s.dtype))
  return jax.tree_util.tree_unflatten(tree, out)


def check_greedy(cfg):
  """temperature 0 == argmax of the teacher-forced guided logits (full forward, no KV cache), on the default
  device: (share of agreeing code cells, cells). `cfg`: a tiny model."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dreamfoley_jax import sampling as S
  from dreamfoley_jax.models import foley
  from dreamfoley_jax.models import params as foley_params

  params = foley_params.init_params(cfg, seed=1)
  # Sharper heads (as tests/test_sample.py): well-separated logits, so float rounding cannot flip an argmax.
  params["heads"]["fc2_kernel"] = params["heads"]["fc2_kernel"] * 30.0
  b, lengths = random_prompt_batch(cfg, 2, 25, seed=3), np.array([25, 17])
  sc = S.SampleConfig(temperature=0.0, cfg_scale=3.0)
  with jax.default_matmul_precision("highest"):
    r = S.sample(cfg, params, b, lengths, sample_cfg=sc)
    ids = r["delayed"]
    B = 2
    fwd = jax.jit(lambda p, x, d: foley.DreamFoley(cfg).apply({"params": p}, x, d, d)[0])
    full = {k: jnp.asarray(v) for k, v in dict(b, audio_ids=ids, audio_vacant=r["vacant"]).items()}
    cond = np.asarray(fwd(params, full, jnp.zeros(B, bool)), np.float32)
    unc = np.asarray(fwd(params, full, jnp.ones(B, bool)), np.float32)
  g = unc + 3.0 * (cond - unc)
  g[..., cfg.codebook_size:] = -np.inf
  want = g.argmax(-1)[:, :-1]                                   # row j predicts column j + 1
  _, known, _ = S.delayed_layout(cfg, lengths, ids.shape[1])
  code = ~known[:, 1:]
  agree = float((ids[:, 1:][code] == want[code]).mean())
  return agree, int(code.sum())


def torch_dreamfoley(cfg, params=None, dtype=None):
  """The PyTorch DreamFoley users run: the model directory `--family dreamfoley --direction to_hf` writes
  (with `params`, or randomly initialised without), loaded by transformers with trust_remote_code."""
  import tempfile

  import transformers

  from dreamfoley_jax.convert import dreamfoley

  with tempfile.TemporaryDirectory(prefix="dreamfoley_hf_") as d:
    if params is None:
      dreamfoley.write_model_files(cfg, d)
      config = transformers.AutoConfig.from_pretrained(d, trust_remote_code=True)
      model = transformers.AutoModel.from_config(config, trust_remote_code=True, dtype=dtype)
    else:
      dreamfoley.save_hf(params, cfg, f"{d}/model")
      model = transformers.AutoModel.from_pretrained(f"{d}/model", trust_remote_code=True, use_safetensors=True,
                                                     dtype=dtype)
  return model.eval()


def time_ms(fn, n):
  """Mean ms per call of `fn` over `n` calls, after one warm-up call (compile / first-touch)."""
  fn()
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n * 1e3


def weight_bytes(params) -> int:
  """Bytes every decode step must read: decoder layers + final norm (not the token embedding) + heads."""
  from dreamfoley_jax import sampling

  return sum(x.size * x.dtype.itemsize for x in sampling.decode_weights(params))


def kv_bytes(cfg, rows, slots) -> int:
  """The KV cache a decode step's attention reads for `rows` rows and `slots` slots (every allocated slot:
  the mask hides the unfilled ones), in the cache's dtype."""
  import jax
  import numpy as np

  from dreamfoley_jax.models import qwen2

  c = jax.eval_shape(lambda: qwen2.init_cache(cfg.decoder, rows, slots))
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves([c["k"], c["v"]]))


def _best_rate(f, moved_bytes, warm=5, reps=20):
  """Best GB/s of `f()` (blocking) moving `moved_bytes` per call, after `warm` calls (clocks ramp)."""
  for _ in range(warm):
    f()
  best = 0.0
  for _ in range(reps):
    t = time.perf_counter()
    f()
    best = max(best, moved_bytes / (time.perf_counter() - t) / 1e9)
  return best


def measured_bandwidth(dtype=None):
  """(read, copy) GB/s on the default device: a jitted sum over a large array (bytes read: what a decode
  step does to its weights) and a copy (bytes read + written: an elementwise jitted pass on accelerators,
  `numpy.copyto` on CPU, where XLA's elementwise loop runs far below the memory system). Best of 20 after
  a warm-up. `dtype` defaults to bf16 on accelerators (1 Gi elements) and fp32 on CPU (256 MiB)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  cpu = jax.default_backend() == "cpu"
  dtype = dtype or (jnp.float32 if cpu else jnp.bfloat16)
  x = jnp.ones(((1 << 26) if cpu else (1 << 30),), dtype)
  read = jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))
  out = [_best_rate(lambda: read(x).block_until_ready(), x.nbytes)]
  if cpu:
    a = np.ones(x.shape, x.dtype)
    b = np.empty_like(a)
    out.append(_best_rate(lambda: np.copyto(b, a), 2 * a.nbytes, warm=1, reps=5))
  else:
    write = jax.jit(lambda x: x * 1.0001 + 1.0)
    out.append(_best_rate(lambda: write(x).block_until_ready(), 2 * x.nbytes))
  return tuple(out)


def gemv_gbs(rows, dtype="float32", k=512, n=1536, total_mb=96, torch_threads=None):
  """Weight-streaming rate (GB/s of weights read) of a chain of distinct (rows, k) @ (k, n) matmuls whose
  weights (`total_mb` MiB in all, in `dtype`) do not fit in the CPU's last-level cache: what a decode step's GEMVs reach.
  XLA (jitted loop of the chain), or torch eager with `torch_threads` intra-op threads when given."""
  import numpy as np

  itemsize = 2 if dtype == "bfloat16" else 4
  layers = max(2, int(total_mb * 2 ** 20 / (k * n * itemsize)))
  rng = np.random.default_rng(0)
  ws = [rng.standard_normal((k, n), np.float32) * 0.05 for _ in range(layers)]
  x = rng.standard_normal((rows, k), np.float32)
  moved = 10 * layers * k * n * itemsize
  if torch_threads is not None:
    import torch

    torch.set_num_threads(torch_threads)
    tdt = getattr(torch, dtype)
    tws, tx = [torch.from_numpy(w).to(tdt) for w in ws], torch.from_numpy(x).to(tdt)

    def run_torch():
      with torch.no_grad():
        for _ in range(10):
          y = tx
          for w in tws:
            y = torch.tanh(y @ w)[:, :k]
      return y
    return _best_rate(run_torch, moved, warm=1, reps=3)
  import jax
  import jax.numpy as jnp

  jws, jx = [jnp.asarray(w, dtype) for w in ws], jnp.asarray(x, dtype)

  @jax.jit
  def chain(x, ws):
    def body(i, y):
      for w in ws:
        y = jnp.tanh(y @ w)[:, :k]
      return y
    return jax.lax.fori_loop(0, 10, body, x)
  return _best_rate(lambda: chain(jx, jws).block_until_ready(), moved, warm=1, reps=5)


# --------------------------------------------------------------------------------------------------
# The machine, time budgets and results (GPU benches)
# --------------------------------------------------------------------------------------------------

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
# FLOP counts by parts: what XLA's dense attention computes (every query against every key slot),
# fwd + bwd = 3 x fwd for the matmuls, so a train step's count can be checked against XLA's cost analysis
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
