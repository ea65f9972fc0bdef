"""Every ablation config (Tables 3-5) trains a few steps and generates audio on the synthetic world, tiny size:
experiments/ablation_*.apply on experiments/synthetic.py, through the main job (train -> CFG sampling -> codec)."""
import importlib.util
import pathlib

import numpy as np
import pytest

from dreamfoley_jax import configs
from dreamfoley_jax.synthetic import job as main_job

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ablation(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _run(tmp_path, name, arg, **extra):
  c = configs.load_config(str(ROOT / "experiments/synthetic.py"))
  _ablation(name).apply(c, arg)
  ov = {"train.steps": 2, "train.global_batch": 8, "train.log_every": 1, "main.num_train": 10, "main.num_eval": 2,
        "main.sample_batch": 2, "main.max_eval_seconds": 2.5, "main.pretext.steps": 1, "sample.window_s": 2.0,
        "sample.context_s": 1.0}
  ov.update(extra)
  for k, v in ov.items():
    configs.set_path(c, k, v)
  return c, main_job.run(c, tmp_path, log=lambda m: None)


def _check_audio(wd, metrics, k):
  import soundfile as sf
  assert metrics["train_steps"] == 2 and len(metrics["per_clip"]) == 2
  for clip in metrics["per_clip"]:
    a, sr = sf.read(wd / "samples" / f"{clip['clip_id']}.wav")
    assert sr == 24000 and len(a) > sr and np.isfinite(a).all() and float(np.sqrt(np.mean(a ** 2))) > 1e-4
  assert metrics["config"]["num_codebooks"] == k


# Each case is a whole short main job (~2.5 min on CI's 2-core CPU): all slow (python -m pytest -q -m slow
# tests/test_ablations.py); the default suite checks the k < 8 decode path of the codec they use
# (test_synthetic_codec.py::test_decode_first_k_levels) and every ablation's arguments below.
@pytest.mark.slow
@pytest.mark.parametrize("k", ["1", "4"])
def test_rvq_ablation_generates_from_the_first_k_levels(tmp_path, k):
  """Table 4: the model predicts the first k of the codec's 8 levels; audio decodes from those k alone."""
  from dreamfoley_jax.synthetic import codec as synthetic_codec
  c, m = _run(tmp_path, "ablation_rvq", k)
  assert c.model.num_codebooks == int(k) and len(c.model.loss_weights) == int(k)
  _check_audio(tmp_path, m, int(k))
  codec = synthetic_codec.SyntheticCodec.load(str(tmp_path / "codec.npz"))
  assert codec.num_codebooks == 8
  codes = np.zeros((8, 25), np.int32)
  np.testing.assert_allclose(codec.dequantize(codes[: int(k)]), sum(codec.codebooks[i][codes[i]] for i in range(int(k))),
                             rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sync", "clip"])
def test_vision_ablation_trains_and_generates(tmp_path, variant):
  """Table 3: one video stream (the pretext pretrains both towers, so it is off here)."""
  c, m = _run(tmp_path, "ablation_vision", variant, **{"main.pretrain_encoders": False})
  assert (c.model.use_sync, c.model.use_clip) == {"sync": (True, False), "clip": (False, True)}[variant]
  _check_audio(tmp_path, m, 8)


@pytest.mark.slow
def test_cfg_ablation_samples_at_its_scale(tmp_path):
  c, m = _run(tmp_path, "ablation_cfg", "1")
  assert c.sample.cfg_scale == 1.0 and m["config"]["sample"]["cfg_scale"] == 1.0
  _check_audio(tmp_path, m, 8)


def test_ablation_arguments_are_checked():
  c = configs.load_config(str(ROOT / "experiments/synthetic.py"))
  for name, bad, msg in (("ablation_rvq", "3", "1, 4 or 8"), ("ablation_vision", "x", "variant must be"),
                         ("ablation_cfg", "5", "1, 2, 3 or 4")):
    with pytest.raises(ValueError, match=msg):
      _ablation(name).apply(c, bad)
  for name, arg in (("ablation_rvq", "1"), ("ablation_vision", "sync"), ("ablation_cfg", "2")):
    _ablation(name).get_config(arg)       # the paper variants load
