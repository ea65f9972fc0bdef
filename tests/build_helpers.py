"""Tiny converted checkpoints (from tests/fixtures goldens, through the real converters) and media for the
data-pipeline tests."""
from __future__ import annotations

import json
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _state_dict(name):
  with np.load(FIXTURES / name) as f:
    return {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}


def make_tiny_checkpoints(root: pathlib.Path) -> dict[str, str]:
  """{eva_ckpt, sync_ckpt, codec_ckpt}: orbax dirs written by the project's converters."""
  from safetensors.numpy import save_file

  from dreamfoley_jax.convert import eva_clip, higgs, synchformer

  root.mkdir(parents=True, exist_ok=True)
  out = {}
  for key, npz, mod, kw in (("eva_ckpt", "eva_clip_g14_tiny.npz", eva_clip, {"config": "tiny"}),
                            ("sync_ckpt", "synchformer_tiny.npz", synchformer, {"config": "tiny"})):
    st = root / f"{key}.safetensors"
    save_file(_state_dict(npz), str(st))
    mod.convert_to_orbax(st, root / key, **kw)
    out[key] = str(root / key)
  st = root / "higgs.safetensors"
  save_file(_state_dict("higgs_audio_v2_tokenizer_tiny.npz"), str(st))
  tiny = json.loads((FIXTURES / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  higgs.convert_to_orbax(st, root / "codec", config=tiny)
  out["codec_ckpt"] = str(root / "codec")
  return out
