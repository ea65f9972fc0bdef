"""The grain pipeline in frames mode (encoders inside the model): aligned crops of uint8 frames."""
import numpy as np

from dreamfoley_jax.data import pipeline, writer


def _examples(n=8, seconds=3, H=8):
  for i in range(n):
    Ta = 25 * seconds
    t = np.arange(Ta)
    # Frame f of the 25 fps stream and CLIP frame c (at c/4 s) carry their own index in pixel (0,0,0).
    fs = np.zeros((Ta, H, H, 3), np.uint8)
    fs[:, 0, 0, 0] = t
    fc = np.zeros((4 * seconds, H, H, 3), np.uint8)
    fc[:, 0, 0, 0] = np.arange(4 * seconds)
    codes = np.stack([t % 50 + k for k in range(8)]).astype(np.int16)
    yield {"clip_id": f"c{i}", "text_ids": np.array([1, 2], np.int32), "frames_sync": fs, "frames_clip": fc,
           "audio_codes": codes}


def test_frames_batches_keep_streams_aligned(tmp_path):
  writer.write_records(_examples(), tmp_path, num_shards=1)
  p = pipeline.PipelineConfig(batch_size=4, codebook_size=64, max_text_len=4, null_text_len=2, null_video_len=2,
                              crop_min_s=1.0, crop_max_s=2.0, bucket_seconds=(2.0,), vision_mode="frames",
                              frame_size=8, seed=3)
  spec = pipeline.batch_spec(p)
  assert spec["frames_sync"] == ((4, 50, 8, 8, 3), np.uint8) and spec["frames_clip"][0] == (4, 8, 8, 8, 3)
  assert "sync_feats" not in spec
  it = iter(pipeline.make_dataset(p, str(tmp_path / "train-*.array_record")))
  for _ in range(3):
    b = next(it)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {k: s for k, s in spec.items()}
    for i in range(4):
      n = int(b["frames_sync_mask"][i].sum())
      assert 25 <= n <= 50 and int(b["video_mask"][i].sum()) == n
      f0 = int(b["frames_sync"][i, 0, 0, 0, 0])
      assert f0 % 25 == 0                                         # crops start on the 1 s grid
      np.testing.assert_array_equal(b["frames_sync"][i, :n, 0, 0, 0], f0 + np.arange(n))
      # Audio codebook 0 at frame t equals (f0 + t) % 50: codes and frames come from the same crop.
      d = b["audio_ids"][i, 1:n + 1, 0]
      np.testing.assert_array_equal(d, (f0 + np.arange(n)) % 50)
      nc = int(b["frames_clip_mask"][i].sum())
      assert nc == int(np.ceil(n * 4 / 25))
      np.testing.assert_array_equal(b["frames_clip"][i, :nc, 0, 0, 0], f0 // 25 * 4 + np.arange(nc))


def test_frames_mode_needs_frames_in_records(tmp_path):
  ex = next(_examples())
  del ex["frames_sync"]
  writer.write_records([ex] * 4, tmp_path, num_shards=1)
  p = pipeline.PipelineConfig(batch_size=4, codebook_size=64, max_text_len=4, null_text_len=2, null_video_len=2,
                              crop_min_s=1.0, crop_max_s=2.0, bucket_seconds=(2.0,), vision_mode="frames",
                              frame_size=8)
  import pytest
  with pytest.raises(KeyError, match="frames_sync"):
    next(iter(pipeline.make_dataset(p, str(tmp_path / "train-*.array_record"))))
