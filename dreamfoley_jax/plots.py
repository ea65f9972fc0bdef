"""Spectrogram pictures for a person to look at (generate's <stem>.png, the main job's samples/*.png)."""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

import numpy as np


def write_spectrogram(path, audio: np.ndarray, sr: int, title: str = "", *, event_times: Optional[Sequence] = None,
                      detected: Optional[Sequence] = None, nfft: Optional[int] = None, hop: Optional[int] = None,
                      figsize=(10, 3.5), title_size: Optional[float] = None) -> None:
  """Log-magnitude spectrogram PNG of mono `audio` (written to a temp name, then renamed).

  nfft defaults to 1024 at >= 22.05 kHz (else 512) and hop to max(nfft / 2, len / 4000), so an hour-long
  item stays at ~4000 columns. event_times: dashed cyan lines (true events); detected: short green ones.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  nfft = nfft or (1024 if sr >= 22050 else 512)
  hop = hop or max(nfft // 2, len(audio) // 4000)
  fig, ax = plt.subplots(figsize=figsize, dpi=100)
  ax.specgram(np.asarray(audio, np.float32) + 1e-9, NFFT=nfft, Fs=sr, noverlap=max(0, nfft - hop), cmap="magma")
  marks = False
  for i, t in enumerate(np.asarray([] if event_times is None else event_times).ravel()):
    ax.axvline(float(t), color="cyan", lw=1.2, ls="--", label="true event" if i == 0 else None)
    marks = True
  for i, t in enumerate(np.asarray([] if detected is None else detected).ravel()):
    ax.axvline(float(t), color="lime", lw=0.8, ymax=0.25, label="detected onset" if i == 0 else None)
    marks = True
  ax.set_xlabel("time (s)")
  ax.set_ylabel("frequency (Hz)")
  ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
  if marks:
    ax.legend(loc="upper right", fontsize=7)
  fig.tight_layout()
  p = pathlib.Path(path)
  tmp = p.with_name(f".{p.name}.tmp")
  try:
    fig.savefig(str(tmp), format="png")
  finally:
    plt.close(fig)
  os.replace(tmp, p)
