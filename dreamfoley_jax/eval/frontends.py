"""Audio front ends of the metric models, in float64 numpy: load rule, resampler, (log-)mel variants.

Each function names the reference it reproduces:
- `prepare_audio`: av-benchmark AudioDataset.read_from_file (mono mean, DC removal, resample, truncate).
- `resample`: torchaudio.functional.resample defaults (Hann-windowed sinc, width 6, rolloff 0.99).
- `panns_logmel`: torchlibrosa Spectrogram + LogmelFilterBank as Cnn14 builds them (librosa slaney mel).
- `vggish_examples`: torchvggish/av-benchmark mel_features.waveform_to_examples.
- `synchformer_audio_segments`: av-benchmark encode_audio_with_sync (torchaudio MelSpectrogram, HTK mel).
- `kaldi_fbank` / `imagebind_audio_clips`: torchaudio.compliance.kaldi.fbank as ImageBind calls it.
- `passt_logmel`: hear21passt AugmentMelSTFT in eval mode (pre-emphasis, STFT, Kaldi mel banks 0-15 kHz).
PaSST's input rule (32 kHz, 10 s pad/trim) is `passt_input`; LAION-CLAP computes its spectrogram inside
its (delegated) PyTorch model, after `clap_input` (48 kHz, repeat-pad to 10 s).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from dreamfoley_jax.audio.resample import resample_np

# --------------------------------------------------------------------------------------------------
# Loading rule and resampling
# --------------------------------------------------------------------------------------------------


def resample(x, orig_sr: int, new_sr: int, *, width: int = 6, rolloff: float = 0.99) -> np.ndarray:
  """Band-limited sinc resampling of the last axis, as torchaudio.functional.resample (hann), in float64
  (`audio.resample.resample_np`, the resampler the audio loader uses in float32)."""
  return resample_np(x, orig_sr, new_sr, dtype=np.float64, lowpass_filter_width=width, rolloff=rolloff)


def to_mono(wav_CxT) -> np.ndarray:
  w = np.asarray(wav_CxT, dtype=np.float64)
  return w if w.ndim == 1 else w.mean(axis=0)


def prepare_audio(wav_CxT, sr: int, target_sr: int, duration_s: float | None, *,
                  remove_dc: bool = True) -> np.ndarray:
  """Mono (channel mean), DC removed (before resampling), resampled, truncated; never padded."""
  x = to_mono(wav_CxT)
  if remove_dc:
    x = x - x.mean()
  x = resample(x, sr, target_sr)
  if duration_s is not None:
    x = x[: int(target_sr * duration_s)]
  return x


def pad_or_trim(x, length: int) -> np.ndarray:
  x = np.asarray(x)
  if x.shape[-1] >= length:
    return x[..., :length]
  return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])])


def passt_input(wav_16k_or_32k) -> np.ndarray:
  """PaSST input rule: 32 kHz audio zero-padded or trimmed to exactly 10 s (320000 samples)."""
  return pad_or_trim(wav_16k_or_32k, 320000)


# hear21passt.base.get_basic_model's AugmentMelSTFT; fmax=None there means sr/2 - fmax_aug_range/2 = 15 kHz,
# and eval mode uses fmin/fmax without the random jitter.
PASST_MEL = dict(sr=32000, n_fft=1024, win=800, hop=320, n_mels=128, fmin=0.0, fmax=15000.0, preemphasis=0.97)


def passt_logmel(wav_32k) -> np.ndarray:
  """PaSST input spectrogram (..., 128, frames), mel bins first as the reference; frames = 1 + (len-1)//320.

  AugmentMelSTFT.forward in eval mode: pre-emphasis x[n+1] - 0.97 x[n] (one sample shorter), centred
  reflect-padded STFT (n_fft 1024, symmetric Hann of 800, hop 320), power, Kaldi mel banks 0-15 kHz,
  log(x + 1e-5), then (x + 4.5) / 5.
  """
  p = PASST_MEL
  x = np.asarray(wav_32k, dtype=np.float64)
  x = x[..., 1:] - p["preemphasis"] * x[..., :-1]
  spec = stft_power(x, n_fft=p["n_fft"], hop=p["hop"], win_length=p["win"], periodic=False)
  banks = kaldi_mel_banks(p["n_mels"], p["n_fft"], p["sr"], p["fmin"], p["fmax"])
  mel = np.swapaxes(spec @ banks.T, -1, -2)  # a BLAS matmul: 2x faster than the einsum
  return (np.log(mel + 1e-5) + 4.5) / 5.0


def clap_input(wav_48k, *, seed: int = 0, n: int = 480000) -> np.ndarray:
  """LAION-CLAP (fusion off) input rule: repeat-pad to 10 s then zero-pad; >10 s: a seeded random crop.

  laion_clap's get_audio_features uses 'repeatpad' for short audio and an unseeded random 10 s crop
  for long audio; we seed the crop so runs are repeatable.
  """
  x = np.asarray(wav_48k, dtype=np.float64)
  if x.shape[-1] > n:
    start = np.random.RandomState(seed).randint(0, x.shape[-1] - n + 1)
    return x[..., start:start + n]
  if x.shape[-1] < n and x.shape[-1] > 0:
    x = np.concatenate([x] * (n // x.shape[-1]), axis=-1)
  return pad_or_trim(x, n)


# --------------------------------------------------------------------------------------------------
# STFT and mel filterbanks
# --------------------------------------------------------------------------------------------------


def hann(n: int, *, periodic: bool = True) -> np.ndarray:
  m = n if periodic else n - 1
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / m)


def stft_power(x, *, n_fft: int, hop: int, win_length: int | None = None, center: bool = True,
               pad_mode: str = "reflect", power: float = 2.0, periodic: bool = True) -> np.ndarray:
  """|STFT|^power, frames last-but-one: (..., frames, n_fft//2+1); torch.stft/librosa semantics.

  The Hann window (periodic unless `periodic=False`) of `win_length` is zero-padded to n_fft, centred.
  """
  x = np.asarray(x, dtype=np.float64)
  win_length = win_length or n_fft
  w = hann(win_length, periodic=periodic)
  lpad = (n_fft - win_length) // 2
  w = np.pad(w, (lpad, n_fft - win_length - lpad))
  if center:
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(n_fft // 2, n_fft // 2)], mode=pad_mode)
  frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
  mag = np.abs(np.fft.rfft(frames * w, axis=-1))
  return mag ** power


def hz_to_mel_slaney(f):
  f = np.asarray(f, dtype=np.float64)
  f_sp = 200.0 / 3
  mel = f / f_sp
  min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
  min_log_mel = min_log_hz / f_sp
  return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def mel_to_hz_slaney(m):
  m = np.asarray(m, dtype=np.float64)
  f_sp = 200.0 / 3
  min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
  min_log_mel = min_log_hz / f_sp
  return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def hz_to_mel_htk(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz_htk(m):
  return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, *, htk: bool,
                   slaney_norm: bool) -> np.ndarray:
  """(n_fft//2+1, n_mels) triangular filters interpolated in Hz.

  htk=False, slaney_norm=True is librosa.filters.mel's default (PANNs); htk=True, slaney_norm=False
  is torchaudio.functional.melscale_fbanks' default (Synchformer's MelSpectrogram).
  """
  freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
  to_mel, to_hz = (hz_to_mel_htk, mel_to_hz_htk) if htk else (hz_to_mel_slaney, mel_to_hz_slaney)
  f_pts = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
  f_diff = np.diff(f_pts)
  ramps = f_pts[None, :] - freqs[:, None]
  down = -ramps[:, :-2] / f_diff[:-1]
  up = ramps[:, 2:] / f_diff[1:]
  fb = np.maximum(0.0, np.minimum(down, up))
  if slaney_norm:
    fb = fb * (2.0 / (f_pts[2:] - f_pts[:-2]))[None, :]
  return fb


def power_to_db(s, *, ref: float = 1.0, amin: float = 1e-10, top_db: float | None = None) -> np.ndarray:
  """librosa.power_to_db / torchlibrosa LogmelFilterBank."""
  db = 10.0 * np.log10(np.maximum(amin, s)) - 10.0 * np.log10(max(amin, ref))
  if top_db is not None:
    db = np.maximum(db, db.max() - top_db)
  return db


# --------------------------------------------------------------------------------------------------
# Per-model front ends
# --------------------------------------------------------------------------------------------------

PANNS = dict(sr=16000, n_fft=512, hop=160, n_mels=64, fmin=50.0, fmax=8000.0)


def panns_logmel(wav_16k) -> np.ndarray:
  """Cnn14 (16 kHz) input: (..., frames, 64) log-mel in dB; frames = 1 + len // 160."""
  p = PANNS
  spec = stft_power(wav_16k, n_fft=p["n_fft"], hop=p["hop"])
  fb = mel_filterbank(p["sr"], p["n_fft"], p["n_mels"], p["fmin"], p["fmax"], htk=False, slaney_norm=True)
  return power_to_db(spec @ fb)


def vggish_mel_matrix(n_bins: int = 257, sr: int = 16000, n_mels: int = 64, lo: float = 125.0,
                      hi: float = 7500.0) -> np.ndarray:
  """VGGish's (n_bins, n_mels) matrix: triangles in the HTK mel domain (1127 ln), DC row zeroed."""
  mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)  # noqa: E731
  bins_mel = mel(np.linspace(0.0, sr / 2, n_bins))
  edges = np.linspace(mel(lo), mel(hi), n_mels + 2)
  lower = (bins_mel[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
  upper = (edges[None, 2:] - bins_mel[:, None]) / (edges[2:] - edges[1:-1])[None, :]
  m = np.maximum(0.0, np.minimum(lower, upper))
  m[0, :] = 0.0
  return m


def vggish_examples(wav_16k) -> np.ndarray:
  """(P, 96, 64) log-mel patches of 0.96 s, no overlap, no padding (25 ms Hann, 10 ms hop, 512 FFT)."""
  x = np.asarray(wav_16k, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f"vggish_examples takes one mono waveform, got shape {x.shape}")
  if x.shape[0] < 400:
    return np.zeros((0, 96, 64))
  frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160]
  mag = np.abs(np.fft.rfft(frames * hann(400), 512, axis=-1))
  logmel = np.log(mag @ vggish_mel_matrix() + 0.01)
  if logmel.shape[0] < 96:
    return np.zeros((0, 96, 64))
  return np.lib.stride_tricks.sliding_window_view(logmel, 96, axis=0)[::96].transpose(0, 2, 1).copy()


SYNC_MEL = dict(sr=16000, n_fft=1024, win=400, hop=160, n_mels=128, mean=-4.2677393, std=4.5689974,
                frames=66)


def synchformer_audio_segments(wav_16k) -> np.ndarray:
  """(..., S, 66, 128) normalised log-mel of 0.64 s segments every 0.32 s (time before mel bins).

  av-benchmark: segments of 10240 samples, step 5120; torchaudio MelSpectrogram (n_fft 1024, win 400,
  hop 160, 128 HTK mels, no norm, power 2, centred reflect padding); log(x + 1e-6); 65 frames
  zero-padded to 66 (after the log, as the reference); (x - mean) / (2 std).
  """
  from dreamfoley_jax.eval.metrics import SYNC_AUDIO_SEGMENT, SYNC_AUDIO_STEP

  x = np.asarray(wav_16k, dtype=np.float64)
  segs = np.lib.stride_tricks.sliding_window_view(x, SYNC_AUDIO_SEGMENT, axis=-1)[..., ::SYNC_AUDIO_STEP, :]
  p = SYNC_MEL
  spec = stft_power(segs, n_fft=p["n_fft"], hop=p["hop"], win_length=p["win"])
  fb = mel_filterbank(p["sr"], p["n_fft"], p["n_mels"], 0.0, p["sr"] / 2, htk=True, slaney_norm=False)
  logmel = np.log(spec @ fb + 1e-6)
  t = logmel.shape[-2]
  if t < p["frames"]:
    logmel = np.pad(logmel, [(0, 0)] * (logmel.ndim - 2) + [(0, p["frames"] - t), (0, 0)])
  logmel = logmel[..., : p["frames"], :]
  return (logmel - p["mean"]) / (2 * p["std"])


class AudioTooShortError(ValueError):
  """Generated audio is shorter than the clip length a metric needs (av-benchmark silently skips it)."""


def check_sync_audio(wav_CxT, sr: int, duration_s: float | None, name: str) -> np.ndarray:
  """Synchformer audio input: mono, 16 kHz, exactly duration_s (raises naming the file if shorter)."""
  from dreamfoley_jax.eval import metrics

  x = prepare_audio(wav_CxT, sr, 16000, duration_s, remove_dc=False)  # the reference keeps DC here
  if duration_s is not None and x.shape[-1] < int(16000 * duration_s):
    raise AudioTooShortError(
        f"{name}: audio is {x.shape[-1] / 16000:.3f} s at 16 kHz but DeSync needs the full {duration_s:g} s clip "
        f"({int(16000 * duration_s)} samples); av-benchmark would silently score the next file instead")
  if x.shape[-1] < metrics.SYNC_AUDIO_SEGMENT + (metrics.DESYNC_WINDOW_SEGMENTS - 1) * metrics.SYNC_AUDIO_STEP:
    raise AudioTooShortError(f"{name}: audio is {x.shape[-1] / 16000:.3f} s; DeSync needs at least 4.8 s")
  return synchformer_audio_segments(x)


def kaldi_fbank(wav, *, sr: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0, preemphasis: float = 0.97, low_freq: float = 20.0,
                high_freq: float = 0.0) -> np.ndarray:
  """(frames, mels) log mel fbank as torchaudio.compliance.kaldi.fbank(htk_compat=True,
  use_energy=False, window_type='hanning', dither=0) with its other defaults: snip_edges, per-frame DC
  removal, pre-emphasis 0.97, symmetric Hann, FFT size rounded up to a power of two, power spectrum,
  Kaldi mel banks (1127 ln, triangles in mel, no norm, Nyquist bin excluded), log floored at float32 eps.
  """
  x = np.asarray(wav, dtype=np.float64)
  win = int(sr * frame_length_ms * 0.001)
  shift = int(sr * frame_shift_ms * 0.001)
  n_fft = 1 << (win - 1).bit_length()
  if x.shape[-1] < win:
    return np.zeros((0, num_mel_bins))
  frames = np.lib.stride_tricks.sliding_window_view(x, win)[::shift].copy()
  frames -= frames.mean(axis=1, keepdims=True)
  prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
  frames = frames - preemphasis * prev
  frames *= hann(win, periodic=False)
  power = np.abs(np.fft.rfft(frames, n_fft, axis=-1)) ** 2
  mel_e = power @ kaldi_mel_banks(num_mel_bins, n_fft, sr, low_freq, high_freq).T
  return np.log(np.maximum(mel_e, np.finfo(np.float32).eps))


def kaldi_mel_banks(n_mels: int, n_fft: int, sr: int, low_freq: float, high_freq: float) -> np.ndarray:
  """(n_mels, n_fft//2+1) torchaudio.compliance.kaldi.get_mel_banks (no VTLN warp) with the Nyquist
  column appended as zeros: triangles in the 1127 ln(1 + f/700) mel domain, no area normalisation.
  high_freq <= 0 counts down from Nyquist, as in Kaldi."""
  hi = high_freq if high_freq > 0 else sr / 2 + high_freq
  mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # noqa: E731
  n_bins = n_fft // 2
  bin_mel = mel(np.arange(n_bins) * sr / n_fft)
  edges = np.linspace(mel(low_freq), mel(hi), n_mels + 2)
  left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  up = (bin_mel[None, :] - left) / (center - left)
  down = (right - bin_mel[None, :]) / (right - center)
  banks = np.maximum(0.0, np.minimum(up, down))  # (mels, n_bins)
  return np.pad(banks, ((0, 0), (0, 1)))  # Nyquist column gets weight 0


IMAGEBIND_AUDIO = dict(sr=16000, mels=128, target=204, clip_s=2.0, clips=3, mean=-4.268, std=9.138)


def clip_starts(duration_s, clip_s: float, clips: int) -> list[tuple[Fraction, Fraction]]:
  """pytorchvideo ConstantClipsPerVideoSampler: `clips` clips of clip_s spread evenly (exact fractions)."""
  dur = Fraction(duration_s)
  step = Fraction(max(dur - Fraction(clip_s), 0), max(clips - 1, 1))
  return [(step * i, step * i + Fraction(clip_s)) for i in range(clips)]


def imagebind_audio_clips(wav_CxT_16k) -> np.ndarray:
  """(3, 1, 128, 204) normalised kaldi fbanks of three 2 s clips of the whole file (16 kHz).

  ImageBind's loader keeps channels (kaldi.fbank reads channel 0), removes the mean of the clip, and
  does not DC-remove or truncate the file first.
  """
  p = IMAGEBIND_AUDIO
  w = np.atleast_2d(np.asarray(wav_CxT_16k, dtype=np.float64))
  dur = Fraction(w.shape[-1], p["sr"])
  out = []
  for s, e in clip_starts(dur, p["clip_s"], p["clips"]):
    clip = w[:, int(s * p["sr"]):int(e * p["sr"])]
    clip = clip - clip.mean()
    fb = kaldi_fbank(clip[0], sr=p["sr"], num_mel_bins=p["mels"]).T  # (mels, frames)
    fb = pad_or_trim(fb, p["target"])
    out.append((fb[None] - p["mean"]) / p["std"])
  return np.stack(out)
