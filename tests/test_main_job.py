"""The main job, shortened (CI): data -> codec -> records -> train -> CFG sampling -> files + metrics.

Then the generate tool runs on one of the job's own mp4 files with the job's params, codec and tokenizer.
"""
import json

import numpy as np
import pytest

from dreamfoley_jax import configs, main_job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  wd = tmp_path_factory.mktemp("main_job")
  c = configs.load_config("experiments/synthetic.py")
  for k, v in {"train.steps": 2, "train.global_batch": 8, "train.log_every": 1, "main.num_train": 12,
               "main.num_eval": 2, "main.sample_batch": 2, "main.max_eval_seconds": 3.0,
               "main.pretext.steps": 2, "sample.window_s": 2.0, "sample.context_s": 1.0}.items():
    configs.set_path(c, k, v)
  metrics = main_job.run(c, wd, log=lambda m: None)
  return wd, metrics


def test_writes_every_file(job):
  wd, metrics = job
  names = [p["clip_id"] for p in metrics["per_clip"]]
  assert len(names) == 2
  for n in names:
    for suffix in (".wav", ".mp4", ".png", "_groundtruth.wav", "_shuffled_video.wav", "_swapped_caption.wav"):
      f = wd / "samples" / f"{n}{suffix}"
      assert f.exists() and f.stat().st_size > 1000, f
  on_disk = json.loads((wd / "metrics.json").read_text())
  for key in ("onset_f1", "shuffled_video_onset_f1", "mean_abs_onset_offset_s", "caption_swap_moves_toward_material",
              "timings_s", "train_steps"):
    assert key in on_disk
  assert on_disk["train_steps"] == 2
  assert 0.0 <= on_disk["onset_f1"] <= 1.0 and 0.0 <= on_disk["shuffled_video_onset_f1"] <= 1.0
  assert (wd / "params").is_dir() and (wd / "codec.npz").exists() and (wd / "tokenizer.json").exists()
  assert list((wd / "data").glob("train-*.array_record"))


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
