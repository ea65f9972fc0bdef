"""Silero VAD v6 (16 kHz) in Flax: speech probability per 32 ms frame, weights from the silero-vad wheel.

The reference (silero_vad 6.2.3, `silero_vad.jit`, MIT) runs 512-sample chunks one at a time, each with
the previous chunk's last 64 samples as context, through: reflect pad 64 -> STFT as a fixed Conv1d
(258 filters, 256 taps, stride 128) -> magnitude (129 bins) -> 4 Conv1d+ReLU (strides 1, 2, 2, 1) ->
LSTMCell(128) carried across chunks -> ReLU -> 1x1 Conv -> sigmoid. Here the front end of every chunk
runs in one batched call and only the LSTM is a `lax.scan`; tests compare the probabilities with the
reference on espeak-ng speech and on noise.

Legend: B batch, T chunks (32 ms), F frequency bins, C channels, S samples.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SAMPLE_RATE = 16000
CHUNK = 512          # samples per probability (32 ms)
CONTEXT = 64         # samples of the previous chunk prepended to each chunk
WEIGHTS_NAME = "silero_vad_16k.safetensors"


def default_weights_path() -> pathlib.Path:
  """The weights inside an installed silero-vad wheel (found without importing it: it imports torch)."""
  spec = importlib.util.find_spec("silero_vad")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("silero-vad is not installed: `pip install silero-vad==6.2.3 --no-deps` (the "
                            f"weights file {WEIGHTS_NAME} ships inside it) or pass the file's path")
  p = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / WEIGHTS_NAME
  if not p.exists():
    raise FileNotFoundError(f"{p}: not in this silero-vad version (6.2.3 has it)")
  return p


def params_from_state_dict(sd) -> dict:
  """torch state dict (numpy) of the 16 kHz model -> the Flax params tree of `SileroVAD`."""
  conv = lambda w: np.transpose(np.asarray(w, np.float32), (2, 1, 0))  # (O, I, K) -> (K, I, O)  # noqa: E731
  p = {"stft_conv": {"kernel": conv(sd["stft_conv.weight"])}}
  for k in ("conv1", "conv2", "conv3", "conv4", "final_conv"):
    p[k] = {"kernel": conv(sd[f"{k}.weight"]), "bias": np.asarray(sd[f"{k}.bias"], np.float32)}
  p["lstm_cell"] = {n: np.asarray(sd[f"lstm_cell.{n}"], np.float32)
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
  return p


def load_params(path: str | pathlib.Path | None = None) -> dict:
  from safetensors.numpy import load_file

  p = pathlib.Path(path) if path else default_weights_path()
  if not p.exists():
    raise FileNotFoundError(f"{p}: silero VAD weights not found")
  sd = load_file(str(p))
  missing = [k for k in ("stft_conv.weight", "lstm_cell.weight_ih", "final_conv.weight") if k not in sd]
  if missing:
    raise ValueError(f"{p}: not silero_vad_16k weights (missing {missing})")
  return params_from_state_dict(sd)


class _LSTMCell(nn.Module):
  """PyTorch LSTMCell (gates i, f, g, o) with PyTorch's parameter names."""

  @nn.compact
  def __call__(self, carry, x_BxC):
    h, c = carry
    d = h.shape[-1]
    w_ih = self.param("weight_ih", nn.initializers.lecun_normal(), (4 * d, x_BxC.shape[-1]))
    w_hh = self.param("weight_hh", nn.initializers.lecun_normal(), (4 * d, d))
    b_ih = self.param("bias_ih", nn.initializers.zeros, (4 * d,))
    b_hh = self.param("bias_hh", nn.initializers.zeros, (4 * d,))
    g = x_BxC @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, gg, o = jnp.split(g, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


class SileroVAD(nn.Module):
  """(B, T, 576) chunk windows (64 context + 512 samples) -> (B, T) speech probabilities."""
  hidden: int = 128

  @nn.compact
  def __call__(self, win_BxTxS):
    B, T, S = win_BxTxS.shape
    x = jnp.pad(win_BxTxS.reshape(B * T, S), ((0, 0), (0, CONTEXT)), mode="reflect")[..., None]
    conv = functools.partial(nn.Conv, precision=jax.lax.Precision.HIGHEST)
    x = conv(258, (256,), strides=(128,), padding="VALID", use_bias=False, name="stft_conv")(x)
    mag = jnp.sqrt(x[..., :129] ** 2 + x[..., 129:] ** 2)                      # (BT, 4, 129)
    x = nn.relu(conv(128, (3,), padding=((1, 1),), name="conv1")(mag))
    x = nn.relu(conv(64, (3,), strides=(2,), padding=((1, 1),), name="conv2")(x))
    x = nn.relu(conv(64, (3,), strides=(2,), padding=((1, 1),), name="conv3")(x))
    x = nn.relu(conv(128, (3,), padding=((1, 1),), name="conv4")(x))          # (BT, 1, 128)
    feats_TxBxC = x[:, 0].reshape(B, T, -1).transpose(1, 0, 2)
    cell = nn.scan(_LSTMCell, variable_broadcast="params", split_rngs={"params": False})(name="lstm_cell")
    zeros = jnp.zeros((B, self.hidden), x.dtype)
    _, h_TxBxC = cell((zeros, zeros), feats_TxBxC)
    y = conv(1, (1,), name="final_conv")(nn.relu(h_TxBxC.transpose(1, 0, 2)))  # (B, T, 1)
    return jax.nn.sigmoid(y[..., 0])


def chunk_windows(audio_16k: np.ndarray, num_chunks: int | None = None) -> np.ndarray:
  """(S,) audio -> (T, 576) windows as the reference sees them (zero-padded to whole chunks, zero context
  before the first chunk); `num_chunks` pads or cuts to a fixed count (one compile per clip length)."""
  x = np.asarray(audio_16k, np.float32).reshape(-1)
  t = num_chunks if num_chunks is not None else -(-x.size // CHUNK)
  x = np.pad(x[:t * CHUNK], (CONTEXT, max(0, t * CHUNK - min(x.size, t * CHUNK))))
  idx = np.arange(t)[:, None] * CHUNK + np.arange(CHUNK + CONTEXT)[None, :]
  return x[idx]


class SpeechDetector:
  """Host wrapper: 16 kHz audio -> per-chunk probabilities with a jitted, fixed-length forward."""

  def __init__(self, params: dict | None = None, weights_path=None):
    self.params = {"params": params if params is not None else load_params(weights_path)}
    self.model = SileroVAD()
    self._fwd = jax.jit(lambda p, w: self.model.apply(p, w))

  def probs(self, audio_16k: np.ndarray, num_chunks: int | None = None) -> np.ndarray:
    """(T,) float32 speech probability per 512-sample chunk (T = ceil(S / 512) unless given)."""
    n = -(-np.asarray(audio_16k).size // CHUNK)
    win = chunk_windows(audio_16k, num_chunks)
    out = np.asarray(jax.device_get(self._fwd(self.params, jnp.asarray(win[None]))))[0]
    return out[:min(n, out.shape[0])]
