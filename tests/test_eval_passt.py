"""Flax PaSST (FD/KL_PaSST) vs hear21passt goldens: mel front end, converter + ViT, errors, embedder."""
import os

import numpy as np
import pytest

from dreamfoley_jax.convert.common import ConversionError, TensorSource
from dreamfoley_jax.eval import embedders, frontends
from dreamfoley_jax.eval.embedders import base, passt

import torch_embedders  # tests/: the PyTorch cross-check embedders ('passt_torch')

torch_embedders.register()

torch = pytest.importorskip("torch")
tnn = torch.nn


class _TorchBlock(tnn.Module):
  def __init__(self, d, heads, hidden):
    super().__init__()
    self.heads = heads
    self.norm1, self.norm2 = tnn.LayerNorm(d, eps=1e-6), tnn.LayerNorm(d, eps=1e-6)
    self.attn = tnn.Module()
    self.attn.qkv, self.attn.proj = tnn.Linear(d, 3 * d), tnn.Linear(d, d)
    self.mlp = tnn.Module()
    self.mlp.fc1, self.mlp.fc2 = tnn.Linear(d, hidden), tnn.Linear(hidden, d)

  def forward(self, x):
    b, n, d = x.shape
    qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
    x = x + self.attn.proj((a @ qkv[2]).transpose(1, 2).reshape(b, n, d))
    return x + self.mlp.fc2(torch.nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class _TorchPasst(tnn.Module):
  """hear21passt PaSST.forward in eval mode (distilled), transcribed; same state-dict keys. For the benchmark."""

  def __init__(self, c: passt.PasstConfig):
    super().__init__()
    d, (gf, gt) = c.embed_dim, c.grid
    self.cls_token, self.dist_token = tnn.Parameter(torch.zeros(1, 1, d)), tnn.Parameter(torch.zeros(1, 1, d))
    self.new_pos_embed = tnn.Parameter(torch.zeros(1, 2, d))
    self.freq_new_pos_embed = tnn.Parameter(torch.zeros(1, d, gf, 1))
    self.time_new_pos_embed = tnn.Parameter(torch.zeros(1, d, 1, gt))
    self.patch_embed = tnn.Module()
    self.patch_embed.proj = tnn.Conv2d(1, d, c.patch_size, stride=c.stride)
    self.blocks = tnn.ModuleList(_TorchBlock(d, c.num_heads, c.mlp_dim) for _ in range(c.depth))
    self.norm = tnn.LayerNorm(d, eps=1e-6)
    self.head = tnn.Sequential(tnn.LayerNorm(d), tnn.Linear(d, c.num_classes))
    self.head_dist = tnn.Linear(d, c.num_classes)

  def forward(self, mel_BxMxT):
    x = self.patch_embed.proj(mel_BxMxT[:, None])
    x = x + self.time_new_pos_embed[..., :x.shape[-1]] + self.freq_new_pos_embed
    x = x.flatten(2).transpose(1, 2)
    b = x.shape[0]
    tok = torch.cat([self.cls_token + self.new_pos_embed[:, :1], self.dist_token + self.new_pos_embed[:, 1:]], 1)
    x = torch.cat([tok.expand(b, -1, -1), x], 1)
    for blk in self.blocks:
      x = blk(x)
    x = self.norm(x)
    feats = (x[:, 0] + x[:, 1]) / 2
    return self.head(feats), feats


def _golden_script():
  """tests/fixtures/make/make_passt_golden.py (numpy-only at import): the test rebuilds its 10 s signal from it."""
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parent / "fixtures/make/make_passt_golden.py"
  spec = importlib.util.spec_from_file_location("make_passt_golden", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


full_signal = _golden_script().full_signal


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  with np.load(fixtures_dir / "passt_tiny.npz") as f:
    return {k: f[k] for k in f.files}


def _tiny_config(g):
  return passt.PasstConfig(input_fdim=int(g["config/img_size"][0]), input_tdim=int(g["config/img_size"][1]),
                           patch_size=int(g["config/patch_size"]), stride=int(g["config/stride"]),
                           embed_dim=int(g["config/embed_dim"]), depth=int(g["config/depth"]),
                           num_heads=int(g["config/num_heads"]), num_classes=int(g["config/num_classes"]))


def _state(g):
  return {k[2:]: g[k].astype(np.float32) for k in g if k.startswith("w/")}


def _tiny_audio(g):
  return g["tiny/audio_int16"].astype(np.float32) / 32768.0


def test_mel_front_end_matches_reference_on_short_clip(golden):
  mel = frontends.passt_logmel(_tiny_audio(golden))
  assert mel.shape == golden["tiny/mel"].shape == (128, 160)
  np.testing.assert_allclose(mel, golden["tiny/mel"], rtol=0, atol=1e-4)


def test_mel_front_end_matches_reference_on_10s(golden):
  x = full_signal()
  np.testing.assert_array_equal(x[:16], golden["mel10/signal_head"])
  assert x.astype(np.float64).sum() == pytest.approx(float(golden["mel10/signal_sum"]), abs=1e-9)
  mel = frontends.passt_logmel(x)
  assert mel.shape == tuple(golden["mel10/shape"]) == (128, 1000)
  for a in golden["mel10/slice_starts"]:
    ref = golden[f"mel10/frames_{a}_{a + 32}"]
    np.testing.assert_allclose(mel[:, a:a + 32], ref, rtol=0, atol=3e-4, err_msg=f"frames {a}:{a + 32}")
  np.testing.assert_allclose(mel.mean(axis=0), golden["mel10/frame_mean"], rtol=0, atol=2e-5)
  np.testing.assert_allclose(mel.mean(axis=1), golden["mel10/bin_mean"], rtol=0, atol=2e-5)
  # The silent 4.0-4.5 s stretch hits the log floor exactly: (log(1e-5) + 4.5) / 5.
  np.testing.assert_allclose(mel[:, 410:440], (np.log(1e-5) + 4.5) / 5, atol=1e-12)


def test_converted_vit_matches_reference(golden):
  c = _tiny_config(golden)
  variables = passt.convert_passt(_state(golden), c)
  model = passt.Passt(c)
  out, aux = model.apply(variables, golden["tiny/mel"][None])   # the reference's own mel: ViT alone
  assert out["logits"].shape == (1, 527) and out["embed"].shape == (1, c.embed_dim)
  np.testing.assert_allclose(out["logits"][0], golden["tiny/logits"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(out["embed"][0], golden["tiny/embed"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(out["embed"], (aux["cls"] + aux["dist"]) / 2, atol=1e-7)
  # End to end: our float64 mel -> float32 -> Flax ViT.
  mel = frontends.passt_logmel(_tiny_audio(golden)).astype(np.float32)
  out2, _ = model.apply(variables, mel[None])
  np.testing.assert_allclose(out2["logits"][0], golden["tiny/logits"], rtol=0, atol=5e-5)
  np.testing.assert_allclose(out2["embed"][0], golden["tiny/embed"], rtol=0, atol=5e-5)
  # The golden's weights matter: a swapped position-embedding layout changes the output a lot.
  bad = passt.convert_passt({**_state(golden), "freq_new_pos_embed": _state(golden)["freq_new_pos_embed"][:, :, ::-1]},
                            c)
  out3, _ = model.apply(bad, golden["tiny/mel"][None])
  assert np.abs(out3["logits"][0] - golden["tiny/logits"]).max() > 1e-2


def test_torch_transcription_matches_reference(golden):
  """Keeps benchmarks/bench_eval_embedders.py's PyTorch side honest: it reproduces hear21passt's outputs."""
  m = _TorchPasst(_tiny_config(golden))
  m.load_state_dict({k: torch.from_numpy(v) for k, v in _state(golden).items()}, strict=True)
  with torch.no_grad():
    logits, feats = m.eval()(torch.from_numpy(golden["tiny/mel"])[None])
  np.testing.assert_allclose(logits[0].numpy(), golden["tiny/logits"], rtol=0, atol=1e-5)
  np.testing.assert_allclose(feats[0].numpy(), golden["tiny/embed"], rtol=0, atol=1e-5)


def test_grid_longer_than_position_embeddings_is_a_clear_error(golden):
  c = _tiny_config(golden)
  variables = passt.convert_passt(_state(golden), c)
  with pytest.raises(ValueError, match="position embeddings cover 12x16"):
    passt.Passt(c).apply(variables, np.zeros((1, 128, 400), np.float32))


def test_converter_lists_missing_extra_and_misshaped_keys(golden, tmp_path):
  sd = {k: torch.from_numpy(v) for k, v in _state(golden).items()}
  del sd["blocks.1.mlp.fc2.bias"]
  sd["blocks.2.norm1.weight"] = torch.zeros(32)
  sd["head.1.weight"] = torch.zeros(10, 32)
  path = tmp_path / "bad.pt"
  torch.save(sd, path)
  with pytest.raises(ConversionError) as e:
    passt.convert_passt(TensorSource(path), _tiny_config(golden))
  msg = str(e.value)
  assert str(path) in msg
  assert "missing keys (1)" in msg and "blocks.1.mlp.fc2.bias" in msg
  assert "unexpected keys (1)" in msg and "blocks.2.norm1.weight" in msg
  assert "mis-shaped keys (1)" in msg and "head.1.weight  expected (527, 32), found (10, 32)" in msg


def test_converter_accepts_the_wrapper_state_dict(golden, tmp_path):
  """PasstBasicWrapper.state_dict(): every key under 'net.' plus 'device_proxy'."""
  sd = {f"net.{k}": torch.from_numpy(v) for k, v in _state(golden).items()}
  sd["device_proxy"] = torch.zeros(1)
  path = tmp_path / "wrapper.pt"
  torch.save(sd, path)
  c = _tiny_config(golden)
  a = passt.convert_passt(TensorSource(path), c)
  b = passt.convert_passt(_state(golden), c)
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k])


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


def test_real_shapes_match_hear21passt_parameter_count():
  s = passt.torch_shapes(passt.PasstConfig())
  # hear21passt get_model("passt_s_swa_p16_128_ap476", pretrained=False): 159 tensors, 86,153,758 numbers.
  assert len(s) == 159 and sum(int(np.prod(v)) for v in s.values()) == 86_153_758
  assert s["time_new_pos_embed"] == (1, 768, 1, 99) and s["freq_new_pos_embed"] == (1, 768, 12, 1)


def test_converter_tree_is_the_model_tree_with_logical_axes():
  """Real config: converted params have exactly init's paths and shapes; every param has known axis names."""
  import flax.linen as nn
  import jax

  from dreamfoley_jax import sharding
  from dreamfoley_jax.convert import common

  c = passt.PasstConfig()
  abstract = jax.eval_shape(lambda x: passt.Passt(c).init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 128, 1000), np.float32))
  want = {k: v.shape for k, v in common.flatten(nn.unbox(abstract)["params"]).items()}
  zeros = {k: np.zeros(v, np.float32) for k, v in passt.torch_shapes(c).items()}
  got = {k: v.shape for k, v in common.flatten(passt.convert_passt(zeros, c)["params"]).items()}
  assert got == want
  specs = common.flatten(nn.get_partition_spec(abstract)["params"])
  known = {name for name, _ in sharding.LOGICAL_RULES}
  for k, spec in specs.items():
    assert len(spec) == len(want[k]) and {a for a in spec if a is not None} <= known, (k, spec)


def _write_checkpoint(path, config, seed):
  sd = base.random_state_dict(passt.torch_shapes(config), seed)
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)


def test_embedder_from_checkpoint_on_disk(tmp_path):
  c = passt.PasstConfig.tiny()   # real geometry (10 s -> 12 x 99 patches), width 32, depth 2
  ckpt = tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt"
  _write_checkpoint(ckpt, c, seed=0)
  e = embedders.build("passt", tmp_path, config=c)
  assert e.native and "passt" in embedders.NATIVE_FLAX and e.name == "passt"
  wav = np.random.default_rng(3).normal(size=(2, 44100 * 3)) * 0.1   # stereo 44.1 kHz, 3 s -> padded to 10 s
  a = e.audio_features(wav, 44100, 3.0, "clip")
  assert a["passt_logits"].shape == (527,) and a["passt_embed"].shape == (32,)
  assert a["passt_logits"].dtype == np.float32 and np.all(np.isfinite(a["passt_logits"]))
  b = e.audio_features(wav, 44100, 3.0, "clip")
  np.testing.assert_array_equal(a["passt_logits"], b["passt_logits"])
  np.testing.assert_array_equal(a["passt_embed"], b["passt_embed"])
  # Same as running the model on the documented input rule by hand.
  mel = frontends.passt_logmel(frontends.passt_input(frontends.prepare_audio(wav, 44100, 32000, 3.0)))
  out, _ = passt.Passt(c).apply(e.variables, mel[None].astype(np.float32))
  np.testing.assert_allclose(a["passt_logits"], out["logits"][0], atol=1e-6)
  # The fingerprint follows the file.
  fp = e.fingerprint()
  assert str(ckpt) in fp
  _write_checkpoint(ckpt, c, seed=1)
  st = ckpt.stat()
  os.utime(ckpt, (st.st_atime, st.st_mtime + 10))
  e2 = passt.PasstEmbedder(ckpt, config=c)
  assert e2.fingerprint() != fp
  assert not np.allclose(e2.audio_features(wav, 44100, 3.0, "clip")["passt_logits"], a["passt_logits"])


def test_registry_and_errors(tmp_path):
  assert embedders.REGISTRY["passt"] is passt.PasstEmbedder
  assert embedders.metric_key("passt_torch") == "passt" and embedders.metric_key("passt") == "passt"
  assert embedders.EXPECTED_FILES["passt"] == ("passt-s-f128-p16-s10-ap.476-swa.pt",)
  with pytest.raises(base.MissingWeightsError, match="passt-s-f128-p16-s10-ap.476-swa.pt"):
    embedders.build("passt", tmp_path)
  try:
    import hear21passt  # noqa: F401
  except ImportError:  # the cross-check embedder names what to install (and checks weights first)
    (tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt").write_bytes(b"x")
    with pytest.raises(base.MissingPackageError, match="hear21passt"):
      embedders.build("passt_torch", tmp_path)


@pytest.mark.slow
def test_full_size_config_runs_on_10s():
  """The real config with random weights: shapes of the av-benchmark call (10 s -> 1000 frames -> 1190 tokens)."""
  e = passt.PasstEmbedder(seed=0)
  wav = np.random.default_rng(4).normal(size=(1, 32000 * 8)) * 0.1
  f = e.audio_features(wav, 32000, 8.0, "clip")
  assert f["passt_logits"].shape == (527,) and f["passt_embed"].shape == (768,)
  assert np.all(np.isfinite(f["passt_logits"])) and np.all(np.isfinite(f["passt_embed"]))
