"""Onset detection, onset F1 / offsets, spectral centroid on clips with known event times."""
import numpy as np
import pytest

from dreamfoley_jax.synthetic import onsets as sync
from dreamfoley_jax.synthetic import world as S


@pytest.fixture(scope="module")
def clips():
  return S.make_dataset(40, seed=11)


def test_match_and_f1_by_hand():
  ref = [1.0, 2.0, 3.0]
  m = sync.onset_metrics([1.03, 2.05, 2.99, 5.0], ref)
  assert (m["n_match"], m["n_est"], m["n_ref"]) == (2, 4, 3)
  assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)
  assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
  assert m["mean_abs_offset"] == pytest.approx(0.02) and m["mean_offset"] == pytest.approx(0.01)
  # One estimate cannot match two references; maximum matching beats greedy order here.
  assert sync.match_onsets([1.0, 1.05], [1.03, 0.97]) == [(0, 1), (1, 0)]
  assert sync.onset_metrics([], [])["f1"] == 1.0
  assert sync.onset_metrics([], [1.0])["f1"] == 0.0
  assert np.isnan(sync.onset_metrics([3.0], [1.0])["mean_abs_offset"])


def test_aggregate_pools_counts():
  a = sync.onset_metrics([1.0], [1.0])
  b = sync.onset_metrics([5.0], [2.0, 3.0])
  agg = sync.aggregate_onset_metrics([a, b])
  assert (agg["n_match"], agg["n_est"], agg["n_ref"]) == (1, 2, 3)
  assert agg["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_onsets_on_clean_clips(clips):
  per = [sync.onset_metrics(sync.detect_onsets(c["audio"]), c["event_times"]) for c in clips]
  agg = sync.aggregate_onset_metrics(per)
  assert agg["f1"] >= 0.99 and agg["n_ref"] > 60, agg
  assert agg["mean_abs_offset"] < 0.008, agg                   # a 5 ms hop grid
  assert abs(agg["mean_offset"]) < 0.008, agg


def test_shift_by_120ms_drops_f1_to_zero(clips):
  shift = int(0.12 * S.SAMPLE_RATE)
  per = []
  for c in clips:
    y = np.concatenate([np.zeros(shift, np.float32), c["audio"][:-shift]])
    per.append(sync.onset_metrics(sync.detect_onsets(y), c["event_times"]))
  agg = sync.aggregate_onset_metrics(per)
  assert agg["f1"] <= 0.02, agg
  # ...and the detector found the shifted events themselves.
  shifted = [sync.onset_metrics(sync.detect_onsets(np.concatenate(
      [np.zeros(shift, np.float32), c["audio"][:-shift]])), c["event_times"] + 0.12) for c in clips]
  assert sync.aggregate_onset_metrics(shifted)["recall"] >= 0.95


def test_silence_and_noise_have_no_onsets():
  rng = np.random.default_rng(0)
  assert len(sync.detect_onsets(np.zeros(48000, np.float32))) == 0
  assert len(sync.detect_onsets(rng.standard_normal(48000).astype(np.float32) * 1e-3)) == 0
  # A quiet noise floor under real events does not add onsets.
  c = S.make_clip(3)
  noisy = c["audio"] + rng.standard_normal(len(c["audio"])).astype(np.float32) * 3e-3
  m = sync.onset_metrics(sync.detect_onsets(noisy), c["event_times"])
  assert m["f1"] == 1.0, m


def test_spectral_centroid_of_tones():
  t = np.arange(24000) / 24000.0
  for f in (300.0, 1000.0, 4000.0):
    assert sync.spectral_centroid(np.sin(2 * np.pi * f * t).astype(np.float32)) == pytest.approx(f, rel=0.02)
  mix = np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 3000 * t)
  assert sync.spectral_centroid(mix.astype(np.float32)) == pytest.approx(2000.0, rel=0.02)
  assert np.isnan(sync.spectral_centroid(np.zeros(4800, np.float32)))


def test_event_centroids_follow_material():
  metal = S.make_clip(1, material="metal", duration=3.0)
  rubber = S.make_clip(1, material="rubber", duration=3.0)
  cm = sync.event_centroids(metal["audio"], metal["event_times"])
  cr = sync.event_centroids(rubber["audio"], rubber["event_times"])
  assert cm.shape == metal["event_times"].shape
  assert cm.min() > 4 * cr.max(), (cm, cr)


def test_reference_centroids_and_shift():
  clips = [S.make_clip(i, material=m, duration=3.0) for m in ("metal", "wood") for i in range(3)]
  ref = sync.reference_centroids([c["audio"] for c in clips], [c["event_times"] for c in clips],
                                 [c["material"] for c in clips])
  assert set(ref) == {"metal", "wood"} and ref["metal"] > 2 * ref["wood"]
  assert sync.centroid_shift_toward(ref["wood"], ref["wood"], ref["metal"]) == pytest.approx(0.0)
  assert sync.centroid_shift_toward(ref["metal"], ref["wood"], ref["metal"]) == pytest.approx(1.0)
  mid = float(np.sqrt(ref["wood"] * ref["metal"]))
  assert sync.centroid_shift_toward(mid, ref["wood"], ref["metal"]) == pytest.approx(0.5)
  assert np.isnan(sync.centroid_shift_toward(float("nan"), 1.0, 2.0))
