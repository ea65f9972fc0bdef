"""generate: video file -> features -> sampling -> codec -> wav / remuxed mp4 / spectrogram, end to end."""
import json
import re

import av
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from dreamfoley_jax import checks
from dreamfoley_jax import generate as G
from dreamfoley_jax import sampling as S
from dreamfoley_jax.models import foley, qwen2

CFG = foley.FoleyConfig(
    decoder=qwen2.PRESETS["tiny"].replace(vocab_size=100, hidden_size=32, intermediate_size=48,
                                          num_attention_heads=4, num_key_value_heads=2),
    num_codebooks=4, codebook_size=16, loss_weights=(0.4, 0.3, 0.2, 0.1), sync_dim=12, clip_dim=8,
    null_text_len=2, null_video_len=3)


def make_video(path, seconds, fps=25, size=(64, 48)):
  with av.open(str(path), "w") as c:
    s = c.add_stream("mpeg4", rate=fps)
    s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
    for i in range(int(round(seconds * fps))):
      img = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
      for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in s.encode(None):
      c.mux(p)


class ToneCodec:
  """Stand-in codec: each frame's codebook-0 code picks a tone (960 samples per 25 Hz frame)."""
  sample_rate = 24000

  def __init__(self):
    self.calls = []

  def decode(self, codes_KxT):
    self.calls.append(np.array(codes_KxT))
    t = np.arange(960) / self.sample_rate
    return np.concatenate([0.3 * np.sin(2 * np.pi * (200 + 50 * c) * t) for c in codes_KxT[0]])


def feature_fn(path):
  n = int(round(G.probe_duration(path) * 25))
  rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
  return {"sync_feats": rng.normal(size=(n, CFG.sync_dim)).astype(np.float32),
          "clip_feats": rng.normal(size=(int(np.ceil(n * 4 / 25)), CFG.clip_dim)).astype(np.float32),
          "video_mask": np.ones(n, bool)}


@pytest.fixture(scope="module")
def params():
  b = {"text_ids": jnp.zeros((1, 4), jnp.int32), "video_mask": jnp.ones((1, 8), bool),
       "sync_feats": jnp.zeros((1, 8, CFG.sync_dim)), "clip_feats": jnp.zeros((1, 2, CFG.clip_dim)),
       "audio_ids": jnp.zeros((1, 6, 4), jnp.int32)}
  return nn.unbox(jax.jit(foley.DreamFoley(CFG).init)(jax.random.key(0), b)["params"])


def test_buckets_group_by_duration():
  assert G.buckets([30, 120, 45, 110, 20, 49], 50, 2) == [[0, 2], [4, 5], [1, 3]]


def test_generate_end_to_end(tmp_path, params):
  make_video(tmp_path / "a.mp4", 3.0)        # longer than the 2 s window below: windowed continuation
  make_video(tmp_path / "b.mp4", 1.2)
  (tmp_path / "list.csv").write_text("video,caption,negative\na.mp4,dog barking,\n,thunder,\n")
  with pytest.raises(G.GenerateError, match="needs a duration"):
    G.read_csv(tmp_path / "list.csv")
  (tmp_path / "list.csv").write_text("video,caption,negative,duration\na.mp4,dog barking,,\nb.mp4,,rain,\n"
                                     ",thunder,,0.8\n")
  items = G.read_csv(tmp_path / "list.csv")
  assert [it.video is None for it in items] == [False, False, True]
  codec = ToneCodec()
  gen = G.Generator(CFG, params, codec, feature_fn, tokenize=lambda s: [ord(ch) % 100 for ch in s],
                    sample_cfg=S.SampleConfig(cfg_scale=3.0), window_frames=50, context_frames=10,
                    batch_size=2, bucket_frames=25, sample_rate=48000, show_progress=False)
  res = gen.run(items, tmp_path / "out")
  assert [r["name"] for r in res] == ["a", "b", "clip2"]
  assert [r["frames"] for r in res] == [75, 30, 20]
  for r, secs in zip(res, (3.0, 1.2, 0.8)):
    assert r["codes"].shape == (4, r["frames"])
    audio, sr = sf.read(r["wav"])
    assert sr == 48000 and len(audio) == int(round(secs * 48000))
    assert np.abs(audio).max() > 0.1
    assert r["png"].stat().st_size > 5000
  # The codec got exactly the generated frame codes.
  assert sorted(c.shape[1] for c in codec.calls) == [20, 30, 75]
  # mp4: the original video packets copied unchanged, plus one AAC audio track of the clip's length.
  assert "mp4" not in res[2]
  with av.open(str(tmp_path / "a.mp4")) as src, av.open(str(res[0]["mp4"])) as out:
    src_pk = [bytes(p) for p in src.demux(video=0) if p.size]
    out_pk = [bytes(p) for p in out.demux(video=0) if p.size]
    assert src_pk == out_pk
    assert out.streams.video[0].codec_context.name == "mpeg4"
  with av.open(str(res[0]["mp4"])) as out:
    a = out.streams.audio[0]
    assert a.codec_context.name == "aac" and a.rate == 48000
    n = sum(f.samples for f in out.decode(audio=0))
    assert abs(n - 3.0 * 48000) < 3 * 1024


def test_generate_errors(tmp_path, params):
  gen = G.Generator(CFG, params, ToneCodec(), feature_fn, tokenize=lambda s: [1], show_progress=False)
  with pytest.raises(FileNotFoundError, match="missing.mp4"):
    gen.run([G.Item(video=str(tmp_path / "missing.mp4"))], tmp_path, strict=True)
  (tmp_path / "bad.mp4").write_bytes(b"not a video")
  with pytest.raises(G.GenerateError, match="bad.mp4"):
    gen.run([G.Item(video=str(tmp_path / "bad.mp4"))], tmp_path, strict=True)
  # Without strict: both items reported (item, reason) in failures.json, no output written for either.
  res = gen.run([G.Item(video=str(tmp_path / "missing.mp4")), G.Item(video=str(tmp_path / "bad.mp4"))],
                tmp_path / "o")
  assert res[0]["error"] == "no such video"
  assert res[1]["error"].startswith("not a video PyAV can open (InvalidDataError")
  fails = json.loads((tmp_path / "o" / "failures.json").read_text())
  assert [f["item"] for f in fails] == [str(tmp_path / "missing.mp4"), str(tmp_path / "bad.mp4")]
  assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["failures.json"]


def test_build_generator_names_missing_paths():
  with pytest.raises(checks.UsageError, match="--checkpoint, --codec_checkpoint, --tokenizer"):
    G.build_generator("experiments/tiny.py")
  g = G.build_generator("experiments/tiny.py", smoke_random=True, sample_overrides={"cfg_scale": 2.0})
  assert g.sample_cfg == S.SampleConfig(temperature=1.0, top_k=25, top_p=0.9, cfg_scale=2.0)
  assert (g.window_frames, g.context_frames, g.bucket_frames) == (250, 75, 50)


def test_generate_on_mesh_equals_single_device(tmp_path, params):
  """Generator(mesh=...) (tools/generate.py --mesh): the same codes as on one device, over two windows."""
  from dreamfoley_jax import sharding

  vid = tmp_path / "v.mp4"
  make_video(vid, 1.3)
  items = [G.Item(video=str(vid), caption="a dog"), G.Item(video=str(vid), caption="rain")]
  out = {}
  for name, mesh in (("one", None), ("mesh", sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))):
    gen = G.Generator(CFG, params, ToneCodec(), feature_fn, tokenize=lambda s: [len(s) % 50 + 1],
                      sample_cfg=S.SampleConfig(temperature=0.0), window_frames=20, context_frames=6,
                      show_progress=False, write_mp4=False, write_png=False, mesh=mesh)
    out[name] = gen.run(items, tmp_path / name)
    if mesh is not None:       # placed once at construction: the windows' sample calls reuse these arrays
      k = gen.params["decoder"]["layers_0"]["mlp"]["up_proj"]["kernel"]
      assert len(k.sharding.device_set) == 8
      assert S.place_params(CFG, gen.params, mesh, S.mesh_rules(mesh, 2))["decoder"]["layers_0"]["mlp"][
          "up_proj"]["kernel"] is k
  for a, b in zip(out["one"], out["mesh"]):
    assert a["frames"] == b["frames"] == 32      # 1.3 s at 25 fps as PyAV probes it: two windows of 20
    np.testing.assert_array_equal(a["codes"], b["codes"])


def test_parse_mesh_spec():
  from dreamfoley_jax import sharding

  assert sharding.parse_mesh_spec("") is None
  assert sharding.parse_mesh_spec("tensor=8") == {"tensor": 8}
  assert sharding.parse_mesh_spec("data=-1, tensor=2") == {"data": -1, "tensor": 2}
  with pytest.raises(ValueError, match=re.escape("expected comma-separated data|fsdp|tensor=SIZE")):
    sharding.parse_mesh_spec("model=8")
