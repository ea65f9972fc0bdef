"""Front ends against librosa, torch.stft and loop-by-loop transcriptions of the references."""
import math
from fractions import Fraction

import numpy as np
import pytest

from dreamfoley_jax.eval import frontends as F

librosa = pytest.importorskip("librosa")


def _noise(n, seed=0):
  return np.random.default_rng(seed).normal(size=n) * 0.1


def _direct_resample(x, orig, new, j, width=6, rolloff=0.99):
  """y[j] = sum_i x[i] * w(t) sinc(t), t = base*(i/orig - j/new); torchaudio's interpolation formula."""
  g = math.gcd(orig, new)
  o, n = orig // g, new // g
  base = min(o, n) * rolloff
  i = np.arange(len(x))
  t = np.clip((i / o - j / n) * base, -width, width)
  win = np.cos(t * np.pi / width / 2) ** 2
  return float((x * win * np.sinc(t) * base / o).sum())


@pytest.mark.parametrize("orig,new", [(48000, 16000), (44100, 16000), (16000, 32000), (24000, 48000)])
def test_resample_matches_the_interpolation_formula(orig, new):
  x = _noise(orig // 10, seed=orig)
  y = F.resample(x, orig, new)
  assert y.shape == (math.ceil(len(x) * new / orig),)
  for j in [0, 1, 7, len(y) // 2, len(y) - 1]:
    assert y[j] == pytest.approx(_direct_resample(x, orig, new, j), abs=1e-12)


def test_resample_preserves_in_band_sine_and_batches():
  t = np.arange(48000) / 48000
  x = np.sin(2 * np.pi * 440 * t)
  y = F.resample(np.stack([x, 2 * x]), 48000, 16000)
  want = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
  np.testing.assert_allclose(y[0, 200:-200], want[200:-200], atol=2e-3)
  np.testing.assert_allclose(y[1], 2 * y[0])
  assert F.resample(x, 16000, 16000) is not None and np.array_equal(F.resample(x, 16000, 16000), x)


def test_prepare_audio_rule():
  left, right = np.full(32000, 1.0) + _noise(32000), np.full(32000, 3.0)
  y = F.prepare_audio(np.stack([left, right]), 16000, 16000, 1.5)
  assert y.shape == (24000,)  # truncated to 1.5 s
  np.testing.assert_allclose(y, ((left + right) / 2 - ((left + right) / 2).mean())[:24000])
  # Shorter than the duration: never padded.
  assert F.prepare_audio(np.ones((1, 8000)), 16000, 16000, 8.0).shape == (8000,)


def test_stft_power_matches_torch_stft():
  torch = pytest.importorskip("torch")
  x = _noise(5000, seed=1)
  got = F.stft_power(x, n_fft=1024, hop=160, win_length=400)
  ref = torch.stft(torch.tensor(x), 1024, hop_length=160, win_length=400, window=torch.hann_window(400, dtype=torch.float64),
                   center=True, pad_mode="reflect", return_complex=True).abs().pow(2).numpy().T
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_filterbanks_match_librosa():
  np.testing.assert_allclose(F.mel_filterbank(16000, 512, 64, 50, 8000, htk=False, slaney_norm=True),
                             librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000).T,
                             rtol=1e-5, atol=1e-9)
  # torchaudio melscale_fbanks(htk, norm=None) == librosa htk=True, norm=None on the same bin grid.
  np.testing.assert_allclose(F.mel_filterbank(16000, 1024, 128, 0, 8000, htk=True, slaney_norm=False),
                             librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0, fmax=8000,
                                                 htk=True, norm=None).T, rtol=1e-5, atol=1e-9)


def test_panns_logmel_matches_librosa():
  x = _noise(16000, seed=2)
  got = F.panns_logmel(x)
  mel = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=512, hop_length=160, win_length=512,
                                       window="hann", center=True, pad_mode="reflect", power=2.0,
                                       n_mels=64, fmin=50, fmax=8000)
  ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T
  assert got.shape == (101, 64)
  np.testing.assert_allclose(got, ref, atol=2e-4)


def _vggish_reference(x):
  """mel_features.waveform_to_examples, frame by frame."""
  win, hop, nfft = 400, 160, 512
  n = 1 + (len(x) - win) // hop
  w = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))
  spec = np.stack([np.abs(np.fft.rfft(x[i * hop:i * hop + win] * w, nfft)) for i in range(n)])
  hz2mel = lambda f: 1127.0 * np.log(1 + f / 700.0)  # noqa: E731
  bins = hz2mel(np.linspace(0, 8000, 257))
  edges = np.linspace(hz2mel(125.0), hz2mel(7500.0), 66)
  m = np.empty((257, 64))
  for i in range(64):
    lo, c, hi = edges[i:i + 3]
    m[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
  m[0] = 0
  logmel = np.log(spec @ m + 0.01)
  k = 1 + (len(logmel) - 96) // 96
  return np.stack([logmel[i * 96:(i + 1) * 96] for i in range(k)])


def test_vggish_examples_match_transcription_and_patch_counts():
  x = _noise(16000 * 3 + 123, seed=3)
  got = F.vggish_examples(x)
  np.testing.assert_allclose(got, _vggish_reference(x), rtol=1e-10)
  assert F.vggish_examples(np.zeros(128000)).shape == (8, 96, 64)  # 8 s -> 8 patches
  assert F.vggish_examples(np.zeros(160000)).shape == (10, 96, 64)  # 10 s -> 10 patches
  assert F.vggish_examples(np.zeros(15000)).shape == (0, 96, 64)  # < 0.96 s -> none


def _kaldi_reference(x, sr=16000, mels=128):
  """torchaudio.compliance.kaldi.fbank's steps, one frame at a time."""
  win, shift, nfft = 400, 160, 512
  w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))
  mel = lambda f: 1127.0 * np.log(1 + f / 700.0)  # noqa: E731
  lo, hi = mel(20.0), mel(sr / 2)
  delta = (hi - lo) / (mels + 1)
  out = []
  for s in range(0, len(x) - win + 1, shift):
    f = x[s:s + win].copy()
    f -= f.mean()
    f = f - 0.97 * np.concatenate([[f[0]], f[:-1]])
    p = np.abs(np.fft.rfft(f * w, nfft)) ** 2
    e = np.zeros(mels)
    for b in range(mels):
      left, c, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
      for k in range(nfft // 2):
        m = mel(k * sr / nfft)
        e[b] += p[k] * max(0.0, min((m - left) / (c - left), (right - m) / (right - c)))
    out.append(np.log(np.maximum(e, np.finfo(np.float32).eps)))
  return np.stack(out)


def test_kaldi_fbank_matches_transcription():
  x = _noise(400 + 160 * 4, seed=4)
  got = F.kaldi_fbank(x)
  assert got.shape == (5, 128)
  np.testing.assert_allclose(got, _kaldi_reference(x), rtol=1e-9, atol=1e-9)


def test_imagebind_clip_sampling_and_shapes():
  assert F.clip_starts(8, 2, 3) == [(0, 2), (3, 5), (6, 8)]
  assert F.clip_starts(Fraction(1), 2, 3) == [(0, 2)] * 3  # shorter than a clip: all start at 0
  clips = F.imagebind_audio_clips(_noise(16000 * 8, seed=5))
  assert clips.shape == (3, 1, 128, 204)
  # Frames 198..203 of a 2 s clip are zero padding, normalised.
  np.testing.assert_allclose(clips[0, 0, :, 198:], (0 + 4.268) / 9.138)


def test_synchformer_segments_match_torch_melspectrogram_transcription():
  torch = pytest.importorskip("torch")
  x = _noise(16000 * 8, seed=6)
  got = F.synchformer_audio_segments(x)
  assert got.shape == (24, 66, 128)
  assert F.synchformer_audio_segments(_noise(160000)).shape == (30, 66, 128)
  fb = torch.tensor(librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0, fmax=8000, htk=True, norm=None)).double()
  for s in [0, 23]:
    seg = torch.tensor(x[s * 5120:s * 5120 + 10240])
    spec = torch.stft(seg, 1024, hop_length=160, win_length=400, window=torch.hann_window(400, dtype=torch.float64),
                      center=True, pad_mode="reflect", return_complex=True).abs().pow(2)
    mel = torch.log(fb @ spec + 1e-6)  # (128, 65)
    mel = torch.nn.functional.pad(mel, (0, 1))
    want = ((mel - -4.2677393) / (2 * 4.5689974)).numpy().T
    np.testing.assert_allclose(got[s], want, rtol=1e-6, atol=1e-6)


def test_passt_and_clap_input_rules():
  assert F.passt_input(np.ones(100)).shape == (320000,)
  assert F.passt_input(np.ones(400000)).shape == (320000,)
  x = np.arange(1, 200001, dtype=np.float64)  # 200000 samples of 48 kHz -> repeated twice, then zeros
  y = F.clap_input(x)
  assert y.shape == (480000,)
  np.testing.assert_array_equal(y[:200000], x)
  np.testing.assert_array_equal(y[200000:400000], x)
  assert not y[400000:].any()
  long = np.arange(600000, dtype=np.float64)
  np.testing.assert_array_equal(F.clap_input(long, seed=3), F.clap_input(long, seed=3))


def test_resample_float64_agrees_with_float32():
  """eval/frontends.resample is the audio loader's resampler in float64: float64 output, the float32 numbers
  (torchaudio's, tests/test_audio_io.py) to float32 rounding, and one channel at a time the same."""
  R = pytest.importorskip("dreamfoley_jax.audio.resample")
  x = _noise(2 * 44100, seed=9).reshape(2, 44100)
  for o, n in [(44100, 16000), (48000, 32000), (16000, 48000)]:
    y = F.resample(x, o, n)
    assert y.dtype == np.float64 and y.shape == (2, R.output_length(44100, o, n))
    np.testing.assert_allclose(y, R.resample_np(x, o, n), atol=5e-5)
    np.testing.assert_allclose(F.resample(x[1], o, n), y[1], rtol=0, atol=1e-12)
