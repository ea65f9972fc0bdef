"""Per-clip CPU time of the Flax LAION-CLAP towers vs laion_clap's own PyTorch model, in one process.

  pip download --no-deps laion_clap==1.1.7 -d /tmp/pd && unzip -qo /tmp/pd/laion_clap-1.1.7-*.whl -d /tmp/clapsrc
  python benchmarks/bench_clap.py --laion_clap_dir /tmp/clapsrc/laion_clap [--repeats 3]

laion_clap's wheel pins numpy<2, so its source is imported from the unzipped wheel as files (as
tests/fixtures/make/make_clap_golden.py does; needs torchlibrosa, in the [test] extra). Both sides run the
full-size HTSAT-base + roberta-base with the same random weights (converted with convert_clap) on one
10 s 48 kHz clip and one 77-token caption: laion_clap eager under no_grad, ours jitted with fp32
('highest') matmuls as the embedder runs it. Prints ms per call, the ratio (torch / flax; > 1 means
Flax is faster) and the max abs difference of the embeddings.
"""
import pathlib
import sys

from absl import app, flags

import bench_common

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests/fixtures/make"))

_DIR = flags.DEFINE_string("laion_clap_dir", "/tmp/clapsrc/laion_clap", "unzipped laion_clap package directory")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per side (after one warm-up)")


def main(argv):
  del argv
  import json

  import jax
  import numpy as np
  import torch

  import make_clap_golden as g
  from dreamfoley_jax.eval.embedders import clap as C
  from transformers import RobertaConfig, RobertaModel

  torch.set_num_threads(2)
  root = pathlib.Path(_DIR.value)
  model_mod = g.import_clap_module(root)["model"]
  cfg = json.loads((root / "clap_module/model_configs/HTSAT-base.json").read_text())
  cfg["text_cfg"]["model_type"] = "roberta"
  model_mod.RobertaModel.from_pretrained = classmethod(lambda cls, n: RobertaModel(RobertaConfig(**g.ROBERTA_BASE)))
  ref = model_mod.CLAP(**cfg, enable_fusion=False)
  g.randomise(ref, torch.Generator().manual_seed(0))
  ref.eval()
  rng = np.random.default_rng(0)
  wav = (0.1 * rng.normal(size=480000)).astype(np.float32)
  ids = np.concatenate([[0], rng.integers(3, 50265, 75), [2]])[None].astype(np.int32)
  mask = np.ones_like(ids)
  wav_t, text_t = torch.tensor(wav), {"input_ids": torch.tensor(ids).long(), "attention_mask": torch.tensor(mask).long()}

  def torch_audio():
    with torch.no_grad():
      return ref.get_audio_embedding([{"waveform": wav_t}]).numpy()

  def torch_text():
    with torch.no_grad():
      return ref.get_text_embedding(dict(text_t)).numpy()

  n = _REPEATS.value
  # torch first, before JAX starts its CPU client: XLA's idle worker threads would slow torch down
  torch_ms = {"audio": bench_common.time_ms(torch_audio, n), "text": bench_common.time_ms(torch_text, n)}
  torch_out = {"audio": torch_audio(), "text": torch_text()}
  variables = C.convert_clap({k: v.numpy() for k, v in ref.state_dict().items()}, C.ClapConfig())
  emb = C.ClapEmbedder(variables=variables)
  flax_fns = {"audio": lambda: np.asarray(emb._audio(emb.variables, wav[None])),
              "text": lambda: np.asarray(emb._text(emb.variables, ids, mask))}
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, 2 threads")
  for name, what in (("audio", "10 s clip"), ("text", "77 tokens")):
    diff = np.abs(torch_out[name] - flax_fns[name]()).max()
    t_ms, f_ms = torch_ms[name], bench_common.time_ms(flax_fns[name], n)
    print(f"{name} ({what}): torch {t_ms:8.1f} ms  flax {f_ms:8.1f} ms  torch/flax {t_ms / f_ms:5.2f}x  "
          f"max|diff| {diff:.1e}")


if __name__ == "__main__":
  app.run(main)
