"""HF <-> dreamfoley_jax Qwen2 conversion: round trips, sharded files, bad input, atomic output, CLI."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import _qwen2_ref as R
from dreamfoley_jax import convert
from dreamfoley_jax.convert import common
from dreamfoley_jax.convert import qwen2 as cq
from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.models import qwen2

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """Untied tiny model (single file) and tied 7:1 model saved as 3+ safetensors shards."""
  root = tmp_path_factory.mktemp("hf")
  untied = R.hf_model(seed=0)
  untied.save_pretrained(root / "untied")
  tied = R.hf_model(seed=1, tie=True, **R.GQA7)
  tied.save_pretrained(root / "tied_sharded", max_shard_size="100KB")
  assert (root / "tied_sharded" / "model.safetensors.index.json").exists()
  assert len(list((root / "tied_sharded").glob("model-*.safetensors"))) >= 3
  return {"untied": (untied, root / "untied"), "tied_sharded": (tied, root / "tied_sharded")}


def _tensors(d):
  src = common.TensorSource(d)
  return {k: src.get(k) for k in src.keys()}


def _assert_bitwise(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


@pytest.mark.parametrize("which", ["untied", "tied_sharded"])
@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_bitwise_and_reload(hf_dirs, tmp_path, which, scan):
  import transformers

  model, src = hf_dirs[which]
  params, cfg = cq.load_hf(src, scan_layers=scan)
  if scan:
    q = params["model"]["layers"]["layer"]["self_attn"]["q_proj"]["kernel"]
    assert q.shape == (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads * cfg.head_size)
  else:
    assert "layers_1" in params["model"]
  out = tmp_path / "out"
  cq.save_hf(params, cfg, out, max_shard_size="64KB")
  files = sorted(p.name for p in out.iterdir())
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert set(index["weight_map"].values()) == {f for f in files if f.endswith(".safetensors")}
  for f in out.glob("*.safetensors"):  # a shard over the limit only when it holds one big tensor
    assert f.stat().st_size <= 64_000 + 4096 or len(common.TensorSource(f).keys()) == 1
  _assert_bitwise(_tensors(src), _tensors(out))

  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 12))
  reloaded = transformers.Qwen2ForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  assert reloaded.config.tie_word_embeddings == cfg.tie_word_embeddings
  ref, _ = R.hf_forward(model, ids)
  got, _ = R.hf_forward(reloaded, ids)
  np.testing.assert_array_equal(got, ref)


def test_single_file_export_and_bf16(hf_dirs, tmp_path):
  _, src = hf_dirs["untied"]
  params, cfg = cq.load_hf(src, param_dtype="bfloat16")
  assert params["model"]["norm"]["weight"].dtype == jax.numpy.bfloat16
  cq.save_hf(params, cfg, tmp_path / "out")
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
  assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  back, cfg2 = cq.load_hf(tmp_path / "out", param_dtype="bfloat16")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_decoder_subtree_export(hf_dirs, tmp_path):
  """The DreamFoley model holds the decoder under params['decoder']; export that subtree."""
  _, src = hf_dirs["untied"]
  params, cfg = cq.load_hf(src, scan_layers=True)
  big = {"decoder": params["model"], "heads": {"w": np.zeros(3)}, "text_head": params["lm_head"]}
  cq.save_decoder_hf(big["decoder"], cfg, tmp_path / "with_head", lm_head=big["text_head"])
  _assert_bitwise(_tensors(src), _tensors(tmp_path / "with_head"))
  with pytest.raises(ConversionError, match="no lm_head"):
    cq.save_decoder_hf(big["decoder"], cfg, tmp_path / "no_head")
  cq.save_decoder_hf(big["decoder"], cfg.replace(tie_word_embeddings=True), tmp_path / "tied")
  tied = _tensors(tmp_path / "tied")
  assert "lm_head.weight" not in tied
  assert json.loads((tmp_path / "tied" / "config.json").read_text())["tie_word_embeddings"] is True


def test_torch_bin_input_and_ignored_buffers(hf_dirs, tmp_path):
  import torch

  model, src = hf_dirs["untied"]
  d = tmp_path / "bin"
  d.mkdir()
  (d / "config.json").write_text((src / "config.json").read_text())
  sd = dict(model.state_dict())
  sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints carry these
  torch.save(sd, d / "pytorch_model.bin")
  from_bin, cfg = cq.load_hf(d)
  from_st, _ = cq.load_hf(src)
  for a, b in zip(jax.tree.leaves(from_bin), jax.tree.leaves(from_st)):
    np.testing.assert_array_equal(a, b)


def test_bad_input_lists_every_key(hf_dirs, tmp_path):
  _, src = hf_dirs["untied"]
  sd = _tensors(src)
  del sd["model.layers.1.mlp.up_proj.weight"]
  del sd["model.norm.weight"]
  sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"][:, :10]
  sd["model.layers.7.mlp.extra"] = np.zeros(3, np.float32)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text((src / "config.json").read_text())
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, bad / "model.safetensors")
  with pytest.raises(ConversionError) as e:
    cq.convert_to_orbax(bad, tmp_path / "out")
  msg = str(e.value)
  print(msg)
  assert "missing keys (2)" in msg and "model.layers.1.mlp.up_proj.weight  expected shape (176, 64)" in msg
  assert "model.norm.weight  expected shape (64,)" in msg
  assert "unexpected keys (1)" in msg and "model.layers.7.mlp.extra  shape (3,)" in msg
  assert "model.layers.0.self_attn.k_proj.weight  expected (32, 64), found (32, 10)" in msg
  assert not (tmp_path / "out").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["bad"]  # no temp dir left behind either


def test_failed_write_leaves_nothing(hf_dirs, tmp_path, monkeypatch):
  _, src = hf_dirs["untied"]
  params, cfg = cq.load_hf(src)
  calls = []
  real = cq._write_safetensors

  def failing(*a, **kw):
    calls.append(1)
    if len(calls) == 2:
      raise OSError("disk full (simulated)")
    return real(*a, **kw)

  monkeypatch.setattr(cq, "_write_safetensors", failing)
  with pytest.raises(OSError, match="disk full"):
    cq.save_hf(params, cfg, tmp_path / "out", max_shard_size="64KB")
  assert list(tmp_path.iterdir()) == []


def test_orbax_round_trip(hf_dirs, tmp_path):
  model, src = hf_dirs["tied_sharded"]
  cq.convert_to_orbax(src, tmp_path / "ckpt", scan_layers=True)
  params, cfg = cq.load_orbax(tmp_path / "ckpt")
  assert cfg.scan_layers and cfg.tie_word_embeddings and cfg.num_attention_heads == 14
  with pytest.raises(FileExistsError):
    cq.convert_to_orbax(src, tmp_path / "ckpt")
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 12))
  logits, _ = jax.jit(qwen2.Qwen2ForCausalLM(cfg).apply)({"params": params}, ids)
  ref, _ = R.hf_forward(model, ids)
  assert R.rel_err(logits, ref) < 1e-5
  convert.get_family("qwen2").export_from_orbax(tmp_path / "ckpt", tmp_path / "hf", max_shard_size="100KB")
  _assert_bitwise(_tensors(src), _tensors(tmp_path / "hf"))


def test_cli(hf_dirs, tmp_path):
  _, src = hf_dirs["untied"]
  tool = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "--family", "qwen2"]
  env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
  r = subprocess.run(tool + ["--input", str(src), "--output", str(tmp_path / "ckpt"), "--scan_layers"],
                     capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr
  assert "qwen2 hf->jax" in r.stderr  # tqdm progress
  r = subprocess.run(tool + ["--direction", "to_hf", "--input", str(tmp_path / "ckpt"), "--output",
                             str(tmp_path / "hf"), "--max_shard_size", "50KB"], capture_output=True, text=True,
                     env=env)
  assert r.returncode == 0, r.stderr
  _assert_bitwise(_tensors(src), _tensors(tmp_path / "hf"))
  r = subprocess.run(tool + ["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")],
                     capture_output=True, text=True, env=env)
  assert r.returncode != 0 and "nowhere: no such file or directory" in r.stderr
  assert not (tmp_path / "x").exists()


def test_family_registry():
  assert convert.get_family("qwen2") is cq
  with pytest.raises(KeyError, match="unknown checkpoint family 'nope'"):
    convert.get_family("nope")
