"""The synthetic world's caption tokenizer: a small BPE fitted on the captions (no downloads).

Real models read a Qwen2.5 `tokenizer.json` instead (`text.load_tokenizer`).
"""
from __future__ import annotations

from typing import Iterable


def train_bpe(texts: Iterable[str], vocab_size: int = 256):
  """A byte-level BPE tokenizer (the Qwen2 tokenizer's kind) fitted on `texts`."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(texts), trainer)
  return tok
