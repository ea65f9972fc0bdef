"""Audio file I/O: any common format and rate in, mono float32 at 24 kHz out; wav files out (`save_wav`, the
one wav writer: generate's outputs, the main job's samples, the synthetic world's clips).

Decoding goes through soundfile (libsndfile: wav, flac, ogg, mp3 with libsndfile >= 1.1) and falls back to
PyAV (ffmpeg: m4a/aac, mp3, and anything else ffmpeg reads). Channels are averaged to mono; the rate is
converted with the same windowed-sinc (Hann) resampler the tokenizer uses, which low-passes at
0.99 x the lower Nyquist frequency, so downsampling does not alias.

Bad input raises `AudioError` naming the file: missing, undecodable, no audio stream, zero samples,
NaN/Inf samples. Silence and clipped audio load normally (the tokenizer's policy applies later).
"""
from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from dreamfoley_jax.audio.resample import resample_np

TARGET_SR = 24000
PathLike = str | os.PathLike


class AudioError(ValueError):
  """An audio file cannot be used (message names the file and the reason)."""


def _read_soundfile(path: pathlib.Path) -> tuple[np.ndarray, int]:
  import soundfile as sf

  data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
  return data.T, int(sr)


def _read_pyav(path: pathlib.Path) -> tuple[np.ndarray, int]:
  import av

  with av.open(str(path)) as container:
    if not container.streams.audio:
      raise AudioError(f"{path}: no audio stream")
    stream = container.streams.audio[0]
    # planar float output, original rate and layout
    resampler = av.AudioResampler(format="fltp")
    chunks, sr = [], None
    for frame in container.decode(stream):
      for out in resampler.resample(frame):
        sr = out.sample_rate
        chunks.append(out.to_ndarray())
    for out in resampler.resample(None):
      chunks.append(out.to_ndarray())
    if sr is None:
      sr = stream.rate or stream.codec_context.sample_rate
  if not chunks:
    return np.zeros((1, 0), np.float32), int(sr or 0)
  return np.concatenate(chunks, axis=1).astype(np.float32), int(sr)


def load_audio(path: PathLike, target_sr: int = TARGET_SR, *, mono: bool = True) -> np.ndarray:
  """Decodes `path` -> float32 (n,) mono (or (channels, n)) audio at `target_sr`."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise AudioError(f"{p}: no such file")
  errors = []
  data = sr = None
  for reader in (_read_soundfile, _read_pyav):
    try:
      data, sr = reader(p)
      break
    except AudioError:
      raise
    except Exception as e:  # each backend fails with its own exception types
      errors.append(f"{reader.__name__[6:]}: {type(e).__name__}: {e}")
  if data is None:
    raise AudioError(f"{p}: cannot decode audio ({'; '.join(errors)})")
  if data.shape[-1] == 0:
    raise AudioError(f"{p}: contains no audio samples")
  if not np.all(np.isfinite(data)):
    raise AudioError(f"{p}: {int(np.sum(~np.isfinite(data)))} NaN/Inf samples")
  if not 1000 <= sr <= 768000:
    raise AudioError(f"{p}: implausible sample rate {sr}")
  if mono:
    data = data.mean(axis=0)
  if sr != target_sr:
    data = resample_np(data, sr, target_sr)
  return np.ascontiguousarray(data, np.float32)


def resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
  """Polyphase (scipy) rate change of generated audio to an output rate (generate --sample_rate); inputs
  go through `load_audio`'s windowed-sinc resampler instead."""
  if src == dst:
    return audio
  from scipy.signal import resample_poly

  g = math.gcd(src, dst)
  return resample_poly(audio, dst // g, src // g).astype(np.float32)


def save_wav(path: PathLike, audio: np.ndarray, sample_rate: int = TARGET_SR, *, subtype: str = "PCM_16") -> None:
  """Writes (n,) or (channels, n) float audio in [-1, 1] as a wav file (written to a temp name, then renamed)."""
  import soundfile as sf

  a = np.asarray(audio, np.float32)
  if a.ndim == 2:
    a = a.T
  if a.size == 0 or not np.all(np.isfinite(a)):
    raise AudioError(f"{path}: refusing to write empty or non-finite audio")
  p = pathlib.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.with_name(f".{p.name}.tmp")
  try:
    sf.write(str(tmp), np.clip(a, -1.0, 1.0) if subtype.startswith("PCM") else a, sample_rate,
             subtype=subtype, format="WAV")
    os.replace(tmp, p)
  finally:
    tmp.unlink(missing_ok=True)
