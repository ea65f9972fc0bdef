"""One process of tests/test_hosts.py's evaluation: joins a JAX job on 127.0.0.1 and scores a folder with the
harness (what tools/evaluate.py runs), with stand-in embedders that need no weights."""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def evaluate(gen_dir, video_dir, captions):
  from dreamfoley_jax.eval import harness
  from eval_helpers import NameEmbedder, NameSync

  class Fragile(NameEmbedder):   # cannot score a clip named fragile*: a per-embedder failure
    def audio_features(self, wav, sr, dur, path):
      if pathlib.Path(path).stem.startswith("fragile"):
        raise ValueError("this stand-in cannot score clips named fragile")
      return super().audio_features(wav, sr, dur, path)

  emb = {"panns": Fragile("panns", {"panns_2048": 6, "panns_logits": 5}),
         "passt": NameEmbedder("passt", {"passt_embed": 4, "passt_logits": 5}),
         "clap": NameEmbedder("clap", {"clap_audio": 4}, text_key="clap_text"), "synchformer": NameSync()}
  return harness.evaluate(harness.EvalInputs(gen_dir=str(gen_dir), video_dir=str(video_dir), captions_csv=str(captions),
                                             duration_s=1.0, cache_dir=str(pathlib.Path(gen_dir) / "eval_cache")), emb)


def generate_with_a_crash(out_dir):
  """hosts.generate where host 1's Generator raises an unexpected error mid-run: both hosts must stop with
  one error (host 0's naming host 1's), neither left waiting at the gather."""
  from dreamfoley_jax import generate as G, hosts

  class Gen:
    def run(self, items, out_dir, **kw):
      import jax

      if jax.process_index() == 1:
        raise RuntimeError("device lost mid-batch")
      return [{"name": it.name, "wav": f"{out_dir}/{it.name}.wav", "frames": 25} for it in items]

  items = [G.Item(video=None, caption=f"clip {i}", duration=1.0) for i in range(4)]
  return hosts.generate(Gen(), items, out_dir)


if __name__ == "__main__":
  if sys.argv[1] == "generate_crash":
    port, pid, n, out_dir = sys.argv[2:]
    from dreamfoley_jax import hosts

    assert hosts.initialize(f"127.0.0.1:{port}", int(n), int(pid)) == int(n)
    try:
      generate_with_a_crash(out_dir)
    except Exception as e:  # noqa: BLE001
      print(f"ERROR {type(e).__name__}: {e}", flush=True)
      sys.exit(3)
    sys.exit(0)
  port, pid, n, gen_dir, video_dir, captions, out = sys.argv[1:]
  from dreamfoley_jax import hosts

  assert hosts.initialize(f"127.0.0.1:{port}", int(n), int(pid)) == int(n)
  pathlib.Path(out).write_text(json.dumps(evaluate(gen_dir, video_dir, captions)))
