"""Full-size ImageBind-huge towers: Flax port vs the original PyTorch code, parity and CPU time per call.

  python benchmarks/bench_imagebind.py --imagebind_src /tmp/imagebind_ref [--towers audio,vision] [--repeats 2]

Builds the original `ImageBindModel` with imagebind_huge()'s vision and audio sizes (the text, depth,
thermal and imu towers minimal: they are not compared), random weights (seeded; cls/pos embeddings and
bias_k/bias_v as the reference initialises them, LayerNorms and biases perturbed), converts its state dict
with `convert_imagebind`, and runs both on the same inputs in one process: audio = one file's 3 fbank clips
(3 x 128 x 204), vision = one 4 s video's 3 crops x 1 two-frame clip. Prints max abs / cosine errors and ms
per call (torch / flax > 1 means Flax is faster). `--imagebind_src` is a fetched facebookresearch/ImageBind
checkout (see tests/fixtures/make/make_imagebind_golden.py); nothing is downloaded.
"""
import pathlib
import sys

from absl import app, flags

import bench_common

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/make"))

_SRC = flags.DEFINE_string("imagebind_src", None, "directory holding the fetched `imagebind/` package", required=True)
_TOWERS = flags.DEFINE_list("towers", ["audio", "vision"], "towers to compare")
_REPEATS = flags.DEFINE_integer("repeats", 2, "timed calls per side (after one warm-up)")
_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads")


def main(argv):
  del argv
  import jax
  import numpy as np
  import torch

  from dreamfoley_jax.eval.embedders import imagebind as ib
  from make_imagebind_golden import import_reference

  torch.set_num_threads(_THREADS.value)
  ref_mod = import_reference(_SRC.value)
  small = dict(text_embed_dim=4, text_num_blocks=1, text_num_heads=1, depth_embed_dim=4, depth_num_blocks=1,
               depth_num_heads=1, thermal_embed_dim=4, thermal_num_blocks=1, thermal_num_heads=1,
               imu_embed_dim=4, imu_num_blocks=1, imu_num_heads=1)
  torch.manual_seed(0)
  ref = ref_mod.ImageBindModel(vision_embed_dim=1280, vision_num_blocks=32, vision_num_heads=16, out_embed_dim=1024,
                               audio_drop_path=0.1, **small).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for k, t in ref.state_dict().items():
      if k.split(".")[1] in ("vision", "audio") and t.ndim == 1:  # LayerNorm weights/biases and biases: not 1/0
        t.add_(0.1 * torch.randn(t.shape, generator=g))
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  cfg = ib.ImageBindConfig.huge()
  variables = jax.tree.map(jax.numpy.asarray, ib.convert_imagebind(sd, cfg))
  del sd
  model = ib.ImageBind(cfg)
  rng = np.random.default_rng(0)
  rows = []
  for tower in _TOWERS.value:
    if tower == "audio":
      x = rng.standard_normal((1, 3, 128, 204)).astype(np.float32)
      xt = torch.from_numpy(x[:, :, None])
      fn = jax.jit(lambda v, a: model.apply(v, a, method=ib.ImageBind.audio)[0])
      label = "audio (3 clips x 229 tokens, 12 x 768)"
    else:
      x = rng.standard_normal((1, 3, 2, 224, 224, 3)).astype(np.float32)
      xt = torch.from_numpy(x.transpose(0, 1, 5, 2, 3, 4).copy())
      fn = jax.jit(lambda v, a: model.apply(v, a, method=ib.ImageBind.vision)[0])
      label = "vision (3 clips x 257 tokens, 32 x 1280)"
    with torch.no_grad():
      want = ref({tower: xt})[tower].numpy()
      t_ms = bench_common.time_ms(lambda: ref({tower: xt}), _REPEATS.value)
    got = np.asarray(fn(variables, x))
    j_ms = bench_common.time_ms(lambda: jax.block_until_ready(fn(variables, x)), _REPEATS.value)
    err = float(np.abs(got - want).max())
    cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
    rows.append((label, err, float(np.abs(want).max()), cos, t_ms, j_ms))
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({_THREADS.value} threads)")
  print("| tower | max abs err | max abs value | cosine | torch ms | flax ms | torch/flax |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for label, err, mx, cos, t, j in rows:
    print(f"| {label} | {err:.2e} | {mx:.3f} | {cos:.8f} | {t:.0f} | {j:.0f} | {t / j:.2f} |")


if __name__ == "__main__":
  app.run(main)
