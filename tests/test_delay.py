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


@pytest.mark.parametrize("seed", range(6))
def test_pattern_object_round_trips(seed):
  """DelayPattern alone: build -> revert is the identity; the sampler's time-major layout of T frames agrees
  with build() on every known cell, marks exactly build()'s code cells as to-draw and vacant() as the
  staircase, and frames() of the filled buffer gives the codes back, zero past each clip's length."""
  rng = np.random.default_rng(100 + seed)
  K, cb = int(rng.integers(1, 9)), int(rng.integers(4, 1024))
  pat = delay.DelayPattern(K, bos=cb, eos=cb + 1, wrap=bool(seed % 2) or K > 4)
  lengths = rng.integers(1, 12, size=3)
  T = int(lengths.max())
  codes = rng.integers(0, cb, size=(3, K, T))
  for xp in (np, jnp):
    d = np.asarray(pat.build(xp.asarray(codes), xp=xp))
    assert d.shape == (3, K, pat.length(T)) and pat.num_frames(d.shape[-1]) == T
    np.testing.assert_array_equal(np.asarray(pat.revert(xp.asarray(d), xp=xp, codebook_size=cb)), codes)
  if not pat.wrap:
    with pytest.raises(ValueError, match="wrapped"):
      pat.layout(lengths, pat.length(T))
    return
  L = pat.length(T)
  for xp in (np, jnp):
    ids, known, vacant = (np.asarray(a) for a in pat.layout(xp.asarray(lengths), L, xp=xp))
    filled = ids.copy()
    for i, t in enumerate(lengths):
      want = pat.build(codes[i, :, :t]).T                                   # (t+K+1, K) time-major
      n = want.shape[0]
      np.testing.assert_array_equal(known[i, :n], np.isin(want, (cb, cb + 1)))
      np.testing.assert_array_equal(ids[i, :n][known[i, :n]], want[known[i, :n]])
      np.testing.assert_array_equal(vacant[i, :n], pat.vacant(t).T)
      assert known[i, n:].all() and (ids[i, n:] == cb + 1).all() and vacant[i, n:].all()
      filled[i, :n] = want
    got = np.asarray(pat.frames(xp.asarray(filled), xp.asarray(lengths), T, cb, xp=xp))
    np.testing.assert_array_equal(got, np.where(np.arange(T) < lengths[:, None, None], codes, 0))
    # A prefix of C frames is copied in and counted as known.
    C = int(min(lengths.min(), 3))
    pids, pknown, _ = (np.asarray(a) for a in pat.layout(xp.asarray(lengths), L, xp.asarray(codes[..., :C]), xp=xp))
    for i in range(3):
      for k in range(K):
        np.testing.assert_array_equal(pids[i, 1 + k:1 + k + C, k], codes[i, k, :C])
        assert pknown[i, 1 + k:1 + k + C, k].all() and not pknown[i, 1 + k + C:1 + k + lengths[i], k].any()
  ids_b, mask_b = pat.batch([codes[i, :, :t] for i, t in enumerate(lengths)])
  for i, t in enumerate(lengths):
    np.testing.assert_array_equal(ids_b[i, :t + K + 1], pat.build(codes[i, :, :t]).T)
    assert mask_b[i].sum() == t + K + 1
