"""configs.py: every experiment's sections convert to their dataclasses; unknown keys fail, naming key and section."""
import pathlib

import ml_collections
import pytest

from dreamfoley_jax import configs, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAINING_EXPERIMENTS = ["paper_7b.py", "qwen05.py", "tiny.py", "synthetic.py", "ablation_vision.py:sync",
                        "ablation_vision.py:clip", "ablation_vision.py:both", "ablation_rvq.py:1",
                        "ablation_rvq.py:4", "ablation_rvq.py:8", "ablation_cfg.py:1", "ablation_cfg.py:2",
                        "ablation_cfg.py:3", "ablation_cfg.py:4"]


def test_every_experiment_file_is_covered():
  stems = {p.split(".py")[0] for p in TRAINING_EXPERIMENTS}
  others = {p.stem for p in (ROOT / "experiments").glob("*.py")} - stems
  assert others == {"eval_ablation", "eval_kling", "eval_vggsound"}      # evaluation configs: no model section
  for name in others:
    assert "model" not in configs.load_config(str(ROOT / "experiments" / f"{name}.py"))


@pytest.mark.parametrize("path", TRAINING_EXPERIMENTS)
def test_experiment_converts_every_component(path):
  c = configs.load_config(str(ROOT / "experiments" / path))
  fc = configs.model_config(c.model)
  assert fc.decoder.hidden_size == configs.decoder_config(c.model.decoder).hidden_size
  if fc.vision_mode == "frames":
    assert fc.synchformer.width == fc.sync_dim and fc.eva.embed_dim == fc.clip_dim
  p = configs.pipeline_config(c, fc, 2, 0)
  if "main" in c:
    assert configs.pretext_config(c.main.pretext).steps == c.main.pretext.steps
  assert (p.batch_size, p.num_codebooks, p.max_text_len) == (2, fc.num_codebooks, c.data.max_text_len)
  assert "vision" not in c and "audio_frame_rate" not in c.data       # keys nothing read
  train.validate(c)                                                   # train / optim / data keys all known


def test_paper_encoder_presets():
  c = configs.load_config(str(ROOT / "experiments/paper_7b.py"))
  fc = configs.model_config(c.model)
  assert (fc.synchformer.width, fc.synchformer.window, fc.synchformer.stride) == (768, 16, 8)
  assert fc.eva.embed_dim == fc.clip_dim == 1024


@pytest.mark.parametrize("section,where", [
    (("model",), "model"), (("model", "decoder"), "model.decoder"), (("model", "synchformer"), "model.synchformer"),
    (("model", "eva"), "model.eva")])
def test_unknown_key_is_rejected_by_name(section, where):
  c = configs.load_config(str(ROOT / "experiments/synthetic.py"))
  node = c
  for k in section:
    node = node[k]
  node["widht"] = 3
  with pytest.raises(ValueError) as e:
    configs.model_config(c.model)
  msg = str(e.value)
  assert msg.startswith(f"{where}: unknown fields ['widht']; accepted: ") and "\n" not in msg
  assert "preset" in msg if where != "model" else "vision_mode" in msg


def test_unknown_pretext_key_is_rejected_by_name():
  c = configs.load_config(str(ROOT / "experiments/synthetic.py"))
  c.main.pretext.step = 3
  with pytest.raises(ValueError, match=r"^main.pretext: unknown fields \['step'\]; accepted: .*steps"):
    configs.pretext_config(c.main.pretext)


def test_unknown_data_key_is_rejected_by_name():
  c = configs.load_config(str(ROOT / "experiments/tiny.py"))
  c.data.crop_max = 9.0
  with pytest.raises(ValueError, match=r"^data: unknown fields \['crop_max'\]; accepted: .*crop_max_s"):
    configs.pipeline_config(c, configs.model_config(c.model), 2, 0)


def test_encoder_section_without_preset_uses_the_dataclass_defaults():
  sc = configs.synchformer_config(ml_collections.ConfigDict(dict(depth=1)))
  assert (sc.depth, sc.width) == (1, 768)
  assert configs.synchformer_config({}) is None and configs.eva_config(None) is None


@pytest.mark.parametrize("section,key", [("train", "global_bach"), ("optim", "learning_rate"), ("data", "crop_max")])
def test_trainer_rejects_unknown_section_keys(section, key):
  c = configs.load_config(str(ROOT / "experiments/tiny.py"))
  c[section][key] = 1
  with pytest.raises(train.ConfigError, match=rf"^{section}: unknown fields \['{key}'\]; accepted: "):
    train.validate(c)


def test_trainer_model_section_error_is_a_config_error():
  c = configs.load_config(str(ROOT / "experiments/tiny.py"))
  c.model.decoder.widht = 3
  with pytest.raises(train.ConfigError, match=r"^model.decoder: unknown fields \['widht'\]"):
    train.model_config(c)
