"""One process of tests/test_hosts.py: joins a JAX job on 127.0.0.1, then generate --csv and evaluate over
its hosts (the library calls tools/generate.py --csv and tools/evaluate.py make)."""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def run(model, csv_path, out_dir, video_dir, captions, *, eval_out):
  from dreamfoley_jax import generate as G
  from dreamfoley_jax import hosts, model_dir
  from dreamfoley_jax.eval import harness
  from eval_helpers import NameEmbedder, NameSync

  gen = model_dir.build_generator(model, batch_size=1, write_png=False)
  gen.show_progress = False
  res = hosts.generate(gen, G.read_csv(csv_path), out_dir)
  emb = {"panns": NameEmbedder("panns", {"panns_2048": 6, "panns_logits": 5}),
         "passt": NameEmbedder("passt", {"passt_embed": 4, "passt_logits": 5}),
         "clap": NameEmbedder("clap", {"clap_audio": 4}, text_key="clap_text"), "synchformer": NameSync()}
  r = harness.evaluate(harness.EvalInputs(gen_dir=str(out_dir), video_dir=str(video_dir), captions_csv=str(captions),
                                          duration_s=1.0, cache_dir=str(pathlib.Path(out_dir) / "eval_cache")), emb)
  pathlib.Path(eval_out).write_text(json.dumps({"generated": [{k: v for k, v in x.items() if k != "codes"} for x in res],
                                                "codes": sorted(x["name"] for x in res if "codes" in x), "eval": r}))


if __name__ == "__main__":
  port, pid, n, model, csv_path, out_dir, video_dir, captions, eval_out = sys.argv[1:]
  from dreamfoley_jax import hosts

  if int(n) > 1:
    assert hosts.initialize(f"127.0.0.1:{port}", int(n), int(pid)) == int(n)
  run(model, csv_path, out_dir, video_dir, captions, eval_out=eval_out)
