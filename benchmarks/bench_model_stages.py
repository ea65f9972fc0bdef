r"""CPU seconds per 10 s clip of part 2's model stages at their REAL size (docs/data.md "Model stages").

  python benchmarks/bench_model_stages.py --out /tmp/bench_model_stages.json
  python benchmarks/bench_model_stages.py --stages separation,pam --clips 2

Weights are random (no checkpoint downloads here) but every model has the published geometry, so the
cost is the real one: HTDemucs (htdemucs kwargs, 42M params) via demucs' apply_model, MS-CLAP 2023 (PAM,
Flax), AST (transformers ASTConfig() = the AudioSet checkpoint's geometry, 87M) and ImageBind-huge
(audio + vision towers, Flax). One process, one clip at a time, after a warm-up clip (compiles).
The caption stage's cost is the endpoint's and is not measured here.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402

from bench_common import cpu_model  # noqa: E402


def clip(seconds=10.0):
  import media_synth as ms

  from dreamfoley_jax.data.build import standardise as st

  d = pathlib.Path(tempfile.mkdtemp())
  p = ms.write_media(d / "b.mp4", seconds=seconds, fps=25, size=(360, 640),
                     audio=ms.tone(seconds, freq=220) + ms.noise(seconds, amp=0.1), shift_px=1.0)
  return st.standardise(st.InputItem(str(p), "", "b"), "k", st.StandardiseConfig())[0][0]


def separation_stage(tmp):
  import torch
  from fractions import Fraction

  from dreamfoley_jax.data.build import separation as sep

  HTDemucs, _ = sep.import_demucs()
  kw = json.loads((pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/htdemucs_shapes.json").read_text())["kwargs"]
  kw["segment"] = Fraction(*kw["segment"])
  m = HTDemucs(**kw).eval()
  path = tmp / "htdemucs.th"
  torch.save({"klass": HTDemucs, "args": (), "kwargs": kw, "state": m.state_dict()}, path)
  return sep.SeparationStage(sep.SeparationConfig(model=str(path)))


def pam_stage(tmp):
  import jax
  import jax.numpy as jnp

  from dreamfoley_jax.data.build import pam
  from dreamfoley_jax.eval.embedders import msclap as M

  c = M.MsClapConfig()
  st = pam.PamStage(pam.PamConfig(model="<random>", tokenizer="<random>"))
  ids = np.zeros((2, c.text_len), np.int32)
  ids[:, :10] = np.arange(1, 11)
  st.pam_cfg, st.pam_variables = c, jax.tree.map(jnp.asarray, M.random_variables(c, 0))
  st.pam_prompts = (jnp.asarray(ids), jnp.asarray((ids != 0).astype(np.int32)))
  st.pam_fn = M.jitted_pam(c)
  st._loaded = True
  return st


def ast_stage(tmp):
  from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

  from dreamfoley_jax.data.build import tags

  st = tags.TagsStage(tags.TagsConfig(model="<random>"))
  st.extractor, st.tagger = ASTFeatureExtractor(), ASTForAudioClassification(ASTConfig(num_labels=527)).eval()
  st.labels, st._loaded = [str(i) for i in range(527)], True
  return st


def imagebind_stage(tmp):
  from dreamfoley_jax.data.build import alignment
  from dreamfoley_jax.eval.embedders import imagebind as ib

  st = alignment.AlignmentStage(alignment.AlignmentConfig(model="<random>"))
  st.ib, st._loaded = ib.ImageBindEmbedder(config=ib.ImageBindConfig.huge(), seed=0), True
  return st


BUILD = {"separation": separation_stage, "pam": pam_stage, "ast": ast_stage, "imagebind": imagebind_stage}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--stages", default="separation,pam,ast,imagebind")
  ap.add_argument("--clips", type=int, default=2)
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  import os

  c = clip()
  tmp = pathlib.Path(tempfile.mkdtemp())
  res = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "stages": {}}
  for name in a.stages.split(","):
    st = BUILD[name](tmp)
    t0 = time.time()
    st(c)   # warm-up (compile)
    warm = time.time() - t0
    w0, p0 = time.time(), time.process_time()
    for _ in range(a.clips):
      out = st(c)
    wall, cpu = (time.time() - w0) / a.clips, (time.process_time() - p0) / a.clips
    res["stages"][name] = {"wall_s_per_clip": round(wall, 3), "cpu_s_per_clip": round(cpu, 3),
                           "warmup_s": round(warm, 2), "clips_per_s_wall": round(1 / wall, 4),
                           "scores": dict(getattr(out, "scores", {}))}
    print(name, res["stages"][name], flush=True)
  res["load_average_end"] = os.getloadavg()[0]
  print(json.dumps(res, indent=1))
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
  main()
