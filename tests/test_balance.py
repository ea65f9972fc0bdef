"""Class-balanced sampling (data/balance.py) and the training pipeline's data.balance_by option."""
import numpy as np
import pytest

from dreamfoley_jax.data import balance, pipeline, writer

K, CB = 4, 32


def test_weights_and_draws():
  labels = [0] * 9 + [1]
  np.testing.assert_allclose(balance.sample_weights(labels, 1.0), [1 / 18] * 9 + [0.5])
  np.testing.assert_allclose(balance.sample_weights(labels, 0.0), [0.1] * 10)
  lab = np.array([0] * 900 + [1] * 90 + [2] * 10)
  for power, want in ((1.0, [1 / 3] * 3), (0.0, [0.9, 0.09, 0.01])):
    idx = balance.balanced_indices(lab, seed=0, power=power, n=30000)
    share = np.bincount(lab[idx], minlength=3) / idx.size
    np.testing.assert_allclose(share, want, atol=0.015)
  a, b = balance.balanced_indices(lab, 1), balance.balanced_indices(lab, 1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, balance.balanced_indices(lab, 2))


def _examples(n):
  for i in range(n):
    t = np.arange(75)
    yield {"clip_id": f"c{i:03d}", "text_ids": np.arange(1, 4, dtype=np.int32),
           "sync_feats": np.stack([t, np.full(75, i)], 1).astype(np.float32),
           "clip_feats": np.stack([np.arange(12), np.full(12, i)], 1).astype(np.float32),
           "audio_codes": np.stack([(t + k) % CB for k in range(K)]).astype(np.int16),
           "ast_class": np.int16(7 if i % 6 == 5 else 3)}   # 1 in 6 records is class 7


def test_pipeline_balance_by_draws_classes_evenly(tmp_path):
  writer.write_records(_examples(120), tmp_path, num_shards=2)
  pat = str(tmp_path / "train-*.array_record")
  cfg = dict(batch_size=4, num_codebooks=K, codebook_size=CB, sync_dim=2, clip_dim=2, max_text_len=6,
             null_text_len=2, null_video_len=2, crop_min_s=2.0, crop_max_s=3.0, bucket_seconds=(3.0,), seed=3)

  def drawn(**kw):
    it = iter(pipeline.make_dataset(pipeline.PipelineConfig(**cfg, **kw), pat, shuffle=True))
    ids = np.concatenate([next(it)["sync_feats"][:, 0, 1] for _ in range(30)]).astype(int)   # one epoch
    return np.mean(ids % 6 == 5)

  plain, bal = drawn(), drawn(balance_by="ast_class")
  assert plain == pytest.approx(1 / 6, abs=1e-9)     # without: every record once per epoch
  assert 0.35 < bal < 0.65                           # with: half the draws are the rare class
  with pytest.raises(KeyError, match="balance_by='nope'.*--stages=\\+ast"):
    drawn(balance_by="nope")


def test_balanced_global_batches_split_over_hosts(tmp_path):
  writer.write_records(_examples(24), tmp_path, num_shards=2)
  pat = str(tmp_path / "train-*.array_record")
  p = pipeline.PipelineConfig(batch_size=4, num_codebooks=K, codebook_size=CB, sync_dim=2, clip_dim=2,
                              max_text_len=6, null_text_len=2, null_video_len=2, crop_min_s=2.0, crop_max_s=3.0,
                              bucket_seconds=(3.0,), seed=5, balance_by="ast_class")

  def ids(**kw):
    it = iter(pipeline.make_dataset(p, pat, **kw))
    return [next(it)["sync_feats"][:, 0, 1].astype(int).tolist() for _ in range(6)]

  one = ids()
  h0, h1 = ids(process_index=0, process_count=2), ids(process_index=1, process_count=2)
  assert [a + b for a, b in zip(h0, h1)] == one          # each host reads its rows of the same global batch
