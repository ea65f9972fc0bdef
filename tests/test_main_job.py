"""The main job, shortened (CI): data -> codec -> records -> train -> CFG sampling -> files + metrics.

Then the generate tool runs on one of the job's own mp4 files with the job's params, codec and tokenizer.
"""
import json

import numpy as np
import pytest

from dreamfoley_jax import configs
from dreamfoley_jax.synthetic import job as main_job


SHORT = {"train.steps": 2, "train.global_batch": 8, "train.log_every": 1, "main.num_train": 12,
         "main.num_eval": 2, "main.sample_batch": 2, "main.max_eval_seconds": 3.0,
         "main.pretext.steps": 2, "sample.window_s": 2.0, "sample.context_s": 1.0}


def _short_run(wd):
  c = configs.load_config("experiments/synthetic.py")
  for k, v in SHORT.items():
    configs.set_path(c, k, v)
  return main_job.run(c, wd, log=lambda m: None)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  wd = tmp_path_factory.mktemp("main_job")
  return wd, _short_run(wd)


def test_same_command_twice_gives_the_same_metrics(job, tmp_path):
  """Run to run on one machine the job is deterministic: metrics.json identical but for the timings, and the
  generated audio bit for bit (across CPUs it is not: README, 'What the main job measured')."""
  wd, _ = job
  _short_run(tmp_path)
  def drop(m):   # wall-clock fields, at any depth
    if isinstance(m, dict):
      return {k: drop(v) for k, v in m.items() if k not in ("timings_s", "total_s", "seconds")}
    return [drop(v) for v in m] if isinstance(m, list) else m
  a, b = (json.loads((d / "metrics.json").read_text()) for d in (wd, tmp_path))
  assert drop(a) == drop(b)
  n = a["per_clip"][0]["clip_id"]
  assert (wd / "samples" / f"{n}.wav").read_bytes() == (tmp_path / "samples" / f"{n}.wav").read_bytes()
  with np.load(wd / "samples" / "codes.npz") as ca, np.load(tmp_path / "samples" / "codes.npz") as cb:
    assert sorted(ca.files) == sorted(cb.files) and len(ca.files) == 5 * len(a["per_clip"])
    for k in ca.files:
      np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)


def test_writes_every_file(job):
  wd, metrics = job
  names = [p["clip_id"] for p in metrics["per_clip"]]
  assert len(names) == 2
  for n in names:
    for suffix in (".wav", ".mp4", ".png", "_groundtruth.wav", "_shuffled_video.wav", "_swapped_caption.wav",
                   "_video_only.wav", "_text_only.wav"):
      f = wd / "samples" / f"{n}{suffix}"
      assert f.exists() and f.stat().st_size > 1000, f
  on_disk = json.loads((wd / "metrics.json").read_text())
  for key in ("onset_f1", "shuffled_video_onset_f1", "mean_abs_onset_offset_s", "caption_swap_moves_toward_material",
              "caption_swap_material_match", "timings_s", "train_steps"):
    assert key in on_disk
  assert on_disk["train_steps"] == 2
  # the F1 on disk is the onset metric of the written wavs against the true events (PCM16 rounding may move
  # a borderline onset: one event of slack), and the metric finds the events in the ground-truth audio
  import soundfile as sf
  from dreamfoley_jax.synthetic import onsets as sync
  per, gt = [], []
  for clip in on_disk["per_clip"]:
    ev = np.asarray(clip["event_times"])
    for suffix, acc in (("", per), ("_groundtruth", gt)):
      a, sr = sf.read(wd / "samples" / f"{clip['clip_id']}{suffix}.wav")
      acc.append(sync.onset_metrics(sync.detect_onsets(a.astype(np.float32), sr), ev))
  n_ev = sum(m["n_ref"] for m in per)
  assert abs(sync.aggregate_onset_metrics(per)["f1"] - on_disk["onset_f1"]) <= 2.0 / max(n_ev, 1)
  assert sync.aggregate_onset_metrics(gt)["f1"] >= 0.8
  assert (wd / "params").is_dir() and (wd / "codec.npz").exists() and (wd / "tokenizer.json").exists()
  assert list((wd / "data").glob("train-*.array_record"))


def test_every_cfg_mode_is_measured_and_audible(job):
  """metrics.json holds video-only and text-only figures (issue 19); none of the modes wrote silence, and
  the modes really differ (null text / null video reach the sampler)."""
  import soundfile as sf

  wd, metrics = job
  modes = json.loads((wd / "metrics.json").read_text())["cfg_modes"]
  assert set(modes) == {"video+text", "video_only", "text_only"}
  for name, m in modes.items():
    assert m["num_clips"] == 2 and m["silent_clips"] == 0, (name, m)
    assert 0.0 <= m["onset_f1"] <= 1.0 and 0.0 <= m["material_match"] <= 1.0
    assert all(r > 1e-3 for r in m["rms"]), (name, m["rms"])
  assert modes["text_only"]["sample"]["temperature"] == 1.0 and modes["text_only"]["sample"]["cfg_scale"] == 3.0
  n = metrics["per_clip"][0]["clip_id"]
  both, vid, txt = (sf.read(wd / "samples" / f"{n}{s}.wav")[0] for s in ("", "_video_only", "_text_only"))
  assert not np.array_equal(both, vid) and not np.array_equal(both, txt) and not np.array_equal(vid, txt)


def test_the_committed_job_draws_every_object_alike(monkeypatch):
  """experiments/synthetic.py's main.look_shows_material=False reaches the world of both the training and the
  held-out clips (test_synthetic: that look renders the same frames whatever the material)."""
  seen = []
  monkeypatch.setattr(main_job.world, "make_dataset", lambda n, seed, cfg: seen.append(cfg) or [])
  main_job.make_data(configs.load_config("experiments/synthetic.py").main, log=lambda s: None)
  assert [cfg.look_shows_material for cfg in seen] == [False, False]
  assert main_job.world.SynthConfig().look_shows_material       # the world's own default still shows it


def test_is_silent_flags_one_code_and_a_flat_signal():
  codes = np.tile(np.arange(8)[:, None], (1, 50))            # each codebook one code: silence
  assert main_job.is_silent(codes, np.full(48000, 0.3))
  codes[3, 7] = 5
  assert not main_job.is_silent(codes, np.sin(np.arange(48000) * 0.01))
  assert main_job.is_silent(codes, np.full(48000, 1e-4))       # codes vary but nothing is audible


@pytest.mark.slow
def test_full_main_job_every_cfg_mode_makes_sound(tmp_path):
  """The committed main job (experiments/synthetic.py, ~8-15 min idle on 2 cores): no mode writes silence;
  video-only follows the video; text-only takes the caption's material more often than chance (1/4); a
  swapped caption moves the sound to the caption's material."""
  m = main_job.run(configs.load_config("experiments/synthetic.py"), tmp_path / "full", log=lambda s: None)
  modes = m["cfg_modes"]
  assert [modes[k]["silent_clips"] for k in ("video+text", "video_only", "text_only")] == [0, 0, 0], modes
  assert modes["video_only"]["onset_f1"] >= 0.6 and m["shuffled_video_onset_f1"] <= 0.3
  assert modes["text_only"]["material_match"] >= 0.375
  assert m["onset_f1"] >= 0.8
  # the caption swap (README: 100% of clips toward the caption's material, 88-100% sound like it, 3 seeds)
  assert m["caption_swap_moves_toward_material"] >= 0.8 and m["caption_swap_material_match"] >= 0.6, m


def test_pretrained_towers_stay_frozen_in_training(job):
  """Stage 4 pretrains the video towers; the trainer starts from them and never changes them."""
  from dreamfoley_jax.convert import common

  wd, metrics = job
  rep = metrics["encoder_pretext"]
  assert rep["steps"] == 2 and np.isfinite(rep["frame_loss"]) and "impact_peak_rate" in rep
  towers = common.flatten(common.load_params(wd / "encoders"))
  trained = common.flatten(common.load_params(wd / "params"))
  assert towers and {k.split("/")[0] for k in towers} == {"synchformer"}   # main.pretext.towers
  for k, v in towers.items():
    np.testing.assert_array_equal(np.asarray(trained[k]), np.asarray(v), err_msg=k)
  # ... while the rest of the model (EVA included) did train.
  enc = common.flatten(common.load_params(wd / "encoders"))
  assert any(k.startswith("eva_clip/") for k in trained) and not any(k.startswith("eva_clip/") for k in enc)


def test_wav_has_the_clip_duration(job):
  import soundfile as sf

  wd, metrics = job
  n = metrics["per_clip"][0]["clip_id"]
  a, sr = sf.read(wd / "samples" / f"{n}.wav")
  g, _ = sf.read(wd / "samples" / f"{n}_groundtruth.wav")
  assert sr == 24000 and len(a) == len(g) and np.isfinite(a).all()


def test_generate_tool_on_the_jobs_outputs(job, tmp_path):
  from dreamfoley_jax import generate

  wd, metrics = job
  gen = generate.build_generator("experiments/synthetic.py", checkpoint=str(wd / "params"),
                                 codec_checkpoint=str(wd / "codec.npz"), tokenizer=str(wd / "tokenizer.json"),
                                 batch_size=2)
  n = metrics["per_clip"][0]["clip_id"]
  res = gen.run([generate.Item(video=str(wd / "samples" / f"{n}.mp4"), caption="a metal ball bounces once")],
                tmp_path)
  import soundfile as sf

  r = res[0]
  assert r["wav"].exists() and r["mp4"].exists() and r["png"].exists()
  n_gt = sf.info(str(wd / "samples" / f"{n}_groundtruth.wav")).frames
  assert r["codes"].shape == (8, r["frames"]) and abs(r["frames"] - n_gt / 960) <= 1


@pytest.fixture(scope="module")
def tiny_higgs_checkpoint(tmp_path_factory, fixtures_dir):
  """A converted higgs-audio-v2 tokenizer (the golden's tiny random config: 24 kHz, 25 Hz, K = 8, 1024)."""
  from safetensors.numpy import save_file

  from dreamfoley_jax.convert import higgs as conv

  d = tmp_path_factory.mktemp("higgs")
  with np.load(fixtures_dir / "higgs_audio_v2_tokenizer_tiny.npz") as f:
    sd = {k[len("param/"):]: np.ascontiguousarray(f[k]) for k in f.files if k.startswith("param/")}
  (d / "hf").mkdir()
  save_file(sd, str(d / "hf" / "model.safetensors"))
  cfg = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  (d / "hf" / "config.json").write_text(json.dumps(cfg["config_to_dict"]))
  return conv.convert_to_orbax(d / "hf", d / "orbax")


# A whole short job with the converted higgs tokenizer (~2 min on CI): slow; the tokenizer itself is tested in
# test_higgs.py against its goldens.
@pytest.mark.slow
def test_main_job_with_the_higgs_tokenizer_by_path(tmp_path, tiny_higgs_checkpoint):
  """main.codec_checkpoint: the same pipeline with the higgs tokenizer instead of the synthetic codec."""
  from dreamfoley_jax.audio import tokenizer
  from dreamfoley_jax.data import records

  c = configs.load_config("experiments/synthetic.py")
  for k, v in {"train.steps": 1, "train.global_batch": 8, "main.num_train": 8, "main.num_eval": 2,
               "main.sample_batch": 2, "main.max_eval_seconds": 2.5, "main.pretext.steps": 1,
               "main.codec_checkpoint": str(tiny_higgs_checkpoint)}.items():
    configs.set_path(c, k, v)
  with pytest.raises(ValueError, match=r"codebook_size=1024 \(config/world needs 128\).*model.codebook_size=1024"):
    main_job.run(c, tmp_path / "bad", log=lambda m: None)
  configs.set_path(c, "model.codebook_size", 1024)
  m = main_job.run(c, tmp_path / "job", log=lambda m: None)
  assert m["config"]["codec"] == str(tiny_higgs_checkpoint) and not (tmp_path / "job" / "codec.npz").exists()
  assert len(m["per_clip"]) == 2 and (tmp_path / "job" / "samples" / f"{m['per_clip'][0]['clip_id']}.wav").exists()
  # The training records hold the higgs codes of the clip audio.
  import grain

  train, _ = main_job.make_data(c.main, log=lambda m: None)
  codec = tokenizer.HiggsCodec(tiny_higgs_checkpoint)
  want = codec.encode(train[0]["audio"])
  src = grain.sources.ArrayRecordDataSource(sorted(str(p) for p in (tmp_path / "job" / "data").glob("train-*")))
  recs = [records.decode_example(src[i]) for i in range(len(src))]
  rec = next(r for r in recs if r["clip_id"] == train[0]["clip_id"])
  np.testing.assert_array_equal(rec["audio_codes"], want[:, :train[0]["frames_sync"].shape[0]])
  assert rec["audio_codes"].max() < 1024 and rec["audio_codes"].shape[1] == train[0]["frames_sync"].shape[0]


def test_model_directory_of_the_job_and_its_export(job, tmp_path):
  """The job writes model/ (tools/generate.py / tools/demo.py --model read it); tools/export_model.py makes the
  same from the training workdir."""
  import os
  import pathlib
  import subprocess
  import sys

  from dreamfoley_jax import generate, model_dir
  from dreamfoley_jax.convert import common

  wd, metrics = job
  md = model_dir.load(wd / "model")
  assert md.manifest["source"]["step"] == 2 and md.manifest["codec"]["kind"] == "synthetic"
  assert md.sampling == {"temperature": 0.5, "top_k": 10, "top_p": 0.9, "cfg_scale": 1.5, "window_s": 2.0,
                         "context_s": 1.0}
  trained = common.flatten(common.load_params(wd / "params"))
  for k, v in common.flatten(common.load_params(wd / "model" / "params")).items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(trained[k]), err_msg=k)
  # --model gives what the separate flags give (the windows of experiments/synthetic.py, the clip and caption of
  # test_generate_tool_on_the_jobs_outputs: the sampler it compiled is reused).
  n = metrics["per_clip"][0]["clip_id"]
  item = generate.Item(video=str(wd / "samples" / f"{n}.mp4"), caption="a metal ball bounces once")
  a = model_dir.build_generator(wd / "model", batch_size=2, window_s=3.0, context_s=1.0, write_png=False)
  b = generate.build_generator("experiments/synthetic.py", checkpoint=str(wd / "params"), batch_size=2,
                               codec_checkpoint=str(wd / "codec.npz"), tokenizer=str(wd / "tokenizer.json"))
  ra, rb = a.run([item], tmp_path / "a")[0], b.run([item], tmp_path / "b")[0]
  assert ra["codes"].shape == (8, ra["frames"]) and ra["mp4"].exists()
  np.testing.assert_array_equal(ra["codes"], rb["codes"])

  root = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / "exported"
  p = subprocess.run([sys.executable, str(root / "tools" / "export_model.py"), "--config=experiments/synthetic.py",
                      f"--workdir={wd / 'train'}", f"--codec={wd / 'codec.npz'}", f"--tokenizer={wd / 'tokenizer.json'}",
                      f"--out={out}", "--cfg_scale=2.5"], capture_output=True, text=True, cwd=root, timeout=300,
                     env={**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"})
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"wrote {out}: step 2" in p.stdout
  ex = model_dir.load(out)
  assert ex.manifest["source"]["step"] == 2 and ex.sampling["cfg_scale"] == 2.5
  for k, v in common.flatten(common.load_params(out / "params")).items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(trained[k]), err_msg=k)
  with pytest.raises(model_dir.ModelDirError, match=r"no checkpoint at step 7 \(has \[2\]\)"):
    model_dir.train_params(wd / "train", 7)


def test_preempted_training_stops_the_job(tmp_path, monkeypatch):
  """SIGTERM during training (train.train returns 'preempted'): the job stops with an error that says how to
  resume, and writes no model, samples or metrics from the half-trained weights."""
  from dreamfoley_jax import train

  calls = []

  def preempted(c, workdir):
    calls.append(workdir)
    return train.TrainResult(step=1, status="preempted", last_checkpoint=1, state=None)

  monkeypatch.setattr(train, "train", preempted)
  c = configs.load_config("experiments/synthetic.py")
  for k, v in dict(SHORT, **{"main.pretrain_encoders": False}).items():
    configs.set_path(c, k, v)
  with pytest.raises(main_job.Preempted, match=r"preempted at step 1 of 2: .*run the same command again"):
    main_job.run(c, tmp_path, log=lambda m: None)
  assert calls and not (tmp_path / "metrics.json").exists() and not (tmp_path / "model").exists()
  assert not (tmp_path / "samples").exists() and not (tmp_path / "params").exists()
