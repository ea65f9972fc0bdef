"""The weights-free codec: interface, exact STFT round trip, and that decoded audio keeps the events'
timing (onset F1 within +-40 ms) and each material's timbre (spectral centroid)."""
import os

import numpy as np
import pytest

from dreamfoley_jax.synthetic import codec as sc
from dreamfoley_jax.synthetic import onsets as sync
from dreamfoley_jax.synthetic import world as S

CFG = sc.CodecConfig(codebook_size=64, max_fit_frames=4096, kmeans_iters=6)


@pytest.fixture(scope="module")
def codec():
  return sc.SyntheticCodec.fit((c["audio"] for c in S.iter_dataset(60, seed=0)), CFG)


@pytest.fixture(scope="module")
def heldout():
  # Two clips per material, seeds disjoint from the fit set.
  return [S.make_clip((777, i), material=m, duration=3.0 + i) for m in S.MATERIALS for i in range(2)]


def test_interface(codec):
  assert (codec.sample_rate, codec.frame_rate, codec.hop_length) == (24000, 25.0, 960)
  assert (codec.num_codebooks, codec.codebook_size) == (8, 64)
  assert (codec.bos_id, codec.eos_id, codec.vocab_size) == (64, 65, 66)


def test_encode_shapes_batch_and_padding(codec, heldout):
  a = heldout[0]["audio"]
  codes = codec.encode(a)
  assert codes.shape == (8, len(a) // 960) and codes.dtype == np.int32
  assert codes.min() >= 0 and codes.max() < 64
  batch = codec.encode(np.stack([a, a[::-1].copy()]))
  assert batch.shape == (2, 8, len(a) // 960)
  np.testing.assert_array_equal(batch[0], codes)
  assert codec.encode(a[:1000]).shape == (8, 2)                 # partial last frame is padded
  y = codec.decode(codes)
  assert y.shape == a.shape and y.dtype == np.float32
  assert codec.decode(batch).shape == (2, len(a))
  np.testing.assert_allclose(codec.decode(batch)[0], y, atol=1e-5)


def test_decode_rejects_bad_codes(codec):
  with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
    codec.decode(np.full((8, 5), 64))
  # More levels than the codec has, or no level axis at all, is an error; a prefix of the levels is not
  # (Table 4's 1- and 4-codebook models decode their first k levels: test_decode_first_k_levels).
  for bad in ((9, 5), (5,)):
    with pytest.raises(ValueError, match=r"shape \(\.\.\., k, T\) with 1 <= k <= 8"):
      codec.decode(np.zeros(bad, np.int64))


def test_decode_first_k_levels(codec, heldout):
  """Table 4's 1- and 4-codebook models: the first k levels decode alone, as the RVQ's coarser prefix."""
  codes = codec.encode(heldout[0]["audio"])
  full = codec.decode(codes)
  for k in (1, 4):
    want = sum(codec.codebooks[j][codes[j]] for j in range(k))
    np.testing.assert_allclose(codec.dequantize(codes[:k]), want, rtol=1e-6)
    a = codec.decode(codes[:k])
    assert a.shape == full.shape and np.isfinite(a).all() and np.abs(a - full).max() > 1e-4
  np.testing.assert_array_equal(codec.decode(codes[:8]), full)


def test_stft_istft_roundtrip():
  x = np.random.default_rng(0).standard_normal((2, 960 * 7)).astype(np.float32)
  y = sc.istft(sc.stft(x, 960, 240), 960, 240)
  np.testing.assert_allclose(y, x, atol=2e-5)


def test_residual_stages_reduce_error(codec, heldout):
  # Greedy RVQ: each stage may not strictly help every clip, but the stages together must. The ratio
  # last/first stage error is averaged over the held-out clips (single clips scatter 0.47-0.75).
  ratios = []
  for clip in heldout:
    f = codec.features(clip["audio"])
    codes = codec.encode_features(f)
    errs = []
    for k in range(1, 9):
      approx = sum(codec.codebooks[j][codes[j]] for j in range(k))
      errs.append(float(np.sqrt(((approx - f) ** 2).mean())))
    assert all(b <= a * 1.05 for a, b in zip(errs, errs[1:])), errs
    ratios.append(errs[-1] / errs[0])
  assert np.mean(ratios) < 0.6, ratios


def test_onsets_land_in_their_own_code_frame(codec):
  """An impact at a frame boundary changes the codes of its own frame, not the frame before."""
  for seed in range(6):
    c = S.make_clip(seed)
    codes = codec.encode(c["audio"])
    for f in c["event_frames"]:
      if f >= 2 and (c["event_frames"] < f).sum() == 0:       # the first impact: silence before it
        assert np.array_equal(codes[:, f - 1], codes[:, f - 2]), (seed, f)
        assert not np.array_equal(codes[:, f], codes[:, f - 1]), (seed, f)


def test_decoded_onsets_match_events(codec, heldout):
  per = []
  for c in heldout:
    y = codec.decode(codec.encode(c["audio"]))
    per.append(sync.onset_metrics(sync.detect_onsets(y), c["event_times"]))
  agg = sync.aggregate_onset_metrics(per)
  assert agg["f1"] >= 0.9, agg
  assert agg["mean_abs_offset"] <= 0.015, agg


def test_decoded_centroid_per_material(codec, heldout):
  orig, dec = {}, {}
  for c in heldout:
    y = codec.decode(codec.encode(c["audio"]))
    orig.setdefault(c["material"], []).append(sync.spectral_centroid(c["audio"]))
    dec.setdefault(c["material"], []).append(sync.spectral_centroid(y))
  o = {m: np.mean(v) for m, v in orig.items()}
  d = {m: np.mean(v) for m, v in dec.items()}
  assert d["rubber"] < d["wood"] < d["metal"] < d["glass"], d
  for m in S.MATERIALS:
    assert abs(d[m] / o[m] - 1) < 0.2, (m, o[m], d[m])


def test_save_load_roundtrip(codec, heldout, tmp_path):
  path = tmp_path / "sub" / "codec.npz"
  codec.save(str(path))
  assert os.listdir(tmp_path / "sub") == ["codec.npz"]           # the temp file was renamed away
  back = sc.SyntheticCodec.load(str(path))
  assert back.cfg == codec.cfg
  a = heldout[2]["audio"]
  np.testing.assert_array_equal(back.encode(a), codec.encode(a))
  bad = tmp_path / "bad.npz"
  np.savez(bad, x=np.zeros(3))
  with pytest.raises(ValueError, match="not a synthetic codec file"):
    sc.SyntheticCodec.load(str(bad))


def test_fit_is_deterministic():
  audios = [c["audio"] for c in S.make_dataset(8, seed=4)]
  cfg = sc.CodecConfig(codebook_size=16, max_fit_frames=600, kmeans_iters=3, num_codebooks=2)
  a = sc.SyntheticCodec.fit(audios, cfg)
  b = sc.SyntheticCodec.fit(audios, cfg)
  np.testing.assert_array_equal(a.codebooks, b.codebooks)
  with pytest.raises(ValueError, match="codebooks have shape"):
    sc.SyntheticCodec(cfg, a.codebooks[:1])
