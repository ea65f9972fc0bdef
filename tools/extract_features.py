r"""Extracts EVA-CLIP (4 fps) and Synchformer (25 Hz) features for a folder or CSV manifest of videos.

One training record per clip in --output_dir (resumable: rerunning skips written clips), then optional
ArrayRecord shards. Example:

  python tools/extract_features.py --input=videos/ --output_dir=feats/ \
    --eva_ckpt=ckpt/eva_clip_g14 --sync_ckpt=ckpt/synchformer \
    --tokenizer=ckpt/qwen2.5-7b/tokenizer.json --max_duration=10 --num_shards=16

--input: a folder (recursive; caption from a sidecar <video>.txt) or a CSV with columns
video (or path), caption, optional clip_id. On a multi-host pod run the same command on every host: host
i takes clips i, i + n, ... and shards the encoders over its local chips (--mesh applies per host); pack
shards once all hosts are done (--num_shards on one host, or a rerun with everything already written).
"""
from __future__ import annotations

import logging
import pathlib
import sys

import jax
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dreamfoley_jax import checks, sharding  # noqa: E402
from dreamfoley_jax.data import extract  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Folder of videos or CSV manifest.")
flags.DEFINE_string("output_dir", None, "Where the per-clip .msgpack records go.")
flags.DEFINE_string("eva_ckpt", None, "Converted EVA-CLIP-g/14 orbax checkpoint directory.")
flags.DEFINE_string("sync_ckpt", None, "Converted Synchformer orbax checkpoint directory.")
flags.DEFINE_string("tokenizer", None, "Optional tokenizer.json (or its folder) for text_ids.")
flags.DEFINE_integer("clip_batch", 32, "EVA-CLIP images per device call (global).")
flags.DEFINE_integer("sync_batch", 8, "Synchformer windows per device call (global).")
flags.DEFINE_float("max_duration", None, "Seconds of each clip to use (default: whole video).")
flags.DEFINE_enum("rule", "nearest", ["nearest", "before", "mmaudio_eval"], "Frame sampling rule.")
flags.DEFINE_integer("num_workers", 2, "Decode threads.")
flags.DEFINE_bool("store_frames", False, "Also store the 224x224 uint8 frames in each record.")
flags.DEFINE_string("mesh", "data=-1", "Mesh spec, e.g. 'data=-1' or 'data=4,fsdp=2'.")
flags.DEFINE_integer("num_shards", 0, "If > 0, pack the records into this many ArrayRecord shards.")
flags.DEFINE_string("shard_prefix", None, "Shard path prefix (default <output_dir>/shards/data).")
flags.DEFINE_bool("strict", False, "Stop at the first clip that fails (default: finish the others, list the "
                  "failed ones in <output_dir>/failures.json, exit status 1).")
flags.DEFINE_bool("verbose", False, "Print the traceback of an error (default: one line).")


def parse_mesh(spec: str) -> dict:
  try:
    return sharding.parse_mesh_spec(spec) or {"data": -1}
  except ValueError as e:
    raise checks.UsageError(f"--mesh: {e}") from None


def validate_flags(f) -> None:
  """Every flag's range before any work (checks.UsageError, exit status 2)."""
  if not f.input or not f.output_dir:
    raise checks.UsageError("--input and --output_dir are required")
  n = checks.number
  n(f.clip_batch, "--clip_batch", lo=1, integer=True)
  n(f.sync_batch, "--sync_batch", lo=1, integer=True)
  n(f.num_workers, "--num_workers", lo=1, integer=True)
  n(f.num_shards, "--num_shards", lo=0, integer=True, accepted="an integer >= 0 (0 = no shards)")
  if f.max_duration is not None:
    n(f.max_duration, "--max_duration", lo=0.64, accepted="seconds >= 0.64 (one Synchformer window)")
  parse_mesh(f.mesh)


def run(argv_flags, encoders: extract.Encoders | None = None) -> dict:
  """The tool's body; `encoders` overrides the checkpoint-built ones (tests pass tiny ones)."""
  f = argv_flags
  validate_flags(f)
  checks.writable_dir(f.output_dir, "--output_dir")
  cfg = extract.ExtractConfig(clip_batch=f.clip_batch, sync_batch=f.sync_batch,
                              max_duration_sec=f.max_duration, rule=f.rule, num_workers=f.num_workers,
                              store_frames=f.store_frames)
  items = extract.collect_items(f.input)
  mine = extract.items_for_this_host(items)
  logging.info("%d clips in %s, %d for host %d", len(items), f.input, len(mine), jax.process_index())
  if encoders is None:
    if not f.eva_ckpt or not f.sync_ckpt:
      raise checks.UsageError("--eva_ckpt and --sync_ckpt are required")
    extract._load_tokenizer(f.tokenizer)   # a bad --tokenizer fails before the encoders load
    # extraction is embarrassingly parallel: each host shards its encoders over its own chips
    mesh = sharding.make_mesh(parse_mesh(f.mesh), devices=jax.local_devices())
    encoders = extract.build_real_encoders(f.eva_ckpt, f.sync_ckpt, mesh, cfg)
  items = mine
  stats = extract.extract_features(items, f.output_dir, encoders, cfg, tokenizer=f.tokenizer,
                                   strict=getattr(f, "strict", False))
  for path, msg in stats["failed"]:
    print(f"  FAILED {msg}")
  print(f"written {stats['written']}, skipped (already done) {stats['skipped']}, failed {len(stats['failed'])}"
        + (f" (reasons in {pathlib.Path(f.output_dir) / 'failures.json'})" if stats["failed"] else ""))
  if f.num_shards > 0 and jax.process_count() > 1:
    print("multi-host run: pack shards after all hosts finish (rerun on one host with --num_shards)")
  elif f.num_shards > 0:
    prefix = f.shard_prefix or str(pathlib.Path(f.output_dir) / "shards" / "data")
    shards = extract.write_array_record_shards(f.output_dir, prefix, f.num_shards)
    print(f"wrote {len(shards)} ArrayRecord shards: {shards[0].parent}")
  return stats


def main(argv):
  del argv
  checks.run_cli(lambda: 1 if run(FLAGS)["failed"] else 0, verbose=FLAGS.verbose, prog="extract_features")


if __name__ == "__main__":
  app.run(main, flags_parser=checks.absl_flags_parser)
