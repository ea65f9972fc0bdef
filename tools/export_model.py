"""A model directory (everything tools/generate.py and tools/demo.py need, under one path) from a training workdir.

  python tools/export_model.py --config experiments/synthetic.py --workdir runs/synthetic/train \
      --codec runs/synthetic/codec.npz --tokenizer runs/synthetic/tokenizer.json --out my_model
  python tools/export_model.py --config experiments/paper_7b.py --workdir gs-fuse/run7b --step 200000 \
      --codec ckpt/higgs_audio_v2_tokenizer --tokenizer ckpt/qwen2.5-7b --eva_ckpt ckpt/eva --sync_ckpt ckpt/sync \
      --out models/dreamfoley_7b --cfg_scale 3
  python tools/generate.py --model my_model --video clip.mp4 --caption "..." --out_dir out

The params are read from the checkpoint's own metadata (any mesh or host count wrote them); the directory
is written under a temporary name, checked (params vs config, codec vs config, tokenizer vs vocab), then
renamed into place.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from absl import app, flags
from ml_collections import config_flags

from dreamfoley_jax import model_dir

_CONFIG = config_flags.DEFINE_config_file("config", None, "the experiment config the workdir trained with")
flags.DEFINE_string("workdir", None, "training workdir (tools/train.py --workdir)", required=True)
flags.DEFINE_integer("step", None, "checkpoint step (default: the latest intact one)")
flags.DEFINE_string("codec", None, "audio codec: a synthetic codec .npz or a converted higgs-audio-v2 tokenizer "
                    "directory", required=True)
flags.DEFINE_string("tokenizer", None, "caption tokenizer: tokenizer.json or a directory holding one", required=True)
flags.DEFINE_string("eva_ckpt", None, "converted EVA-CLIP checkpoint (features-mode models)")
flags.DEFINE_string("sync_ckpt", None, "converted Synchformer checkpoint (features-mode models)")
flags.DEFINE_string("out", None, "the model directory to write", required=True)
flags.DEFINE_bool("overwrite", False, "replace --out if it exists")
for _k, _t in (("cfg_scale", float), ("temperature", float), ("top_k", int), ("top_p", float), ("window_s", float),
               ("context_s", float)):
  (flags.DEFINE_integer if _t is int else flags.DEFINE_float)(
      _k, None, f"sampling default stored in the model (default: the config's sample.{_k})")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (the experiment the workdir trained with)")
  sampling = {k: getattr(FLAGS, k) for k in model_dir.SAMPLING_KEYS if getattr(FLAGS, k) is not None}
  try:
    out = model_dir.export_from_workdir(FLAGS.workdir, _CONFIG.value, FLAGS.out, codec=FLAGS.codec,
                                        tokenizer=FLAGS.tokenizer, step=FLAGS.step, eva_ckpt=FLAGS.eva_ckpt,
                                        sync_ckpt=FLAGS.sync_ckpt, sampling=sampling, overwrite=FLAGS.overwrite,
                                        config_name=config_flags.get_config_filename(FLAGS["config"]))
  except (model_dir.ModelDirError, FileNotFoundError, FileExistsError) as e:
    raise SystemExit(f"error: {e}") from e
  md = model_dir.load(out)
  print(f"wrote {out}: step {md.manifest['source']['step']}, {md.manifest['num_params']:,} params, "
        f"codec {md.manifest['codec']['kind']}; use it with: python tools/generate.py --model {out} --video CLIP "
        f"--out_dir OUT   or   python tools/demo.py --model {out}")


if __name__ == "__main__":
  app.run(main)
