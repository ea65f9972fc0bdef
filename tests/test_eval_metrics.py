"""Metric math against scipy and hand-computed cases."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special

from dreamfoley_jax.eval import metrics as M


def _ref_fd(a, b):
  """pytorch-fid / av-benchmark formula written out with scipy's sqrtm."""
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  cm = scipy.linalg.sqrtm(s1 @ s2)
  cm = cm[0] if isinstance(cm, tuple) else cm
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cm).real)


def test_statistics_match_numpy_cov():
  x = np.random.default_rng(0).normal(size=(7, 3))
  mu, s = M.embedding_statistics(x)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(s, np.cov(x, rowvar=False), rtol=1e-12)


def test_fd_hand_computed_1d_and_diagonal():
  # 1-D Gaussians: (m1-m2)^2 + (s1 - s2)^2 with s the std.
  a = np.array([[0.0], [2.0]])  # mean 1, var 2
  b = np.array([[3.0], [5.0], [7.0]])  # mean 5, var 4
  want = (1 - 5) ** 2 + (math.sqrt(2) - 2) ** 2
  assert M.frechet_distance(a, b) == pytest.approx(want, rel=1e-12)
  assert M.frechet_distance(a, b, method="eig") == pytest.approx(want, rel=1e-12)
  # Diagonal covariances: sum over dims of the 1-D formula.
  mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 1.0])
  s1, s2 = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
  want = 1.0 + (2 - 1) ** 2 + (1 - 3) ** 2
  assert M.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-12)


def test_fd_identical_sets_is_zero():
  x = np.random.default_rng(1).normal(size=(50, 8))
  assert abs(M.frechet_distance(x, x)) < 1e-8
  assert abs(M.frechet_distance(x, x, method="eig")) < 1e-8


@pytest.mark.parametrize("n,d", [(200, 16), (30, 64), (10, 128)])  # includes N < D (rank-deficient)
def test_fd_matches_scipy_and_eig(n, d):
  r = np.random.default_rng(n + d)
  a = r.normal(size=(n, d))
  b = r.normal(size=(n + 3, d)) * 1.3 + 0.2
  got = M.frechet_distance(a, b)
  got_eig = M.frechet_distance(a, b, method="eig")
  assert np.isfinite(got) and np.isfinite(got_eig)
  assert got == pytest.approx(got_eig, rel=1e-6)
  if n > d:
    assert got == pytest.approx(_ref_fd(a, b), rel=1e-9)
  else:
    # scipy's sqrtm of a rank-deficient product carries ~1e-6 noise; the eig form is exact.
    assert got_eig == pytest.approx(_ref_fd(a, b), rel=1e-5)


def test_fd_rank_one_exact():
  # N=2 per set: each covariance is rank one, u u^T and v v^T; tr sqrt(S1 S2) = |u.v|.
  a = np.array([[1.0, 0.0, 2.0], [-1.0, 0.0, 0.0]])
  b = np.array([[0.0, 1.0, 1.0], [2.0, 1.0, -1.0]])
  u = (a[0] - a[1]) / math.sqrt(2)
  v = (b[0] - b[1]) / math.sqrt(2)
  want = ((a.mean(0) - b.mean(0)) ** 2).sum() + u @ u + v @ v - 2 * abs(u @ v)
  assert M.frechet_distance(a, b, method="eig") == pytest.approx(want, abs=1e-10)
  assert M.frechet_distance(a, b) == pytest.approx(want, abs=1e-5)


def test_fd_jnp_twin():
  r = np.random.default_rng(3)
  a, b = r.normal(size=(40, 12)), r.normal(size=(35, 12)) + 0.5
  got = float(M.frechet_distance_jnp(a.astype(np.float32), b.astype(np.float32)))
  assert got == pytest.approx(M.frechet_distance(a, b), rel=1e-4)


def test_fd_errors_name_the_problem():
  with pytest.raises(ValueError, match="at least 2"):
    M.frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match=r"\(N, D\)"):
    M.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_kl_matches_rel_entr():
  r = np.random.default_rng(4)
  gt, gen = r.normal(size=(6, 527)) * 3, r.normal(size=(6, 527)) * 3
  p, q = scipy.special.softmax(gt, axis=1), scipy.special.softmax(gen, axis=1)
  want = scipy.special.rel_entr(p, q).sum(axis=1).mean()
  assert M.kl_softmax(gt, gen) == pytest.approx(want, rel=1e-10)
  assert M.kl_softmax(gt, gt) == pytest.approx(0.0, abs=1e-12)
  # Direction: KL(gt || gen), not the reverse.
  assert M.kl_softmax(gt, gen) != pytest.approx(scipy.special.rel_entr(q, p).sum(1).mean(), rel=1e-3)


def test_kl_matches_torch_kl_div_call_of_the_reference():
  torch = pytest.importorskip("torch")
  r = np.random.default_rng(5)
  gt, gen = r.normal(size=(5, 527)), r.normal(size=(5, 527))
  ref = torch.nn.functional.kl_div(torch.tensor(gen).log_softmax(1), torch.tensor(gt).log_softmax(1),
                                   reduction="sum", log_target=True) / 5
  assert M.kl_softmax(gt, gen) == pytest.approx(float(ref), rel=1e-10)
  ref_sig = torch.nn.functional.kl_div(torch.nn.functional.logsigmoid(torch.tensor(gen)),
                                       torch.nn.functional.logsigmoid(torch.tensor(gt)),
                                       reduction="sum", log_target=True) / 5
  assert M.kl_sigmoid(gt, gen) == pytest.approx(float(ref_sig), rel=1e-10)


def _is_reference_transcription(x, splits=10, seed=2020):
  """av-benchmark compute_isc, transcribed with scipy."""
  n = len(x)
  x = x[np.random.RandomState(seed).permutation(n)]
  p = scipy.special.softmax(x, axis=1)
  out = []
  for i in range(splits):
    c = p[i * n // splits:(i + 1) * n // splits]
    q = c.mean(0, keepdims=True)
    out.append(np.exp(scipy.special.rel_entr(c, q).sum(1).mean()))
  return np.mean(out), np.std(out)


def test_inception_score_reference_and_hand_cases():
  r = np.random.default_rng(6)
  x = r.normal(size=(103, 527)) * 4  # 103: uneven splits exercise i*N//splits
  m, s = M.inception_score(x)
  rm, rs = _is_reference_transcription(x)
  assert m == pytest.approx(rm, rel=1e-10) and s == pytest.approx(rs, rel=1e-10)
  # Shuffle matters: a different seed gives different splits (same pooled data).
  assert M.inception_score(x, seed=0)[0] != pytest.approx(m, rel=1e-6)
  # Hand case: confident one-hot predictions spread evenly over K classes -> IS = K, std 0.
  k = 5
  onehot = np.full((50, k), -1e4)
  onehot[np.arange(50), np.arange(50) % k] = 0.0
  m, s = M.inception_score(onehot, splits=10, shuffle=False)
  assert m == pytest.approx(k, rel=1e-9) and s == pytest.approx(0.0, abs=1e-9)
  # Uniform predictions -> IS = 1.
  assert M.inception_score(np.zeros((20, 7)))[0] == pytest.approx(1.0)


def test_mean_cosine():
  a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
  b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
  assert M.mean_cosine(a, b) == pytest.approx((1 - 1 + 0) / 3)


def test_desync_segment_counts_and_windows():
  # 8 s VGGSound clips: 24 segments of 0.64 s every 0.32 s, audio (16 kHz) and video (25 fps) agree.
  assert M.sync_audio_segments(8.0) == 24 and M.sync_video_segments(8.0) == 24
  # 10 s Kling-Eval clips: 30.
  assert M.sync_audio_segments(10.0) == 30 and M.sync_video_segments(10.0) == 30
  # 4.8 s is exactly one window of 14 segments.
  assert M.sync_audio_segments(4.8) == 14 and M.sync_video_segments(4.8) == 14
  assert M.desync_windows(24) == [slice(0, 14), slice(10, 24)]
  assert M.desync_windows(14) == [slice(0, 14), slice(0, 14)]
  with pytest.raises(ValueError, match="at least 14"):
    M.desync_windows(13)
  assert len(M.DESYNC_GRID_S) == 21 and M.DESYNC_GRID_S[0] == -2.0 and M.DESYNC_GRID_S[10] == 0.0
  assert M.DESYNC_GRID_S[11] == pytest.approx(0.2)


def test_desync_from_logits_hand_case():
  lg = np.zeros((2, 2, 21))
  lg[0, 0, 10] = 1  # 0.0 s
  lg[0, 1, 0] = 1  # -2.0 s
  lg[1, 0, 13] = 1  # +0.6 s
  lg[1, 1, 9] = 1  # -0.2 s
  assert M.desync_from_logits(lg) == pytest.approx((0 + 2 + 0.6 + 0.2) / 4)


def test_combined_kl_and_table():
  m = {"KL-PANNS-softmax": 1.0, "KL-PASST-softmax": 2.0, "FD-PASST": 50.123, "IB-Score": 0.3312,
       "DeSync": 0.4567}
  assert M.combined_kl(m) == 1.5
  assert M.combined_kl({"KL-PANNS-softmax": 1.0}) is None
  m["KL"] = 1.5
  t = M.markdown_table({"ours": m}, ib_scale=100)
  head, _, row = t.splitlines()
  assert head.index("FD_PaSST") < head.index("FD_PANNs") < head.index("FD_VGG") < head.index("KL")
  assert head.index("KL_PANNs") < head.index("KL_PaSST") < head.index("KL ") < head.index("IS")
  assert head.index("IS") < head.index("IB-score") < head.index("DeSync") < head.index("CLAP")
  assert row == "| ours | 50.12 | - | - | 1.00 | 2.00 | 1.50 | - | 33.12 | 0.457 | - |"
  assert M.markdown_table({"ours": m}) == t                                  # x100 is the default
  assert "IB-score (x1) ↑" in M.markdown_table({"ours": m}, ib_scale=1).splitlines()[0]
