"""higgs-audio-v2 tokenizer: golden parity through the real converter, converters, config presets."""
import json

import jax
import numpy as np
import pytest

from dreamfoley_jax.audio.higgs import HiggsAudioV2Tokenizer, HiggsTokenizerConfig, abstract_params
from dreamfoley_jax.audio.layers import ConvTranspose1d
from dreamfoley_jax.convert import common
from dreamfoley_jax.convert import higgs as conv

LENGTHS = (24000, 24480)


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  with np.load(fixtures_dir / "higgs_audio_v2_tokenizer_tiny.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def tiny_cfg(fixtures_dir):
  d = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())
  return HiggsTokenizerConfig.from_hf_config(d["tiny_config"])


@pytest.fixture(scope="module")
def state_dict(golden):
  return {k[len("param/"):]: v for k, v in golden.items() if k.startswith("param/")}


@pytest.fixture(scope="module")
def params(state_dict, tiny_cfg):
  return conv.convert_state_dict(state_dict, tiny_cfg)


@pytest.fixture(scope="module")
def outputs(params, tiny_cfg, golden):
  """One jitted encode+decode per input length."""
  m = HiggsAudioV2Tokenizer(tiny_cfg)

  @jax.jit
  def run(p, x):
    codes, aux = m.apply({"params": p}, x, method=m.encode)
    audio, aux2 = m.apply({"params": p}, codes, method=m.decode)
    return codes, audio, {**aux, **aux2}

  return {n: jax.device_get(run(params, golden[f"input/audio_n{n}"])) for n in LENGTHS}


def test_config_presets(tiny_cfg):
  real = HiggsTokenizerConfig.real()
  assert (real.hop_length, real.frame_rate, real.num_quantizers, real.codebook_size, real.codebook_dim) == \
      (960, 25, 8, 1024, 64)
  assert (real.hidden_size, real.hubert.num_hidden_layers, real.semantic_downsample_factor) == (1024, 12, 2)
  assert (tiny_cfg.hop_length, tiny_cfg.num_quantizers, tiny_cfg.codebook_dim, tiny_cfg.hidden_size) == (960, 8, 8, 48)
  assert tiny_cfg.hubert.hidden_size == 32 and tiny_cfg.hubert.num_hidden_layers == 2
  # transformers' bare defaults are NOT the real model: ratios [8,5,4,2] and 16 quantizers
  bare = HiggsTokenizerConfig.from_hf_config({})
  assert bare.hop_length == 320 and bare.num_quantizers != 8
  assert tiny_cfg.num_frames(24000) == 25 and tiny_cfg.acoustic_pad(24000) == 0
  assert tiny_cfg.num_frames(24480) == 26 and tiny_cfg.acoustic_pad(24480) == 480


# (name, golden key, transform of the golden to our channels-last layout)
_STAGES = [
    ("resampled_16k", "inter/resampled_16k", lambda r: r[:, 0]),
    ("hubert_hidden_states", "inter/hubert_hidden_states", lambda r: r),
    ("semantic_features", "inter/semantic_features", lambda r: r),
    ("e_semantic", "inter/e_semantic", lambda r: r.transpose(0, 2, 1)),
    ("e_acoustic", "inter/e_acoustic", lambda r: r.transpose(0, 2, 1)),
    ("fc_out", "inter/fc_out", lambda r: r.transpose(0, 2, 1)),
    ("quantized", "inter/quantized", lambda r: r.transpose(0, 2, 1)),
    ("fc2_out", "inter/fc2_out", lambda r: r.transpose(0, 2, 1)),
]


@pytest.mark.parametrize("n", LENGTHS)
def test_intermediates_match_golden(outputs, golden, n):
  _, _, aux = outputs[n]
  for name, key, tr in _STAGES:  # in pipeline order: the first failure names the broken stage
    np.testing.assert_allclose(aux[name], tr(golden[f"{key}_n{n}"]), rtol=1e-5, atol=1e-5, err_msg=name)
  # the gap is a difference of two ~25-sized distances: the reference itself moves it by 2.7e-5 between
  # thread counts (README), so it gets 1e-4 absolute
  np.testing.assert_allclose(aux["code_gap"], golden[f"inter/code_gap_n{n}"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", LENGTHS)
def test_codes_exact_and_audio(outputs, golden, n):
  codes, audio, aux = outputs[n]
  ref_codes = golden[f"output/codes_n{n}"]
  assert codes.shape == ref_codes.shape == (2, 8, 25 if n == 24000 else 26)
  np.testing.assert_array_equal(codes, ref_codes)
  np.testing.assert_array_equal(aux["frames"], [codes.shape[-1]] * 2)
  ref_audio = golden[f"output/audio_n{n}"][:, 0]
  assert audio.shape == ref_audio.shape
  assert np.abs(audio - ref_audio).max() <= 1e-5 * np.abs(ref_audio).max()


def test_conv_transpose_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  for cin, cout, s, t in [(6, 4, 8, 5), (5, 3, 5, 4), (4, 2, 3, 7), (3, 3, 2, 1)]:
    k, p, op = 2 * s, -(-s // 2), s % 2
    w = rng.normal(size=(cin, cout, k)).astype(np.float32)
    b = rng.normal(size=(cout,)).astype(np.float32)
    x = rng.normal(size=(2, cin, t)).astype(np.float32)
    ref = torch.nn.functional.conv_transpose1d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                               stride=s, padding=p, output_padding=op).numpy()
    layer = ConvTranspose1d(cout, k, s, p, op)
    out = layer.apply({"params": {"kernel": np.transpose(w, (2, 0, 1)), "bias": b}}, x.transpose(0, 2, 1))
    assert out.shape == (2, (t - 1) * s - 2 * p + k + op, cout) == (2, ref.shape[2], cout)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 2, 1), ref, rtol=1e-5, atol=1e-5)


def test_pos_conv_weight_norm_merge(params, golden):
  merged = params["semantic_model"]["encoder"]["pos_conv_embed"]["conv"]["kernel"]
  ref = golden["derived/semantic_model.encoder.pos_conv_embed.conv.weight"]
  np.testing.assert_allclose(merged, common.conv_to_jax(ref), rtol=1e-6, atol=1e-6)


def test_real_manifest_fully_mapped(fixtures_dir):
  real = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_real_shapes.json").read_text())
  cfg = HiggsTokenizerConfig.real()
  plan = conv.plan_keys(real, len(cfg.downsampling_ratios))
  expected = conv.expected_torch_shapes(cfg)
  common.check_keys(expected, plan.shapes, source="real manifest", ignore=conv.is_unused)
  # every manifest key is either consumed or a known training-only key
  consumed = {src for k in expected for src in plan.sources[k]}
  assert all(k in consumed or conv.is_unused(k) for k in real), sorted(set(real) - consumed)[:5]
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(abstract_params(cfg)))
  assert n_params > 150_000_000


def _to_boson(sd: dict, rng) -> dict:
  """The golden's transformers keys renamed into boson-multimodal's layout, DAC convs as weight_g/weight_v."""
  inner = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
  out = {}
  for k, v in sd.items():
    nk = k
    m = __import__("re").match
    if r := m(r"acoustic_encoder\.block\.(\d+)\.res_unit(\d)\.(\w+)\.(.+)", k):
      nk = f"encoder.block.{int(r[1]) + 1}.block.{int(r[2]) - 1}.block.{inner[r[3]]}.{r[4]}"
    elif r := m(r"acoustic_encoder\.block\.(\d+)\.snake1\.(.+)", k):
      nk = f"encoder.block.{int(r[1]) + 1}.block.3.{r[2]}"
    elif r := m(r"acoustic_encoder\.block\.(\d+)\.conv1\.(.+)", k):
      nk = f"encoder.block.{int(r[1]) + 1}.block.4.{r[2]}"
    elif r := m(r"acoustic_encoder\.(conv1|snake1|conv2)\.(.+)", k):
      nk = f"encoder.block.{ {'conv1': 0, 'snake1': 6, 'conv2': 7}[r[1]] }.{r[2]}"
    elif r := m(r"acoustic_decoder\.block\.(\d+)\.res_unit(\d)\.(\w+)\.(.+)", k):
      nk = f"decoder_2.model.{int(r[1]) + 1}.block.{int(r[2]) + 1}.block.{inner[r[3]]}.{r[4]}"
    elif r := m(r"acoustic_decoder\.block\.(\d+)\.(snake1|conv_t1)\.(.+)", k):
      nk = f"decoder_2.model.{int(r[1]) + 1}.block.{0 if r[2] == 'snake1' else 1}.{r[3]}"
    elif r := m(r"acoustic_decoder\.(conv1|snake1|conv2)\.(.+)", k):
      nk = f"decoder_2.model.{ {'conv1': 0, 'snake1': 6, 'conv2': 7}[r[1]] }.{r[2]}"
    elif r := m(r"quantizer\.quantizers\.(\d+)\.codebook\.(.+)", k):
      nk = f"quantizer.vq.layers.{r[1]}._codebook.{r[2]}"
    elif r := m(r"quantizer\.quantizers\.(\d+)\.(.+)", k):
      nk = f"quantizer.vq.layers.{r[1]}.{r[2]}"
    elif r := m(r"(fc|fc1|fc2)\.(.+)", k):
      nk = {"fc": "fc_prior", "fc1": "fc_post1", "fc2": "fc_post2"}[r[1]] + "." + r[2]
    elif r := m(r"((?:en|de)coder_semantic\..*?)(conv|conv1|conv2)\.(weight|bias)$", k):
      nk = f"{r[1]}{r[2]}.conv.{r[3]}"
    if nk.startswith(("encoder.", "decoder_2.")) and nk.endswith(".weight"):
      # torch.nn.utils.weight_norm(dim=0): g = ||w|| over dims 1.., v = any positive rescaling of w
      g = np.sqrt((v.astype(np.float64) ** 2).sum(axis=tuple(range(1, v.ndim)), keepdims=True)).astype(np.float32)
      out[nk[:-len("weight")] + "weight_g"] = g
      out[nk[:-len("weight")] + "weight_v"] = (v * rng.uniform(0.5, 2.0)).astype(np.float32)
    else:
      out[nk] = v
  return out


def test_boson_layout_converts_to_same_params(state_dict, params, tiny_cfg):
  boson = _to_boson(state_dict, np.random.default_rng(0))
  assert conv.detect_layout(boson) == "boson"
  assert "encoder.block.1.block.0.block.1.weight_v" in boson and "decoder_2.model.7.weight_g" in boson
  assert "encoder_semantic.conv.conv.weight" in boson
  got = common.flatten(conv.convert_state_dict(boson, tiny_cfg))
  want = common.flatten(params)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-6, err_msg=k)


def test_converter_errors_name_every_bad_key(state_dict, tiny_cfg):
  bad = dict(state_dict)
  del bad["fc.weight"]
  bad["acoustic_encoder.conv2.bias"] = np.zeros(7, np.float32)
  bad["quantizer.quantizers.8.project_in.weight"] = np.zeros((8, 48), np.float32)  # a 16-quantizer checkpoint
  with pytest.raises(common.ConversionError) as e:
    conv.convert_state_dict(bad, tiny_cfg)
  msg = str(e.value)
  assert "fc.weight" in msg and "acoustic_encoder.conv2.bias" in msg and "quantizer.quantizers.8.project_in" in msg
  half = dict(state_dict)
  del half["semantic_model.encoder.pos_conv_embed.conv.parametrizations.weight.original0"]
  with pytest.raises(common.ConversionError, match="partner"):
    conv.convert_state_dict(half, tiny_cfg)


def test_convert_to_orbax_atomic(tmp_path, state_dict, params, fixtures_dir):
  from safetensors.numpy import save_file

  src = tmp_path / "hf"
  src.mkdir()
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(src / "model.safetensors"))
  d = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  (src / "config.json").write_text(json.dumps(d["config_to_dict"]))
  out = conv.convert_to_orbax(src, tmp_path / "out")
  restored = common.flatten(common.load_params(out))
  for k, v in common.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(restored[k]), v)
  assert common.read_metadata(out)["family"] == "higgs_audio_v2_tokenizer"
  with pytest.raises(FileExistsError):
    conv.convert_to_orbax(src, tmp_path / "out")
  # a failing conversion leaves nothing behind
  (src / "config.json").write_text(json.dumps({**d["config_to_dict"], "codebook_dim": 16}))
  with pytest.raises(common.ConversionError):
    conv.convert_to_orbax(src, tmp_path / "out2")
  assert not (tmp_path / "out2").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out2")]


def test_convert_to_orbax_boson_pth(tmp_path, state_dict, params, tiny_cfg, fixtures_dir):
  torch = pytest.importorskip("torch")
  src = tmp_path / "boson"
  src.mkdir()
  boson = _to_boson(state_dict, np.random.default_rng(1))
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in boson.items()}, src / "model.pth")
  # boson's own config.json describes the real model; the tiny geometry must be passed explicitly
  (src / "config.json").write_text(json.dumps({"n_q": 8, "ratios": [8, 5, 4, 2, 3], "D": 256}))
  assert conv.load_config(src) == HiggsTokenizerConfig.real()
  d = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  out = conv.convert_to_orbax(src, tmp_path / "out", config=d["config_to_dict"])
  restored = common.flatten(common.load_params(out))
  for k, v in common.flatten(params).items():
    np.testing.assert_allclose(np.asarray(restored[k]), v, rtol=2e-6, atol=2e-6, err_msg=k)



def test_load_orbax_restores_nested_config_and_codec(tmp_path, params, tiny_cfg, fixtures_dir):
  """convert_to_orbax -> load_orbax: the nested config (HuBERT inside) and params come back; generate's
  HiggsCodec reads the same checkpoint."""
  from dreamfoley_jax.audio.tokenizer import HiggsCodec

  src = tmp_path / "sd.safetensors"
  from safetensors.numpy import save_file
  with np.load(fixtures_dir / "higgs_audio_v2_tokenizer_tiny.npz") as f:
    save_file({k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}, str(src))
  d = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  out = conv.convert_to_orbax(src, tmp_path / "out", config=d["config_to_dict"])
  cfg, restored = conv.load_orbax(out)
  assert cfg == tiny_cfg
  for k, v in common.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(common.flatten(restored)[k]), v, err_msg=k)
  codec = HiggsCodec(out)
  assert codec.sample_rate == 24000 and codec.tok is not None
  with pytest.raises(common.ConversionError, match="not a converted"):
    from dreamfoley_jax.convert import eva_clip as conv_eva
    conv_eva.load_orbax(out)
