"""Full-size PaSST cross-check: hear21passt vs the Flax port, random weights, real config, 10 s inputs.

Two stages in two venvs (hear21passt needs torchaudio, which has no build for the project's torch):

    /work/venv_ta/bin/python tools/goldens/passt_full_crosscheck.py --stage ref --dir /tmp/passt_full
    python tools/goldens/passt_full_crosscheck.py --stage flax --dir /tmp/passt_full

`ref` builds hear21passt's get_model("passt_s_swa_p16_128_ap476", pretrained=False) (its own seeded random
init), saves the state dict under the real checkpoint's file name (~330 MB) and the reference outputs of
PasstBasicWrapper(mode="all") for three 10 s inputs, plus the features of the 'passt_torch' embedder
(torch_ref.PasstEmbedder) for an 8 s stereo 44.1 kHz clip. `flax` loads that file through the 'passt'
embedder (the converter, the float64 mel, the jitted model) and prints the largest differences.
Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from make_passt_golden import _import_hear21passt, full_signal  # noqa: E402

FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"


def inputs() -> dict[str, np.ndarray]:
  x = full_signal()
  short = np.zeros_like(x)
  short[:96000] = x[:96000]   # a 3 s clip zero-padded to 10 s, what passt_input makes of short audio
  rng = np.random.default_rng(5)
  return {"signal": x, "short_padded": short, "noise": (0.1 * rng.normal(size=x.shape)).astype(np.float32)}


def stereo_clip() -> np.ndarray:
  return np.random.default_rng(7).normal(size=(2, 44100 * 8)) * 0.1


def _torch_ref_module():
  """embedders/torch_ref.py without the package __init__ (which imports flax, absent from this venv)."""
  import types

  import dreamfoley_jax.eval  # noqa: F401
  pkg = types.ModuleType("dreamfoley_jax.eval.embedders")
  pkg.__path__ = [str(pathlib.Path(__file__).resolve().parents[2] / "dreamfoley_jax/eval/embedders")]
  sys.modules.setdefault("dreamfoley_jax.eval.embedders", pkg)
  from dreamfoley_jax.eval.embedders import torch_ref
  return torch_ref


def stage_ref(d: pathlib.Path):
  import torch

  torch.set_num_threads(2)
  torch.manual_seed(0)
  base, passt = _import_hear21passt()
  with contextlib.redirect_stdout(io.StringIO()):
    net = passt.get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False)
    mel = base.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                              htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
  wrapper = base.PasstBasicWrapper(mel=mel, net=net, mode="all").eval()
  d.mkdir(parents=True, exist_ok=True)
  torch.save(net.state_dict(), d / FILE)
  out = {}
  with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
    for name, x in inputs().items():
      y = wrapper(torch.from_numpy(x)[None])[0].numpy()
      out[f"{name}/logits"], out[f"{name}/embed"] = y[:527], y[527:]
    e = _torch_ref_module().PasstEmbedder(d)
    for k, v in e.audio_features(stereo_clip(), 44100, 8.0, "clip").items():
      out[f"embedder/{k}"] = v
  np.savez(d / "reference_outputs.npz", **out)
  print(f"wrote {d / FILE} and {d / 'reference_outputs.npz'} (torch {torch.__version__})")


def stage_flax(d: pathlib.Path):
  import jax

  from dreamfoley_jax.eval import frontends
  from dreamfoley_jax.eval.embedders import passt

  ref = np.load(d / "reference_outputs.npz")
  e = passt.PasstEmbedder(d / FILE)
  print(f"{'input':14s} {'logits maxabs':>14s} {'(ref max)':>10s} {'embed maxabs':>13s} {'(ref max)':>10s} "
        f"{'sigmoid maxabs':>14s}")
  for name, x in inputs().items():
    mel = frontends.passt_logmel(x)[None].astype(np.float32)
    out = jax.block_until_ready(e._apply(e.variables, mel))
    lg, em = np.asarray(out["logits"][0]), np.asarray(out["embed"][0])
    rl, re = ref[f"{name}/logits"], ref[f"{name}/embed"]
    sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
    print(f"{name:14s} {np.abs(lg - rl).max():14.2e} {np.abs(rl).max():10.3f} {np.abs(em - re).max():13.2e} "
          f"{np.abs(re).max():10.3f} {np.abs(sig(lg) - sig(rl)).max():14.2e}")
  f = e.audio_features(stereo_clip(), 44100, 8.0, "clip")
  print("embedder 'passt' vs 'passt_torch' (8 s stereo 44.1 kHz): " + ", ".join(
      f"{k} maxabs {np.abs(f[k] - ref[f'embedder/{k}']).max():.2e}" for k in sorted(f)))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--stage", choices=("ref", "flax"), required=True)
  ap.add_argument("--dir", default="/tmp/passt_full")
  a = ap.parse_args()
  (stage_ref if a.stage == "ref" else stage_flax)(pathlib.Path(a.dir))


if __name__ == "__main__":
  main()
