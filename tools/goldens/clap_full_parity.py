"""Full-size LAION-CLAP parity: the real laion_clap HTSAT-base + roberta-base vs our Flax port, random weights.

Two steps, two venvs (laion_clap needs the scratch venv; our port needs the main one):

  /work/venv_ta/bin/python tools/goldens/clap_full_parity.py --mode torch --work /tmp/clap_full
  /work/venv/bin/python    tools/goldens/clap_full_parity.py --mode flax  --work /tmp/clap_full

The torch step builds CLAP(HTSAT-base.json, roberta) as create_model does (RobertaModel from roberta-base's
config.json, random weights: nothing is downloaded), randomises every parameter (same rules as
make_clap_golden.py), writes the state dict in laion_clap's checkpoint layout ({'state_dict': {'module.' + key}})
and the reference outputs for a 10 s 48 kHz waveform (repeat-padded 3.3 s clip) and two token sequences.
The flax step converts that file with convert_clap and prints the max abs differences. ~3 GB RAM, ~2 min.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def torch_side(work: pathlib.Path, laion_dir: pathlib.Path):
  import json

  import torch

  sys.path.insert(0, str(ROOT / "tools/goldens"))
  import make_clap_golden as g
  from transformers import RobertaConfig, RobertaModel

  torch.manual_seed(0)
  torch.set_num_threads(2)
  mods = g.import_clap_module(laion_dir)
  model_mod = mods["model"]
  cfg = json.loads((laion_dir / "clap_module/model_configs/HTSAT-base.json").read_text())
  cfg["text_cfg"]["model_type"] = "roberta"
  model_mod.RobertaModel.from_pretrained = classmethod(lambda cls, n: RobertaModel(RobertaConfig(**g.ROBERTA_BASE)))
  clap = model_mod.CLAP(**cfg, enable_fusion=False)
  gen = torch.Generator().manual_seed(99)
  g.randomise(clap, gen)
  clap.eval()
  base = 0.1 * torch.randn(160000, generator=gen)  # 3.33 s: laion_clap repeat-pads it to 10 s
  wav = base.repeat(3)
  wav = torch.nn.functional.pad(wav, (0, 480000 - wav.numel()))
  rng = np.random.default_rng(5)
  ids = np.ones((2, 77), np.int64)
  mask = np.zeros((2, 77), np.int64)
  for b, n in enumerate((77, 12)):
    ids[b, 0], ids[b, n - 1] = 0, 2
    ids[b, 1:n - 1] = rng.integers(3, 50265, n - 2)
    mask[b, :n] = 1
  with torch.no_grad():
    clap.get_audio_embedding([{"waveform": wav}])  # warm-up
    t = time.perf_counter()
    a = clap.get_audio_embedding([{"waveform": wav}])
    ta = time.perf_counter() - t
    t = time.perf_counter()
    x = clap.get_text_embedding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})
    tt = time.perf_counter() - t
  work.mkdir(parents=True, exist_ok=True)
  torch.save({"state_dict": {f"module.{k}": v for k, v in clap.state_dict().items()}}, work / "clap_full.pt")
  np.savez(work / "reference.npz", waveform=wav.numpy(), input_ids=ids, attention_mask=mask, audio=a.numpy(),
           text=x.numpy())
  print(f"torch: audio {ta * 1e3:.0f} ms/clip, text {tt * 1e3:.0f} ms/2 captions (eager, after one warm-up call, 2 threads)")


def flax_side(work: pathlib.Path):
  import jax

  sys.path.insert(0, str(ROOT))
  from dreamfoley_jax.convert.common import TensorSource
  from dreamfoley_jax.eval.embedders import clap as C

  ref = np.load(work / "reference.npz")
  t = time.perf_counter()
  variables = C.convert_clap(TensorSource(work / "clap_full.pt"), C.ClapConfig())
  print(f"converted in {time.perf_counter() - t:.1f} s")
  model = C.Clap(C.ClapConfig())
  audio = jax.jit(lambda v, w: model.apply(v, w, method=C.Clap.encode_audio)[0])
  text = jax.jit(lambda v, i, m: model.apply(v, i, m, method=C.Clap.encode_text)[0])
  wav = ref["waveform"][None].astype(np.float32)
  a = np.asarray(audio(variables, wav))
  x = np.asarray(text(variables, ref["input_ids"].astype(np.int32), ref["attention_mask"].astype(np.int32)))
  t = time.perf_counter()
  for _ in range(3):
    np.asarray(audio(variables, wav))
  ta = (time.perf_counter() - t) / 3
  cos = lambda p, q: float((p * q).sum(-1).min())  # noqa: E731 (unit vectors)
  print(f"audio: max |diff| {np.abs(a - ref['audio']).max():.2e}, cosine {cos(a, ref['audio']):.7f}")
  print(f"text:  max |diff| {np.abs(x - ref['text']).max():.2e}, cosine {cos(x, ref['text']):.7f}")
  print(f"flax: audio {ta * 1e3:.0f} ms/clip (jitted, after warm-up)")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--mode", choices=("torch", "flax"), required=True)
  ap.add_argument("--work", default="/tmp/clap_full")
  ap.add_argument("--laion_clap_dir", default="/tmp/clapsrc/laion_clap")
  args = ap.parse_args()
  if args.mode == "torch":
    torch_side(pathlib.Path(args.work), pathlib.Path(args.laion_clap_dir))
  else:
    flax_side(pathlib.Path(args.work))


if __name__ == "__main__":
  main()
