"""ImageBind vision + audio towers (IB-score): converter and Flax forward vs the original code, the embedder."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from dreamfoley_jax import sharding
from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.eval import embedders, frontends
from dreamfoley_jax.eval.embedders import imagebind as ib
from dreamfoley_jax.eval.embedders.base import random_state_dict

TINY = ib.ImageBindConfig.tiny()


def _expand(x, f):
  """tests/fixtures/make/make_imagebind_golden.py expand_inputs: nearest upsampling + a fixed cosine pattern."""
  x = np.repeat(np.repeat(x, f, axis=-2), f, axis=-1)
  h, w = x.shape[-2:]
  return (x + 0.3 * np.cos(0.7 * np.arange(h)[:, None] + 1.3 * np.arange(w)[None, :])).astype(np.float32)


@pytest.fixture(scope="module")
def golden(fixtures_dir):
  f = np.load(fixtures_dir / "imagebind_tiny.npz")
  meta = json.loads(bytes(f["meta"]).decode())
  vision = _expand(f["input/vision_small"], meta["upsample"]["vision"])  # (1, S, C, T, H, W) torch layout
  audio = _expand(f["input/audio_small"], meta["upsample"]["audio"])    # (1, S, 1, M, F)
  assert vision.shape == (1, 2, 3, 2, 224, 224) and audio.shape == (1, 3, 1, 128, 204)
  np.testing.assert_allclose(vision.astype(np.float64).sum(), f["derived/vision_input_sum"], rtol=1e-6)
  np.testing.assert_allclose(audio.astype(np.float64).sum(), f["derived/audio_input_sum"], rtol=1e-6)
  sd = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
  return {"f": f, "sd": sd, "vision": vision.transpose(0, 1, 3, 4, 5, 2), "audio": audio[:, :, 0], "meta": meta}


@pytest.fixture(scope="module")
def converted(golden):
  return ib.convert_imagebind(golden["sd"], TINY)


def test_tiny_config_matches_the_golden_constructor(golden):
  m = golden["meta"]["constructor"]
  assert (TINY.vision.width, TINY.vision.depth, TINY.vision.num_heads) == (
      m["vision_embed_dim"], m["vision_num_blocks"], m["vision_num_heads"])
  assert (TINY.audio.width, TINY.audio.depth, TINY.audio.num_heads) == (
      m["audio_embed_dim"], m["audio_num_blocks"], m["audio_num_heads"])
  assert TINY.vision.out_dim == TINY.audio.out_dim == m["out_embed_dim"]


@pytest.mark.parametrize("modality", ["vision", "audio"])
def test_forward_matches_reference(golden, converted, modality):
  f = golden["f"]
  model = ib.ImageBind(TINY)
  method = ib.ImageBind.vision if modality == "vision" else ib.ImageBind.audio
  out, aux = jax.jit(lambda v, x: model.apply(v, x, method=method))(converted, golden[modality])
  # fp32 on both sides; the 1e-5 margin covers summation-order differences (observed max abs error:
  # vision 1e-7, audio 2e-6 on values of magnitude 0.5 and 10)
  np.testing.assert_allclose(np.asarray(aux["head"])[0], f[f"inter/{modality}_head"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["clips"])[0], f[f"inter/{modality}_clips"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out), f[f"output/{modality}"], rtol=1e-5, atol=1e-5)
  norms = np.linalg.norm(np.asarray(aux["clips"])[0], axis=-1)
  # per clip: unit vectors (vision) or 20 x unit (audio's fixed logit scale); the mean over clips is neither
  np.testing.assert_allclose(norms, 1.0 if modality == "vision" else 20.0, rtol=1e-5)
  assert np.linalg.norm(np.asarray(out)) < norms.max() * (1 - 1e-4)
  # the clips' inputs matter far beyond the tolerance (a wrong patch layout would show)
  heads = f[f"inter/{modality}_head"]
  assert np.abs(heads[1:] - heads[:1]).max() > 5e-2


def test_single_image_is_repeated_to_two_frames(golden, converted):
  model = ib.ImageBind(TINY)
  img = golden["vision"][:, :1, :1]  # (1, 1 clip, T=1, H, W, C)
  out, _ = model.apply(converted, img, method=ib.ImageBind.vision)
  np.testing.assert_allclose(np.asarray(out), golden["f"]["output/vision_image"], rtol=1e-5, atol=1e-5)


def test_huge_layout_matches_the_reference_constructor(fixtures_dir):
  ref = json.loads((fixtures_dir / "imagebind_huge_shapes.json").read_text())
  want = {k: tuple(v) for k, v in ref["vision_audio_keys"].items()}
  assert ib.torch_shapes(ib.ImageBindConfig.huge()) == want
  assert sum(int(np.prod(s)) for s in want.values()) == ref["num_params"]
  assert set(ref["ignored_key_counts"]) == set(ib.IGNORED_MODALITIES)


def test_converter_fills_exactly_the_model_tree_with_logical_axes(converted, golden):
  model = ib.ImageBind(TINY)
  boxed = jax.eval_shape(model.init, jax.random.key(0), golden["vision"][:, :1], golden["audio"][:, :1])
  flat_init = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))}
  flat_conv = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(converted)}
  assert set(flat_init) == set(flat_conv)
  for k, v in flat_init.items():
    assert isinstance(v, nn.Partitioned), k  # every param carries logical axis names
    assert v.value.shape == flat_conv[k].shape, k
    assert set(n for n in v.names if n) <= {r[0] for r in sharding.LOGICAL_RULES}, (k, v.names)


def test_bfloat16_compute_stays_close(golden, converted):
  c = ib.ImageBindConfig(dataclasses.replace(TINY.vision, dtype="bfloat16"),
                         dataclasses.replace(TINY.audio, dtype="bfloat16"))
  out, _ = ib.ImageBind(c).apply(converted, golden["audio"], method=ib.ImageBind.audio)
  ref = golden["f"]["output/audio"]
  cos = float(np.sum(np.asarray(out, np.float32) * ref) / np.linalg.norm(out) / np.linalg.norm(ref))
  assert cos > 0.999


def test_bad_keys_raise_one_error_naming_the_file_and_keys(golden, tmp_path):
  torch = pytest.importorskip("torch")
  sd = dict(golden["sd"])
  sd["modality_trunks.text.blocks.0.attn.in_proj_weight"] = np.zeros((3, 1), np.float32)  # ignored on purpose
  sd["modality_preprocessors.imu.cls_token"] = np.zeros((1, 1, 1), np.float32)
  ok = tmp_path / "ok.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, ok)
  ib.convert_imagebind(ib.TensorSource(ok), TINY)  # extra towers are ignored
  del sd["modality_trunks.audio.blocks.1.attn.bias_k"]
  sd["modality_trunks.vision.blocks.0.attn.in_proj_weight"] = np.zeros((4, 4), np.float32)
  sd["modality_trunks.vision.ln_post.weight"] = np.zeros((16,), np.float32)
  bad = tmp_path / "imagebind_huge.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, bad)
  with pytest.raises(ConversionError) as e:
    ib.convert_imagebind(ib.TensorSource(bad), TINY)
  msg = str(e.value)
  assert str(bad) in msg
  for k in ("modality_trunks.audio.blocks.1.attn.bias_k", "modality_trunks.vision.blocks.0.attn.in_proj_weight",
            "modality_trunks.vision.ln_post.weight"):
    assert k in msg
  assert "modality_trunks.text" not in msg and "modality_preprocessors.imu" not in msg


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  torch = pytest.importorskip("torch")
  sd = random_state_dict(ib.torch_shapes(TINY), seed=3)
  sd["modality_postprocessors.audio.1.log_logit_scale"] = np.asarray(np.log(20.0), np.float32)
  sd["modality_postprocessors.text.1.log_logit_scale"] = np.asarray(np.log(1 / 0.07), np.float32)
  path = tmp_path_factory.mktemp("ib") / "imagebind_huge.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, path)
  return path


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
  return embedders.build("imagebind", tiny_checkpoint.parent, config=TINY)


def test_registry():
  assert "imagebind" in embedders.NATIVE_FLAX and "imagebind_torch" not in embedders.NATIVE_FLAX
  assert embedders.REGISTRY["imagebind"] is ib.ImageBindEmbedder
  assert embedders.EXPECTED_FILES["imagebind"] == ("imagebind_huge.pth",)
  with pytest.raises(embedders.MissingWeightsError, match="imagebind_huge.pth"):
    embedders.build("imagebind", "/nonexistent/dir")


def test_embedder_audio(embedder):
  assert embedder.native and embedder.needs_video and embedder.name == "imagebind"
  rng = np.random.default_rng(0)
  wav = (0.1 * rng.standard_normal((2, 22050 * 5))).astype(np.float32)  # stereo 22.05 kHz, 5 s
  a = embedder.audio_features(wav, 22050, 8.0, "a.wav")["ib_audio"]
  b = embedder.audio_features(wav, 22050, 8.0, "a.wav")["ib_audio"]
  assert a.shape == (TINY.audio.out_dim,) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  # the same path by hand: the reference's clip sampling and the tower's mean over the 3 clips
  clips = frontends.imagebind_audio_clips(frontends.resample(wav, 22050, 16000))[:, 0][None].astype(np.float32)
  out, aux = embedder.model.apply(embedder.variables, clips, method=ib.ImageBind.audio)
  np.testing.assert_allclose(a, np.asarray(out)[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(aux["clips"])[0], axis=-1), 20.0, rtol=1e-5)
  c = embedder.audio_features(0.5 * wav, 22050, 8.0, "a.wav")["ib_audio"]
  assert not np.allclose(a, c)


def test_embedder_video(embedder):
  rng = np.random.default_rng(1)
  crops = rng.standard_normal((3, 3, 3, 224, 224)).astype(np.float32)  # 3 crops, T=3 (6 s at 0.5 fps)
  v = embedder.video_features({"ib_crops": crops}, "v.mp4")["ib_video"]
  assert v.shape == (TINY.vision.out_dim,)
  np.testing.assert_array_equal(v, embedder.video_features({"ib_crops": crops}, "v.mp4")["ib_video"])
  clips = ib.video_clips(crops)
  assert clips.shape == (6, 2, 224, 224, 3)
  np.testing.assert_array_equal(clips[4], crops[1, 1:3].transpose(0, 2, 3, 1))  # clip 1 (frames 1-2), crop 1
  _, aux = embedder.model.apply(embedder.variables, clips[None], method=ib.ImageBind.vision)
  per_clip = np.asarray(aux["clips"])[0]
  np.testing.assert_allclose(np.linalg.norm(per_clip, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(v, per_clip.mean(0), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="short.mp4.*2 frames"):
    embedder.video_features({"ib_crops": crops[:, :1]}, "short.mp4")


def test_fingerprint(embedder, tiny_checkpoint):
  fp = embedder.fingerprint()
  assert str(tiny_checkpoint) in fp and "flax" in fp
  assert fp == embedders.build("imagebind", tiny_checkpoint, config=TINY).fingerprint()
  st = tiny_checkpoint.stat()
  os.utime(tiny_checkpoint, (st.st_atime, st.st_mtime + 10))
  try:
    assert embedders.build("imagebind", tiny_checkpoint, config=TINY).fingerprint() != fp
  finally:
    os.utime(tiny_checkpoint, (st.st_atime, st.st_mtime))
  assert ib.ImageBindEmbedder(seed=0, config=TINY).fingerprint() != fp


@pytest.mark.slow
def test_huge_config_shapes_random_weights():
  c = ib.ImageBindConfig.huge()
  e = ib.ImageBindEmbedder(seed=0, config=c)
  n = sum(x.size for x in jax.tree.leaves(e.variables))
  assert n == 719_065_089  # imagebind_huge_shapes.json num_params
  rng = np.random.default_rng(0)
  a = e.audio_features(0.1 * rng.standard_normal((1, 16000 * 4)).astype(np.float32), 16000, 4.0, "a")["ib_audio"]
  crops = rng.standard_normal((3, 2, 3, 224, 224)).astype(np.float32)
  v = e.video_features({"ib_crops": crops}, "v")["ib_video"]
  assert a.shape == v.shape == (1024,)
  assert np.all(np.isfinite(a)) and np.all(np.isfinite(v))
  assert 0.0 < np.linalg.norm(v) <= 1.0 + 1e-5  # mean of 3 unit vectors (3 crops x 1 clip)
