"""roberta-base's byte-level BPE from local files, called as laion_clap's CLAP_Module.tokenizer calls it.

Never downloads: `tokenizer.json`, or `vocab.json` + `merges.txt`, read with the `tokenizers` package.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from dreamfoley_jax.eval.embedders.base import MissingWeightsError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json + merges.txt")


class MissingTokenizerError(MissingWeightsError):
  """The roberta-base tokenizer files are not where the user said."""


class RobertaBPE:
  """laion_clap's CLAP_Module.tokenizer: RobertaTokenizer(text, padding='max_length', truncation=True,
  max_length=77) -> <s> tokens </s> <pad>...; from `tokenizer.json` or `vocab.json` + `merges.txt`."""

  def __init__(self, path: str | os.PathLike, max_length: int = 77):
    import tokenizers

    p = pathlib.Path(path).expanduser()
    if not p.exists():
      raise MissingTokenizerError(f"clap: tokenizer path {p} does not exist; expected a directory holding "
                                  f"{' or '.join(TOKENIZER_FILES)}, or the tokenizer.json file")
    files = p if p.is_dir() else p.parent
    if p.is_file() and p.name == "tokenizer.json" or (p.is_dir() and (p / "tokenizer.json").is_file()):
      tok = tokenizers.Tokenizer.from_file(str(p if p.is_file() else p / "tokenizer.json"))
    elif (files / "vocab.json").is_file() and (files / "merges.txt").is_file():
      bpe = tokenizers.models.BPE.from_file(str(files / "vocab.json"), str(files / "merges.txt"))
      tok = tokenizers.Tokenizer(bpe)
      tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
      tok.decoder = tokenizers.decoders.ByteLevel()
      # RobertaTokenizer splits its special tokens out of the text; <mask> also eats the space before it
      tok.add_special_tokens([tokenizers.AddedToken(t, lstrip=t == "<mask>", normalized=False)
                              for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")])
    else:
      raise MissingTokenizerError(
          f"clap: no roberta-base tokenizer at {p}: expected tokenizer.json, or vocab.json and merges.txt "
          f"(the files of https://huggingface.co/FacebookAI/roberta-base), in that directory; nothing is "
          f"downloaded (put them e.g. in WEIGHTS/roberta-base/)")
    vocab = tok.get_vocab()
    missing = [s for s in ("<s>", "</s>", "<pad>") if s not in vocab]
    if missing:
      raise MissingTokenizerError(f"clap: tokenizer at {p} lacks the RoBERTa special tokens {missing}")
    self.bos, self.eos, self.pad = vocab["<s>"], vocab["</s>"], vocab["<pad>"]
    tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", self.eos), ("<s>", self.bos),
                                                                 add_prefix_space=False, trim_offsets=True)
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=self.pad, pad_token="<pad>")
    self.tok, self.source = tok, str(p)

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), each (B, max_length) int32."""
    enc = self.tok.encode_batch(list(texts))
    return (np.array([e.ids for e in enc], np.int32), np.array([e.attention_mask for e in enc], np.int32))


def find_tokenizer(tokenizer_path, ckpt: pathlib.Path | None) -> pathlib.Path:
  """The explicit path, else WEIGHTS/roberta-base or the checkpoint's own directory; else a clear error."""
  if tokenizer_path:
    return pathlib.Path(tokenizer_path).expanduser()
  cands = [] if ckpt is None else [ckpt.parent / "roberta-base", ckpt.parent]
  for d in cands:
    if (d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()):
      return d
  raise MissingTokenizerError(
      f"clap: no roberta-base tokenizer found (looked in {', '.join(map(str, cands)) or 'nowhere: no path'}); "
      f"expected {' or '.join(TOKENIZER_FILES)}; pass tokenizer=DIR (--config.clap_tokenizer); "
      f"nothing is downloaded")
