"""MS-CLAP 2023 Flax port (the model PAM prompts): converter + forward vs msclap's classes (golden), PAM's
windowing, the GPT-2 prompt tokenisation, the real checkpoint's layout."""
import json
import pathlib
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax.convert.common import ConversionError, flatten
from dreamfoley_jax.eval.embedders import msclap as M

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "make"))
TINY = M.MsClapConfig.tiny()


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  with np.load(pathlib.Path(fixtures_dir) / "msclap_tiny.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def converted(golden):
  sd = {k[len("param/"):]: v.astype(np.float32) for k, v in golden.items() if k.startswith("param/")}
  return M.convert_msclap(sd, TINY)


def test_converter_tree_matches_flax_init(converted):
  init = jax.eval_shape(lambda: M.MsClap(TINY).init(jax.random.key(0), jnp.zeros((1, TINY.window_samples)),
                                                     jnp.ones((2, 24), jnp.int32), jnp.ones((2, 24), jnp.int32)))
  want = {k: v.shape for k, v in flatten(flax.linen.meta.unbox(init)).items()}
  assert {k: v.shape for k, v in flatten(converted).items()} == want


def test_forward_and_pam_match_msclap_golden(golden, converted):
  from make_pam_golden import signal

  wins = M.pam_windows(signal(), TINY.window_samples)
  assert wins.shape == (2, 7 * 44100)
  model = M.MsClap(TINY)
  pam, aux = M.jitted_pam(TINY)(converted, wins, golden["input/ids"], golden["input/mask"])
  aux_a, a, t = aux, aux["audio"], aux["text"]
  # fp32 both sides; the STFT (rfft vs torchlibrosa's conv DFT) differs ~1e-6 of the peak power (as clap_tiny):
  # in dB that is tight within 60 dB of the peak, and loose in the spectral holes (42% of bins < -80 dB)
  lm, want = np.asarray(aux_a["logmel"][0, :100]), golden["inter/logmel"]
  loud = want > want.max() - 60
  assert loud.mean() > 0.25
  np.testing.assert_allclose(lm[loud], want[loud], atol=2e-3)
  np.testing.assert_allclose(10 ** (lm / 10), 10 ** (want / 10), atol=1e-5 * 10 ** (want.max() / 10))
  np.testing.assert_allclose(aux_a["embedding"], golden["inter/embedding"], atol=1e-5)
  np.testing.assert_allclose(a, golden["output/audio_embed"], atol=1e-4)
  np.testing.assert_allclose(t, golden["output/text_embed"], atol=1e-5)
  np.testing.assert_allclose(aux["similarity"], golden["output/similarity"], atol=1e-5)
  np.testing.assert_allclose(pam, golden["output/pam"], atol=1e-6)
  assert float(np.mean(pam)) == pytest.approx(float(golden["output/file_score"]), abs=1e-6)
  # the pooled token is the last non-'!' one: pooling the final slot instead moves the text embedding
  bad = np.asarray(model.apply(converted, golden["input/ids"] * 0 + 7, golden["input/mask"],
                               method=M.MsClap.encode_text)[0])
  assert np.abs(bad - golden["output/text_embed"]).max() > 1e-2


def test_pam_windows_follow_the_reference_dataset():
  n = 7
  x = np.arange(1, 18, dtype=np.float32)                   # 17 samples, windows of 7
  w = M.pam_windows(x, n)
  np.testing.assert_array_equal(w, [x[:7], x[7:14], x[-7:]])   # the tail window is the LAST 7 samples
  np.testing.assert_array_equal(M.pam_windows(x[:14], n), [x[:7], x[7:14]])
  np.testing.assert_array_equal(M.pam_windows(x[:3], n), [[1, 2, 3, 1, 2, 3, 1]])   # repeated, then cut
  np.testing.assert_array_equal(M.pam_windows(x[:7], n), [x[:7]])
  with pytest.raises(ValueError, match="empty"):
    M.pam_windows(np.zeros(0), n)


def _tiny_gpt2_tokenizer(path):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  # word-level over byte-level pre-tokens: GPT-2's pre-tokenisation without a merge table

  vocab = {w: i for i, w in enumerate(["!", "the", "Ġsound", "Ġis", "Ġclear", "Ġand", "Ġclean", ".", "Ġ",
                                       "Ġnoisy", "Ġwith", "Ġartifacts", "<|endoftext|>"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="!"))
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
  tok.add_special_tokens(["<|endoftext|>"])
  tok.save(str(path))
  return vocab


def test_prompt_tokenisation_as_msclap(tmp_path):
  vocab = _tiny_gpt2_tokenizer(tmp_path / "tokenizer.json")
  ids, mask = M.Gpt2Prompts(tmp_path, length=12)(list(M.PROMPTS))
  # 'the sound is clear and clean.' + ' <|endoftext|>': the space before the special token is its own 'Ġ'
  want0 = [vocab[w] for w in ("the", "Ġsound", "Ġis", "Ġclear", "Ġand", "Ġclean", ".", "Ġ", "<|endoftext|>")]
  assert ids[0].tolist() == want0 + [0] * 3 and mask[0].tolist() == [1] * 9 + [0] * 3
  assert ids[1, 5:8].tolist() == [vocab["Ġwith"], vocab["Ġartifacts"], vocab["."]]
  # the golden's prompt ids are these (the pipeline stage's test relies on it)
  from make_pam_golden import PAM_IDS

  assert M.Gpt2Prompts(tmp_path, length=24)(list(M.PROMPTS))[0].tolist() == PAM_IDS
  with pytest.raises(ValueError, match="over 4"):
    M.Gpt2Prompts(tmp_path, length=4)(["the sound is clear"])
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    M.Gpt2Prompts(tmp_path / "nope")


def _shape_only(shapes):
  """A TensorSource over a {key: shape} manifest: stride-0 zeros, no memory."""
  from dreamfoley_jax.convert.common import TensorSource

  return TensorSource.from_dict({k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()})


def test_real_checkpoint_layout(fixtures_dir):
  """CLAP_weights_2023.pth's keys (msclap 1.3.4 classes at PAM's config.yml) through the real converter."""
  real = json.loads((pathlib.Path(fixtures_dir) / "msclap_2023_shapes.json").read_text())
  shapes = {k: tuple(v) for k, v in real["shapes"].items()}
  tree = M.convert_msclap(_shape_only(shapes), M.MsClapConfig())
  init = jax.eval_shape(lambda: M.MsClap(M.MsClapConfig()).init(
      jax.random.key(0), jnp.zeros((1, 7 * 44100)), jnp.ones((2, 77), jnp.int32), jnp.ones((2, 77), jnp.int32)))
  want = {k: v.shape for k, v in flatten(flax.linen.meta.unbox(init)).items()}
  assert {k: v.shape for k, v in flatten(tree).items()} == want
  used = set(M.torch_shapes(M.MsClapConfig()))
  unused = sorted(k for k in shapes if k not in used and not M._UNUSED.search(k))
  assert unused == []                       # every stored tensor is either used or a known fixed buffer
  assert shapes["audio_encoder.projection.linear1.weight"] == (1024, 768)   # HTSAT-tiny's 768 features
  assert shapes["audio_encoder.base.htsat.logmel_extractor.melW"] == (513, 64)
  # the 32 kHz filterbank msclap's htsat config builds (the checkpoint's own is used when present)
  from dreamfoley_jax.eval.embedders import clap

  m = clap.mel_matrix(M.MsClapConfig().audio)
  assert m.shape == (513, 64) and m[:, -1].nonzero()[0].max() < 513 * 14000 / 16000 + 2
  shapes.pop("logit_scale")
  with pytest.raises(ConversionError, match=r"missing keys \(1\):\n    logit_scale"):
    M.convert_msclap(_shape_only(shapes), M.MsClapConfig())
