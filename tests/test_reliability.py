"""Issue 19: every input gets a clear answer. The awkward-input corpus (tests/awkward_media.py, made here with
PyAV) through generate, extract_features and evaluate, each case against its expected outcome; muxing
checked frame by frame; the text inputs (CSVs, captions); exit codes and one-line errors of the tools."""
import csv as csvlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile as sf

import awkward_media as am
from video_synth import decode_index
from dreamfoley_jax import checks, configs
from dreamfoley_jax import generate as G
from dreamfoley_jax.data import extract
from dreamfoley_jax.models import foley
from dreamfoley_jax.models import params as foley_params
from dreamfoley_jax.video import io as vio

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  return root, am.build(root)


def tiny_frames_config() -> foley.FoleyConfig:
  """experiments/synthetic.py's frames-mode model at the smallest size (16 px frames, one layer each)."""
  c = configs.model_config(configs.load_config("experiments/synthetic.py").model)
  return c.replace(decoder=c.decoder.replace(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1),
                   synchformer=c.synchformer.replace(image_size=16, width=16),
                   eva=c.eva.replace(image_size=16, width=16, mlp_dim=32, embed_dim=8), codebook_size=16,
                   sync_dim=16, clip_dim=8)


def random_params(cfg, seed: int = 0):
  """Normal(0, 0.02) weights of the model's shapes from numpy: foley_params.init_params compiles the whole init
  (tens of seconds on a loaded 2-core CPU); these tests need a random model, not its initialiser."""
  import flax.linen as nn
  import jax

  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.02).astype(s.dtype),
                      nn.unbox(foley_params.abstract_params(cfg)))


def _outcome(case_outcome: str, reasons: dict, key, ok: bool):
  """Asserts one case: 'ok...' -> processed and not failed; 'fail: X' -> failed with X in the reason."""
  if case_outcome.startswith("ok"):
    assert ok and key not in reasons, (key, reasons.get(key))
  elif case_outcome.startswith("fail: "):
    assert key in reasons and not ok, (key, "should fail")
    assert case_outcome[6:] in reasons[key], (key, reasons[key])
  else:
    assert case_outcome.startswith("skip") or case_outcome == "-", case_outcome


# --------------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(corpus, tmp_path_factory):
  root, paths = corpus
  cfg = tiny_frames_config()
  gen = G.Generator(cfg, random_params(cfg), G.ToneCodec(), G.load_feature_fn(cfg, None),
                    tokenize=lambda s: [b % cfg.decoder.vocab_size for b in s.encode()],
                    window_frames=75, context_frames=25, batch_size=8, show_progress=False, log=lambda m: None)
  out = tmp_path_factory.mktemp("gen_out")
  items = [G.Item(video=str(paths[c.name]), caption="a ball bounces") for c in am.videos()]
  return out, dict(zip([c.name for c in am.videos()], gen.run(items, out))), gen


def test_generate_outcome_of_every_input(corpus, generated):
  out, res, _ = generated
  fails = {pathlib.Path(f["item"]).name: f["reason"] for f in json.loads((out / "failures.json").read_text())}
  for c in am.videos():
    r = res[c.name]
    _outcome(c.generate, fails, c.name, "wav" in r)
    stem = pathlib.Path(c.name).stem
    if "wav" in r:
      note = c.generate.split(": ")[1]
      assert r["mux"] == ("copy" if note.startswith("copied") else "reencode"), c.name
      assert note.startswith(("copied", "re-encoded")), note
    else:   # nothing half-written for a failed item
      assert not list(out.glob(f"{stem}.*")) and r["error"] == fails[c.name]
  assert not list(out.glob(".tmp-*"))
  assert len(fails) == sum(c.generate.startswith("fail") for c in am.videos())


def _frames(path):
  with av.open(str(path)) as c:
    return [(f.pts * f.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_mux_keeps_every_frame_and_the_decoded_duration(corpus, generated):
  """Every decodable frame of the input is in the mp4 (bit-exact when copied, the same frame index when
  re-encoded) at the same time; the audio lasts exactly the decoded video duration (wav and mp4 track)."""
  _, paths = corpus
  out, res, gen = generated
  checked = set()
  for c in am.videos():
    r = res[c.name]
    if "mp4" not in r:
      continue
    src, dst = _frames(paths[c.name]), _frames(r["mp4"])
    info = vio.probe_video(paths[c.name])
    assert len(dst) == len(src) == info.num_frames, c.name
    assert [float(t - src[0][0]) for t, _ in src] == pytest.approx([float(t - dst[0][0]) for t, _ in dst],
                                                                     abs=1e-3), c.name
    if r["mux"] == "copy":
      assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(src, dst)), c.name
    else:
      h, w = src[0][1].shape[:2]
      assert [decode_index(a) for _, a in src] == [decode_index(b[:h, :w]) for _, b in dst], c.name
    _, m_src = vio.sample_frames(paths[c.name], [25])
    _, m_dst = vio.sample_frames(r["mp4"], [25])
    assert m_dst.rotation == m_src.rotation, c.name
    even = (m_src.width + m_src.width % 2, m_src.height + m_src.height % 2)   # 4:2:0 H.264 needs even sizes
    assert (m_dst.width, m_dst.height) == ((m_src.width, m_src.height) if r["mux"] == "copy" else even), c.name
    wav, sr = sf.read(r["wav"])
    assert len(wav) == round(info.duration_sec * sr), c.name
    with av.open(str(r["mp4"])) as m:
      a = m.streams.audio[0]
      assert float(a.duration * a.time_base) == pytest.approx(info.duration_sec, abs=1e-3), c.name
      assert len(m.streams.audio) == 1
    checked.add(pathlib.Path(c.name).suffix)
  assert checked >= {".mp4", ".mov", ".mkv", ".webm", ".avi"}
  assert res["rotated90.mp4"]["mux"] == "copy"
  assert sf.info(str(res["long_45s.mp4"]["wav"])).duration == pytest.approx(45.0)
  assert sf.info(str(res["truncated_stream.mkv"]["wav"])).duration == pytest.approx(1.12)


# --------------------------------------------------------------------------------------------------
# extract_features
# --------------------------------------------------------------------------------------------------


def _numpy_encoders():
  """Pooling stand-ins with the encoders' shapes: clip (N,224,224,3) -> (N,16), sync (N,16,...) -> (N,8,12)."""
  def clip(x):
    return x.reshape(len(x), 7, 32, 7, 32, 3).mean((2, 4)).reshape(len(x), -1)[:, :16].astype(np.float32)

  def sync(x):
    return x.reshape(len(x), 8, 2, 7, 32, 7, 32, 3).mean((2, 4, 6)).reshape(len(x), 8, -1)[..., :12].astype(np.float32)

  return extract.Encoders(clip=clip, sync=sync)


def test_extract_features_outcome_of_every_input(corpus, tmp_path):
  root, paths = corpus
  man = tmp_path / "all.csv"
  man.write_text("video,caption\n" + "".join(f"{paths[c.name]},a clip\n" for c in am.videos()))
  items = extract.collect_items(man)
  stats = extract.extract_features(items, tmp_path / "rec", _numpy_encoders(), progress=False)
  fails = {pathlib.Path(f["item"]).name: f["reason"] for f in json.loads((tmp_path / "rec" / "failures.json").read_text())}
  done = {r["clip_id"] for r in extract.iter_records(tmp_path / "rec")}
  for c, it in zip(am.videos(), items):
    _outcome(c.extract, fails, c.name, it.clip_id in done)
  assert stats["written"] == len(done) and len(stats["failed"]) == len(fails)
  rec = {r["clip_id"]: r for r in extract.iter_records(tmp_path / "rec")}
  ok = next(it.clip_id for it in items if it.path.endswith("truncated_stream.mkv"))
  assert float(rec[ok]["duration"]) == pytest.approx(1.12)
  with pytest.raises(checks.InputError, match="empty file"):
    extract.extract_features([it for it in items if it.path.endswith("empty.mp4")], tmp_path / "strict",
                             _numpy_encoders(), progress=False, strict=True)
  assert not list((tmp_path / "rec").glob(".tmp-*"))


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


def test_evaluate_outcome_of_every_input(corpus, generated, tmp_path):
  """generate's own wavs (and the awkward generated-audio files in their place) against the corpus videos,
  whose audio tracks are the ground truth; tiny random PANNs and VGGish (the real Flax ports)."""
  from dreamfoley_jax.eval import harness
  from dreamfoley_jax.eval.embedders import panns, vggish

  root, paths = corpus
  out, res, _ = generated
  gen = tmp_path / "gen"
  gen.mkdir()
  for r in res.values():
    if "wav" in r:
      shutil.copy(r["wav"], gen / r["wav"].name)
  for c in am.CASES:
    if c.role == "gen":
      (gen / f"{pathlib.Path(c.name).stem}.wav").unlink(missing_ok=True)
      shutil.copy(paths[c.name], gen / c.name)
  emb = {"panns": panns.PannsEmbedder(config=panns.Cnn14Config.tiny(), seed=0),
         "vggish": vggish.VGGishEmbedder(config=vggish.VGGishConfig.tiny(), seed=0)}
  inp = harness.EvalInputs(gen_dir=str(gen), video_dir=str(root), duration_s=2.0, cache_dir=str(tmp_path / "c"))
  r = harness.evaluate(inp, emb)
  fails = {pathlib.Path(f["item"]).name: f["reason"] for f in r["failures"]}
  for c in am.CASES:
    if c.role == "video":
      _outcome(c.evaluate, fails, c.name, c.name not in fails)
    elif c.role == "gen":
      _outcome(c.evaluate, fails, c.name, c.name not in fails)
  assert {"FD-PANN", "FD-VGG", "KL-PANNS-softmax"} <= set(r["metrics"])
  assert all(np.isfinite(v) for v in r["metrics"].values())
  bad_gen = sum(c.role == "gen" and c.evaluate.startswith("fail") for c in am.CASES)
  assert r["counts"]["generated"] == len(list(gen.iterdir())) - bad_gen
  table = harness.write_outputs(r, tmp_path / "o" / "m.json")
  assert json.loads((tmp_path / "o" / "failures.json").read_text()) == r["failures"] and table


# --------------------------------------------------------------------------------------------------
# Text inputs: CSVs and captions
# --------------------------------------------------------------------------------------------------


def test_text_inputs(corpus, generated, tmp_path):
  from dreamfoley_jax.eval import harness

  root, paths = corpus
  _, _, gen = generated
  want = {c.name: c for c in am.CASES if c.role == "text"}
  # Latin-1 CSV: one line naming the file and line, for all three readers.
  for fn in (G.read_csv, extract.collect_items, harness.read_captions):
    with pytest.raises(checks.InputError) as e:
      fn(paths["latin1.csv"])
    assert f"{paths['latin1.csv']}{want['latin1.csv'].generate[6:]}" in str(e.value) and "\n" not in str(e.value)
  # A byte-order mark is fine.
  assert [it.caption for it in G.read_csv(paths["bom.csv"])] == ["a dog barks", "rain"]
  assert [it.clip_id for it in extract.collect_items(paths["bom.csv"])] == ["ok", "fps30"]
  assert harness.read_captions(paths["bom.csv"]) == {"ok": "a dog barks", "fps30": "rain"}
  # A misspelt column: generate names it (a caption column silently ignored would mean video-only mode).
  with pytest.raises(checks.InputError, match=r"unknown column\(s\) \['captoin'\]"):
    G.read_csv(paths["unknown_column.csv"])
  assert [it.caption for it in extract.collect_items(paths["unknown_column.csv"])] == ["a dog"]
  # A Latin-1 sidecar caption: that clip fails, naming the file; the listing goes on.
  d = tmp_path / "folder"
  d.mkdir()
  shutil.copy(paths["ok.mp4"], d / "a.mp4")
  shutil.copy(paths["ok.mp4"], d / "b.mp4")
  shutil.copy(paths["latin1_caption.txt"], d / "b.txt")
  items = extract.scan_folder(d)
  assert items[0].error == "" and "b.txt:1: not valid UTF-8 (byte 0xe9" in items[1].error
  st = extract.extract_features(items, tmp_path / "rec", _numpy_encoders(), progress=False)
  assert st["written"] == 1 and "not valid UTF-8" in st["failed"][0][1]
  # A caption that is not UTF-8 (argv keeps the bytes as surrogates).
  bad = os.fsdecode(b"\xe9t\xe9")
  with pytest.raises(checks.InputError, match=r"--caption: not valid UTF-8 \(byte e9 at character 0\)"):
    checks.utf8_text(bad, "--caption")
  # Bad rows: each named by its line; the good row is generated.
  fails = checks.Failures(tmp_path / "rows")
  items = G.read_csv(paths["rows.csv"], fails)
  gen.max_memory_gb = 0.5
  try:
    res = gen.run(items, tmp_path / "rows", failures=fails)
  finally:
    gen.max_memory_gb = None
  by_line = {f["item"].rsplit(":", 1)[1]: f["reason"] for f in fails.items}
  assert sorted(by_line, key=int) == ["2", "3", "4", "5", "6", "7", "8"]
  assert by_line["2"] == "duration: 'nan' is out of range (accepted: seconds > 0)"
  assert by_line["3"] == "duration: 'abc' is not a number (accepted: seconds > 0)"
  assert by_line["4"] == "duration: '0' is out of range (accepted: seconds > 0)"
  assert by_line["5"] == "duration: '-1' is out of range (accepted: seconds > 0)"
  assert "name '../x' is not a file name" in by_line["6"]
  assert by_line["7"].startswith("duration 20 s is longer than the video (2.00 s decoded)") and \
      "--allow_longer" in by_line["7"]
  assert "3600 s needs about 1.0 GiB of host memory, over the limit of 0.5 GiB (--max_memory_gb 0.5)" in by_line["8"]
  assert "at most 1864 s per item" in by_line["8"] and "raise --max_memory_gb" in by_line["8"]
  assert [r.get("frames") for r in res] == [None, None, 37]      # the one good row: 1.5 s of fps30.mp4 (floor)
  assert sf.info(str(tmp_path / "rows" / "fps30.wav")).duration == pytest.approx(1.5)
  assert want["rows.csv"].generate == "ok: 1 row, 7 failed naming their line"


def test_allow_longer_and_text_to_audio_windows(corpus, generated, tmp_path):
  """--allow_longer: the audio runs past the video (masked there); long text-to-audio goes through the
  windows without a whole-length video array."""
  _, paths = corpus
  _, _, gen = generated
  items = [G.Item(video=str(paths["ok.mp4"]), duration=4.0), G.Item(video=None, caption="rain", duration=7.0)]
  seen = []
  real = G.sampling.sample_long

  def spy(cfg, params, batch, lengths, **kw):
    out = real(cfg, params, batch, lengths, **kw)
    seen.append((list(lengths), batch["frames_sync"].shape[1], len(out["windows"]), kw["sample_cfg"]))
    return out

  G.sampling.sample_long = spy
  try:
    res = gen.run(items, tmp_path / "o", allow_longer=True)
  finally:
    G.sampling.sample_long = real
  # the video item: its 50 real frames (not 100); the text item: one Synchformer window of frames (8, not 175)
  assert [s[:3] for s in seen] == [([100], 50, 2), ([175], 8, 3)]
  assert seen[1][3] == gen.sample_cfg   # (no sample.text_only given to this Generator)
  assert [r["frames"] for r in res] == [100, 175]
  assert sf.info(str(res[0]["wav"])).duration == pytest.approx(4.0)
  with av.open(str(res[0]["mp4"])) as m:     # the whole video, the longer audio after it
    assert m.streams.audio[0].duration * m.streams.audio[0].time_base == pytest.approx(4.0, abs=1e-3)
  assert "mp4" not in res[1] and sf.info(str(res[1]["wav"])).duration == pytest.approx(7.0)


def test_window_memory_limit_names_the_flag():
  cfg = configs.model_config(configs.load_config("experiments/paper_7b.py").model)
  budget = (80 * 2**30, "80 GiB test budget")
  G.check_window(cfg, 250, 75, 64, 8, budget)
  with pytest.raises(checks.UsageError, match=r"^--window_s 1000: sampling needs about \d+\.\d GiB per device .* over "
                     r"the 80\.0 GiB limit \(80 GiB test budget\); use --window_s <= (\d+) "):
    G.check_window(cfg, 25000, 75, 64, 8, budget)
  with pytest.raises(checks.UsageError, match=r"the model.s weights alone need about 27\.\d GiB per device.* --mesh"):
    G.check_window(cfg, 250, 75, 64, 8, (16 * 2**30, "16 GiB"))
  G.check_window(cfg, 250, 75, 64, 8, (16 * 2**30, "16 GiB"), devices=4)    # --mesh tensor=4
  # --mesh data=2,tensor=4: weights over the 4 tensor shards (replicated over data), the cache over all 8.
  G.check_window(cfg, 250, 75, 64, 8, (16 * 2**30, "16 GiB"), devices=8, model_shards=4)
  with pytest.raises(checks.UsageError, match=r"weights alone need about 27\.\d GiB per device"):
    G.check_window(cfg, 250, 75, 64, 8, (16 * 2**30, "16 GiB"), devices=8, model_shards=1)   # data=8


def test_preflight_memory_check_sees_the_mesh():
  """tools/generate.py checks memory before loading, on the --mesh it will sample with (a 7B on 16 GiB chips
  fits with data=2,tensor=4 and is refused without a mesh)."""
  import jax
  from dreamfoley_jax import sharding
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices (conftest's XLA_FLAGS)")
  mesh = sharding.make_mesh({"data": 2, "tensor": 4}, devices=jax.devices()[:8])
  kw = dict(smoke_random=True, load=False, max_memory_gb=16, batch_size=1)
  G.build_generator("experiments/paper_7b.py", mesh=mesh, **kw)
  with pytest.raises(checks.UsageError, match=r"weights alone need about .* GiB per device.*--mesh"):
    G.build_generator("experiments/paper_7b.py", **kw)


def test_validate_args_ranges():
  bad = {"temperature": -0.5, "top_k": 0, "top_p": 0, "cfg_scale": -1, "batch_size": 0, "sample_rate": 0,
         "bucket_s": 0, "seed": -1, "max_memory_gb": 0, "window_s": 0}
  for k, v in bad.items():
    with pytest.raises(checks.UsageError, match=rf"^--{k}: {v!r} is out of range \(accepted: .+\)$"):
      G.validate_args(**{k: v})
  with pytest.raises(checks.UsageError, match=r"--sample_rate: -1 is out of range \(accepted: an integer number of "
                     r"Hz in \[8000, 192000\]"):
    G.validate_args(sample_rate=-1)
  with pytest.raises(checks.UsageError, match="whole-second windows"):
    G.validate_args(window_s=2.5, vision_mode="frames")
  with pytest.raises(checks.UsageError, match="must be shorter than --window_s"):
    G.validate_args(window_s=2, context_s=2)
  G.validate_args(temperature=0, top_k=1, top_p=1, cfg_scale=3, sample_rate=48000, window_s=2.5, context_s=1)


def test_checkpoint_checks(tmp_path):
  from dreamfoley_jax.convert import common

  cfg = tiny_frames_config()
  with pytest.raises(FileNotFoundError, match=r"--checkpoint .*nope: not found"):
    G.check_checkpoint(tmp_path / "nope", cfg)
  (tmp_path / "empty").mkdir()
  with pytest.raises(checks.InputError, match="not a params checkpoint"):
    G.check_checkpoint(tmp_path / "empty", cfg)
  common.save_params(random_params(cfg), tmp_path / "ok")
  G.check_checkpoint(tmp_path / "ok", cfg)
  other = cfg.replace(codebook_size=32, decoder=cfg.decoder.replace(num_hidden_layers=2))
  with pytest.raises(checks.InputError) as e:
    G.check_checkpoint(tmp_path / "ok", other, config="--config tiny")
  msg = str(e.value)
  assert msg.startswith(f"--checkpoint {tmp_path / 'ok'} does not fit --config tiny: ") and "\n" not in msg
  assert "missing (decoder/layers_1/" in msg and "of another shape (" in msg and len(msg) < 1500
  with pytest.raises(checks.InputError, match=r"--tokenizer .*: not a tokenizer.json"):
    (tmp_path / "bin.json").write_bytes(bytes(range(256)))
    G.bpe_tokenizer(tmp_path / "bin.json")
  with pytest.raises(checks.InputError, match="not writable"):
    (tmp_path / "file").write_text("x")
    checks.writable_dir(tmp_path / "file" / "out")


def test_extract_wrong_checkpoint_is_one_short_line(tmp_path):
  """A checkpoint of another model: the first differences in one line, not the whole parameter tree."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from dreamfoley_jax import sharding
  from dreamfoley_jax.convert import common

  class A(nn.Module):
    @nn.compact
    def __call__(self, x):
      for i in range(40):
        x = nn.Dense(4, name=f"layer_{i}")(x)
      return x

  class B(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(8, name="other")(x)

  common.save_params(nn.unbox(B().init(jax.random.key(0), jnp.zeros((1, 4)))), tmp_path / "b")
  with pytest.raises(checks.InputError) as e:
    extract._restore_placed(tmp_path / "b", A(), sharding.make_mesh({"data": -1}), jnp.zeros((1, 4)), "--eva_ckpt")
  msg = str(e.value)
  assert msg.startswith(f"--eva_ckpt {tmp_path / 'b'} does not fit A: 80 missing (") and "\n" not in msg
  assert "... 77 more" in msg and len(msg) < 600


# --------------------------------------------------------------------------------------------------
# The tools: exit status and one line
# --------------------------------------------------------------------------------------------------


def _tool(*args, cwd=ROOT):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                        timeout=600)


def test_generate_cli_usage_and_input_errors(tmp_path, corpus):
  _, paths = corpus
  gen = ROOT / "tools" / "generate.py"
  base = [gen, "--config", "experiments/tiny.py", "--smoke_random", "--out_dir", tmp_path / "o"]
  p = _tool(*base, "--video", paths["ok.mp4"], "--batch_size", "0")
  assert p.returncode == 2 and p.stderr.strip().splitlines() == [
      "generate: error: --batch_size: 0 is out of range (accepted: an integer >= 1)"]
  p = _tool(*base, "--video", paths["ok.mp4"], "--batch_size", "0", "--verbose")
  assert p.returncode == 2 and "Traceback" in p.stderr and p.stderr.strip().endswith("integer >= 1)")
  p = _tool(*base, "--video", paths["garbage.mp4"])
  assert p.returncode == 1 and p.stderr.strip() == (f"generate: error: {paths['garbage.mp4']}: not a video PyAV can "
                                                    "open (InvalidDataError: Invalid data found when processing input)")
  p = _tool(*base, "--video", paths["ok.mp4"], "--batch_size", "abc")
  assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--batch_size" in p.stderr
  p = _tool(gen, "--config", "experiments/synthetic.py", "--checkpoint", tmp_path / "nope", "--codec_checkpoint", tmp_path,
            "--tokenizer", tmp_path, "--video", paths["ok.mp4"], "--out_dir", tmp_path / "o")
  assert p.returncode == 1 and p.stderr.strip() == f"generate: error: --checkpoint {tmp_path / 'nope'}: not found"
  p = _tool(*base, "--video", paths["ok.mp4"], "--caption", os.fsdecode(b"caf\xe9"))
  assert p.returncode == 1 and "--caption: not valid UTF-8 (byte e9 at character 3)" in p.stderr
  assert "Traceback" not in p.stderr
  # A batch: the good items finish, the bad ones are listed, exit status 1; --strict stops at the first.
  csv = tmp_path / "b.csv"
  csv.write_text(f"video,caption,duration\n{paths['ok.mp4']},a dog,\n{paths['garbage.mp4']},x,\n"
                 f"{paths['fps30.mp4']},,abc\n,rain,1.0\n")
  p = _tool(*base, "--csv", csv, "--png=false")
  assert p.returncode == 1, p.stderr
  assert "generated 2 of 4 items, 2 failed (reasons in" in p.stdout
  fails = json.loads((tmp_path / "o" / "failures.json").read_text())
  assert [(f["item"], f.get("video")) for f in fails] == [(f"{csv}:4", None), (f"{csv}:3", str(paths["garbage.mp4"]))]
  assert sorted(x.name for x in (tmp_path / "o").iterdir()) == ["clip2.wav", "failures.json", "generated.csv",
                                                                 "ok.mp4", "ok.wav"]
  with open(tmp_path / "o" / "generated.csv") as f:     # the index lists the generated rows only
    assert [r["name"] for r in csvlib.DictReader(f)] == ["ok", "clip2"]
  p = _tool(*base[:-1], tmp_path / "s", "--csv", csv, "--strict")
  assert p.returncode == 1 and "--strict: stopped at the first failure" in p.stderr
  assert not [x for x in (tmp_path / "s").iterdir() if x.suffix != ".json"]
  # --strict on a bad video (found while the rows are validated, before the model loads): nothing generated.
  csv2 = tmp_path / "b2.csv"
  csv2.write_text(f"video,caption\n{paths['ok.mp4']},a dog\n{paths['garbage.mp4']},x\n")
  p = _tool(*base[:-1], tmp_path / "s2", "--csv", csv2, "--strict")
  assert p.returncode == 1 and p.stderr.strip().splitlines() == [
      f"generate: error: {csv2}:3: {paths['garbage.mp4']}: not a video PyAV can open (InvalidDataError: Invalid data found when processing "
      "input) (--strict: stopped at the first failure)"], p.stderr
  assert [f["item"] for f in json.loads((tmp_path / "s2" / "failures.json").read_text())] == [f"{csv2}:3"]
  assert not list((tmp_path / "s2").glob("*.wav"))


def test_generate_cli_memory_check_uses_the_mesh(tmp_path, corpus):
  """The 7B on 16 GiB chips: refused before loading without --mesh; with --mesh data=2,tensor=4 the check
  passes and the (bad) item is what stops it, still before any weights load."""
  _, paths = corpus
  base = [ROOT / "tools" / "generate.py", "--config", "experiments/paper_7b.py", "--smoke_random", "--max_memory_gb",
          "16", "--batch_size", "1", "--video", paths["garbage.mp4"], "--out_dir", tmp_path / "o"]
  p = _tool(*base)
  assert p.returncode == 2 and "weights alone need about" in p.stderr and "--mesh" in p.stderr, p.stderr[-800:]
  p = _tool(*base, "--mesh", "data=2,tensor=4")
  assert p.returncode == 1 and p.stderr.strip().splitlines() == [
      f"generate: error: {paths['garbage.mp4']}: not a video PyAV can open (InvalidDataError: Invalid data found "
      "when processing input)"], p.stderr[-800:]


def test_docs_table_is_the_corpus():
  doc = (ROOT / "docs" / "reliability.md").read_text()
  assert am.table() in doc
  assert len([c for c in am.CASES]) >= 25


def test_extract_and_evaluate_cli_exit_codes(tmp_path):
  ext, ev = ROOT / "tools" / "extract_features.py", ROOT / "tools" / "evaluate.py"
  p = _tool(ext, "--input", tmp_path, "--output_dir", tmp_path / "o", "--clip_batch", "0")
  assert p.returncode == 2 and p.stderr.strip() == ("extract_features: error: --clip_batch: 0 is out of range "
                                                    "(accepted: an integer >= 1)")
  p = _tool(ext, "--input", tmp_path / "missing", "--output_dir", tmp_path / "o", "--eva_ckpt", tmp_path,
            "--sync_ckpt", tmp_path)
  assert p.returncode == 1 and p.stderr.strip() == (f"extract_features: error: --input {tmp_path / 'missing'}: "
                                                    "no such folder or CSV")
  p = _tool(ev, f"--config={ROOT / 'experiments' / 'eval_vggsound.py'}", f"--config.gen_dir={tmp_path}",
            "--config.duration_s=0")
  assert p.returncode == 2 and p.stderr.strip() == ("evaluate: error: --config.duration_s: 0.0 is out of range "
                                                    "(accepted: seconds > 0)")
