"""Writes tests/fixtures/passt_tiny.npz: hear21passt reference outputs for the Flax PaSST port.

Run in the scratch venv that has torch 2.9.1 + torchaudio and hear21passt (not part of the test suite):

    /work/venv_ta/bin/pip install --no-deps hear21passt==0.0.26
    /work/venv_ta/bin/python tools/goldens/make_passt_golden.py [--out tests/fixtures/passt_tiny.npz]

What it stores (see tests/fixtures/README.md, section passt_tiny.npz):
- a TINY PaSST of the real class (`hear21passt.models.passt.PaSST`, distilled, patch 16, stride 10) with
  embed_dim 32, depth 2, 2 heads and img_size (128, 160), seeded random weights rounded to float16-exact
  values (stored as float16, so the float32 model the reference ran is reproduced exactly);
- a seeded 1.6 s int16 clip (51200 samples at 32 kHz), the reference eval-mode mel of it
  (AugmentMelSTFT exactly as hear21passt.base.get_basic_model builds it) and the PasstBasicWrapper
  mode="all" output split into logits (527) and embedding (32);
- for a 10 s deterministic signal (`full_signal()`, recomputed by the test), slices and marginal means of
  the reference mel (128 x 1000), the shape the real metric model sees.
hear21passt imports timm only for its download helper; when timm is missing a stub is installed that
refuses downloads (nothing here downloads anything).
"""
from __future__ import annotations

import argparse
import sys
import types

import numpy as np

TINY = dict(img_size=(128, 160), patch_size=16, stride=10, embed_dim=32, depth=2, num_heads=2, num_classes=527)
TINY_SAMPLES = 51200           # 1.6 s at 32 kHz -> 160 mel frames -> 15 time patches (pos-embed grid 16)
MEL_SLICES = ((0, 32), (484, 516), (968, 1000))


def full_signal(n: int = 320000, sr: int = 32000) -> np.ndarray:
  """10 s deterministic test signal: chirp 100 Hz -> 14.1 kHz + 440 Hz tone + hashed noise, 0.5 s of silence.

  Integer hashing (splitmix64 finaliser) instead of an RNG so the test can rebuild it bit for bit.
  """
  i = np.arange(n, dtype=np.uint64)
  h = i * np.uint64(0x9E3779B97F4A7C15)
  h ^= h >> np.uint64(33)
  h *= np.uint64(0xFF51AFD7ED558CCD)
  h ^= h >> np.uint64(33)
  noise = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) - 0.5
  t = np.arange(n, dtype=np.float64) / sr
  x = 0.3 * np.sin(2 * np.pi * (100.0 * t + 700.0 * t * t)) + 0.05 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * noise
  x[int(4.0 * sr):int(4.5 * sr)] = 0.0
  return x.astype(np.float32)


def _import_hear21passt():
  try:
    import timm.models._hub  # noqa: F401
  except Exception:  # timm (or its torchvision) missing: stub the one helper hear21passt imports
    def refuse(*a, **k):
      raise RuntimeError("make_passt_golden never downloads weights")
    for name in ("timm", "timm.models", "timm.models._hub"):
      sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models._hub"].download_cached_file = refuse
  import hear21passt.base as base
  import hear21passt.models.passt as passt
  return base, passt


def _random_state(model, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in model.state_dict().items():
    s = tuple(v.shape)
    if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "head.0.weight")):
      a = 1.0 + 0.2 * rng.normal(size=s)
    elif k.endswith("bias"):
      a = 0.1 * rng.normal(size=s)
    elif k.endswith(("_token", "pos_embed")):
      a = 0.5 * rng.normal(size=s)   # large enough that a wrong layout shows in the outputs
    else:
      a = rng.normal(size=s) / np.sqrt(np.prod(s[1:]))
    out[k] = a.astype(np.float16)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="tests/fixtures/passt_tiny.npz")
  args = ap.parse_args()
  import torch

  torch.set_num_threads(2)
  base, passt = _import_hear21passt()
  mel = base.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                            htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000).eval()
  net = passt.PaSST(img_size=TINY["img_size"], patch_size=TINY["patch_size"], stride=TINY["stride"], in_chans=1,
                    num_classes=TINY["num_classes"], embed_dim=TINY["embed_dim"], depth=TINY["depth"],
                    num_heads=TINY["num_heads"], distilled=True)
  state16 = _random_state(net, seed=0)
  net.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in state16.items()}, strict=True)
  wrapper = base.PasstBasicWrapper(mel=mel, net=net, mode="all").eval()

  rng = np.random.default_rng(1)
  t = np.arange(TINY_SAMPLES) / 32000.0
  clip = 0.25 * np.sin(2 * np.pi * 523.25 * t) * np.exp(-2.0 * t) + 0.08 * rng.normal(size=TINY_SAMPLES)
  clip_i16 = np.clip(np.round(clip * 32768), -32768, 32767).astype(np.int16)
  x = torch.from_numpy(clip_i16.astype(np.float32) / 32768.0)[None]
  with torch.no_grad():
    tiny_mel = mel(x)[0].numpy()
    out = wrapper(x)[0].numpy()
    full = full_signal()
    mel10 = mel(torch.from_numpy(full)[None])[0].numpy().astype(np.float64)
  k = TINY["num_classes"]
  arrays = {f"w/{name}": v for name, v in state16.items()}
  arrays.update({
      "config/img_size": np.array(TINY["img_size"]), "config/patch_size": np.array(TINY["patch_size"]),
      "config/stride": np.array(TINY["stride"]), "config/embed_dim": np.array(TINY["embed_dim"]),
      "config/depth": np.array(TINY["depth"]), "config/num_heads": np.array(TINY["num_heads"]),
      "config/num_classes": np.array(k),
      "tiny/audio_int16": clip_i16, "tiny/mel": tiny_mel.astype(np.float32),
      "tiny/logits": out[:k].astype(np.float32), "tiny/embed": out[k:].astype(np.float32),
      "mel10/signal_head": full[:16], "mel10/signal_sum": np.array(full.astype(np.float64).sum()),
      "mel10/shape": np.array(mel10.shape),
      "mel10/frame_mean": mel10.mean(axis=0).astype(np.float32),
      "mel10/bin_mean": mel10.mean(axis=1).astype(np.float32),
      "mel10/slice_starts": np.array([a for a, _ in MEL_SLICES]),
  })
  for a, b in MEL_SLICES:
    arrays[f"mel10/frames_{a}_{b}"] = mel10[:, a:b].astype(np.float32)
  np.savez_compressed(args.out, **arrays)
  import os
  print(f"wrote {args.out}: {os.path.getsize(args.out) / 1024:.1f} KiB; tiny mel {tiny_mel.shape}, "
        f"out {out.shape}, mel10 {mel10.shape}; torch {torch.__version__}")


if __name__ == "__main__":
  main()
