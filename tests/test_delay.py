"""Delay pattern against the Higgs-Audio-v2 processor golden, plus round-trip properties."""
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax.audio import delay


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  return dict(np.load(fixtures_dir / "delay_pattern.npz"))


@pytest.mark.parametrize("xp", [np, jnp])
@pytest.mark.parametrize("i", [0, 1])
def test_matches_golden(golden, i, xp):
  codes = golden[f"input/codes_{i}"]
  np.testing.assert_array_equal(np.asarray(delay.wrap_codes(xp.asarray(codes), xp=xp)), golden[f"output/wrapped_{i}"])
  d = np.asarray(delay.build_delay_pattern(xp.asarray(codes), xp=xp))
  np.testing.assert_array_equal(d, golden[f"output/delayed_{i}"])
  np.testing.assert_array_equal(np.asarray(delay.revert_delay_pattern(xp.asarray(d), xp=xp)).T,
                                golden[f"output/reverted_full_{i}"])
  np.testing.assert_array_equal(np.asarray(delay.codes_from_delayed(xp.asarray(d), xp=xp)), golden[f"output/reverted_{i}"])


def test_batch_matches_golden(golden):
  ids, mask = delay.batch_delayed([golden["input/codes_0"], golden["input/codes_1"]])
  np.testing.assert_array_equal(ids, golden["output/audio_input_ids"])
  np.testing.assert_array_equal(mask, golden["output/audio_input_ids_mask"])


def test_vacant_mask_marks_exactly_the_staircase(golden):
  d = golden["output/delayed_1"]
  vac = delay.vacant_mask(8, 12)
  assert vac.shape == d.shape
  # Vacant cells are the BOS before each row's own BOS and the EOS after each row's own EOS.
  wrapped = golden["output/wrapped_1"]
  for k in range(8):
    row = d[k, ~vac[k]]
    np.testing.assert_array_equal(row, wrapped[k])
  assert vac.sum() == 8 * 7  # K*(K-1) filler cells in total


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_random(seed):
  rng = np.random.default_rng(seed)
  K = int(rng.integers(1, 10))
  B = int(rng.integers(1, 4))
  T = int(rng.integers(1, 40))
  wrap = bool(rng.integers(0, 2))
  codes = rng.integers(0, 1024, size=(B, K, T))
  for xp in (np, jnp):
    d = delay.build_delay_pattern(xp.asarray(codes), wrap=wrap, xp=xp)
    assert d.shape == (B, K, delay.delayed_length(T, K, wrap))
    assert delay.num_frames_from_delayed(d.shape[-1], K, wrap) == T
    np.testing.assert_array_equal(np.asarray(delay.codes_from_delayed(d, wrap=wrap, xp=xp)), codes)
    # Each time step j of the delayed pattern holds codebook k's frame j-k-(wrap).
    j = int(rng.integers(0, d.shape[-1]))
    for k in range(K):
      t = j - k - (1 if wrap else 0)
      if 0 <= t < T:
        assert int(d[0, k, j]) == codes[0, k, t]


def test_batch_lengths_pad_with_eos():
  rng = np.random.default_rng(0)
  lens = [3, 9, 5]
  ids, mask = delay.batch_delayed([rng.integers(0, 1024, (8, t)) for t in lens])
  assert ids.shape == (3, 9 + 9, 8)
  np.testing.assert_array_equal(mask.sum(1), [t + 9 for t in lens])
  assert (ids[~mask] == delay.EOS).all()
