"""The all-Flax DeSync embedder (video + audio extractors + head) with tiny random weights."""
import numpy as np
import pytest

from dreamfoley_jax.eval import embedders, metrics
from dreamfoley_jax.eval.embedders import synchformer


@pytest.fixture(scope="module")
def emb():
  return synchformer.SynchformerEmbedder(config=synchformer.DeSyncConfig.tiny(), seed=0)


def test_native_desync_shapes_windows_and_determinism(emb):
  rng = np.random.default_rng(0)
  wav = rng.normal(size=(2, 16000 * 8)) * 0.1
  a = emb.audio_features(wav, 16000, 8.0, "clip.wav")["sync_audio"]
  frames = rng.uniform(-1, 1, size=(200, 3, 224, 224)).astype(np.float32)  # 8 s at 25 fps
  v = emb.video_features({"sync_frames": frames}, "clip.mp4")["sync_video"]
  assert a.shape == (24, 6, 64) and v.shape == (24, 8, 64)  # 24 segments; Ta 6, Tv 8 tokens
  lg = emb.sync_logits(v, a)
  assert lg.shape == (2, 21) and np.isfinite(lg).all()
  # The windows really are the first and the last 14 segments.
  lg_first = emb.sync_logits(v[:14], a[:14])
  np.testing.assert_allclose(lg[0], lg_first[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lg[1], emb.sync_logits(v[-14:], a[-14:])[0], rtol=1e-5, atol=1e-5)
  # DeSync is the mean |offset| of the two windows' argmax classes on av-benchmark's 21-class grid
  np.testing.assert_allclose(metrics.DESYNC_GRID_S, np.round(np.arange(-2.0, 2.01, 0.2), 6), atol=1e-9)
  last = emb.sync_logits(v[-14:], a[-14:])[0]
  d = metrics.desync_from_logits(lg[None])
  per_window = [abs(metrics.DESYNC_GRID_S[int(np.argmax(x))]) for x in (lg_first[0], last)]
  assert d == pytest.approx(np.mean(per_window))   # the windows computed on their own give the clip's DeSync
  # Same seed, same numbers.
  again = synchformer.SynchformerEmbedder(config=synchformer.DeSyncConfig.tiny(), seed=0)
  np.testing.assert_array_equal(again.audio_features(wav, 16000, 8.0, "clip.wav")["sync_audio"], a)


def test_native_desync_errors(emb, tmp_path):
  with pytest.raises(embedders.AudioTooShortError, match="short.wav"):
    emb.audio_features(np.zeros((1, 16000 * 7)), 16000, 8.0, "short.wav")
  with pytest.raises(embedders.MissingWeightsError, match="synchformer_state_dict.pth"):
    synchformer.SynchformerEmbedder(tmp_path)
  assert embedders.REGISTRY["synchformer"] is synchformer.SynchformerEmbedder
  assert "synchformer" in embedders.NATIVE_FLAX
