"""The synthetic world: determinism, shapes, physics (the object touches the floor at each impact)."""
import os

import numpy as np
import pytest

from dreamfoley_jax.synthetic import world as S


def _object_bottom(frame, floor_y, background):
  """Lowest row containing an object pixel above the floor band (None if not visible)."""
  above = frame[:floor_y].astype(int)
  diff = np.abs(above - background[None, None]).sum(-1) > 30
  rows = np.flatnonzero(diff.any(axis=1))
  return int(rows.max()) if len(rows) else None


def test_deterministic_and_seed_dependent():
  a, b, c = S.make_clip(5), S.make_clip(5), S.make_clip(6)
  for k in ("frames_sync", "frames_clip", "audio", "event_times"):
    np.testing.assert_array_equal(a[k], b[k])
  assert a["caption"] == b["caption"]
  assert not np.array_equal(a["audio"], c["audio"])
  ds = S.make_dataset(3, seed=1)
  np.testing.assert_array_equal(ds[2]["audio"], S.make_dataset(5, seed=1)[2]["audio"])


def test_shapes_dtypes_and_ranges():
  for clip in S.make_dataset(30, seed=2):
    T = clip["frames_sync"].shape[0]
    d = float(clip["duration"])
    assert 2.0 - 1e-6 <= d <= 10.0 + 1e-6 and abs(T / S.FPS - d) < 1e-6
    assert clip["frames_sync"].shape == (T, 32, 32, 3) and clip["frames_sync"].dtype == np.uint8
    C = clip["frames_clip"].shape[0]
    assert C == int(np.ceil(T * S.CLIP_FPS / S.FPS)) and clip["frames_clip"].dtype == np.uint8
    np.testing.assert_allclose(clip["clip_times"], np.arange(C) / 4.0)
    assert clip["audio"].dtype == np.float32 and clip["audio"].shape == (T * 960,)
    assert np.abs(clip["audio"]).max() <= 0.95 + 1e-6
    e = clip["event_times"]
    assert 1 <= len(e) <= 4 and clip["num_events"] == len(e)
    assert np.all(np.diff(e) >= 0.3 - 1e-6) and e[0] >= 0.3 - 1e-6 and e[-1] <= d - 0.25 + 1e-6
    np.testing.assert_array_equal(clip["event_samples"], clip["event_frames"].astype(np.int64) * 960)
    np.testing.assert_allclose(e, clip["event_frames"] / 25.0, atol=1e-6)
    assert clip["material"] in clip["caption"] or S.MATERIAL_SPECS[clip["material"]].noun in clip["caption"]
    assert clip["floor"] in clip["caption"]


def test_caption_count_and_materials():
  assert S.caption_for("metal", "wooden", 2) == "a metal ball bounces twice on a wooden floor"
  assert "three times" in S.caption_for("glass", "stone", 3, template=1)
  with pytest.raises(ValueError, match="unknown material 'gold'"):
    S.caption_for("gold", "stone", 1)


def test_sound_is_silent_before_first_impact_and_starts_on_its_sample():
  for clip in S.make_dataset(10, seed=3):
    s0 = int(clip["event_samples"][0])
    a = clip["audio"]
    assert np.abs(a[:s0]).max() < 0.01                          # background noise only
    assert np.abs(a[s0:s0 + 240]).max() > 0.1                   # the impact, within 10 ms


def _object_y(frame, floor_y, background):
  """Sub-pixel vertical centre of the object (weights: difference from the background)."""
  w = np.abs(frame[:floor_y].astype(float) - background[None, None]).sum(-1)
  return float((w.sum(axis=1) * np.arange(floor_y)).sum() / max(w.sum(), 1e-9))


def test_object_touches_floor_exactly_at_impact_frames():
  """At an impact frame the object's bottom row is on the floor line and the object is lower than in
  every other frame within +-3 frames (so the impact frame is visible as the bottom of the motion)."""
  for seed in range(8):
    clip = S.make_clip(seed, S.SynthConfig(frame_size=64))
    f = clip["frames_sync"]
    floor_y = int(64 - max(3, 64 // 6))
    bg = f[0, 0, 0].astype(int)                                 # top-left pixel is background
    for k in clip["event_frames"]:
      bottom = _object_bottom(f[k], floor_y, bg)
      assert bottom is not None and bottom >= floor_y - 1, (seed, k, bottom)
      yk = _object_y(f[k], floor_y, bg)
      for j in range(k - 3, k + 4):
        if j != k and 0 <= j < len(f) and _object_bottom(f[j], floor_y, bg) is not None:
          assert _object_y(f[j], floor_y, bg) < yk - 0.05, (seed, k, j)


def test_material_sets_look_and_timbre():
  from dreamfoley_jax.synthetic import onsets as sync
  cent = {}
  for m in S.MATERIALS:
    clips = [S.make_clip(i, material=m, floor="stone", duration=3.0) for i in range(4)]
    cent[m] = np.mean([sync.spectral_centroid(c["audio"]) for c in clips])
    # The object's colour is the material's (+-15 per channel): find it in the frames.
    rgb = np.asarray(S.MATERIAL_SPECS[m].rgb)
    for c in clips:
      near = np.abs(c["frames_sync"].astype(int) - rgb).max(-1) <= 15
      assert near.any(axis=(1, 2)).mean() > 0.5, m              # visible in most frames
  assert cent["rubber"] < cent["wood"] < cent["metal"] < cent["glass"], cent


def test_writers(tmp_path):
  av = pytest.importorskip("av")
  clip = S.make_clip(0, duration=2.0)
  paths = S.write_clip(str(tmp_path), clip, name="x")
  import soundfile as sf
  y, sr = sf.read(paths["wav"], dtype="float32")
  assert sr == 24000 and len(y) == len(clip["audio"])
  np.testing.assert_allclose(y, clip["audio"], atol=1e-4)
  with av.open(paths["mp4"]) as c:
    kinds = sorted(s.type for s in c.streams)
    assert kinds == ["audio", "video"]
    frames = list(c.decode(video=0))
    assert len(frames) == len(clip["frames_sync"]) and frames[0].width == 32 * 8
  assert sorted(os.listdir(tmp_path)) == ["x.mp4", "x.wav"]      # no temp files left behind


def test_to_example_roundtrips_through_records():
  from dreamfoley_jax.data import records
  clip = S.make_clip(2, duration=2.0)
  codes = np.arange(8 * 50).reshape(8, 50) % 100
  ex = records.decode_example(records.encode_example(S.to_example(clip, codes)))
  assert ex["audio_codes"].dtype == np.int16 and ex["audio_codes"].shape == (8, 50)
  np.testing.assert_array_equal(ex["frames_sync"], clip["frames_sync"])
  assert ex["caption"] == clip["caption"]
  with pytest.raises(ValueError, match="audio_codes must be"):
    S.to_example(clip, codes[:, :49])


def test_object_squashes_only_in_impact_frames():
  def aspect(frame, floor_y, bg):
    w = np.abs(frame[:floor_y].astype(int) - bg[None, None]).sum(-1) > 60
    rows, cols = np.flatnonzero(w.any(1)), np.flatnonzero(w.any(0))
    return (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)
  for seed in range(4):
    clip = S.make_clip(seed, S.SynthConfig(frame_size=64), material="rubber")
    f, bg = clip["frames_sync"], clip["frames_sync"][0, 0, 0].astype(int)
    for k in clip["event_frames"]:
      assert aspect(f[k], 53, bg) > 1.4, (seed, k)
      assert aspect(f[k + 1], 53, bg) < 1.2, (seed, k)
  flat = S.make_clip(0, S.SynthConfig(frame_size=64, impact_squash=0.0), material="rubber")
  k = flat["event_frames"][0]
  assert aspect(flat["frames_sync"][k], 53, flat["frames_sync"][0, 0, 0].astype(int)) < 1.2


def test_neutral_look_hides_the_material_and_only_the_material():
  """look_shows_material=False: the same seed gives the same frames whatever the material (the caption alone
  names it), while the sound and caption still follow the material; the default look still shows it."""
  neutral = S.SynthConfig(look_shows_material=False)
  for seed in range(3):
    clips = {m: S.make_clip(seed, neutral, material=m, floor="stone") for m in S.MATERIALS}
    ref = clips["metal"]
    for m, c in clips.items():
      np.testing.assert_array_equal(c["frames_sync"], ref["frames_sync"], err_msg=f"{seed} {m}")
      np.testing.assert_array_equal(c["frames_clip"], ref["frames_clip"], err_msg=f"{seed} {m}")
      np.testing.assert_array_equal(c["event_frames"], ref["event_frames"])
      assert S.MATERIAL_SPECS[m].noun in c["caption"]
    assert len({c["audio"].tobytes() for c in clips.values()}) == len(S.MATERIALS)
    shown = {m: S.make_clip(seed, S.SynthConfig(), material=m, floor="stone")["frames_sync"].tobytes()
             for m in S.MATERIALS}
    assert len(set(shown.values())) == len(S.MATERIALS)
