"""Decoding and frame sampling: containers, CFR/VFR timing rules, rotation, clear errors."""
import math
from fractions import Fraction

import av
import numpy as np
import pytest

from dreamfoley_jax.video import io as vio
from dreamfoley_jax.video import preprocess as vpre
from video_synth import decode_index, write_video

CONTAINERS = [("mp4", "libx264"), ("mov", "mpeg4"), ("mkv", "libx264"), ("webm", "libvpx-vp9"),
              ("webm", "libvpx"), ("avi", "mjpeg")]


def _nearest(times, fps, n):
  """Reference for rule 'nearest': last frame with t - t0 < (i + 1/2) / fps."""
  t0 = times[0]
  return [max(k for k, t in enumerate(times) if (t - t0) < (i + 0.5) / fps - 1e-9) for i in range(n)]


def _before(times, fps, n):
  t0 = times[0]
  return [max(k for k, t in enumerate(times) if (t - t0) <= i / fps + 1e-9) for i in range(n)]


@pytest.mark.parametrize("ext,codec", CONTAINERS)
def test_containers_cfr_30fps(tmp_path, ext, codec):
  if codec not in av.codecs_available:
    pytest.skip(f"{codec} not in this PyAV build")
  times = [k / 30 for k in range(45)]                       # 1.5 s at 30 fps
  p = write_video(tmp_path / f"v.{ext}", times, codec=codec, rate=30, time_base=Fraction(1, 30))
  (f25, f4), meta = vio.sample_frames(p, [25, 4])
  assert meta.duration_sec == pytest.approx(1.5)
  assert meta.num_frames == 45 and (meta.width, meta.height) == (64, 48)
  assert f25.shape == (37, 48, 64, 3) and f4.shape == (6, 48, 64, 3)   # floor(1.5*25), floor(1.5*4)
  # nearest: 25 fps target i -> last frame k with k/30 < (2i+1)/50  <=>  k = (30(2i+1) - 1) // 50
  assert [decode_index(x) for x in f25] == [(30 * (2 * i + 1) - 1) // 50 for i in range(37)]
  assert [decode_index(x) for x in f4] == [(30 * (2 * i + 1) - 1) // 8 for i in range(6)]


def test_rules_differ_as_documented(tmp_path):
  times = [k / 30 for k in range(60)]
  p = write_video(tmp_path / "v.mp4", times, rate=30)
  (b25,), _ = vio.sample_frames(p, [25], rule="before")
  assert [decode_index(x) for x in b25] == [(30 * i) // 25 for i in range(50)]
  (m25,), _ = vio.sample_frames(p, [25], rule="mmaudio_eval")
  # MMAudio read_frames: first frame with float time >= target, target accumulated by += 1/25
  exp, acc = [], 0.0
  for k in range(60):
    while float(k / 30) >= acc:   # PyAV frame.time of pts k*1000/30 ms rounded; checked below
      exp.append(k)
      acc += 1 / 25
  got = [decode_index(x) for x in m25]
  assert len(got) == len(exp) and got[:10] == exp[:10]
  assert got != [decode_index(x) for x in b25][:len(got)]


def test_mmaudio_eval_float_accumulation(tmp_path):
  """A 25 fps source: six additions of 1/25 give 0.24000000000000002 > 6/25, so target 6 gets frame 7."""
  p = write_video(tmp_path / "v.mkv", [k / 25 for k in range(30)], rate=25)
  (m,), _ = vio.sample_frames(p, [25], rule="mmaudio_eval")
  got = [decode_index(x) for x in m]
  acc, exp = 0.0, []
  for k in range(30):
    while k / 25 >= acc:
      exp.append(k)
      acc += 1 / 25
  assert got == exp
  assert got[6] == 7 and got[:6] == [0, 1, 2, 3, 4, 5]        # the float quirk, reproduced
  (n,), _ = vio.sample_frames(p, [25], rule="nearest")
  assert [decode_index(x) for x in n] == list(range(30))


def test_vfr_explicit_pts(tmp_path):
  rng = np.random.default_rng(0)
  gaps = rng.choice([0.010, 0.023, 0.040, 0.071, 0.120], size=60)   # ms-exact, irregular
  times = np.round(np.concatenate([[0.0], np.cumsum(gaps)[:-1]]), 3).tolist()
  p = write_video(tmp_path / "vfr.mkv", times, rate=25)
  (f25, f4), meta = vio.sample_frames(p, [25, 4])
  n25, n4 = f25.shape[0], f4.shape[0]
  assert n25 == math.floor(meta.duration_sec * 25 + 1e-9) and n4 == math.floor(meta.duration_sec * 4 + 1e-9)
  assert [decode_index(x) for x in f25] == _nearest(times, 25, n25)
  assert [decode_index(x) for x in f4] == _nearest(times, 4, n4)
  (b25,), _ = vio.sample_frames(p, [25], rule="before")
  assert [decode_index(x) for x in b25] == _before(times, 25, n25)


def test_start_offset_is_relative_to_first_frame(tmp_path):
  times = [0.5 + k / 25 for k in range(30)]
  p = write_video(tmp_path / "off.mkv", times)
  (f25,), meta = vio.sample_frames(p, [25])
  assert meta.start_sec == pytest.approx(0.5)
  assert [decode_index(x) for x in f25] == list(range(30))


def test_max_duration_caps_and_stops(tmp_path):
  p = write_video(tmp_path / "v.mp4", [k / 25 for k in range(100)])
  (f25, f4), meta = vio.sample_frames(p, [25, 4], max_duration_sec=2.37)
  assert f25.shape[0] == 59 and f4.shape[0] == 9
  assert meta.duration_sec == pytest.approx(2.37)
  assert meta.num_frames < 100                            # decoding stopped early
  assert [decode_index(x) for x in f25] == list(range(59))


@pytest.mark.parametrize("rot,hflip", [(90, False), (-90, False), (180, False), (90, True)])
def test_rotation_metadata_is_applied(tmp_path, rot, hflip):
  h, w = 32, 48
  img = np.zeros((h, w, 3), np.uint8)
  img[:16, :16] = 255          # white block top-left
  img[:16, -16:, 0] = 255      # red block top-right
  p = write_video(tmp_path / "r.mp4", [k / 25 for k in range(4)], size=(h, w), rotation=rot,
                  hflip=hflip, frames=[img] * 4)
  (f,), meta = vio.sample_frames(p, [25])
  expect = np.rot90(img, k=rot // 90)     # PyAV/ffmpeg rotation is counter-clockwise
  if hflip:
    expect = expect[:, ::-1]
  assert meta.rotation % 360 == rot % 360 and meta.flipped == hflip
  assert f.shape[1:] == expect.shape
  assert np.abs(f[0].astype(int) - expect).mean() < 3


def test_display_matrix_unit():
  # 90 degrees counter-clockwise: ffmpeg matrix a=0, b=-1, c=1, d=0 (16.16)
  m = np.array([0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30])
  img = np.arange(6 * 4 * 1).reshape(6, 4, 1)
  assert np.array_equal(vio.apply_display_transform(img, vio.display_matrix_transform(m)),
                        np.rot90(img, 1))
  for k in range(4):
    assert np.array_equal(vio.apply_display_transform(img, vio.rotation_transform(90 * k)),
                          np.rot90(img, k))


def test_errors_name_the_file(tmp_path):
  missing = tmp_path / "missing.mp4"
  with pytest.raises(vio.VideoError, match="missing.mp4"):
    vio.sample_frames(missing, [25])
  bad = tmp_path / "corrupt.mp4"
  bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  with pytest.raises(vio.VideoError, match="corrupt.mp4"):
    vio.sample_frames(bad, [25])
  # truncated file: header fine, data cut
  good = write_video(tmp_path / "ok.mp4", [k / 25 for k in range(50)])
  trunc = tmp_path / "truncated.mp4"
  trunc.write_bytes(good.read_bytes()[:600])
  with pytest.raises(vio.VideoError, match="truncated.mp4"):
    vpre.load_video_frames(trunc)
  # audio only
  wav = tmp_path / "audio_only.wav"
  import soundfile as sf
  sf.write(wav, np.zeros(8000, np.float32), 16000)
  with pytest.raises(vio.VideoError, match="audio_only.wav.*no video stream"):
    vio.sample_frames(wav, [25])
  # shorter than one Synchformer window (15 frames at 25 fps = 0.6 s)
  short = write_video(tmp_path / "short.mp4", [k / 25 for k in range(15)])
  with pytest.raises(vio.VideoError, match="short.mp4.*Synchformer window"):
    vpre.load_video_frames(short)


def test_bad_rule():
  with pytest.raises(ValueError, match="rule"):
    vio.sample_frames("x.mp4", [25], rule="closest")


def _ffmpeg_fps_filter(path, fps):
  """Frame indices that ffmpeg's own `fps` filter (what torio's frame_rate= uses) outputs."""
  import av.filter
  out = []
  with av.open(str(path)) as c:
    vs = c.streams.video[0]
    g = av.filter.Graph()
    src, f, sink = g.add_buffer(template=vs), g.add("fps", str(fps)), g.add("buffersink")
    src.link_to(f)
    f.link_to(sink)
    g.configure()

    def pull():
      while True:
        try:
          out.append(decode_index(sink.pull().to_ndarray(format="rgb24")))
        except (av.BlockingIOError, av.EOFError):
          return
    for fr in c.decode(vs):
      src.push(fr)
      pull()
    src.push(None)
    pull()
  return out


@pytest.mark.parametrize("seed,start", [(0, 0.0), (1, 0.0), (2, 0.51), (3, 0.013)])
def test_nearest_rule_equals_ffmpeg_fps_filter(tmp_path, seed, start):
  rng = np.random.default_rng(seed)
  gaps = rng.choice([0.010, 0.023, 0.040, 0.071, 0.120], size=60)
  times = np.round(start + np.concatenate([[0.0], np.cumsum(gaps)[:-1]]), 3).tolist()
  p = write_video(tmp_path / "vfr.mkv", times)
  for fps in (25, 4):
    ref = _ffmpeg_fps_filter(p, fps)
    (ours,), meta = vio.sample_frames(p, [fps])
    ours = [decode_index(x) for x in ours]
    assert ours == ref[:len(ours)]
    end = meta.start_sec + meta.duration_sec                          # ffmpeg rounds both grid ends
    assert len(ref) == math.floor(end * fps + 0.5) - math.floor(meta.start_sec * fps + 0.5)
    assert len(ours) == math.floor(meta.duration_sec * fps + 1e-9)    # we keep whole samples only


def test_mmaudio_eval_cap_uses_float_truncation(tmp_path):
  p = write_video(tmp_path / "v.mkv", [k / 25 for k in range(205)])
  (m,), _ = vio.sample_frames(p, [25], rule="mmaudio_eval", max_duration_sec=8.04)
  (n,), _ = vio.sample_frames(p, [25], rule="nearest", max_duration_sec=8.04)
  assert m.shape[0] == int(25.0 * 8.04) == 200       # MMAudio: int(_SYNC_FPS * duration_sec)
  assert n.shape[0] == 201                            # exact: floor(8.04 * 25)
