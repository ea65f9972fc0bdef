"""Per-clip CPU time of the Flax PANNs Cnn14 / VGGish / PaSST ports vs the PyTorch reference networks.

  python benchmarks/bench_eval_embedders.py [--repeats 5]

Both sides run the real-size networks (random weights, converted from the same state dict) on the
same 8 s clip's features in one process; the PyTorch side is the reference network as transcribed in
tests/test_eval_embedders.py (av-benchmark's Cnn14 forward, torchvggish's VGG) and tests/test_eval_passt.py
(hear21passt's PaSST forward, checked there against the hear21passt golden). Prints ms per clip and the
ratio (torch / flax; > 1 means Flax is faster). `--only passt` runs one row.
"""
import pathlib
import sys

from absl import app, flags

import bench_common

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))   # test_eval_passt's imports

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamfoley_jax.eval import frontends  # noqa: E402
from dreamfoley_jax.eval.embedders import base, panns, passt, vggish  # noqa: E402
from tests.test_eval_embedders import _TorchCnn14, _TorchVGG, _randomise  # noqa: E402
from tests.test_eval_passt import _TorchPasst  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per side (after one warm-up)")
_ONLY = flags.DEFINE_list("only", ["panns", "vggish", "passt"], "rows to run")


def _pair(ref, emb, x):
  """ms per call of the torch module and the jitted Flax apply on the same float32 input."""
  xt = torch.tensor(x)
  with torch.no_grad():
    t_ms = bench_common.time_ms(lambda: ref(xt), _REPEATS.value)
  j_ms = bench_common.time_ms(lambda: jax.block_until_ready(emb._apply(emb.variables, x)), _REPEATS.value)
  return t_ms, j_ms


def _panns(wav):
  c = panns.Cnn14Config()
  ref = _randomise(_TorchCnn14(c), 0)
  emb = panns.PannsEmbedder(config=c, variables=panns.convert_cnn14(ref.state_dict(), c))
  return ("Cnn14 (8 s, 801x64 log-mel)",) + _pair(ref, emb, frontends.panns_logmel(wav)[None].astype(np.float32))


def _vggish(wav):
  c = vggish.VGGishConfig()
  ref = _randomise(_TorchVGG(c), 1)
  emb = vggish.VGGishEmbedder(config=c, variables=vggish.convert_vggish(ref.state_dict(), c))
  ex = frontends.vggish_examples(wav).astype(np.float32)
  ref_4d = lambda x: ref(x[:, None])  # noqa: E731  torchvggish takes (P, 1, 96, 64)
  return ("VGGish (8 s = 8 patches)",) + _pair(ref_4d, emb, ex)


def _passt(wav):
  c = passt.PasstConfig()
  sd = base.random_state_dict(passt.torch_shapes(c), 0)
  ref = _TorchPasst(c)
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  emb = passt.PasstEmbedder(config=c, variables=passt.convert_passt(sd, c))
  x = frontends.passt_logmel(frontends.passt_input(frontends.resample(wav, 16000, 32000)))[None]
  return ("PaSST-S (10 s, 128x1000 mel)",) + _pair(ref.eval(), emb, x.astype(np.float32))


def main(argv):
  del argv
  torch.set_num_threads(2)
  wav = np.random.default_rng(0).normal(size=16000 * 8) * 0.1
  rows = [fn(wav) for name, fn in (("panns", _panns), ("vggish", _vggish), ("passt", _passt))
          if name in _ONLY.value]
  print(f"{'network':32s} {'torch ms':>10s} {'flax ms':>10s} {'torch/flax':>10s}")
  for name, t_ms, j_ms in rows:
    print(f"{name:32s} {t_ms:10.1f} {j_ms:10.1f} {t_ms / j_ms:10.2f}")


if __name__ == "__main__":
  app.run(main)
