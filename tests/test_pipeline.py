"""grain pipeline: aligned crops, delay pattern, buckets, host sharding, determinism, iterator state."""
import numpy as np
import pytest

from dreamfoley_jax.audio import delay
from dreamfoley_jax.data import pipeline, records, writer

K, CB = 4, 32


def _examples(n=12, seconds=(9, 12, 5, 3)):
  """Features/codes whose values encode their own timestamps, so alignment is checkable."""
  for i in range(n):
    s = seconds[i % len(seconds)]
    Ta = 25 * s
    t = np.arange(Ta)
    yield {"clip_id": f"c{i}", "text_ids": np.arange(1, 4 + i % 3, dtype=np.int32),
           "sync_feats": np.stack([t, np.full(Ta, i)], 1).astype(np.float32),          # frame index, clip id
           "clip_feats": np.stack([np.arange(4 * s), np.full(4 * s, i)], 1).astype(np.float32),
           "audio_codes": np.stack([(t + 3 * k) % CB for k in range(K)]).astype(np.int16)}


def _cfg(**kw):
  d = dict(batch_size=4, num_codebooks=K, codebook_size=CB, sync_dim=2, clip_dim=2, max_text_len=6, null_text_len=2,
           null_video_len=2, crop_min_s=2.0, crop_max_s=10.0, bucket_seconds=(4.0, 7.0, 10.0), seed=3)
  d.update(kw)
  return pipeline.PipelineConfig(**d)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  d = tmp_path_factory.mktemp("rec")
  writer.write_records(_examples(), d, num_shards=3)
  return str(d / "train-*.array_record")


def test_batch_alignment_delay_and_masks():
  p = _cfg()
  raw = [records.encode_example(e) for e in _examples(4)]
  for index in range(6):
    b = pipeline.BatchTransform(p)(index, raw)
    assert set(b) == {"text_ids", "text_mask", "sync_feats", "clip_feats", "video_mask", "audio_ids", "audio_mask",
                      "audio_vacant"}
    Tv = b["video_mask"].shape[1]
    assert Tv in (100, 175, 250) and b["clip_feats"].shape[1] == int(np.ceil(Tv * 4 / 25))
    assert b["audio_ids"].shape[1] == Tv + 2 + K - 1
    for i in range(4):
      n = int(b["video_mask"][i].sum())
      lo, hi = {100: (50, 100), 175: (100, 175), 250: (175, 250)}[Tv]
      avail = 25 * (9, 12, 5, 3)[i]
      assert min(lo, avail) <= n <= min(hi, avail)
      a0 = int(b["sync_feats"][i, 0, 0])
      assert a0 % 25 == 0                                       # crop starts on the 1 s grid
      np.testing.assert_array_equal(b["sync_feats"][i, :n, 0], np.arange(a0, a0 + n))
      assert not b["sync_feats"][i, n:].any()
      # CLIP frame j of the crop is the 4 fps frame covering crop time j/4 s.
      nc = int(np.ceil(n * 4 / 25))
      np.testing.assert_array_equal(b["clip_feats"][i, :nc, 0], np.arange(a0 // 25 * 4, a0 // 25 * 4 + nc))
      # Audio: the delayed pattern of exactly the cropped frames; vacant = staircase; mask = its length.
      codes = np.stack([(np.arange(a0, a0 + n) + 3 * k) % CB for k in range(K)])
      want = delay.build_delay_pattern(codes, CB, CB + 1).T
      L = n + 2 + K - 1
      np.testing.assert_array_equal(b["audio_ids"][i, :L], want)
      assert b["audio_mask"][i].sum() == L and (b["audio_ids"][i, L:] == CB + 1).all()
      np.testing.assert_array_equal(b["audio_vacant"][i, :L], delay.vacant_mask(K, n).T)
      assert not b["audio_vacant"][i, L:].any()
      nt = 3 + i % 3
      assert b["text_mask"][i].sum() == nt and (b["text_ids"][i, :nt] == np.arange(1, nt + 1)).all()


def test_bucket_choice_keeps_crop_lengths_uniform():
  p = _cfg(batch_size=1)
  raw = [records.encode_example(e) for e in _examples(2, seconds=(12,))][:1]
  lens = np.array([pipeline.BatchTransform(p)(i, raw)["video_mask"].sum() for i in range(600)]) / 25.0
  assert lens.min() >= 2.0 and lens.max() <= 10.0
  hist, _ = np.histogram(lens, bins=4, range=(2, 10))
  assert hist.min() > 0.6 * hist.mean()                       # roughly uniform over 2-10 s


def test_dataset_is_deterministic_sharded_and_resumable(shards):
  import grain  # noqa: F401

  p = _cfg()
  ds = pipeline.make_dataset(p, shards)
  it = iter(ds)
  first = [next(it) for _ in range(6)]
  again = [next(iter(pipeline.make_dataset(p, shards))) for _ in range(1)]
  for k in first[0]:
    np.testing.assert_array_equal(first[0][k], again[0][k])
  # Iterator state: save after 2 batches, read 3, restore, read the same 3.
  it = iter(ds)
  [next(it) for _ in range(2)]
  state = it.get_state()
  nxt = [next(it) for _ in range(3)]
  it2 = iter(pipeline.make_dataset(p, shards))
  it2.set_state(state)
  for a, b in zip(nxt, [next(it2) for _ in range(3)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Epochs: 12 records / batch 4 = 3 batches per epoch; every record once per epoch, reshuffled: the
  # second epoch holds all 12 again, in another order.
  order = [int(x) for b in first for x in b["sync_feats"][:, 0, 1]]
  ep1, ep2 = order[:12], order[12:24]
  assert sorted(ep1) == sorted(ep2) == list(range(12))
  assert ep1 != ep2, "the second epoch repeats the first one's order"
  # Two hosts: disjoint halves of every global batch (all 12 records in 3 batches), same bucket.
  h0 = iter(pipeline.make_dataset(p, shards, process_index=0, process_count=2))
  h1 = iter(pipeline.make_dataset(p, shards, process_index=1, process_count=2))
  seen0, seen1 = set(), set()
  for _ in range(3):
    a, b = next(h0), next(h1)
    assert a["audio_ids"].shape[1:] == b["audio_ids"].shape[1:] and len(a["audio_ids"]) == len(b["audio_ids"]) == 2
    seen0 |= set(int(x) for x in a["sync_feats"][:, 0, 1])
    seen1 |= set(int(x) for x in b["sync_feats"][:, 0, 1])
  assert not seen0 & seen1 and len(seen0 | seen1) == 12


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_global_batches_do_not_depend_on_the_host_count(shards):
  """1, 2 and 4 hosts: the hosts' rows, stacked in host order, are the 1-host global batch, bit for bit
  (records, crops, buckets), over more than one epoch (12 records, global batch 4, 5 steps)."""
  p = _cfg()
  one = _take(iter(pipeline.make_dataset(p, shards)), 5)
  for n in (2, 4):
    hosts = [_take(iter(pipeline.make_dataset(p, shards, process_index=h, process_count=n)), 5) for h in range(n)]
    for i in range(5):
      _same(one[i], {k: np.concatenate([hosts[h][i][k] for h in range(n)]) for k in one[i]})
  # Any row set (e.g. a mesh whose devices interleave the hosts): the same rows of the same batches.
  odd = _take(iter(pipeline.make_dataset(p, shards, rows=(1, 3))), 5)
  for i in range(5):
    _same(odd[i], {k: v[[1, 3]] for k, v in one[i].items()})
  # Different crops per example: the same clip at two rows of one batch gets independent crops.
  two = pipeline.BatchTransform(p)(7, [records.encode_example(next(_examples(1, seconds=(12,))))] * 2, rows=(0, 1))
  starts = [int(two["sync_feats"][i, 0, 0]) for i in range(2)]
  lens = [int(two["video_mask"][i].sum()) for i in range(2)]
  assert (starts[0], lens[0]) != (starts[1], lens[1])


def test_resume_from_a_global_position(shards):
  """The stream restarts at (batch index, example offset), the only state a checkpoint keeps."""
  p = _cfg()
  ref = _take(iter(pipeline.make_dataset(p, shards)), 6)
  later = _take(iter(pipeline.make_dataset(p, shards, start_batch=3)), 3)
  for a, b in zip(ref[3:], later):
    _same(a, b)
  # Half the hosts, resumed at step 3: its rows of batches 3.. of the 1-host stream.
  h1 = _take(iter(pipeline.make_dataset(p, shards, process_index=1, process_count=2, start_batch=3)), 3)
  for a, b in zip(ref[3:], h1):
    _same({k: v[2:] for k, v in a.items()}, b)
  # A new global batch size resumes the example stream where it stopped: batch 3 of size 4 started at
  # example 12, so 2-example batches from example 12 hold the same records in the same order.
  small = _take(iter(pipeline.make_dataset(_cfg(batch_size=2), shards, start_batch=3, start_example=12)), 2)
  ids = [int(x) for b in small for x in b["sync_feats"][:, 0, 1]]
  assert ids == [int(x) for x in ref[3]["sync_feats"][:, 0, 1]]


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match="largest bucket"):
    _cfg(bucket_seconds=(4.0,))
  with pytest.raises(FileNotFoundError, match="matches no files"):
    pipeline.expand_paths(str(tmp_path / "nothing-*.array_record"))
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    pipeline.host_rows(4, 0, 3)
  with pytest.raises(FileExistsError):
    writer.write_records(_examples(2), tmp_path, num_shards=1)
    writer.write_records(_examples(2), tmp_path, num_shards=1)


WORKER_SCRIPT = """
import sys
import numpy as np
from absl import app
sys.path.insert(0, {root!r})
from dreamfoley_jax.data import pipeline

def main(_):
  p = pipeline.PipelineConfig(batch_size=4, num_codebooks=4, codebook_size=32, sync_dim=2, clip_dim=2, max_text_len=6,
                              null_text_len=2, null_video_len=2, seed=3)
  a = iter(pipeline.make_dataset(p, {pattern!r}, num_workers=0))
  b = iter(pipeline.make_dataset(p, {pattern!r}, num_workers=2))
  for _ in range(4):
    x, y = next(a), next(b)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  print("WORKERS_MATCH")

if __name__ == "__main__":
  app.run(main)
"""


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(shards, tmp_path):
  import pathlib
  import subprocess
  import sys

  root = str(pathlib.Path(__file__).resolve().parents[1])
  script = tmp_path / "w.py"
  script.write_text(WORKER_SCRIPT.format(root=root, pattern=shards))
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
  assert "WORKERS_MATCH" in out.stdout, out.stderr[-3000:]
