"""Caption tokenisation: local tokenizer.json loading and the fitted BPE for the synthetic default."""
import numpy as np
import pytest

from dreamfoley_jax import text
from dreamfoley_jax.synthetic import bpe

CAPTIONS = ["a metal ball bounces twice on a wooden floor", "a glass marble hits the floor three times",
            "a rubber ball bounces once", "two wooden blocks fall on a metal floor"]


def test_bpe_round_trip_and_file(tmp_path):
  tok = bpe.train_bpe(CAPTIONS * 10, vocab_size=300)
  assert tok.get_vocab_size() <= 300
  enc = tok.encode(CAPTIONS[0])
  assert tok.decode(enc.ids) == CAPTIONS[0]
  assert len(enc.ids) < len(CAPTIONS[0])          # merges were learned
  tok.save(str(tmp_path / "tokenizer.json"))
  tok2 = text.load_tokenizer(tmp_path)
  ids, mask = text.encode(tok2, CAPTIONS, max_len=6)
  assert ids.shape == (4, 6) and mask.dtype == bool
  np.testing.assert_array_equal(ids[0][mask[0]], tok.encode(CAPTIONS[0]).ids[:6])
  short, smask = text.encode(tok2, ["a"], max_len=6)
  assert smask[0].sum() == 1 and (short[0, 1:] == 0).all()


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    text.load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match="tokenizer.json"):
    text.load_tokenizer(tmp_path / "tokenizer.json")
