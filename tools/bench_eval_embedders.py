"""Per-clip CPU time of the Flax PANNs Cnn14 / VGGish ports vs the PyTorch reference networks.

  python tools/bench_eval_embedders.py [--repeats 5]

Both sides run the real-size networks (random weights, converted from the same state dict) on the
same 8 s clip's features in one process; the PyTorch side is the reference network as transcribed in
tests/test_eval_embedders.py (av-benchmark's Cnn14 forward, torchvggish's VGG). Prints ms per clip
and the ratio (torch / flax; > 1 means Flax is faster).
"""
import pathlib
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per side (after one warm-up)")


def _time(fn, n):
  fn()
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n * 1e3


def main(argv):
  del argv
  import jax
  import numpy as np
  import torch

  from dreamfoley_jax.eval import frontends
  from dreamfoley_jax.eval.embedders import panns, vggish
  from tests.test_eval_embedders import _TorchCnn14, _TorchVGG, _randomise

  torch.set_num_threads(2)
  wav = np.random.default_rng(0).normal(size=16000 * 8) * 0.1
  rows = []

  c = panns.Cnn14Config()
  ref = _randomise(_TorchCnn14(c), 0)
  emb = panns.PannsEmbedder(config=c, variables=panns.convert_cnn14(ref.state_dict(), c))
  x = frontends.panns_logmel(wav)[None].astype(np.float32)
  xt = torch.tensor(x)
  with torch.no_grad():
    t_ms = _time(lambda: ref(xt), _REPEATS.value)
  j_ms = _time(lambda: jax.block_until_ready(emb._apply(emb.variables, x)), _REPEATS.value)
  rows.append(("Cnn14 (8 s, 801x64 log-mel)", t_ms, j_ms))

  c = vggish.VGGishConfig()
  ref = _randomise(_TorchVGG(c), 1)
  emb = vggish.VGGishEmbedder(config=c, variables=vggish.convert_vggish(ref.state_dict(), c))
  ex = frontends.vggish_examples(wav).astype(np.float32)
  ext = torch.tensor(ex)[:, None]
  with torch.no_grad():
    t_ms = _time(lambda: ref(ext), _REPEATS.value)
  j_ms = _time(lambda: jax.block_until_ready(emb._apply(emb.variables, ex)), _REPEATS.value)
  rows.append(("VGGish (8 s = 8 patches)", t_ms, j_ms))

  print(f"{'network':32s} {'torch ms':>10s} {'flax ms':>10s} {'torch/flax':>10s}")
  for name, t_ms, j_ms in rows:
    print(f"{name:32s} {t_ms:10.1f} {j_ms:10.1f} {t_ms / j_ms:10.2f}")


if __name__ == "__main__":
  app.run(main)
