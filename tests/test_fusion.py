"""Fusion (eq. 1): timing of the upsampled 4 fps stream on the 25 Hz grid, odd durations, masks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import sharding
from fractions import Fraction

from dreamfoley_jax.models.fusion import DualStreamFusion, FusionConfig, aligned_length


def sync_token_count(num_frames: int) -> int:
  """MMAudio's windows: ((T - 16) // 8 + 1) * 8 tokens, fewer than frames (records made that way, or by an
  older extraction; the project's own rule gives T: video.preprocess.sync_cover_indices)."""
  return 0 if num_frames < 16 else ((num_frames - 16) // 8 + 1) * 8


def _streams(duration):
  """Clip lengths for `duration` s: Tf frames at 25 fps, Ts = 8 * S MMAudio sync tokens, Tc CLIP frames."""
  tf = aligned_length(duration, 25)
  ts = sync_token_count(tf)
  tc = aligned_length(duration, 4)
  # channel 0 carries the index so the test can read which source position was used
  sync = np.stack([np.arange(ts), -np.ones(ts)], -1)[None].astype(np.float32)
  clip = np.stack([np.arange(tc), np.ones(tc), 2 * np.ones(tc)], -1)[None].astype(np.float32)
  return tf, ts, tc, jnp.asarray(sync), jnp.asarray(clip)


@pytest.mark.parametrize("duration", [2.37, 8.04, 9.99, 8.0])
def test_nearest_timing_on_odd_durations(duration):
  tf, ts, tc, sync, clip = _streams(duration)
  assert (tf, ts, tc) == {2.37: (59, 48, 9), 8.04: (201, 192, 32), 9.99: (249, 240, 39),
                          8.0: (200, 192, 32)}[duration]
  fuse = DualStreamFusion(FusionConfig())
  fused, mask = fuse.apply({}, sync, clip, target_len=tf)
  assert fused.shape == (1, tf, 5) and mask.shape == (1, tf)
  f = np.asarray(fused[0])
  src = f[:, 2]
  for j in range(tf):
    # frame j (time j/25) shows the last CLIP frame sampled at or before it, found by exact search in time
    expect = max(i for i in range(tf) if Fraction(i, 4) <= Fraction(j, 25))
    if expect < tc:          # (past the last CLIP frame the fused frame is padding)
      assert src[j] == expect, (j, src[j], expect)
  # a change at CLIP frame i (time i/4) appears at the first 25 Hz frame at or after i/4
  for i in range(1, tc):
    j = int(np.argmax(src == i))
    assert j == math.ceil(i * 25 / 4) and (j - 1) / 25 < i / 4 <= j / 25
  # sync token j is frame j; frames past the last window are zero and masked
  np.testing.assert_array_equal(f[:ts, 0], np.arange(ts))
  assert np.all(f[ts:, :2] == 0)
  m = np.asarray(mask[0])
  assert m[:ts].all() and not m[ts:].any()


def test_nearest_exact_and_linear():
  tf, ts, tc, sync, clip = _streams(8.04)
  ne, _ = DualStreamFusion(FusionConfig(upsample="nearest_exact")).apply({}, sync, clip, target_len=tf)
  src = np.asarray(ne[0, :, 2])
  for j in range(ts):
    assert src[j] == min(math.floor(j * 4 / 25 + 0.5), tc - 1)   # closest CLIP frame in time
  li, _ = DualStreamFusion(FusionConfig(upsample="linear")).apply({}, sync, clip, target_len=tf)
  pos = np.asarray(li[0, :, 2])
  expect = np.minimum(np.arange(tf) * 4 / 25, tc - 1)
  np.testing.assert_allclose(pos[:ts], expect[:ts], rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(li[0, :, 3:]), np.broadcast_to([1.0, 2.0], (tf, 2)) * (
      np.asarray(li[0, :, 3:4]) != 0))   # constant channels stay constant where valid


def test_edge_pad_and_crop():
  tf, ts, tc, sync, clip = _streams(8.04)
  fused, mask = DualStreamFusion(FusionConfig(pad="edge")).apply({}, sync, clip, target_len=tf)
  f = np.asarray(fused[0])
  assert np.all(f[ts:, 0] == ts - 1)                    # last sync token repeated
  assert not np.asarray(mask[0, ts:]).any()             # still marked as padding
  short, m2 = DualStreamFusion(FusionConfig()).apply({}, sync, clip, target_len=100)
  assert short.shape == (1, 100, 5) and np.asarray(m2).all()
  np.testing.assert_array_equal(np.asarray(short[0, :, 0]), np.arange(100))


def test_batch_with_per_example_lengths():
  """Two clips padded into one batch: masks give each its own valid sync/CLIP lengths."""
  tf_a, ts_a, tc_a, sync_a, clip_a = _streams(2.37)
  tf_b, ts_b, tc_b, sync_b, clip_b = _streams(9.99)
  ts, tc = ts_b, tc_b
  sync = jnp.concatenate([jnp.pad(sync_a, ((0, 0), (0, ts - ts_a), (0, 0))), sync_b])
  clip = jnp.concatenate([jnp.pad(clip_a, ((0, 0), (0, tc - tc_a), (0, 0))), clip_b])
  smask = jnp.arange(ts)[None] < jnp.array([[ts_a], [ts_b]])
  cmask = jnp.arange(tc)[None] < jnp.array([[5], [tc_b]])     # example 0: only 5 CLIP frames valid
  fused, mask = DualStreamFusion(FusionConfig()).apply({}, sync, clip, target_len=tf_b,
                                                       sync_mask_BxTs=smask, clip_mask_BxTc=cmask)
  m = np.asarray(mask)
  # example 0: CLIP frame 5 starts at 5/4 s = 25 Hz frame ceil(31.25) = 32, before the sync end (48)
  assert m[0].sum() == 32 and m[0, :32].all()
  assert m[1].sum() == ts_b
  f0 = np.asarray(fused[0])
  assert np.all(f0[32:, 2:] == 0) and np.all(f0[ts_a:, :2] == 0)
  np.testing.assert_array_equal(f0[:32, 2], np.floor(np.arange(32) * 4 / 25))
  np.testing.assert_array_equal(f0[:ts_a, 0], np.arange(ts_a))


def test_under_mesh_and_jit():
  mesh = sharding.make_mesh({"data": -1})
  tf, ts, tc, sync, clip = _streams(2.37)
  sync8, clip8 = jnp.tile(sync, (8, 1, 1)), jnp.tile(clip, (8, 1, 1))
  fuse = DualStreamFusion(FusionConfig())
  with sharding.use_mesh(mesh):
    fused, mask = jax.jit(lambda s, c: fuse.apply({}, s, c, target_len=tf))(sync8, clip8)
  ref, _ = fuse.apply({}, sync, clip, target_len=tf)
  np.testing.assert_array_equal(np.asarray(fused[3]), np.asarray(ref[0]))
  assert fused.dtype == jnp.float32 and mask.dtype == jnp.bool_


def test_config_validation():
  with pytest.raises(ValueError, match="upsample"):
    FusionConfig(upsample="cubic")
  with pytest.raises(ValueError, match="pad"):
    FusionConfig(pad="reflect")
  from fractions import Fraction
  assert FusionConfig().ratio == Fraction(4, 25)
  assert aligned_length(8.04) == 201 and aligned_length(2.37) == 59
