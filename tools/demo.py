"""Web demo: upload a video (or none), write a caption, press Generate; listen, watch, see the spectrogram.

  python tools/demo.py                                   # the main job's model, runs/synthetic/model
  python tools/demo.py --model my_model --port 8080      # any model directory (tools/export_model.py)

Then open http://127.0.0.1:7860 (on a remote machine: `ssh -L 7860:127.0.0.1:7860 HOST` first, or
--host 0.0.0.0 on a trusted network). docs/usage.md shows the page.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from absl import app, flags

from dreamfoley_jax import demo, model_dir

flags.DEFINE_string("model", model_dir.DEFAULT_DIR, "model directory (the main job writes runs/synthetic/model)")
flags.DEFINE_string("host", "127.0.0.1", "address to serve on (0.0.0.0: every interface)")
flags.DEFINE_integer("port", 7860, "port to serve on")
flags.DEFINE_float("max_seconds", 20.0, "longest clip the page generates")
flags.DEFINE_string("mesh", "", "sample sharded over a device mesh, e.g. 'tensor=4' (a 7B model); empty: one device")
flags.DEFINE_string("out_dir", None, "where generated files go (default: a new temp directory)")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    import gradio  # noqa: F401
  except ImportError as e:
    raise SystemExit("error: the demo needs gradio: pip install -e '.[demo]'") from e
  from dreamfoley_jax import sharding

  try:
    spec = sharding.parse_mesh_spec(FLAGS.mesh)
  except ValueError as e:
    raise app.UsageError(f"--mesh: {e}") from e
  try:
    gen = model_dir.build_generator(FLAGS.model, batch_size=1, mesh=spec)
  except model_dir.ModelDirError as e:
    raise SystemExit(f"error: --model {e}") from e
  d = demo.Demo(gen, max_seconds=FLAGS.max_seconds, out_root=FLAGS.out_dir)
  md = model_dir.load(FLAGS.model, check=False)
  desc = (f"Model `{FLAGS.model}` ({md.manifest.get('num_params', 0):,} parameters, codec "
          f"{md.manifest['codec']['kind']}). Leave the video empty for text-to-audio.")
  examples = demo.main_job_examples(FLAGS.model)
  page = demo.build(d, examples=examples, description=desc)
  print(f"serving {FLAGS.model} at http://{FLAGS.host}:{FLAGS.port}  (Ctrl-C stops)", flush=True)
  page.queue().launch(server_name=FLAGS.host, server_port=FLAGS.port, show_error=True,
                      allowed_paths=[str(d.out_root)] + sorted({str(pathlib.Path(v).parent) for v, _ in examples}),
                      footer_links=[])


if __name__ == "__main__":
  app.run(main)
