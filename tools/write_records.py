"""Writes training records (dreamfoley_jax/data/records.py) to ArrayRecord shards for the grain pipeline.

  # one .npz per clip with record fields (text_ids, sync_feats, clip_feats, audio_codes, caption, ...)
  python tools/write_records.py --inputs '/data/clips/*.npz' --out_dir /data/records --num_shards 64
  # learnable toy clips sized for a config (smoke tests of the trainer)
  python tools/write_records.py --toy 64 --config experiments/tiny.py --out_dir /tmp/toy_records
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_INPUTS = flags.DEFINE_string("inputs", None, "glob of .npz files, one clip each")
_TOY = flags.DEFINE_integer("toy", 0, "write this many learnable toy clips instead (sized by --config)")
_CONFIG = flags.DEFINE_string("config", "experiments/tiny.py", "experiment config (toy record sizes)")
_OUT = flags.DEFINE_string("out_dir", None, "output directory")
_NAME = flags.DEFINE_string("name", "train", "shard name prefix: NAME-00000-of-000NN.array_record")
_SHARDS = flags.DEFINE_integer("num_shards", 1, "number of ArrayRecord shards")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace existing shards")
flags.mark_flags_as_required(["out_dir"])


def main(argv):
  del argv
  from dreamfoley_jax.data import writer

  if _TOY.value:
    from dreamfoley_jax import configs


    f = configs.model_config(configs.load_config(_CONFIG.value).model)
    examples = writer.toy_examples(_TOY.value, num_codebooks=f.num_codebooks, codebook_size=f.codebook_size,
                                   sync_dim=f.sync_dim, clip_dim=f.clip_dim)
  else:
    paths = sorted(glob.glob(_INPUTS.value or ""))
    if not paths:
      raise app.UsageError(f"--inputs {_INPUTS.value!r} matches no files (or pass --toy N)")
    examples = writer.npz_examples(paths)
  out = writer.write_records(examples, _OUT.value, name=_NAME.value, num_shards=_SHARDS.value,
                             overwrite=_OVERWRITE.value)
  print(f"wrote {len(out)} shards: {out[0].parent}/{_NAME.value}-*.array_record")


if __name__ == "__main__":
  app.run(main)
