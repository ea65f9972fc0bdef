"""Frames/s of the two vision encoders in JAX vs the PyTorch reference, same CPU, one process.

Real geometry (EVA: 224^2, patch 14, width 1408, 16 heads, MLP 6144; Synchformer: 16x224^2 windows, tubelet
2x16x16, width 768, 12 heads) at reduced depth (--blocks). References:
- EVA: timm ``eva_giant_patch14_224`` (the module open_clip wraps), imported with a stub for torchvision
  (PyPI's torchvision is a CUDA build that cannot load beside the CPU torch; timm only touches it at import);
- Synchformer: a PyTorch MotionFormer written here from MMAudio's description (checked against the goldens
  at start-up: prints its max error on the stored tiny features).
Both JAX models get the reference's own random weights through the real converters, and the script prints
the max |JAX - torch| on the outputs before timing. JAX and torch repetitions are interleaved because the
CPU is shared; the table reports the median of each.

  python benchmarks/bench_vision.py --blocks 2 --reps 5
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import statistics
import sys
import time
import types

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu may be installed beside jax; this is a CPU benchmark

# --------------------------------------------------------------------------------------------------
# torchvision stub (import-time only; nothing in the EVA forward pass uses torchvision)
# --------------------------------------------------------------------------------------------------

class _StubMeta(type):
  _cache: dict = {}

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    key = (cls, name)
    if key not in _StubMeta._cache:
      _StubMeta._cache[key] = _StubMeta(name, (cls,), {})
    return _StubMeta._cache[key]


class _Stub(metaclass=_StubMeta):
  def __init__(self, *a, **k):
    raise RuntimeError("torchvision is stubbed out in bench_vision.py")


class _StubModule(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return getattr(_Stub, name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  def find_spec(self, fullname, path, target=None):
    if fullname == "torchvision" or fullname.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    m = _StubModule(spec.name)
    m.__path__ = []
    m.__version__ = "0.0.0+stub"
    return m

  def exec_module(self, module):
    pass


def import_timm():
  try:
    import torchvision  # noqa: F401
  except Exception:  # missing, or the CUDA wheel failing beside CPU torch
    sys.modules.pop("torchvision", None)
    sys.meta_path.insert(0, _StubFinder())
  import timm
  return timm


# --------------------------------------------------------------------------------------------------
# PyTorch Synchformer reference (from MMAudio's MotionFormer description)
# --------------------------------------------------------------------------------------------------

def build_torch_synchformer(width: int, depth: int, heads: int):
  import torch
  from torch import nn

  T, P = 8, 196

  class DividedAttention(nn.Module):
    def __init__(self):
      super().__init__()
      self.qkv = nn.Linear(width, 3 * width)
      self.proj = nn.Linear(width, width)

    def forward(self, x, over):
      W, L, D = x.shape
      E = D // heads
      q, k, v = (t.reshape(W, L, heads, E).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
      q = q * E ** -0.5
      cls_out = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2), dim=-1) @ v            # (W,A,1,E)

      def grouped(t):  # (W,A,T*P,E) -> (W,A,G,M,E)
        t = t[:, :, 1:].reshape(W, heads, T, P, E)
        return t.transpose(2, 3) if over == "time" else t
      qg, kg, vg = grouped(q), grouped(k), grouped(v)
      G = qg.shape[2]
      kg = torch.cat([k[:, :, None, :1].expand(-1, -1, G, -1, -1), kg], dim=3)
      vg = torch.cat([v[:, :, None, :1].expand(-1, -1, G, -1, -1), vg], dim=3)
      out = torch.softmax(qg @ kg.transpose(-1, -2), dim=-1) @ vg                      # (W,A,G,M,E)
      if over == "time":
        out = out.transpose(2, 3)
      out = torch.cat([cls_out, out.reshape(W, heads, T * P, E)], dim=2)
      return self.proj(out.transpose(1, 2).reshape(W, L, D))

  class Mlp(nn.Module):
    def __init__(self):
      super().__init__()
      self.fc1, self.act, self.fc2 = nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)

    def forward(self, x):
      return self.fc2(self.act(self.fc1(x)))

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(width, eps=1e-6) for _ in range(3))
      self.attn, self.timeattn, self.mlp = DividedAttention(), DividedAttention(), Mlp()

    def forward(self, x):
      x = x + self.timeattn(self.norm3(x), "time")
      x = x + self.attn(self.norm1(x), "space")
      return x + self.mlp(self.norm2(x))

  class SpatialAgg(nn.TransformerEncoderLayer):
    def __init__(self):
      super().__init__(d_model=width, nhead=heads, dim_feedforward=4 * width, dropout=0.0, activation=nn.GELU(),
                       layer_norm_eps=1e-6, batch_first=True, norm_first=True)
      self.cls_token = nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, x):
      x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
      return super().forward(x)[:, 0]

  class MotionFormer(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch_embed_3d = nn.Module()
      self.patch_embed_3d.proj = nn.Conv3d(3, width, (2, 16, 16), stride=(2, 16, 16))
      self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
      self.pos_embed = nn.Parameter(torch.zeros(1, 1 + P, width))
      self.temp_embed = nn.Parameter(torch.zeros(1, T, width))
      self.blocks = nn.ModuleList(Block() for _ in range(depth))
      self.norm = nn.LayerNorm(width, eps=1e-6)
      self.spatial_attn_agg = SpatialAgg()

    def forward(self, x):  # (N, C, 16, H, W)
      x = self.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)
      pos = self.pos_embed[:, 1:].repeat(1, T, 1) + self.temp_embed.repeat_interleave(P, 1)
      x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x + pos], dim=1)
      for b in self.blocks:
        x = b(x)
      x = self.norm(x[:, 1:])                                                  # (N, T*P, D)
      N = x.shape[0]
      x = x.reshape(N * T, P, width)
      return self.spatial_attn_agg(x).reshape(N, T, width)

  class Synchformer(nn.Module):
    def __init__(self):
      super().__init__()
      self.vfeat_extractor = MotionFormer()

    def forward(self, vis):  # (B, S, 16, C, H, W), as MMAudio's Synchformer.forward
      B, S = vis.shape[:2]
      x = vis.permute(0, 1, 3, 2, 4, 5).reshape(B * S, 3, 16, *vis.shape[-2:])
      return self.vfeat_extractor(x).reshape(B, S, T, width)

  return Synchformer()


def randomise_(module, seed: int):
  """N(0, 1/fan_in) weights, 0.1*N biases, LN 1+0.1*N, tokens 0.5*N (the goldens' rules)."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      n = torch.randn(p.shape, generator=g)
      if name.endswith(("cls_token", "pos_embed", "temp_embed", "q_bias", "v_bias")):
        p.copy_(0.5 * n)
      elif "norm" in name and p.ndim == 1:
        p.copy_(1 + 0.1 * n if name.endswith("weight") else 0.1 * n)
      elif p.ndim == 1:
        p.copy_(0.1 * n)
      else:
        p.copy_(n / np.sqrt(np.prod(p.shape[1:])))


def check_sync_reference(fixtures):
  """The torch reference reproduces the stored tiny goldens (so its timing is the reference's)."""
  import torch

  f = np.load(os.path.join(fixtures, "synchformer_tiny.npz"))
  ref = build_torch_synchformer(64, 2, 4).eval()
  sd = {k[len("param/"):]: torch.from_numpy(f[k]) for k in f.files if k.startswith("param/")}
  sd = {k: v for k, v in sd.items() if not k.startswith("vfeat_extractor.patch_embed.")}
  ref.load_state_dict(sd, strict=True)
  video = torch.from_numpy(f["input/video_q"].astype(np.float32) * 0.25 - 1)
  idx = torch.from_numpy(f["output/window_index_T32"]).long()
  with torch.inference_mode():
    out = ref(video[:, idx]).numpy()
  return float(np.abs(out - f["output/features"]).max())


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

def interleaved(fns: dict, reps: int):
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--blocks", type=int, default=2, help="transformer blocks (real width)")
  ap.add_argument("--images", type=int, default=4, help="EVA batch (images)")
  ap.add_argument("--windows", type=int, default=2, help="Synchformer batch (16-frame windows)")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (XLA uses all cores)")
  ap.add_argument("--only", choices=["eva", "synchformer"], default=None)
  ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
  args = ap.parse_args(argv)

  import jax
  import torch

  from dreamfoley_jax.convert import eva_clip as conv_eva
  from dreamfoley_jax.convert import synchformer as conv_sync
  from dreamfoley_jax.models import eva_clip, synchformer

  torch.set_num_threads(args.threads)
  rng = np.random.default_rng(0)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({args.threads} threads), cpus={os.cpu_count()}, loadavg at start={os.getloadavg()[0]:.1f}")
  rows = []

  if args.only in (None, "eva"):
    timm = import_timm()
    tm = timm.create_model("eva_giant_patch14_224", pretrained=False, num_classes=1024, global_pool="token",
                           depth=args.blocks).eval()
    randomise_(tm, 1)
    cfg = eva_clip.PRESETS["eva01-g-14"].replace(depth=args.blocks)
    params = jax.device_put(conv_eva.convert_state_dict(tm.state_dict(), cfg))
    x = rng.standard_normal((args.images, 224, 224, 3), dtype=np.float32)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    fwd = jax.jit(lambda p, x: eva_clip.EvaVisionTower(cfg).apply({"params": p}, x)[1]["projected"])
    with torch.no_grad():
      ref = tm(xt).numpy()
    err = float(np.abs(np.asarray(fwd(params, x)) - ref).max())
    print(f"EVA  {args.blocks} blocks x 1408: max |jax - timm| on the projection = {err:.2e} (|ref|max "
          f"{np.abs(ref).max():.2f})")

    def run_torch():
      with torch.no_grad():
        tm(xt)
    t = interleaved({"jax": lambda: fwd(params, x).block_until_ready(), "torch": run_torch}, args.reps)
    rows.append(("EVA01-g/14 image tower", f"{args.blocks}x1408, 257 tok", "images", args.images, t))

  if args.only in (None, "synchformer"):
    err_gold = check_sync_reference(args.fixtures)
    print(f"Synchformer torch reference vs stored goldens (tiny): max err {err_gold:.2e}")
    ts = build_torch_synchformer(768, args.blocks, 12).eval()
    randomise_(ts, 2)
    cfg = synchformer.PRESETS["synchformer"].replace(depth=args.blocks)
    params = jax.device_put(conv_sync.convert_state_dict(ts.state_dict(), cfg))
    w = rng.uniform(-1, 1, (1, args.windows, 16, 224, 224, 3)).astype(np.float32)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 1, 2, 5, 3, 4)))
    fwd = jax.jit(lambda p, x: synchformer.Synchformer(cfg).apply({"params": p}, x)[0])
    with torch.inference_mode():
      ref = ts(wt).numpy()
    err = float(np.abs(np.asarray(fwd(params, w)) - ref).max())
    print(f"Synchformer {args.blocks} blocks x 768: max |jax - torch| on the features = {err:.2e} "
          f"(|ref|max {np.abs(ref).max():.2f})")

    def run_torch():
      with torch.inference_mode():
        ts(wt)
    t = interleaved({"jax": lambda: fwd(params, w).block_until_ready(), "torch": run_torch}, args.reps)
    rows.append(("Synchformer (MotionFormer)", f"{args.blocks}x768, 1569 tok", "frames", args.windows * 16, t))

  print(f"\nloadavg at end={os.getloadavg()[0]:.1f}; median of {args.reps} interleaved reps")
  print(f"| encoder | depth x width | batch | JAX s | torch s | JAX {'frames/s':>8} | torch frames/s | JAX/torch speed |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for name, geo, unit, n, t in rows:
    print(f"| {name} | {geo} | {n} {unit} | {t['jax']:.3f} | {t['torch']:.3f} | {n / t['jax']:.2f} | "
          f"{n / t['torch']:.2f} | {t['torch'] / t['jax']:.2f}x |")


if __name__ == "__main__":
  main()
