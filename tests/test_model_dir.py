"""One model directory: written, checked, read by generate (library and CLI); clear errors when it is
incomplete or holds parts of another model."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

import model_helpers as mh
from dreamfoley_jax import generate as G
from dreamfoley_jax import model_dir

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  root = tmp_path_factory.mktemp("parts")
  exp, params, codec, tok = mh.make_parts(root)
  d = model_dir.write(root / "model", exp, params=params, codec=codec, tokenizer=tok, source={"what": "test"})
  return root, exp, params, codec, tok, d


def test_layout_and_manifest(parts):
  root, exp, params, codec, tok, d = parts
  assert sorted(p.name for p in d.iterdir()) == ["codec.npz", "config.json", "model.json", "params", "tokenizer.json"]
  md = model_dir.load(d)
  m = md.manifest
  assert m["format"] == model_dir.FORMAT and m["version"] == model_dir.VERSION
  assert m["codec"] == {"kind": "synthetic", "num_codebooks": 8, "codebook_size": mh.CODEBOOK, "sample_rate": 24000,
                        "frame_rate": 25.0}
  assert m["tokenizer"] == {"vocab_size": 300}
  assert m["sampling"] == {k: exp.sample[k] for k in model_dir.SAMPLING_KEYS}
  assert m["num_params"] == sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  assert md.exp.model.to_dict() == json.loads(json.dumps(exp.model.to_dict()))   # the model section, whole
  assert not list(root.glob(".model.tmp-*"))                                        # no temp dir left behind


def test_generator_from_the_directory_equals_the_separate_paths(parts, tmp_path):
  """--model DIR gives exactly what the five separate flags give, with the model's sampling defaults."""
  root, exp, params, codec, tok, d = parts
  clip = mh.write_clip(tmp_path / "clip.mp4", 2.0)
  items = [G.Item(video=str(clip), caption="a metal ball bounces"), G.Item(video=None, caption="glass", duration=1.0)]
  a = model_dir.build_generator(d, batch_size=2, write_png=False)
  a.show_progress = False
  b = G.build_generator(exp, checkpoint=str(d / "params"), codec_checkpoint=str(codec), tokenizer=str(tok),
                        batch_size=2, write_mp4=False, write_png=False)
  b.show_progress = False
  assert a.sample_cfg == b.sample_cfg and (a.window_frames, a.context_frames) == (50, 25)
  ra, rb = a.run(items, tmp_path / "a"), b.run(items, tmp_path / "b")
  for x, y in zip(ra, rb):
    assert x["codes"].shape == (8, x["frames"]) and x["codes"].max() < mh.CODEBOOK
    np.testing.assert_array_equal(x["codes"], y["codes"])
  assert [r["frames"] for r in ra] == [50, 25]
  audio, sr = sf.read(ra[0]["wav"])
  assert sr == 24000 and len(audio) == 48000 and ra[0]["mp4"].stat().st_size > 1000
  # Overrides on top of the directory, and the manifest's sampling defaults win over config.json.
  assert model_dir.build_generator(d, sample_overrides={"cfg_scale": 2.0}).sample_cfg.cfg_scale == 2.0
  edited = tmp_path / "edited"
  shutil.copytree(d, edited)
  m = json.loads((edited / "model.json").read_text())
  m["sampling"]["top_k"] = 3
  (edited / "model.json").write_text(json.dumps(m))
  assert model_dir.build_generator(edited).sample_cfg.top_k == 3


def test_incomplete_or_foreign_directories_name_the_problem(parts, tmp_path):
  root, exp, params, codec, tok, d = parts
  with pytest.raises(model_dir.ModelDirError, match="no such model directory"):
    model_dir.load(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(model_dir.ModelDirError, match="not a model directory: no model.json"):
    model_dir.load(tmp_path / "empty")
  broken = tmp_path / "broken"
  shutil.copytree(d, broken)
  (broken / "codec.npz").unlink()
  shutil.rmtree(broken / "params")
  with pytest.raises(model_dir.ModelDirError, match=r"incomplete model directory, missing params \(params\), "
                                                    r"codec \(codec.npz\)$"):
    model_dir.load(broken)

  # Parts of another model: params of another width, a codec with other codebooks, a bigger tokenizer.
  other = tmp_path / "other"
  exp2, params2, codec2, tok2 = mh.make_parts(other, hidden=48, vocab=400, codebook=32)
  mixed = tmp_path / "mixed"
  shutil.copytree(d, mixed)
  shutil.rmtree(mixed / "params")
  shutil.copytree(model_dir.write(other / "m", exp2, params=params2, codec=mh.make_parts(other / "c")[2],
                                  tokenizer=tok)  / "params", mixed / "params")
  with pytest.raises(model_dir.ModelDirError) as e:
    model_dir.load(mixed)
  msg = str(e.value)
  assert "params" in msg and "from another model" in msg and "of other shapes" in msg
  assert "decoder/embed_tokens/embedding (320, 48) vs config (320, 32)" in msg
  with pytest.raises(model_dir.ModelDirError, match=r"codec .*codec.npz has codebook_size=32, the model needs 16.*"
                                                    r"tokenizer .* has 3[2-9][0-9] tokens, more than the model's vocab_size 320"):
    model_dir.build_generator(d, codec_checkpoint=str(codec2), tokenizer=str(tok2))
  # write() checks before it renames: nothing lands at `out`.
  with pytest.raises(model_dir.ModelDirError, match=r"not written.*codebook_size=32"):
    model_dir.write(tmp_path / "bad", exp, params=params, codec=codec2, tokenizer=tok)
  assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))


def test_features_mode_model_needs_its_encoders(tmp_path):
  from dreamfoley_jax import configs

  exp = configs.load_config(str(ROOT / "experiments" / "tiny.py"))
  exp.model.decoder.update(dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                num_key_value_heads=1, num_hidden_layers=1))
  exp.model.codebook_size = mh.CODEBOOK
  _, _, codec, tok = mh.make_parts(tmp_path / "p")
  with pytest.raises(model_dir.ModelDirError, match=r"needs the eva_clip encoder \(--eva_ckpt.*needs the synchformer "
                                                    r"encoder \(--sync_ckpt"):
    model_dir.write(tmp_path / "m", exp, params=mh.random_params(exp), codec=codec, tokenizer=tok)
  (tmp_path / "notenc").mkdir()
  with pytest.raises(model_dir.ModelDirError, match=r"--eva_ckpt .*notenc: not a converted eva_clip checkpoint"):
    model_dir.write(tmp_path / "m", exp, params=mh.random_params(exp), codec=codec, tokenizer=tok,
                    eva_ckpt=tmp_path / "notenc", sync_ckpt=tmp_path / "notenc")


def test_generate_cli_with_model(parts, tmp_path):
  root, exp, params, codec, tok, d = parts
  clip = mh.write_clip(tmp_path / "clip.mp4", 2.0)
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, str(ROOT / "tools" / "generate.py"), f"--model={d}", f"--video={clip}",
         "--caption=a glass marble bounces", f"--out_dir={tmp_path / 'out'}", "--cfg_scale=2", "--nopng"]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert p.returncode == 0, p.stderr[-2000:]
  assert (tmp_path / "out" / "clip.wav").exists() and (tmp_path / "out" / "clip.mp4").exists()
  assert not (tmp_path / "out" / "clip.png").exists()
  p = subprocess.run(cmd[:2] + [f"--model={tmp_path / 'nothing'}"] + cmd[3:], capture_output=True, text=True,
                     timeout=300, env=env)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines() == [   # one line, as every generate error (docs/reliability.md)
      f"generate: error: --model {tmp_path / 'nothing'}: no such model directory (the main job writes "
      "runs/synthetic/model; tools/export_model.py makes one from a training workdir)"]
