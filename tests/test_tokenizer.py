"""Batched tokenizer: length buckets (one compile per bucket), exact per-item codes, chunked long encode."""
import json

import numpy as np
import pytest

from dreamfoley_jax.audio.higgs import HiggsTokenizerConfig
from dreamfoley_jax.audio.tokenizer import AudioTokenizer, check_clip
from dreamfoley_jax.convert.higgs import convert_state_dict


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  with np.load(fixtures_dir / "higgs_audio_v2_tokenizer_tiny.npz") as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def tok(fixtures_dir, golden):
  d = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())
  cfg = HiggsTokenizerConfig.from_hf_config(d["tiny_config"])
  params = convert_state_dict({k[6:]: v for k, v in golden.items() if k.startswith("param/")}, cfg)
  # one 1.28 s bucket; long clips: 10-frame chunks with 10 frames of context each side (30 frames fit)
  return AudioTokenizer(params, cfg, buckets_s=(1.28,), batch_size=4, long_chunk_s=0.4, long_context_s=0.4)


def test_bucketed_encode_matches_golden_and_compiles_once(tok, golden):
  clips = [golden["input/audio_n24000"][0, 0], golden["input/audio_n24480"][1, 0],
           golden["input/audio_n24000"][1, 0], golden["input/audio_n24480"][0, 0],
           np.zeros(24000, np.float32),                      # silence: valid, codes of silence
           golden["input/audio_n24480"][0, 0][:13000]]       # another length in the same bucket
  codes = tok.encode(clips)
  refs = [golden["output/codes_n24000"][0], golden["output/codes_n24480"][1],
          golden["output/codes_n24000"][1], golden["output/codes_n24480"][0]]
  for c, r in zip(codes, refs):  # padding inside the bucket changes nothing: exact golden codes
    np.testing.assert_array_equal(c, r)
  assert codes[4].shape == (8, 25) and codes[5].shape == (8, tok.cfg.num_frames(13000))
  assert all(c.dtype == np.int32 and c.min() >= 0 and c.max() < 1024 for c in codes)
  # six clips of four lengths, two batches: one executable
  assert tok.compiled_shapes()["encode"] == 1
  _, frames = tok.encode_batch([clips[0], clips[5]], tok.buckets[0])
  np.testing.assert_array_equal(frames, [25, tok.cfg.num_frames(13000)])


def test_bucketed_decode_matches_golden(tok, golden):
  codes = [golden["output/codes_n24000"][0], golden["output/codes_n24480"][1], golden["output/codes_n24000"][1]]
  audio = tok.decode(codes)
  for a, ref in zip(audio, [golden["output/audio_n24000"][0, 0], golden["output/audio_n24480"][1, 0],
                            golden["output/audio_n24000"][1, 0]]):
    assert a.shape == ref.shape
    assert np.abs(a - ref).max() <= 1e-5 * np.abs(ref).max()
  assert tok.compiled_shapes()["decode"] == 1
  with pytest.raises(ValueError, match="codes 0"):
    tok.decode([np.full((8, 3), 1024)])


def test_long_encode(tok, golden):
  x = golden["input/audio_n24000"][0, 0]
  short = x[:20 * 960]  # every window covers the whole clip -> identical to one encode
  np.testing.assert_array_equal(tok.encode_long(short), tok.encode([short])[0])
  long = np.concatenate([x, golden["input/audio_n24480"][1, 0]])  # 2.02 s > the 1.28 s bucket
  codes = tok.encode([long])[0]
  assert codes.shape == (8, tok.cfg.num_frames(long.size)) == (8, 51)
  assert codes.min() >= 0 and codes.max() < 1024
  assert tok.compiled_shapes()["encode"] == 1


def test_bad_input_is_rejected_before_xla(tok):
  cfg = tok.cfg
  with pytest.raises(ValueError, match="clip 1: empty"):
    tok.encode([np.zeros(2000, np.float32), np.zeros(0, np.float32)])
  with pytest.raises(ValueError, match="clip 0: 1 NaN"):
    tok.encode([np.array([0.0, np.nan] + [0.0] * 2000, np.float32)])
  with pytest.raises(ValueError, match="shorter than one code frame"):
    tok.encode([np.zeros(959, np.float32)])
  with pytest.raises(ValueError, match="mono 1-D"):
    tok.encode([np.zeros((2, 4000), np.float32)])
  assert check_clip(np.zeros(10), 0, cfg, pad_short=True).shape == (960,)
  hot = np.full(2000, 1.5, np.float32)
  assert check_clip(hot, 0, cfg).max() == 1.5  # default: passed through like the reference
  assert check_clip(hot, 0, cfg, on_clipping="clip").max() == 1.0
  with pytest.raises(ValueError, match="outside"):
    check_clip(hot, 0, cfg, on_clipping="error")
