"""Audio loading (formats, rates, channels), the sinc resampler, and bad-input errors."""
import math

import numpy as np
import pytest

from dreamfoley_jax.audio import io as aio
from dreamfoley_jax.audio.resample import output_length, resample_jnp, resample_np


def _sine(sr, seconds, freq, channels=1, amp=0.5):
  t = np.arange(int(sr * seconds)) / sr
  x = amp * np.sin(2 * np.pi * freq * t)
  return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], 1).astype(np.float32) if channels > 1 \
      else x.astype(np.float32)


def _interior_err(y, sr, freq, amp, lead=0.05):
  t = np.arange(y.size) / sr
  ref = amp * np.sin(2 * np.pi * freq * t)
  k = int(lead * sr)
  return np.abs(y[k:-k] - ref[k:-k]).max()


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000, 96000])
def test_resample_sine_to_24k(sr):
  x = _sine(sr, 0.5, 440.0, amp=0.5)
  y = resample_np(x, sr, 24000)
  assert y.shape == (output_length(x.size, sr, 24000),) == (math.ceil(x.size * 24000 / sr),)
  assert _interior_err(y, 24000, 440.0, 0.5) < 2e-3


def test_resample_antialias_and_jnp_agree():
  x = _sine(48000, 0.5, 15000.0, amp=0.5)  # above the 12 kHz Nyquist of 24 kHz
  y = resample_np(x, 48000, 24000)
  assert np.abs(y[1000:-1000]).max() < 5e-3  # folded back to 9 kHz without the low-pass
  z = np.random.default_rng(0).normal(size=(2, 4801)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(resample_jnp(z, 24000, 16000)), resample_np(z, 24000, 16000),
                             rtol=1e-5, atol=1e-6)


def test_resample_matches_scipy_polyphase_in_band():
  scipy_signal = pytest.importorskip("scipy.signal")
  rng = np.random.default_rng(1)
  # band-limited noise well inside both passbands: both resamplers must agree there
  x = scipy_signal.sosfiltfilt(scipy_signal.butter(8, 4000, fs=44100, output="sos"),
                               rng.normal(size=44100)).astype(np.float32)
  ours = resample_np(x, 44100, 24000)
  ref = scipy_signal.resample_poly(x, 160, 294)
  n = min(ours.size, ref.size)
  assert np.abs(ours[500:n - 500] - ref[500:n - 500]).max() < 2e-3 * np.abs(x).max()


@pytest.mark.parametrize("sr,channels,subtype", [(8000, 1, "PCM_16"), (44100, 2, "PCM_24"),
                                                 (96000, 2, "FLOAT"), (24000, 1, "PCM_16")])
def test_load_wav_and_flac(tmp_path, sr, channels, subtype):
  sf = pytest.importorskip("soundfile")
  x = _sine(sr, 0.4, 300.0, channels=channels)
  for ext, fmt in (("wav", "WAV"), ("flac", "FLAC")):
    if fmt == "FLAC" and subtype == "FLOAT":
      continue
    p = tmp_path / f"a.{ext}"
    sf.write(str(p), x, sr, subtype=subtype, format=fmt)
    y = aio.load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1 and y.size == math.ceil(x.shape[0] * 24000 / sr)
    amp = 0.5 * (np.mean([0.5 + 0.5 * c for c in range(channels)]) if channels > 1 else 1.0)
    assert _interior_err(y, 24000, 300.0, amp) < 5e-3


def _write_pyav(path, x, sr, codec, layout):
  import av

  with av.open(str(path), "w") as out:
    st = out.add_stream(codec, rate=sr)
    st.layout = layout
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T if x.ndim == 2 else x[None]).astype(np.float32),
                                       format="fltp", layout=layout)
    frame.sample_rate = sr
    for pkt in st.encode(frame):
      out.mux(pkt)
    for pkt in st.encode(None):
      out.mux(pkt)


@pytest.mark.parametrize("ext,codec,sr,layout", [("mp3", "libmp3lame", 44100, "stereo"),
                                                 ("m4a", "aac", 48000, "mono")])
def test_load_compressed(tmp_path, ext, codec, sr, layout):
  x = _sine(sr, 1.0, 500.0, channels=2 if layout == "stereo" else 1)
  p = tmp_path / f"a.{ext}"
  _write_pyav(p, x, sr, codec, layout)
  y = aio.load_audio(p)
  # lossy codecs add encoder delay/padding: check the length roughly and the tone's frequency exactly
  assert abs(y.size - 24000) < 0.1 * 24000
  spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
  assert abs(np.argmax(spec) * 24000 / y.size - 500.0) < 3.0


def test_bad_files(tmp_path):
  sf = pytest.importorskip("soundfile")
  with pytest.raises(aio.AudioError, match="no such file"):
    aio.load_audio(tmp_path / "missing.wav")
  junk = tmp_path / "junk.wav"
  junk.write_bytes(b"not audio at all" * 10)
  with pytest.raises(aio.AudioError, match="cannot decode"):
    aio.load_audio(junk)
  empty = tmp_path / "empty.wav"
  sf.write(str(empty), np.zeros((0,), np.float32), 16000)
  with pytest.raises(aio.AudioError, match="no audio samples"):
    aio.load_audio(empty)
  nan = tmp_path / "nan.wav"
  sf.write(str(nan), np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
  with pytest.raises(aio.AudioError, match="NaN"):
    aio.load_audio(nan)
  silent = tmp_path / "silent.wav"
  sf.write(str(silent), np.zeros(1600, np.float32), 16000)
  assert np.all(aio.load_audio(silent) == 0) and aio.load_audio(silent).size == 2400


def test_save_wav_roundtrip(tmp_path):
  x = _sine(24000, 0.2, 1000.0)
  aio.save_wav(tmp_path / "o.wav", x)
  np.testing.assert_allclose(aio.load_audio(tmp_path / "o.wav"), x, atol=1e-4)
  with pytest.raises(aio.AudioError):
    aio.save_wav(tmp_path / "bad.wav", np.array([np.nan], np.float32))
