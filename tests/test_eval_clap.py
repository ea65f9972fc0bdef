"""LAION-CLAP Flax port: converter + forward vs the laion_clap golden, front end, errors, embedder."""
import dataclasses
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax.convert.common import ConversionError, flatten
from dreamfoley_jax.eval import embedders
from dreamfoley_jax.eval.embedders import clap as C
from dreamfoley_jax.eval.embedders import roberta_bpe as R
from dreamfoley_jax.eval.embedders.base import random_state_dict

import torch_embedders  # tests/: the PyTorch cross-check embedders ('clap_torch')

torch_embedders.register()

TINY = C.ClapConfig.tiny()
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  f = np.load(pathlib.Path(fixtures_dir) / "clap_tiny.npz")
  return {k: f[k] for k in f.files}


def _state_dict(g):
  return {k[len("param/"):]: v.astype(np.float32) if v.dtype == np.float16 else v
          for k, v in g.items() if k.startswith("param/")}


@pytest.fixture(scope="module")
def converted(golden):
  return C.convert_clap(_state_dict(golden), TINY)


def test_converter_tree_matches_flax_init(converted):
  model = C.Clap(TINY)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 15000)), jnp.ones((1, 77), jnp.int32),
                                           jnp.ones((1, 77), jnp.int32)))
  want = {k: v.shape for k, v in flatten(flax.linen.meta.unbox(init)).items()}
  got = {k: v.shape for k, v in flatten(converted).items()}
  assert got == want


def test_forward_matches_laion_clap_golden(golden, converted):
  model = C.Clap(TINY)
  wav = jnp.asarray(golden["input/waveform"].astype(np.float32))
  apply = jax.jit(model.apply)
  out, aux = apply(converted, wav, golden["input/input_ids"], golden["input/attention_mask"])
  # tolerances: fp32 on both sides; the STFT (rfft vs torchlibrosa's conv1d DFT) differs by ~1e-6
  # relative, i.e. <1e-5 dB on ~40 dB values (tests/fixtures/README.md, section clap_tiny)
  np.testing.assert_allclose(aux["logmel"][0], golden["inter/logmel"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(aux["swin_in"][0], golden["inter/swin_in"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(aux["embedding"], golden["inter/embedding"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(aux["pooler"], golden["inter/pooler"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(out["audio"], golden["output/audio_embed"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(out["text"], golden["output/text_embed"], atol=1e-5, rtol=0)
  # the padded caption's attention mask matters: ignoring it moves the embedding far beyond the tolerance
  unmasked, _ = apply(converted, wav, golden["input/input_ids"], np.ones((2, 77), np.int32))
  assert np.abs(unmasked["text"][1] - golden["output/text_embed"][1]).max() > 1e-2
  np.testing.assert_allclose(unmasked["text"][0], golden["output/text_embed"][0], atol=1e-5)  # full length


def test_front_end_pieces(golden):
  # torchlibrosa's melW (librosa.filters.mel, slaney) == ours
  np.testing.assert_allclose(C.mel_matrix(TINY.audio), golden["param/audio_branch.logmel_extractor.melW"],
                             rtol=1e-5, atol=1e-8)
  m = C.bicubic_matrix(512, 469)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)  # partition of unity
  assert m[0, 0] == 1.0 and m[-1, -1] == 1.0  # align_corners: end points kept
  np.testing.assert_array_equal(C.bicubic_matrix(64, 64), np.eye(64, dtype=np.float32))
  x = np.random.default_rng(0).normal(size=(1, 469, 32)).astype(np.float32)
  img = np.asarray(C.wav2img(jnp.asarray(x), TINY.audio))
  assert img.shape == (1, 128, 128)
  y = m @ x[0]  # (512, 32): chunk r of 128 frames sits at rows r*32:(r+1)*32, transposed
  np.testing.assert_allclose(img[0, 64:96, :], y[256:384].T, atol=1e-5)
  with pytest.raises(ValueError, match="513 frames"):
    C.wav2img(jnp.zeros((1, 513, 32)), TINY.audio)


def test_converter_table_matches_the_real_checkpoint_layout(fixtures_dir):
  """Every key/shape of CLAP(HTSAT-base, roberta-base) as laion_clap builds it (tests/fixtures/make)."""
  import json

  real = json.loads((pathlib.Path(fixtures_dir) / "clap_real_shapes.json").read_text())["shapes"]
  real = {k: tuple(v) for k, v in real.items()}
  C.check_keys(C.torch_shapes(C.ClapConfig()), real, source="clap_real_shapes.json",
               ignore=lambda k: bool(C._UNUSED.search(k)))
  buffers = ("relative_position_index", "attn_mask", "num_batches_tracked", "stft.conv_")
  unused = sorted(k for k in real if k not in C.torch_shapes(C.ClapConfig()) and not any(b in k for b in buffers))
  assert unused == sorted([f"audio_branch.{m}.{p}" for m in ("head", "tscam_conv") for p in ("weight", "bias")] +
                          [f"{t}_transform.sequential.{i}.{p}" for t in ("audio", "text") for i in (0, 3)
                           for p in ("weight", "bias")] + ["logit_scale_a", "logit_scale_t"])


def _save_torch(tmp_path, sd, name="music_speech_audioset_epoch_15_esc_89.98.pt", protocol=2, **extra):
  import torch

  p = tmp_path / name
  torch.save({"epoch": 15, **extra, "state_dict": {f"module.{k}": torch.tensor(np.asarray(v)) for k, v in sd.items()}},
             p, pickle_protocol=protocol)
  return p


def test_protocol4_checkpoint_is_refused_with_the_resave_command(tmp_path):
  """laion_clap's files are protocol-4 pickles with numpy scalars: never unpickled with code execution;
  the error names the file and the one-line re-save, whose output then loads."""
  pytest.importorskip("torch")
  import torch

  sd = {"audio_branch.norm.weight": np.arange(3, dtype=np.float32)}
  p = _save_torch(tmp_path, sd, "p4.pt", protocol=4, best_score=np.float64(0.8998))
  with pytest.raises(ConversionError, match=r"(?s)p4\.pt.*weights_only=True.*re-save") as ei:
    C.read_checkpoint(p)
  assert "torch.save(ck.get('state_dict', ck)" in str(ei.value)
  # The re-save the message prints (run here on our own, trusted file):
  ck = torch.load(p, map_location="cpu", weights_only=False)
  resaved = tmp_path / "resaved.pt"
  torch.save(ck.get("state_dict", ck), resaved)
  src = C.read_checkpoint(resaved)
  assert src.path == resaved and src.shapes() == {"module.audio_branch.norm.weight": (3,)}  # convert_clap strips module.
  np.testing.assert_array_equal(src.get("module.audio_branch.norm.weight"), np.arange(3, dtype=np.float32))


def test_converter_reads_laion_checkpoint_layout_and_names_bad_keys(tmp_path, golden, converted):
  pytest.importorskip("torch")
  sd = _state_dict(golden)
  sd["audio_branch.layers.0.blocks.1.attn_mask"] = np.zeros((16, 64, 64), np.float32)  # buffers: ignored
  sd["text_branch.embeddings.position_ids"] = np.arange(80)[None]
  got = C.convert_clap(C.TensorSource(_save_torch(tmp_path, sd)), TINY)
  jax.tree.map(np.testing.assert_array_equal, got, converted)
  del sd["audio_branch.layers.2.blocks.0.attn.qkv.bias"]
  sd["audio_branch.norm.weight"] = np.ones(7, np.float32)
  sd["text_branch.encoder.layer.9.output.dense.weight"] = np.ones((2, 2), np.float32)
  bad = _save_torch(tmp_path, sd, "bad.pt")
  with pytest.raises(ConversionError) as e:
    C.convert_clap(C.TensorSource(bad), TINY)
  msg = str(e.value)
  assert str(bad) in msg
  for k in ("audio_branch.layers.2.blocks.0.attn.qkv.bias", "audio_branch.norm.weight",
            "text_branch.encoder.layer.9.output.dense.weight"):
    assert k in msg
  assert "module." not in msg  # keys named as laion_clap's load_state_dict names them


def _tiny_bpe(d: pathlib.Path):
  from tokenizers import ByteLevelBPETokenizer

  corpus = ["a dog barks loudly in the park", "the engine of a car revs up", "rain falls on a tin roof; thunder!",
            "A man's voice speaks while birds chirp", "glass shatters, people shout 123"] * 10
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  d.mkdir(parents=True, exist_ok=True)
  bpe.save_model(str(d))
  return d


TEXTS = ["a dog barks", "Thunder and rain!! on the roof", " leading space", "x" * 10 + " long" * 90, "",
         "ünïcode ☃ text"]


def test_tokenizer_matches_transformers_roberta_call(tmp_path, monkeypatch):
  transformers = pytest.importorskip("transformers")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  d = _tiny_bpe(tmp_path / "bpe")
  ref_tok = transformers.RobertaTokenizer.from_pretrained(str(d))
  # laion_clap's CLAP_Module.tokenizer call
  ref = ref_tok(TEXTS, padding="max_length", truncation=True, max_length=77, return_tensors="np")
  ids, mask = R.RobertaBPE(d)(TEXTS)
  assert ids.shape == (6, 77) and ids[3, -1] == 2 and ids[4, :3].tolist() == [0, 2, 1]
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"])
  # as transformers 4.x's (pure-Python) RobertaTokenizer, which laion_clap ran: special tokens in the text
  # are split out and <mask> eats the space before it
  masked, _ = R.RobertaBPE(d)(["a <mask> b", "a<mask> b"])
  assert 4 in masked[0] and (masked[0] == masked[1]).all()
  j = tmp_path / "json"
  ref_tok.save_pretrained(str(j))  # writes tokenizer.json (how the HF roberta-base repo ships it)
  ids_j, mask_j = R.RobertaBPE(j / "tokenizer.json")(TEXTS)
  np.testing.assert_array_equal(ids_j, ref["input_ids"])
  np.testing.assert_array_equal(mask_j, ref["attention_mask"])


def test_missing_tokenizer_files_raise_a_clear_error(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(R.MissingTokenizerError, match=r"tokenizer\.json, or vocab\.json and merges\.txt.*nothing is"):
    R.RobertaBPE(tmp_path)
  with pytest.raises(R.MissingTokenizerError, match=r"roberta-base.*clap_tokenizer"):
    R.find_tokenizer(None, tmp_path / "ckpt.pt")
  with pytest.raises(R.MissingTokenizerError, match="does not exist"):
    R.RobertaBPE(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def tiny_ckpt_dir(tmp_path_factory):
  pytest.importorskip("torch")
  d = tmp_path_factory.mktemp("clap_weights")
  cfg = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, vocab_size=300))
  sd = random_state_dict(C.torch_shapes(cfg), seed=3)
  sd["logit_scale_a"] = np.float32(2.6)  # unused by the embeddings: accepted, ignored
  _save_torch(d, sd, protocol=2)  # a re-saved laion_clap checkpoint: {"epoch", "state_dict": {"module.*"}}
  _tiny_bpe(d / "roberta-base")
  return d, cfg


def test_embedder_from_checkpoint_on_disk(tiny_ckpt_dir):
  d, cfg = tiny_ckpt_dir
  e = embedders.build("clap", d, config=cfg, seed=0)
  assert e.native and e.needs_text and e.name == "clap"
  rng = np.random.default_rng(0)
  wav = rng.normal(size=(2, 12000)).astype(np.float32) * 0.1  # stereo 16 kHz, shorter than the clip
  a1 = e.audio_features(wav, 16000, None, "a.wav")["clap_audio"]
  a2 = e.audio_features(wav, 16000, None, "a.wav")["clap_audio"]
  tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
  b = e.audio_features(tone[None], 16000, None, "b.wav")["clap_audio"]
  assert a1.shape == (16,) and np.isclose(np.linalg.norm(a1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(a1, a2)
  assert np.abs(a1 - b).max() > 1e-3
  t1 = e.text_features("a dog barks")["clap_text"]
  t2 = e.text_features("rain on a tin roof")["clap_text"]
  assert t1.shape == (16,) and np.isclose(np.linalg.norm(t1), 1.0, atol=1e-5) and np.abs(t1 - t2).max() > 1e-3
  np.testing.assert_array_equal(t1, e.text_features("a dog barks")["clap_text"])
  fp = e.fingerprint()
  assert "music_speech_audioset_epoch_15_esc_89.98.pt" in fp and "flax" in fp
  assert embedders.build("clap", d, config=cfg, seed=1).fingerprint() != fp
  no_tok = embedders.build("clap", d, config=cfg, tokenizer=d / "elsewhere")  # audio needs no tokenizer
  with pytest.raises(R.MissingTokenizerError, match="elsewhere does not exist"):
    no_tok.text_features("a dog barks")


def test_registry():
  assert "clap" in embedders.NATIVE_FLAX and embedders.REGISTRY["clap"] is C.ClapEmbedder
  assert "clap_torch" in embedders.REGISTRY and "clap_torch" not in embedders.NATIVE_FLAX
  assert embedders.EXPECTED_FILES["clap"] == C.CHECKPOINT_FILES
  with pytest.raises(embedders.MissingWeightsError, match="music_speech_audioset_epoch_15_esc_89.98.pt"):
    embedders.build("clap", "/nonexistent/dir")


@pytest.mark.slow
def test_full_size_shapes():
  c = C.ClapConfig()
  model = C.Clap(c)
  args = (jnp.zeros((1, 480000)), jnp.ones((1, 77), jnp.int32), jnp.ones((1, 77), jnp.int32))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
  out, aux = jax.eval_shape(model.apply, flax.linen.meta.unbox(variables), *args)
  assert out["audio"].shape == (1, 512) and out["text"].shape == (1, 512)
  assert aux["logmel"].shape == (1, 1001, 64) and aux["swin_in"].shape == (1, 256, 256)
  assert aux["embedding"].shape == (1, 1024) and aux["pooler"].shape == (1, 768)
  want = {k: v.shape for k, v in flatten(flax.linen.meta.unbox(variables)).items()}
  flax_shape = {"linear": lambda s: s[::-1], "conv": lambda s: s[2:] + (s[1], s[0]), "raw": lambda s: s}
  layout = {"/".join(p): flax_shape[kind](s) for _, p, kind, s in C.torch_layout(c)}
  assert layout == want  # the converter table covers the full-size model exactly
  count = lambda prefix: sum(int(np.prod(v)) for k, v in want.items() if k.startswith(prefix))  # noqa: E731
  print({p: count(p) for p in ("params/audio_branch", "params/text_branch", "")})
  assert count("params/text_branch") == 124_645_632  # transformers RobertaModel('roberta-base'), with pooler
  # every param's logical axes divide evenly on the (data 2, fsdp 2, tensor 2) test mesh
  from dreamfoley_jax import sharding

  shardings = sharding.shardings_for(variables, sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  leaves, specs = jax.tree.leaves(flax.linen.meta.unbox(variables)), jax.tree.leaves(shardings)
  assert len(leaves) == len(specs) == len(want)
  for a, s in zip(leaves, specs):
    s.shard_shape(a.shape)  # raises if a dimension is not divisible
