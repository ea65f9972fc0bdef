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


def shared_assets(tmp_path_factory) -> dict[str, str]:
  """Tiny checkpoints + a word-level tokenizer.json at one path per test session, so every test module's
  encode stage has the same config and the process compiles the tiny encoders once."""
  root = tmp_path_factory.getbasetemp() / "dreamfoley_build_assets"
  if not (root / "done").exists():
    from tokenizers import Tokenizer, models, pre_tokenizers

    out = make_tiny_checkpoints(root)
    vocab = {w: i for i, w in enumerate(["[UNK]", "rain", "on", "a", "roof"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(root / "tokenizer.json"))
    out["text_tokenizer"] = str(root / "tokenizer.json")
    (root / "assets.json").write_text(json.dumps(out))
    (root / "done").write_text("")
  return json.loads((root / "assets.json").read_text())
