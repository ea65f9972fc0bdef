"""The data pipeline on Apache Beam end to end: a folder of generated media (every awkward kind) -> shards
the trainer reads; report; resume; a killed run; multi-process DirectRunner == in-process; TFDS output
holds the same records; the CLI."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import build_helpers
import media_synth as ms
from dreamfoley_jax.data import pipeline, records
from dreamfoley_jax.data.build import encode, quality, run, shards, stages, standardise

IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
SMALL = standardise.StandardiseConfig(clip_seconds=1.0, min_clip_seconds=0.64, short_side=64)
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """{eva_ckpt, sync_ckpt, codec_ckpt, text_tokenizer} (tests/build_helpers.py)."""
  return build_helpers.shared_assets(tmp_path_factory)


def _ids(shard_dir, name="train"):
  out = {}
  for p in shards.shard_paths(str(shard_dir), name):
    from array_record.python.array_record_module import ArrayRecordReader

    r = ArrayRecordReader(p)
    for b in r.read_all():
      out[records.decode_example(b)["clip_id"]] = b
    r.close()
  return out


def _bad_folder(d: pathlib.Path, with_speech=True):
  """The media zoo: (file name -> expected per-file status, reason)."""
  d.mkdir(parents=True, exist_ok=True)
  noise = lambda s, seed=0: ms.noise(s, amp=0.2, seed=seed)  # noqa: E731
  ms.write_media(d / "good.mp4", seconds=2.2, audio=noise(2.2), shift_px=0.3)
  (d / "good.txt").write_text("rain on a roof")
  shutil.copy(d / "good.mp4", d / "good_copy.mp4")
  surround = np.concatenate([noise(1.2, s)[:, :int(1.2 * 48000)] for s in range(6)])
  ms.write_media(d / "surround.mkv", seconds=1.2, audio=surround, audio_rate=48000, layout="5.1", shift_px=0.3)
  ms.write_media(d / "rotated.mp4", seconds=1.0, size=(48, 80), rotation=90, audio=noise(1.0, 1), shift_px=0.3)
  times = list(np.cumsum(np.r_[0, np.random.default_rng(0).uniform(0.02, 0.06, 30)]))
  ms.write_media(d / "vfr.webm", times=times, audio=noise(times[-1] + 0.1, 2), shift_px=0.3)
  ms.write_media(d / "odd_fps.mp4", seconds=1.1, fps=12.5, audio=noise(1.1, 3), shift_px=0.6)
  ms.write_media(d / "short.mp4", seconds=0.3, audio=noise(0.3))
  ms.write_media(d / "mute.mp4", seconds=1.0)
  ms.write_media(d / "audio_only.mkv", video=False, audio=noise(1.0))
  (d / "zero.mp4").write_bytes(b"")
  (d / "garbage.mkv").write_bytes(os.urandom(3000))
  full = ms.write_media(d / "tmp_full.mp4", seconds=1.5, audio=noise(1.5)).read_bytes()
  (d / "truncated.mp4").write_bytes(full[:len(full) // 2])
  (d / "tmp_full.mp4").unlink()
  ms.write_media(d / "still.mp4", seconds=1.0, shift_px=0, audio=noise(1.0, 4))
  ms.write_media(d / "quiet.mp4", seconds=1.0, audio=np.zeros((1, 44100), np.float32), shift_px=0.3)
  sq = np.sign(np.sin(2 * np.pi * 200 * np.arange(44100) / 44100)).astype(np.float32)[None]
  ms.write_media(d / "loud.mkv", seconds=1.0, audio=sq, shift_px=0.3)
  expect = {"good.mp4": ("kept", None), "good_copy.mp4": ("rejected", "duplicate"),
            "surround.mkv": ("kept", None), "rotated.mp4": ("kept", None), "vfr.webm": ("kept", None),
            "odd_fps.mp4": ("kept", None), "short.mp4": ("rejected", "too_short"),
            "mute.mp4": ("rejected", "no_audio"), "audio_only.mkv": ("rejected", "no_video"),
            "zero.mp4": ("rejected", "unreadable"), "garbage.mkv": ("rejected", "unreadable"),
            "truncated.mp4": ("rejected", "unreadable"), "still.mp4": ("all_clips_rejected", None),
            "quiet.mp4": ("all_clips_rejected", None), "loud.mkv": ("all_clips_rejected", None)}
  if with_speech:
    from dreamfoley_jax.audio.resample import resample_np

    sp = ms.espeak("Hello there, this clip is somebody talking to the camera.", d / "speech.wav")
    (d / "speech.wav").unlink()
    sp = resample_np(sp, 22050, 44100)[:int(1.5 * 44100)]
    ms.write_media(d / "talk.mp4", seconds=1.5, audio=sp[None], shift_px=0.3)
    expect["talk.mp4"] = ("all_clips_rejected", None)
  return expect


def test_end_to_end_bad_inputs_report_trainer_resume(tmp_path, assets):
  expect = _bad_folder(tmp_path / "media", with_speech=shutil.which("espeak-ng") is not None)
  enc = encode.EncodeConfig(mesh="data=1", **assets)
  cfg = stages.BuildConfig(standardise=SMALL, stage_configs=(("encode", enc),))
  out = tmp_path / "out"
  rep = run.build_dataset(str(tmp_path / "media" / "*"), str(out), cfg, beam_options=IN_PROCESS,
                          files_per_shard=4, show_progress=False)
  rows = {pathlib.Path(r["source"]).name: r for r in rep["per_file"]}
  assert {k: (v["status"], v.get("reason")) for k, v in rows.items()} == expect
  assert "6 ch (5.1) -> 1 ch" in " ".join(rows["surround.mkv"]["notes"])
  assert "rotation" in " ".join(rows["rotated.mp4"]["notes"])
  assert "12.5 fps -> 25 fps" in " ".join(rows["odd_fps.mp4"]["notes"])
  assert "variable frame rate" in " ".join(rows["vfr.webm"]["notes"])
  assert "zero-length" in rows["zero.mp4"]["detail"] and rows["short.mp4"]["value"] < 0.64
  per_clip = {k: dict(v["clips_rejected"]) for k, v in rows.items()}
  assert per_clip["still.mp4"] == {"static/static": 1} and per_clip["quiet.mp4"] == {"silence/silence_ratio": 1}
  assert per_clip["loud.mkv"] == {"clipping/clipping_ratio": 1}
  st = {s["stage"]: s for s in rep["stages"]}
  if "talk.mp4" in expect:
    assert per_clip["talk.mp4"]["speech/speech_ratio"] == 1 and st["speech"]["rejected"] >= 1
  assert st["silence"]["rejected"] == 1 and st["clipping"]["rejected"] == 1 and st["static"]["rejected"] == 1
  assert st["encode"]["kept"] == rep["records"] == 6
  assert all(s["in"] == s["kept"] + s["rejected"] for s in rep["stages"])
  assert rep["rejections"]["silence/silence_ratio"]["histogram"]["max"] == 1.0
  # the shards: what the trainer reads, through its own pipeline, unchanged
  got = {k: records.decode_example(v) for k, v in _ids(out).items()}
  assert sorted(got) == ["good-000", "good-001", "odd_fps-000", "rotated-000", "surround-000", "vfr-000"]
  r = got["good-000"]
  assert r["caption"] == "rain on a roof" and list(r["text_ids"]) == [1, 2, 3, 4]
  assert r["audio_codes"].shape == (8, 25) and r["audio_codes"].dtype == np.int16
  assert r["sync_feats"].shape == (25, 64) and r["clip_feats"].shape == (4, 32)
  assert 0 <= float(r["score_speech_ratio"]) <= 0.3 and float(r["score_motion"]) >= 1.0
  assert r["source"].endswith("good.mp4") and float(r["start_sec"]) == 0.0
  assert float(got["good-001"]["start_sec"]) == 1.0
  pcfg = pipeline.PipelineConfig(batch_size=2, sync_dim=64, clip_dim=32, crop_min_s=0.4, crop_max_s=1.0,
                                 bucket_seconds=(1.0,), null_video_len=8)
  batch = next(iter(pipeline.make_dataset(pcfg, str(out / "train-*.array_record"))))
  assert batch["audio_ids"].shape == (2, 25 + 2 + 7, 8) and batch["sync_feats"].shape == (2, 25, 64)
  on_disk = json.loads((out / "report.json").read_text())
  assert on_disk["records"] == 6 and (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not list(out.glob(".tmp-*"))
  # rerun: every file already done, nothing rewritten
  before = {p.name: p.stat().st_mtime_ns for p in out.glob("train-*")}
  rep2 = run.build_dataset(str(tmp_path / "media" / "*"), str(out), cfg, beam_options=IN_PROCESS,
                           files_per_shard=4, show_progress=False)
  assert rep2["last_run"]["skipped_done"] == len(expect) and rep2["records"] == 6
  assert {p.name: p.stat().st_mtime_ns for p in out.glob("train-*")} == before
  # another stage config into the same folder: refused, naming what changed
  other = stages.BuildConfig(standardise=SMALL, stage_configs=(
      ("encode", enc), ("silence", quality.SilenceConfig(max_ratio=0.7))))
  with pytest.raises(ValueError, match=r"another config .*max_ratio=0\.7"):
    run.build_dataset(str(tmp_path / "media" / "*"), str(out), other, beam_options=IN_PROCESS,
                      show_progress=False)


def _filter_cfg(**std):
  return stages.BuildConfig(standardise=standardise.StandardiseConfig(short_side=64, **std),
                            stages=("silence", "clipping", "static"))


def _small_inputs(d: pathlib.Path, n: int):
  d.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    ms.write_media(d / f"v{i}.mp4", seconds=1.0 + 0.2 * i, audio=ms.noise(1.0 + 0.2 * i, amp=0.2, seed=i),
                   shift_px=0.4)
  return str(d / "*.mp4")


def test_csv_input_captions_by_id_and_a_missing_file(tmp_path):
  _small_inputs(tmp_path / "v", 2)
  (tmp_path / "list.csv").write_text("path,caption,id\nv/v1.mp4,second clip,b\nv/v0.mp4,first clip,a\n"
                                     "v/gone.mp4,lost,c\n")
  rep = run.build_dataset(str(tmp_path / "list.csv"), str(tmp_path / "o"), _filter_cfg(clip_seconds=1.0,
                          min_clip_seconds=0.64), beam_options=IN_PROCESS, show_progress=False)
  got = {k: records.decode_example(v) for k, v in _ids(tmp_path / "o").items()}
  assert {k: r["caption"] for k, r in got.items()} == {"a-000": "first clip", "b-000": "second clip"}
  assert got["a-000"]["source"].endswith("v0.mp4")                 # joined by id, never by row order
  gone = [r for r in rep["per_file"] if r["source"].endswith("gone.mp4")][0]
  assert gone["status"] == "rejected" and gone["reason"] == "unreadable" and "No such file" in gone["detail"]
  # issue 19: the bad item in failures.json (item, reason), the good ones finished
  fails = json.loads((tmp_path / "o" / "failures.json").read_text())
  assert [(pathlib.Path(f["item"]).name, f["reason"].split(":")[0]) for f in fails] == [("gone.mp4", "unreadable")]
  assert fails == rep["failures"] and "No such file" in fails[0]["reason"]


class _Boom:
  """A stage that fails on one clip: the failure must become that clip's rejection, nothing more."""
  name = "boom"
  cfg = quality.SilenceConfig()

  def __call__(self, clip):
    if clip.clip_id == "v1-000":
      raise RuntimeError("decoder exploded")
    return clip.with_scores(boom=1.0)


def test_a_failing_stage_rejects_only_its_clip(tmp_path, monkeypatch):
  monkeypatch.setitem(stages.STAGES, "boom", (quality.SilenceConfig, lambda c, b: _Boom()))
  inputs = _small_inputs(tmp_path / "in", 3)
  cfg = stages.BuildConfig(standardise=SMALL, stages=("silence", "boom"))
  rep = run.build_dataset(inputs, str(tmp_path / "o"), cfg, beam_options=IN_PROCESS, show_progress=False)
  assert sorted(_ids(tmp_path / "o")) == ["v0-000", "v2-000"]
  err = [r for r in rep["per_file"] if r["source"].endswith("v1.mp4")][0]
  assert dict(err["clips_rejected"]) == {"boom/error": 1, "standardise/short_tail": 1}
  idx = shards.read_indexes(str(tmp_path / "o"), "train")
  [rej] = [r for i in idx for r in i["rejections"] if r["stage"] == "boom"]
  assert "RuntimeError: decoder exploded" in rej["detail"]
  # failures.json names the clip the stage failed on; quality rejections (the short tail) are not failures
  fails = json.loads((tmp_path / "o" / "failures.json").read_text())
  assert [(pathlib.Path(f["item"]).name, f["stage"]) for f in fails] == [("v1.mp4#v1-000", "boom")]
  assert "decoder exploded" in fails[0]["reason"]


def test_killed_run_loses_no_finished_shard_and_resumes(tmp_path, monkeypatch):
  inputs = _small_inputs(tmp_path / "in", 6)
  cfg = _filter_cfg(clip_seconds=1.0, min_clip_seconds=0.64)
  ref = tmp_path / "ref"
  run.build_dataset(inputs, str(ref), cfg, beam_options=IN_PROCESS, files_per_shard=1, show_progress=False)
  ref_ids = _ids(ref)
  n_shards = len(shards.read_indexes(str(ref), "train"))
  assert len(ref_ids) == 8 and n_shards >= 2      # 6 files hashed into 6 shards (all in one: p = 6^-5)
  real, calls = shards.write_shard, []

  def dies_on_second(*a, **kw):   # the worker dies while writing its second shard
    calls.append(1)
    if len(calls) == 2:
      shards._write_bytes_atomic(os.path.join(a[0], ".tmp-abc-train-x.array_record"), b"half")
      raise RuntimeError("worker killed")
    return real(*a, **kw)

  monkeypatch.setattr(shards, "write_shard", dies_on_second)
  out = tmp_path / "out"
  with pytest.raises(Exception, match="worker killed"):
    run.build_dataset(inputs, str(out), cfg, beam_options=IN_PROCESS, files_per_shard=1, show_progress=False)
  idx = shards.read_indexes(str(out), "train")
  assert len(idx) == 1                                             # the shard finished before the crash
  partial = _ids(out)
  assert partial and all(ref_ids[k] == v for k, v in partial.items())   # finished shards are whole
  assert len(partial) < len(ref_ids)
  assert all(p.name.startswith(".tmp-") or p.name == "dataset.json" or
             p.name.endswith((".array_record", ".index.json")) for p in out.iterdir())
  monkeypatch.setattr(shards, "write_shard", real)
  rep = run.build_dataset(inputs, str(out), cfg, beam_options=IN_PROCESS, files_per_shard=1, show_progress=False)
  assert rep["last_run"]["skipped_done"] == sum(len(i["files"]) for i in idx) >= 1
  assert not list(out.glob(".tmp-*"))                              # the stale temporary file was removed
  assert _ids(out) == ref_ids                                      # same records, byte for byte


def test_multiprocess_runner_equals_in_process(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  ms.write_media(d / "long25.mkv", seconds=25.0, size=(32, 48), audio=ms.noise(25.0, amp=0.2), shift_px=0.4)
  ms.write_media(d / "surround.mkv", seconds=3.0, audio=np.concatenate(
      [ms.noise(3.0, 48000, amp=0.2, seed=s) for s in range(6)]), audio_rate=48000, layout="5.1", shift_px=0.4)
  ms.write_media(d / "rot.mp4", seconds=2.5, rotation=270, audio=ms.noise(2.5, amp=0.2), shift_px=0.4)
  (d / "zero.mp4").write_bytes(b"")
  cfg = stages.BuildConfig(standardise=standardise.StandardiseConfig(short_side=64),
                           stages=("silence", "clipping", "static", "speech"))
  a, b = tmp_path / "a", tmp_path / "b"
  ra = run.build_dataset(str(d / "*"), str(a), cfg, beam_options=IN_PROCESS, files_per_shard=2, show_progress=False)
  # two worker processes; the VAD model shared by them (Beam's large_model: one copy per machine)
  rb = run.build_dataset(str(d / "*"), str(b), cfg, beam_options=["--direct_running_mode=multi_processing",
                                                                   "--direct_num_workers=2"],
                         files_per_shard=2, show_progress=True, share_model=True)
  assert rb["last_run"]["worker_processes"] == 2                   # the work ran in two Beam workers
  ids_a, ids_b = _ids(a), _ids(b)
  assert ids_a == ids_b                                            # identical records, byte for byte
  assert sorted(p.name for p in a.glob("train-*")) == sorted(p.name for p in b.glob("train-*"))
  assert sorted(ids_a) == [f"long25-{k:03d}" for k in range(3)] + ["rot-000", "surround-000"]
  assert float(records.decode_example(ids_a["long25-002"])["duration"]) == 5.0
  assert float(records.decode_example(ids_a["long25-000"])["score_speech_ratio"]) < 0.05
  rows = {pathlib.Path(r["source"]).name: r for r in rb["per_file"]}
  assert rows["zero.mp4"]["reason"] == "unreadable"
  assert rows["rot.mp4"]["clips_kept"] == 1 and "rotation" in " ".join(rows["rot.mp4"]["notes"])
  assert ra["stages"] == rb["stages"]


def test_tfds_dataset_holds_the_same_records(tmp_path, assets):
  from apache_beam.options.pipeline_options import PipelineOptions

  from dreamfoley_jax.data.build import tfds_dataset

  inputs = _small_inputs(tmp_path / "in", 2)
  enc = encode.EncodeConfig(mesh="data=1", **assets)
  cfg = stages.BuildConfig(standardise=SMALL, stages=("silence", "encode"), stage_configs=(("encode", enc),))
  run.build_dataset(inputs, str(tmp_path / "ar"), cfg, beam_options=IN_PROCESS, show_progress=False)
  c = tfds_dataset.ClipsConfig(name="t", input=inputs, stages="silence,encode", clip_seconds=1.0,
                               min_clip_seconds=0.64, short_side=64, mesh="data=1", **assets)
  d = tfds_dataset.build(str(tmp_path / "tfds"), c, PipelineOptions(IN_PROCESS))
  from dreamfoley_jax.data import tfds_source

  src = tfds_source.TfdsRecordSource.from_spec(f"tfds:{d}:train")
  got = {records.decode_example(src[i])["clip_id"]: src[i] for i in range(len(src))}
  assert got == _ids(tmp_path / "ar") and len(got) == 2           # one record format: the same bytes
  pcfg = pipeline.PipelineConfig(batch_size=2, sync_dim=64, clip_dim=32, crop_min_s=0.4, crop_max_s=1.0,
                                 bucket_seconds=(1.0,), null_video_len=8)
  batch = next(iter(pipeline.make_dataset(pcfg, f"tfds:{d}")))
  assert batch["clip_feats"].shape == (2, 4, 32)
  with pytest.raises(FileNotFoundError, match="not a TFDS dataset"):
    tfds_source.TfdsRecordSource.from_spec(f"tfds:{tmp_path}/nothing")


def _cli(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, str(ROOT / "tools" / "build_dataset.py"), *args], capture_output=True,
                        text=True, timeout=timeout, env=env, cwd=ROOT)


def test_cli_one_line_errors(tmp_path):
  r = _cli("--input", str(tmp_path / "nothing*.mp4"), "--out_dir", str(tmp_path / "o"), "--stages=-encode")
  assert r.returncode != 0 and "matches no files" in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_cli_failures_json_and_strict(tmp_path):
  """issue 19: the good files finish, the bad one is counted and listed; --strict makes it exit 1 naming it."""
  _small_inputs(tmp_path / "v", 1)
  (tmp_path / "list.csv").write_text("path\nv/v0.mp4\nv/gone.mp4\n")
  args = ["--input", str(tmp_path / "list.csv"), "--stages=silence", "--short_side=64", "--clip_seconds=1",
          "--min_clip_seconds=0.64", "--num_workers=1", "--noprogress"]
  r = _cli(*args, "--out_dir", str(tmp_path / "o"))
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"1 failed (files or clips that could not be used; reasons in {tmp_path / 'o'}/failures.json)" in r.stdout
  r = _cli(*args, "--out_dir", str(tmp_path / "s"), "--strict")
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 1 and last.startswith(f"build_dataset: error: {tmp_path / 'v' / 'gone.mp4'}: unreadable: ") \
      and "--strict: stopped at the first failure" in last, r.stderr[-2000:]
  assert [pathlib.Path(f["item"]).name for f in json.loads((tmp_path / "s" / "failures.json").read_text())] == ["gone.mp4"]
  # the first failure is fatal: the pipeline stopped before writing any shard (the good file's included) or report
  assert not list((tmp_path / "s").glob("*.array_record")) and not (tmp_path / "s" / "report.json").exists()
  assert "1 failed" not in r.stdout


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path):
  inputs = _small_inputs(tmp_path / "in", 12)
  args = ["--input", inputs, "--stages=silence", "--short_side=64", "--clip_seconds=1", "--min_clip_seconds=0.64",
          "--files_per_shard=1", "--num_workers=2", "--noprogress"]
  ref = _cli(*args, "--out_dir", str(tmp_path / "ref"))
  assert ref.returncode == 0, ref.stderr[-2000:]
  assert "12 files (0 rejected whole)" in ref.stdout and "train with --config.data.train_records=" in ref.stdout
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = tmp_path / "out"
  p = subprocess.Popen([sys.executable, str(ROOT / "tools" / "build_dataset.py"), *args, "--out_dir", str(out)],
                       env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline and not list(out.glob("*.index.json")) and p.poll() is None:
    time.sleep(0.05)
  os.killpg(p.pid, signal.SIGKILL)                                # the driver and its Beam workers
  p.wait()
  finished = shards.read_indexes(str(out), "train")
  assert 1 <= len(finished) < len(shards.read_indexes(str(tmp_path / "ref"), "train"))   # killed mid-write
  for idx in finished:                                             # every finished shard reads back whole
    if idx["shard"]:
      from array_record.python.array_record_module import ArrayRecordReader

      rd = ArrayRecordReader(str(out / idx["shard"]))
      assert len(rd.read_all()) == idx["records"]
      rd.close()
  r = _cli(*args, "--out_dir", str(out))
  assert r.returncode == 0, r.stderr[-2000:]
  assert _ids(out) == _ids(tmp_path / "ref")


def test_object_store_paths_in_and_out(tmp_path, monkeypatch):
  """gs://-style input and output through Beam's FileSystems: shards are written locally, then copied."""
  build_helpers.fake_object_store()
  monkeypatch.setenv("FAKEGS_ROOT", str(tmp_path / "store"))
  monkeypatch.chdir(tmp_path)   # ArrayRecord handed 'fakegs://...' would write a local 'fakegs:' folder here
  _small_inputs(tmp_path / "store" / "bucket" / "videos", 2)
  cfg = _filter_cfg(clip_seconds=1.0, min_clip_seconds=0.64)
  rep = run.build_dataset("fakegs://bucket/videos/*.mp4", "fakegs://bucket/out", cfg, beam_options=IN_PROCESS,
                          show_progress=False)
  assert rep["records"] == 2 and rep["files"]["total"] == 2
  out = tmp_path / "store" / "bucket" / "out"
  names = sorted(p.name for p in out.iterdir())
  assert [n for n in names if not n.startswith("train-")] == ["dataset.json", "failures.json", "report.json",
                                                               "report.png"], names
  assert sorted(pathlib.Path(n).suffix for n in names if n.startswith("train-")) == [".array_record", ".json"], names
  assert json.loads((out / "failures.json").read_text()) == []      # written remotely too, empty: none failed
  assert sorted(_ids(out)) == ["v0-000", "v1-000"]
  assert not list(out.glob(".tmp-*")) and not (tmp_path / "fakegs:").exists()
  rep2 = run.build_dataset("fakegs://bucket/videos/*.mp4", "fakegs://bucket/out", cfg, beam_options=IN_PROCESS,
                           show_progress=False)
  assert rep2["last_run"]["skipped_done"] == 2


@pytest.mark.slow
def test_tools_train_reads_built_records_unchanged(tmp_path, assets):
  import train_helpers as th

  d = tmp_path / "in"
  d.mkdir()
  for i in range(2):
    ms.write_media(d / f"s{i}.mp4", seconds=8.0, audio=ms.noise(8.0, amp=0.2, seed=i), shift_px=0.4)
    (d / f"s{i}.txt").write_text("rain on a roof")
  enc = encode.EncodeConfig(mesh="data=1", **assets)
  cfg = stages.BuildConfig(standardise=standardise.StandardiseConfig(clip_seconds=2.0, short_side=64),
                           stages=("silence", "clipping", "encode"), stage_configs=(("encode", enc),))
  rep = run.build_dataset(str(d / "*.mp4"), str(tmp_path / "clips"), cfg, beam_options=IN_PROCESS,
                          show_progress=False)
  assert rep["records"] == 8
  conf = th.config_file(tmp_path / "cfg.py", str(tmp_path / "clips" / "train-*.array_record"), **{
      "model.codebook_size": 1024, "model.sync_dim": 64, "model.clip_dim": 32, "train.steps": 2,
      "train.ckpt_every": 2})
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), f"--config={conf}",
                      f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  losses = [row["loss"] for row in rows if "loss" in row]
  assert len(losses) == 2 and all(np.isfinite(losses))


def test_strict_failure_survives_beams_rewrapping():
  """--strict's first failure travels from a worker to the driver as text (Beam re-raises workers' errors as
  new exceptions holding the message); quality rejections and duplicates are not failures and pass."""
  from dreamfoley_jax.data.build import beam_pipeline

  base = {"stage": "input", "value": None, "source": "/v/a.mp4", "file_key": "k", "clip_id": None, "detail": ""}
  quality = dict(base, stage="silence", reason="silence_ratio", clip_id="a_000", value=0.9)
  assert beam_pipeline.StrictFailure.raise_for(quality) is quality
  assert beam_pipeline.StrictFailure.raise_for(dict(base, reason="duplicate")) is not None
  with pytest.raises(RuntimeError) as e:
    beam_pipeline.StrictFailure.raise_for(dict(base, reason="unreadable", detail="FileNotFoundError: gone"))
  wrapped = RuntimeError(f"Pipeline failed in stage Strict: Traceback ...\n{e.value}\n... [while running 'Strict']")
  f = beam_pipeline.StrictFailure.find(wrapped)
  assert f.failure == {"item": "/v/a.mp4", "reason": "unreadable: FileNotFoundError: gone", "stage": "input"}
  assert str(f) == "/v/a.mp4: unreadable: FileNotFoundError: gone"
  assert beam_pipeline.StrictFailure.find(RuntimeError("some other worker error")) is None
