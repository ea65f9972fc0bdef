"""Resize/crop/normalise semantics and Synchformer windows against the goldens."""
import numpy as np
import pytest

from dreamfoley_jax.video import preprocess as vpre
from video_synth import decode_index, write_video


def test_torchvision_size_rule():
  assert vpre.short_side_size(360, 640, 224) == (224, 398)      # int(224 * 640 / 360) = 398
  assert vpre.short_side_size(640, 360, 224) == (398, 224)
  assert vpre.short_side_size(1080, 1920, 224) == (224, 398)
  assert vpre.short_side_size(100, 100, 224) == (224, 224)
  assert vpre.short_side_size(225, 301, 224) == (224, 299)      # 299.67 truncated


def test_torchvision_crop_rounding():
  # CenterCrop uses Python round (half to even): (225-224)/2 = 0.5 -> 0, (227-224)/2 = 1.5 -> 2
  assert vpre.center_crop_offsets(225, 398, 224) == (0, 87)
  assert vpre.center_crop_offsets(227, 224, 224) == (2, 0)
  with pytest.raises(ValueError):
    vpre.center_crop_offsets(200, 300, 224)


def _bicubic_aa_reference(img, out_h, out_w):
  """Separable antialiased bicubic (a=-0.5, support scaled by the downscale factor), float."""
  def weights(n_in, n_out):
    scale = n_in / n_out
    ss = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
      c = (o + 0.5) * scale
      lo, hi = int(max(0, np.floor(c - 2 * ss + 0.5))), int(min(n_in, np.floor(c + 2 * ss + 0.5)))
      x = (np.arange(lo, hi) - c + 0.5) / ss
      ax = np.abs(x)
      a = -0.5
      k = np.where(ax < 1, (a + 2) * ax**3 - (a + 3) * ax**2 + 1,
                   np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0))
      w[o, lo:hi] = k / k.sum()
    return w
  wh, ww = weights(img.shape[0], out_h), weights(img.shape[1], out_w)
  # horizontal pass first, rounded and clipped to uint8 in between (as PIL's 8-bit resampler)
  tmp = np.clip(np.round(np.einsum("hwc,pw->hpc", img.astype(np.float64), ww)), 0, 255)
  return np.einsum("oh,hpc->opc", wh, tmp)


def test_resize_is_antialiased_bicubic():
  rng = np.random.default_rng(0)
  img = (rng.random((90, 160, 3)) * 255).astype(np.uint8)
  img = np.repeat(np.repeat(img, 4, 0), 4, 1)[:360, :640]     # 360x640, some structure
  out = vpre.resize_short_side(img, 224)
  assert out.shape == (224, 398, 3) and out.dtype == np.uint8
  ref = np.clip(np.round(_bicubic_aa_reference(img, 224, 398)), 0, 255)
  diff = np.abs(out.astype(int) - ref)
  # PIL uses 22-bit fixed-point weights and rounds between passes: a few pixels land 2 levels away
  assert diff.max() <= 2 and diff.mean() < 0.01
  # an upscale (short side 100 -> 224) keeps the same kernel without widening
  small = img[:100, :120]
  out2 = vpre.resize_short_side(small, 224)
  assert out2.shape == (224, 268, 3)
  assert np.abs(out2.astype(int) - np.clip(np.round(_bicubic_aa_reference(small, 224, 268)), 0, 255)).max() <= 2
  # the check discriminates: bilinear is far off
  from PIL import Image
  bil = np.asarray(Image.fromarray(img).resize((398, 224), Image.Resampling.BILINEAR))
  assert np.abs(bil.astype(int) - ref).max() > 10


def test_clip_normalize_matches_golden(fixtures_dir):
  f = np.load(fixtures_dir / "eva_clip_g14_tiny.npz")
  got = vpre.clip_normalize(f["input/image_uint8"])
  ref = f["input/pixel_values"].transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(got, ref)                      # bit-exact


def test_sync_normalize():
  u8 = np.array([0, 128, 255], np.uint8)
  got = vpre.sync_normalize(u8)
  assert got.dtype == np.float32
  exp = (u8.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
  np.testing.assert_array_equal(got, exp)
  assert got[0] == -1.0 and got[2] == 1.0


def test_sync_windows_match_golden(fixtures_dir):
  f = np.load(fixtures_dir / "synchformer_tiny.npz")
  np.testing.assert_array_equal(vpre.sync_window_indices(32), f["output/window_index_T32"])
  np.testing.assert_array_equal(vpre.sync_window_indices(40), f["output/window_index_T40"])
  assert vpre.sync_window_indices(201).shape == (24, 16)      # 8.04 s: 9 trailing frames dropped
  assert vpre.num_sync_windows(15) == 0
  with pytest.raises(ValueError, match="shorter than one Synchformer window"):
    vpre.sync_window_indices(15)
  frames = np.arange(40)[:, None, None, None] * np.ones((1, 2, 2, 3), np.int64)
  w = vpre.sync_windows(frames)
  assert w.shape == (4, 16, 2, 2, 3)
  np.testing.assert_array_equal(w[:, :, 0, 0, 0], f["output/window_index_T40"])


def test_load_video_frames_end_to_end(tmp_path):
  times = [k / 30 for k in range(72)]                        # 2.4 s at 30 fps, 640x360 would be slow:
  p = write_video(tmp_path / "v.mp4", times, size=(120, 200), rate=30)
  v = vpre.load_video_frames(p)
  assert v.clip_u8.shape == (9, 224, 224, 3) and v.sync_u8.shape == (60, 224, 224, 3)
  assert [decode_index(x) for x in v.sync_u8] == [(30 * (2 * i + 1) - 1) // 50 for i in range(60)]
  assert [decode_index(x) for x in v.clip_u8] == [(30 * (2 * i + 1) - 1) // 8 for i in range(9)]
  sp = v.sync_pixels()
  assert sp.shape == (8, 16, 224, 224, 3) and sp.dtype == np.float32      # the length rule: ceil(60 / 8) windows
  assert sp.min() >= -1 and sp.max() <= 1
  cp = v.clip_pixels()
  assert cp.shape == (9, 224, 224, 3)
  # the crop keeps the centre: a 120x200 frame becomes 224x373, cropped at left = round(149/2) = 74
  assert vpre.center_crop_offsets(*vpre.short_side_size(120, 200, 224), 224) == (0, 74)


def _torch_resize_crop(img_u8, size=224):
  """MMAudio's sync transform on one frame: torchvision v2 Resize(224, BICUBIC) on a uint8 tensor runs
  torch's native uint8 antialiased kernel, then CenterCrop(224)."""
  torch = pytest.importorskip("torch")
  h, w = img_u8.shape[:2]
  nh, nw = vpre.short_side_size(h, w, size)
  t = torch.from_numpy(img_u8[None]).permute(0, 3, 1, 2)     # channels-last uint8, as MMAudio's permute
  if (nh, nw) != (h, w):
    t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bicubic", antialias=True,
                                        align_corners=False)
  top, left = vpre.center_crop_offsets(nh, nw, size)
  return t[0].permute(1, 2, 0).numpy()[top:top + size, left:left + size]


@pytest.mark.parametrize("hw", [(720, 1280), (1280, 720), (360, 640), (240, 426), (225, 301), (224, 300),
                                (100, 120), (50, 60), (224, 224), (1080, 1440)])
def test_torch_method_is_bit_exact_to_torch_uint8_kernel(hw):
  rng = np.random.default_rng(hw[0] * 7 + hw[1])
  noise = (rng.random(hw + (3,)) * 255).astype(np.uint8)
  yy, xx = np.mgrid[:hw[0], :hw[1]]
  edges = np.stack([(xx // 7 % 2) * 255, (yy // 5 % 2) * 255, (xx + yy) % 256], -1).astype(np.uint8)
  for img in (noise, edges):
    np.testing.assert_array_equal(vpre.resize_crop(img, method="torch"), _torch_resize_crop(img))
  # PIL rounds differently: the two methods are close but not equal
  d = np.abs(vpre.resize_crop(noise, method="pil").astype(int) - _torch_resize_crop(noise))
  assert d.max() <= 2 and d.mean() < 0.05


def test_sync_frames_match_mmaudio_transform(tmp_path):
  """load_video_frames' 25 fps frames == MMAudio's sync transform on the same decoded frames."""
  from dreamfoley_jax.video import io as vio
  rng = np.random.default_rng(5)
  frames = [(rng.random((90, 160, 3)) * 255).astype(np.uint8) for _ in range(20)]
  p = write_video(tmp_path / "n.mkv", [k / 25 for k in range(20)], size=(90, 160), frames=frames)
  v = vpre.load_video_frames(p)
  (raw,), _ = vio.sample_frames(p, [25])
  assert v.sync_u8.shape == (20, 224, 224, 3)
  for k in range(0, 20, 7):
    np.testing.assert_array_equal(v.sync_u8[k], _torch_resize_crop(raw[k]))
  # 4 fps sample 0 is the last frame before 0.125 s = frame 3; the CLIP path uses Pillow (open_clip)
  np.testing.assert_array_equal(v.clip_u8[0], vpre.resize_crop(raw[3], method="pil"))


def test_normalize_lut_in_jit_is_bit_exact():
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(3)
  u8 = (rng.random((2, 8, 8, 3)) * 256).astype(np.uint8)
  for kind, fn in (("clip", vpre.clip_normalize), ("sync", vpre.sync_normalize)):
    lut = jnp.asarray(vpre.normalize_lut(kind))
    got = jax.jit(lambda x: lut[x.astype(jnp.int32), jnp.arange(3)])(u8)
    np.testing.assert_array_equal(np.asarray(got), fn(u8))


def test_frames_batch_pads_masks_and_cuts_to_the_target_length():
  """The one frames-mode batch builder (generate.Generator and the main job): zero padding, masks on the real
  frames, a missing video all masked, and lengths cutting another clip's video (and its 4 fps frames) short."""
  rng = np.random.default_rng(0)
  v = [{"frames_sync": rng.integers(1, 255, (n, 4, 4, 3), np.uint8),
        "frames_clip": rng.integers(1, 255, (nc, 4, 4, 3), np.uint8)} for n, nc in ((30, 5), (50, 8))]
  b = vpre.frames_batch([v[0], None, v[1]], 40, 7, 4)
  assert b["frames_sync"].shape == (3, 40, 4, 4, 3) and b["frames_clip"].shape == (3, 7, 4, 4, 3)
  np.testing.assert_array_equal(b["frames_sync_mask"].sum(1), [30, 0, 40])
  np.testing.assert_array_equal(b["frames_clip_mask"].sum(1), [5, 0, 7])
  np.testing.assert_array_equal(b["frames_sync"][2], v[1]["frames_sync"][:40])
  assert not b["frames_sync"][0, 30:].any() and not b["frames_sync"][1].any()
  cut = vpre.frames_batch([v[1]], 40, 7, 4, lengths=[26])
  np.testing.assert_array_equal(cut["frames_sync_mask"].sum(1), [26])
  np.testing.assert_array_equal(cut["frames_clip_mask"].sum(1), [5])         # ceil(26 * 4 / 25)
  assert not cut["frames_sync"][0, 26:].any() and not cut["frames_clip"][0, 5:].any()
