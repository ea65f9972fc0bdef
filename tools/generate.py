"""Generate a soundtrack for silent video(s): wav + remuxed mp4 + spectrogram png per clip.

  python tools/generate.py --model runs/synthetic/model --video clip.mp4 --caption "a metal ball bounces" \
      --out_dir out/        # a model directory (dreamfoley_jax/model_dir.py): the main job's, or export_model's
  python tools/generate.py --config experiments/paper_7b.py --checkpoint ckpt/dreamfoley_7b \
      --codec_checkpoint ckpt/higgs_audio_v2_tokenizer --tokenizer ckpt/qwen2.5-7b \
      --video clip.mp4 --caption "a dog barks twice" --out_dir out/
  python tools/generate.py ... --csv clips.csv --out_dir out/ --sample_rate 48000   # video,caption[,negative,duration,name]
      (--csv also writes out/generated.csv; run the same command on every host of a slice with --distributed,
      or --coordinator_address/--num_processes/--process_id: each host generates every n-th row)
  python tools/generate.py --config experiments/tiny.py --smoke_random --video clip.mp4 --out_dir /tmp/o
      (random weights, random video features, a tone codec: checks the pipeline without any checkpoint)
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jax
from absl import app, flags

from dreamfoley_jax import checks
from dreamfoley_jax import generate as G
from dreamfoley_jax import hosts, model_dir, sharding

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "a model directory (model.json + params + codec + tokenizer [+ encoders]: the main "
                    "job's runs/synthetic/model or tools/export_model.py's output); the flags below override its parts")
flags.DEFINE_string("config", None, "experiments/<name>.py (required without --model)")
flags.DEFINE_string("checkpoint", None, "DreamFoley params checkpoint (convert.common.save_params layout)")
flags.DEFINE_string("codec_checkpoint", None, "audio decoder: a converted higgs-audio-v2 tokenizer checkpoint "
                    "directory, or a fitted synthetic codec .npz (the main job's workdir/codec.npz)")
flags.DEFINE_string("eva_ckpt", None, "converted EVA-CLIP checkpoint (features-mode models)")
flags.DEFINE_string("sync_ckpt", None, "converted Synchformer checkpoint (features-mode models)")
flags.DEFINE_string("tokenizer", None, "Qwen tokenizer.json (file or directory) for captions")
flags.DEFINE_string("video", None, "one input video (anything PyAV reads)")
flags.DEFINE_string("caption", "", "audio description for --video (empty: video-only mode)")
flags.DEFINE_string("negative", "", "negative prompt for --video (replaces the unconditional text)")
flags.DEFINE_string("csv", None, "CSV with columns video,caption[,negative,duration,name]")
flags.DEFINE_string("out_dir", None, "output directory", required=True)
flags.DEFINE_integer("sample_rate", None, "output rate (default: the codec's 24000; e.g. 44100, 48000)")
flags.DEFINE_float("cfg_scale", None, "default: config sample.cfg_scale (paper: 3)")
flags.DEFINE_float("temperature", None, "default: config sample.temperature (paper: 1.0)")
flags.DEFINE_integer("top_k", None, "default: config sample.top_k (paper: 25)")
flags.DEFINE_float("top_p", None, "default: config sample.top_p (paper: 0.9)")
flags.DEFINE_float("window_s", None, "window length in seconds (default: config sample.window_s, the trained "
                   "length: 10 s for paper_7b, 3 s for synthetic)")
flags.DEFINE_float("context_s", None, "seconds of generated audio carried into each next window (default: config "
                   "sample.context_s)")
flags.DEFINE_integer("batch_size", 8, "clips per batch (grouped by duration bucket)")
flags.DEFINE_float("bucket_s", 2.0, "duration bucket width in seconds")
flags.DEFINE_integer("seed", 0, "sampling seed (per-clip streams derive from it)")
flags.DEFINE_bool("mp4", True, "write the remuxed mp4")
flags.DEFINE_bool("png", True, "write the spectrogram png")
flags.DEFINE_bool("inference_layout", True, "sample with models.params.inference_layout: unrolled layers and, for a bf16-compute "
                  "config with fp32 weights (experiments/paper_7b.py), bf16 weights (half the memory and bytes per "
                  "step; the same math). --noinference_layout keeps the checkpoint's layout and dtype")
flags.DEFINE_string("mesh", "", "sample sharded over a device mesh, e.g. 'data=-1,tensor=4' (a 7B model on 16 GB "
                    "chips: whole KV heads per chip, clips split over the rest) or 'data=-1' (clips split over all "
                    "devices; -1 = the rest); empty: one device")
flags.DEFINE_bool("smoke_random", False, "random weights/features and a tone codec (pipeline check)")
flags.DEFINE_bool("allow_longer", False, "let a CSV duration run past the end of its video (the audio goes on "
                  "with no video; default: such a row fails)")
flags.DEFINE_float("max_memory_gb", None, "host memory one item may use (default: 80% of the available memory); "
                   "longer items fail before anything is allocated, naming the limit")
flags.DEFINE_bool("strict", False, "stop at the first bad item (default: finish the good ones, list the bad "
                  "ones in OUT_DIR/failures.json, exit status 1)")
flags.DEFINE_bool("verbose", False, "print the traceback of an error (default: one line)")
# Many hosts (dreamfoley_jax/hosts.py): every host runs this command and takes every n-th row of --csv.
flags.DEFINE_bool("distributed", False, "join a multi-host JAX job found by cluster detection (TPU slice, SLURM)")
flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0 (with the two flags below)")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id")


def _run() -> int:
  if bool(FLAGS.video) == bool(FLAGS.csv):
    raise checks.UsageError("give exactly one of --video FILE or --csv FILE")
  if FLAGS.csv and (FLAGS.caption or FLAGS.negative):
    raise checks.UsageError("--caption / --negative apply to --video; with --csv put them in the CSV's "
                            "caption / negative columns")
  if not FLAGS.model and not FLAGS.config:
    raise checks.UsageError("give --model DIR (a model directory) or --config with the checkpoint flags")
  if FLAGS.model and FLAGS.smoke_random:
    raise checks.UsageError("--smoke_random runs random weights: give it with --config, not --model")
  try:
    spec = sharding.parse_mesh_spec(FLAGS.mesh)
  except ValueError as e:
    raise checks.UsageError(f"--mesh: {e}") from None
  try:
    n_hosts = hosts.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed)
  except ValueError as e:
    raise checks.UsageError(str(e)) from None
  overrides = {k: getattr(FLAGS, k) for k in ("cfg_scale", "temperature", "top_k", "top_p")
               if getattr(FLAGS, k) is not None}
  kw = dict(checkpoint=FLAGS.checkpoint, codec_checkpoint=FLAGS.codec_checkpoint, tokenizer=FLAGS.tokenizer,
            sample_overrides=overrides, eva_ckpt=FLAGS.eva_ckpt,
            sync_ckpt=FLAGS.sync_ckpt, window_s=FLAGS.window_s, context_s=FLAGS.context_s,
            batch_size=FLAGS.batch_size, bucket_s=FLAGS.bucket_s, seed=FLAGS.seed, sample_rate=FLAGS.sample_rate,
            write_mp4=FLAGS.mp4, write_png=FLAGS.png, inference_layout=FLAGS.inference_layout,
            max_memory_gb=FLAGS.max_memory_gb)

  def build(**extra):
    if FLAGS.model:
      try:
        return model_dir.build_generator(FLAGS.model, config=FLAGS.config, **kw, **extra)
      except model_dir.ModelDirError as e:
        raise checks.InputError(f"--model {e}") from None
    return G.build_generator(FLAGS.config, smoke_random=FLAGS.smoke_random, **kw, **extra)

  local = jax.local_devices() if n_hosts > 1 else None   # each host samples its own clips
  try:
    mesh = None if spec is None else sharding.make_mesh(spec, devices=local)
  except ValueError as e:
    raise checks.UsageError(f"--mesh {FLAGS.mesh}: {e}") from None

  def build_and_load():
    return build(mesh=mesh)

  # Everything is checked before the model loads: flags, paths, checkpoint shapes, then every item; the
  # memory check per device of the --mesh.
  pre = build(load=False, mesh=mesh)
  out = checks.writable_dir(FLAGS.out_dir)
  first = hosts.index_count()[0] == 0       # with several hosts process 0 writes failures.json
  failures = checks.Failures(out if first else None, strict=FLAGS.strict, log=print if FLAGS.csv else None)
  if FLAGS.csv:
    items = G.read_csv(FLAGS.csv, failures)
    # Host i validates and generates every n-th row; every host ends with every host's results and failures.
    results = hosts.generate(build_and_load, items, out, failures=failures, prepare=pre.prepare,
                             allow_longer=FLAGS.allow_longer)
  else:
    items = [G.Item(video=FLAGS.video, caption=checks.utf8_text(FLAGS.caption, "--caption"),
                    negative=checks.utf8_text(FLAGS.negative, "--negative"), where=FLAGS.video)]
    prepared, results = pre.prepare(items, failures, allow_longer=FLAGS.allow_longer), []
    if prepared:
      results = build_and_load().run(items, out, failures=failures, allow_longer=FLAGS.allow_longer,
                                     prepared=prepared)
  total = len(items) + sum(1 for f in failures.items if f["item"] not in {it.where for it in items})
  done = [r for r in results if "wav" in r]
  if not done:
    failures.write()
    if total == 1:   # --video, or a one-row CSV: its reason is the error
      raise checks.InputError(f"{failures.items[0]['item']}: {failures.items[0]['reason']}")
    raise checks.InputError(f"no usable item: {failures.summary(0, total, 'generated')}")
  for r in done:
    print(f"{r['name']}: {r['frames'] / G.AUDIO_FRAME_RATE:.2f} s -> {r['wav']}"
          + (f", {r['mp4']}" if "mp4" in r else "") + (f", {r['png']}" if "png" in r else ""))
  print(failures.summary(len(done), total, "generated"))
  return 1 if failures else 0


def main(argv):
  del argv
  checks.run_cli(_run, verbose=FLAGS.verbose, prog="generate")


if __name__ == "__main__":
  app.run(main, flags_parser=checks.absl_flags_parser)
