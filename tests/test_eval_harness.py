"""Pairing rules, caches, video sampling and an end-to-end harness run on synthetic media.

PANNs, VGGish and PaSST run as the real Flax ports with tiny random weights; CLAP, ImageBind and
Synchformer (PyTorch-delegating, or too heavy for this test) are replaced by seeded random projections
that use the same front ends and input rules, so every metric path of the harness is exercised.
"""
import json
import pathlib

import numpy as np
import pytest
import soundfile as sf

from dreamfoley_jax.eval import frontends, harness, media, metrics
from dreamfoley_jax.eval.embedders import base, panns, passt, vggish

DUR = 8.0


# --------------------------------------------------------------------------------------------------
# Synthetic media
# --------------------------------------------------------------------------------------------------


def _write_video(path, seconds, *, fps=25, seed=0, audio=True):
  import av

  rng = np.random.default_rng(seed)
  with av.open(str(path), "w") as c:
    v = c.add_stream("mpeg4", rate=fps)
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    a = c.add_stream("aac", rate=16000, layout="mono") if audio else None
    for i in range(int(seconds * fps)):
      img = np.full((48, 64, 3), (i * 5) % 255, np.uint8)
      img[:, : (i % 64)] = 255
      for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in v.encode():
      c.mux(p)
    if a is not None:
      sig = (np.sin(2 * np.pi * 330 * np.arange(int(16000 * seconds)) / 16000) * 0.3
             + rng.normal(size=int(16000 * seconds)) * 0.05).astype(np.float32)
      for s in range(0, len(sig), 1024):
        fr = av.AudioFrame.from_ndarray(sig[None, s:s + 1024], format="fltp", layout="mono")
        fr.sample_rate = 16000
        for p in a.encode(fr):
          c.mux(p)
      for p in a.encode():
        c.mux(p)


class _Proj(base.Embedder):
  """Seeded random projection of mean 16 kHz log-mel: a stand-in with the real input rules."""

  def __init__(self, name, dims, seed, **kw):
    super().__init__(name=name, native=False, **kw)
    r = np.random.default_rng(seed)
    self.w = {k: r.normal(size=(64, d)) for k, d in dims.items()}

  def _feat(self, x16k):
    return frontends.panns_logmel(x16k).mean(0) / 10

  def fingerprint(self):
    return f"proj-{self.name}"


class FakeClap(_Proj):
  def __init__(self):
    super().__init__("clap", {"clap_audio": 16}, 2, needs_text=True)
    self.t = np.random.default_rng(3).normal(size=(256, 16))

  def audio_features(self, wav, sr, dur, name):
    x = frontends.clap_input(frontends.prepare_audio(wav, sr, 48000, dur))
    return {"clap_audio": self._feat(frontends.resample(x, 48000, 16000)) @ self.w["clap_audio"]}

  def text_features(self, caption):
    h = np.bincount(np.frombuffer(caption.encode(), np.uint8), minlength=256).astype(float)
    return {"clap_text": h @ self.t}


class FakeImageBind(_Proj):
  def __init__(self):
    super().__init__("imagebind", {"ib_audio": 16}, 4, needs_video=True)
    self.v = np.random.default_rng(5).normal(size=(3, 16))

  def audio_features(self, wav, sr, dur, name):
    clips = frontends.imagebind_audio_clips(frontends.resample(np.atleast_2d(wav), sr, 16000))
    assert clips.shape == (3, 1, 128, 204)
    return {"ib_audio": clips.mean(axis=(0, 1, 3))[:64] @ self.w["ib_audio"]}

  def video_features(self, video, name):
    crops = video["ib_crops"]
    assert crops.shape == (3, 4, 3, 224, 224)  # 3 crops x (0.5 fps * 8 s) frames
    return {"ib_video": crops.mean(axis=(0, 1, 3, 4)) @ self.v}


class FakeSynchformer(_Proj):
  def __init__(self):
    super().__init__("synchformer", {}, 6, needs_video=True)
    r = np.random.default_rng(7)
    self.wa, self.wv, self.head = r.normal(size=(128, 8)), r.normal(size=(3, 8)), r.normal(size=(16, 21))

  def audio_features(self, wav, sr, dur, name):
    segs = frontends.check_sync_audio(wav, sr, dur, name)  # (S, 66, 128), raises if too short
    return {"sync_audio": (segs.mean(1) @ self.wa)[:, None]}  # (S, 1, 8)

  def video_features(self, video, name):
    v = video["sync_frames"]
    n = metrics.num_segments(len(v), 16, 8)
    segs = np.stack([v[i * 8:i * 8 + 16].mean(axis=(0, 2, 3)) for i in range(n)])
    return {"sync_video": (segs @ self.wv)[:, None]}

  def sync_logits(self, video, audio):
    self.window_shapes = []
    out = []
    for v, a in metrics.desync_window_pairs(video, audio):
      self.window_shapes.append((v.shape[0], a.shape[0]))
      out.append(np.concatenate([v.mean((0, 1)), a.mean((0, 1))]) @ self.head)
    return np.stack(out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("evalset")
  vid, gen = root / "videos", root / "gen"
  vid.mkdir()
  gen.mkdir()
  for i, n in enumerate(["a", "b", "c"]):
    _write_video(vid / f"{n}.mp4", DUR + 0.2, seed=i)
  rng = np.random.default_rng(0)
  # a: 44.1 kHz stereo; b-0: a second-sample name; extra generated clips pad IS to >= 10 clips.
  sf.write(gen / "a.wav", rng.normal(size=(int(44100 * 8.5), 2)) * 0.1, 44100)
  sf.write(gen / "b-0.flac", rng.normal(size=int(16000 * DUR)) * 0.1, 16000)
  for k in range(9):
    sf.write(gen / f"extra{k}.wav", rng.normal(size=int(16000 * DUR)) * 0.1 * (k + 1), 16000)
  (root / "captions.csv").write_text("name,caption\na,a dog barks\nb,\"rain, then thunder\"\n")
  return root


def _embedders(with_sync=True):
  e = {"panns": panns.PannsEmbedder(config=panns.Cnn14Config.tiny(), seed=0),
       "vggish": vggish.VGGishEmbedder(config=vggish.VGGishConfig.tiny(), seed=0),
       "passt": passt.PasstEmbedder(config=passt.PasstConfig.tiny(), seed=0), "clap": FakeClap(), "imagebind": FakeImageBind()}
  if with_sync:
    e["synchformer"] = FakeSynchformer()
  return e


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_pairing_rules():
  refs = {"vid1": 0, "vid2": 0, "vid3": 0, "x-1": 0}
  p = harness.pair({"vid1": 0, "vid2-3": 0, "x-1": 0, "other": 0, "vid1-0": 0}, refs, {"vid1": "c"})
  assert p.gen_to_ref == {"vid1": "vid1", "vid2-3": "vid2", "x-1": "x-1", "vid1-0": "vid1"}
  assert p.gen_unpaired == ["other"] and p.ref_unpaired == ["vid3"]
  assert p.no_caption == ["vid2", "x-1"]
  assert harness.match_name("vid2_3", refs) is None  # only '-<k>' suffixes are sample indices


def test_duplicate_stems_and_bad_csv(tmp_path):
  (tmp_path / "a.wav").write_bytes(b"")
  (tmp_path / "a.flac").write_bytes(b"")
  with pytest.raises(ValueError, match="two files share the name 'a'"):
    harness.list_media(tmp_path, media.AUDIO_EXTS)
  (tmp_path / "c.csv").write_text("id,text\n1,x\n")
  with pytest.raises(ValueError, match="'name' and 'caption'"):
    harness.read_captions(tmp_path / "c.csv")


def test_video_sampling_counts(dataset):
  v = media.sync_video_input(dataset / "videos" / "a.mp4", DUR)
  assert v.shape == (200, 3, 224, 224) and v.min() >= -1 and v.max() <= 1
  assert metrics.num_segments(len(v), 16, 8) == 24
  ib = media.imagebind_video_input(dataset / "videos" / "a.mp4", DUR)
  assert ib.shape == (3, 4, 3, 224, 224)
  # Frame n at 25 fps of a 25 fps source is source frame n (the white bar grows 1 px per frame).
  raw = media.sample_frames(dataset / "videos" / "a.mp4", 25.0, 40)
  assert [int((raw[i, 24, :, 0] > 200).sum()) >= i % 64 for i in (0, 10, 39)] == [True] * 3
  with pytest.raises(ValueError, match="video too short"):
    media.sample_frames(dataset / "videos" / "a.mp4", 25.0, 400)
  wav, sr = media.load_audio(dataset / "videos" / "a.mp4")
  assert sr == 16000 and wav.shape[0] == 1 and wav.shape[1] >= 16000 * DUR


def test_end_to_end_with_cache(dataset, tmp_path):
  emb = _embedders()
  inp = harness.EvalInputs(gen_dir=str(dataset / "gen"), video_dir=str(dataset / "videos"),
                           captions_csv=str(dataset / "captions.csv"), duration_s=DUR,
                           cache_dir=str(tmp_path / "cache"))
  r = harness.evaluate(inp, emb)
  m = r["metrics"]
  # ISC-PASST is scored on the paired clips as av-benchmark does: 2 here, fewer than its 10 splits.
  assert set(m) == {"FD-PANN", "FD-VGG", "FD-PASST", "KL-PANNS-softmax", "KL-PASST-softmax", "KL",
                    "ISC-PANNS-mean", "ISC-PANNS-std", "IB-Score", "DeSync", "LAION-CLAP-Score"}
  assert r["counts"]["ISC-PASST"] == 2 and "ISC-PASST: skipped, 2 generated clips < 10 splits" in r["notes"]
  assert all(np.isfinite(v) for v in m.values())
  assert m["KL"] == pytest.approx((m["KL-PANNS-softmax"] + m["KL-PASST-softmax"]) / 2)
  assert r["pairing"]["generated_without_reference"] == [f"extra{k}" for k in range(9)]
  assert r["pairing"]["reference_without_generated"] == ["c"]
  assert r["pairing"]["paired_without_caption"] == []
  assert r["counts"]["DeSync"] == 2 and r["counts"]["ISC-PANNS"] == 11 and r["counts"]["KL-PANNS-softmax"] == 2
  assert r["counts"]["FD-VGG-patches-generated"] == 11 * 8  # 8 patches per 8 s clip
  # Both 14-segment windows of 24-segment streams were scored.
  assert emb["synchformer"].window_shapes == [(14, 14), (14, 14)]
  assert m["DeSync"] in {abs(g) for g in metrics.DESYNC_GRID_S} or 0 <= m["DeSync"] <= 2

  # Independent recomputation of two metrics from direct embedder calls (pairing + sets + truncation).
  p = emb["panns"]
  gen_a = p.audio_features(*media.load_audio(dataset / "gen" / "a.wav"), DUR, "a")
  gen_b = p.audio_features(*media.load_audio(dataset / "gen" / "b-0.flac"), DUR, "b")
  gt = {n: p.audio_features(*media.load_audio(dataset / "videos" / f"{n}.mp4"), DUR, n) for n in "abc"}
  want_kl = metrics.kl_softmax(np.stack([gt["a"]["panns_logits"], gt["b"]["panns_logits"]]),
                               np.stack([gen_a["panns_logits"], gen_b["panns_logits"]]))
  assert m["KL-PANNS-softmax"] == pytest.approx(want_kl, rel=1e-6)
  f_gen = [gen_a, gen_b] + [p.audio_features(*media.load_audio(dataset / "gen" / f"extra{k}.wav"), DUR, "x")
                            for k in range(9)]
  want_fd = metrics.frechet_distance(np.stack([f["panns_2048"] for f in f_gen]),
                                     np.stack([gt[n]["panns_2048"] for n in "abc"]))
  assert m["FD-PANN"] == pytest.approx(want_fd, rel=1e-6)

  # Re-run: everything comes from the cache and the numbers are identical.
  r2 = harness.evaluate(inp, _embedders())
  assert r2["cache"]["misses"] == 0 and r2["cache"]["hits"] > 0
  assert r2["metrics"] == m
  # A re-generated file invalidates only its own entries.
  import os
  st = os.stat(dataset / "gen" / "extra3.wav")
  os.utime(dataset / "gen" / "extra3.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  r3 = harness.evaluate(inp, _embedders())
  assert r3["cache"]["misses"] == 3  # panns, vggish, passt (extra3 has no video/caption)
  assert r3["metrics"] == m

  table = harness.write_outputs(r, tmp_path / "out" / "m.json", row_name="tiny", ib_scale=100)
  saved = json.loads((tmp_path / "out" / "m.json").read_text())
  assert saved["metrics"]["KL"] == m["KL"] and saved["ib_scale"] == 100
  assert (tmp_path / "out" / "m.md").read_text().strip() == table
  assert table.splitlines()[2].startswith("| tiny | ")


def test_only_some_embedders(dataset, tmp_path):
  inp = harness.EvalInputs(gen_dir=str(dataset / "gen"), video_dir=str(dataset / "videos"), duration_s=DUR,
                           cache_dir=str(tmp_path / "c"))
  r = harness.evaluate(inp, {"vggish": vggish.VGGishEmbedder(config=vggish.VGGishConfig.tiny(), seed=0)})
  assert set(r["metrics"]) == {"FD-VGG"}
  table = harness.write_outputs(r, tmp_path / "o.json")
  assert table.splitlines()[2].count("| - ") == 9


def test_too_short_generated_audio_names_the_file(dataset, tmp_path):
  gen = tmp_path / "gen"
  gen.mkdir()
  sf.write(gen / "a.wav", np.zeros(16000 * 6), 16000)  # 6 s for an 8 s protocol
  inp = harness.EvalInputs(gen_dir=str(gen), video_dir=str(dataset / "videos"), duration_s=DUR,
                           cache_dir=str(tmp_path / "c"))
  with pytest.raises(frontends.AudioTooShortError, match=r"a\.wav: audio is 6\.000 s.*full 8 s"):
    harness.evaluate(inp, {"synchformer": FakeSynchformer()}, strict=True)
  # Without strict the clip is left out and reported: no DeSync from it, one failure naming the file.
  r = harness.evaluate(inp, {"synchformer": FakeSynchformer()})
  assert "DeSync" not in r["metrics"] and r["counts"]["DeSync"] == 0
  assert [(f["item"], f["role"], f["embedder"]) for f in r["failures"]] == [(str(gen / "a.wav"), "generated",
                                                                          "synchformer")]
  assert "audio is 6.000 s" in r["failures"][0]["reason"]
  # Even without a clip length, fewer than 4.8 s cannot be scored.
  with pytest.raises(frontends.AudioTooShortError, match="at least 4.8 s"):
    frontends.check_sync_audio(np.zeros(16000 * 4), 16000, None, "short.wav")


def test_cli_reports_missing_weights_clearly(dataset, tmp_path):
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[1]
  cmd = [sys.executable, str(root / "tools" / "evaluate.py"), f"--config={root / 'experiments' / 'eval_vggsound.py'}",
         f"--config.gen_dir={dataset / 'gen'}", f"--config.weights_dir={tmp_path}", "--config.metrics=panns,vggish"]
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120,
                     env={**__import__("os").environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"})
  assert p.returncode != 0
  assert "MissingWeightsError" in p.stderr and "Cnn14_16k_mAP=0.438.pth" in p.stderr



def test_scorer_table_and_torch_outside_the_package():
  """One scorer per metric family, keyed like the registry; the JAX path imports no torch, and the
  PyTorch cross-checks join the registry only through tests/torch_embedders.py."""
  import subprocess
  import sys

  from dreamfoley_jax.eval import embedders

  assert harness.ALL_EMBEDDERS == tuple(harness.SCORERS) == ("panns", "vggish", "passt", "imagebind", "synchformer",
                                                             "clap")
  assert set(harness.SCORERS) == set(embedders.NATIVE_FLAX)
  assert [k for k, s in harness.SCORERS.items() if s.needs_video] == ["imagebind", "synchformer"]
  assert [k for k, s in harness.SCORERS.items() if s.needs_captions] == ["clap"]
  root = pathlib.Path(__file__).resolve().parents[1]
  code = ("import sys; from dreamfoley_jax.eval import embedders, harness; "
          "print(sorted(embedders.REGISTRY), 'torch' in sys.modules)")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                     env={**__import__("os").environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"})
  assert p.returncode == 0, p.stderr
  assert p.stdout.split() == ["['clap',", "'imagebind',", "'panns',", "'passt',", "'synchformer',", "'vggish']",
                              "False"]


def test_cli_loads_the_torch_cross_checks(dataset, tmp_path):
  """--config.metrics=passt_torch reaches tests/torch_embedders.py's PasstEmbedder (weights checked first)."""
  import subprocess
  import sys

  pytest.importorskip("torch")
  try:
    import hear21passt  # noqa: F401
    pytest.skip("hear21passt is installed: the embedder would load the dummy file")
  except ImportError:
    pass
  root = pathlib.Path(__file__).resolve().parents[1]
  (tmp_path / "passt-s-f128-p16-s10-ap.476-swa.pt").write_bytes(b"x")
  cmd = [sys.executable, str(root / "tools" / "evaluate.py"), f"--config={root / 'experiments' / 'eval_vggsound.py'}",
         f"--config.gen_dir={dataset / 'gen'}", f"--config.weights_dir={tmp_path}", "--config.metrics=passt_torch"]
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120,
                     env={**__import__("os").environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"})
  assert p.returncode != 0
  assert "MissingPackageError" in p.stderr and "hear21passt" in p.stderr, p.stderr[-2000:]

def test_experiment_configs_load():
  import importlib.util

  root = pathlib.Path(__file__).resolve().parents[1] / "experiments"
  got = {}
  for name, arg in [("eval_vggsound", None), ("eval_kling", None), ("eval_ablation", "table4_k4")]:
    spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    got[name] = mod.get_config(arg) if arg else mod.get_config()
  assert got["eval_vggsound"].duration_s == 8.0 and got["eval_kling"].duration_s == 10.0
  assert got["eval_ablation"].row_name == "table4_k4" and got["eval_ablation"].duration_s == 8.0
  assert set(got["eval_vggsound"].metrics.split(",")) == set(harness.ALL_EMBEDDERS)


def _ffmpeg_fps_filter(path, fps):
  """Reference: frames out of ffmpeg's own `fps` filter (what torio's StreamingMediaDecoder applies)."""
  import av

  out = []
  with av.open(str(path)) as c:
    s = c.streams.video[0]
    g = av.filter.Graph()
    src, f, sink = g.add_buffer(template=s), g.add("fps", f"fps={fps}"), g.add("buffersink")
    src.link_to(f)
    f.link_to(sink)
    g.configure()

    def drain():
      while True:
        try:
          out.append(g.pull().to_ndarray(format="rgb24"))
        except (BlockingIOError, EOFError, av.error.FFmpegError):
          return

    for fr in c.decode(s):
      g.push(fr)
      drain()
    g.push(None)
    drain()
  return np.stack(out)


@pytest.mark.parametrize("src_fps", [30, 24, "30000/1001"])
def test_frame_selection_matches_ffmpeg_fps_filter(tmp_path, src_fps):
  import av
  from fractions import Fraction

  path = tmp_path / "v.mp4"
  with av.open(str(path), "w") as c:
    v = c.add_stream("mpeg4", rate=Fraction(src_fps))
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    for i in range(60):
      img = np.zeros((48, 64, 3), np.uint8)
      img[:, :i] = 255  # frame i has a white bar i pixels wide
      for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        c.mux(p)
    for p in v.encode():
      c.mux(p)
  bar = lambda frames: [int((f[24, :, 0] > 128).sum()) for f in frames]  # noqa: E731
  for fps in (25.0, 0.5):
    ref = _ffmpeg_fps_filter(path, fps)
    assert bar(media.sample_frames(path, fps, len(ref))) == bar(ref)
