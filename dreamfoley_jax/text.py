"""Caption tokenisation: a Qwen2.5 BPE tokenizer from a local `tokenizer.json` (HF `tokenizers`).

For the embedded synthetic default (no downloads) `synthetic.bpe.train_bpe` fits a small byte-level BPE
of the same kind on the captions themselves.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np


def load_tokenizer(path):
  """Loads `tokenizer.json` (a file, or a directory holding one, e.g. a Qwen2.5 HF checkout)."""
  from tokenizers import Tokenizer

  p = pathlib.Path(path)
  if p.is_dir():
    p = p / "tokenizer.json"
  if not p.exists():
    raise FileNotFoundError(f"{p}: no tokenizer.json (point --tokenizer at a Qwen2.5 checkout or the file)")
  try:
    return Tokenizer.from_file(str(p))
  except Exception as e:
    raise ValueError(f"{p}: not a valid HF tokenizers file ({e})") from e


def encode(tokenizer, texts: Sequence[str], max_len: int, pad_id: int = 0):
  """(ids (N, max_len) int32, mask (N, max_len) bool); captions longer than max_len are truncated."""
  ids = np.full((len(texts), max_len), pad_id, np.int32)
  mask = np.zeros((len(texts), max_len), bool)
  for i, enc in enumerate(tokenizer.encode_batch(list(texts))):
    t = enc.ids[:max_len]
    ids[i, :len(t)] = t
    mask[i, :len(t)] = True
  return ids, mask
