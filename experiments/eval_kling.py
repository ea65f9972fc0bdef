"""Table 2 protocol: Kling-Eval (Kling-Audio-Eval), scored with av-benchmark's definitions.

  python tools/evaluate.py --config experiments/eval_kling.py \
      --config.gen_dir /data/dreamfoley_out/kling_eval \
      --config.video_dir /data/kling_eval/videos \
      --config.captions_csv /data/kling_eval/captions.csv \
      --config.weights_dir /data/metric_weights
"""
import pathlib


import importlib.util


def _base():
  spec = importlib.util.spec_from_file_location("eval_vggsound", pathlib.Path(__file__).with_name("eval_vggsound.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def get_config():
  c = _base()
  c.duration_s = 10.0  # OUR ASSUMPTION: Kling-Eval clips are 10 s; set it to your copy's clip length
  c.row_name = "DreamFoley (Kling-Eval)"
  return c
