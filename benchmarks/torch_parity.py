r"""The PyTorch DreamFoley (docs/convert.md) against the JAX model on one device, in one dtype.

  python benchmarks/torch_parity.py --device cuda --dtype bfloat16             # the GPU check (~3 min on an H200)
  JAX_PLATFORMS=cpu python benchmarks/torch_parity.py --config tiny --device cpu --dtype float32 --seconds 0.4

Same random weights (fp32 master, bench_common.random_params: logits of a trained model's size), exported with
convert/dreamfoley; then each side in --dtype: JAX through foley_params.inference_layout (bf16 weights, bf16
compute), PyTorch loaded with `dtype=` (bf16 weights). Prints, for --batch clips of --seconds with CFG:
  teacher-forced: given the same delayed columns (JAX's greedy output), how often the argmax of PyTorch's
    logits equals JAX's at every trained cell, and the largest logit difference;
  greedy: the share of equal codes when each side runs on its own outputs, and each clip's first differing
    column (from there on the two read different inputs);
  compiled (--compile): PyTorch's torch.compile'd static-cache decode against its eager codes.
fp32 runs use full-precision matmuls on both sides (no TF32).
"""
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags

import bench_common

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "qwen05", ["tiny", "small", "qwen05"], "tiny / small: the sampling benches' CPU "
                  "configs; qwen05: experiments/qwen05.py's model (Qwen2.5-0.5B decoder, 24 layers)")
flags.DEFINE_enum("device", "cuda", ["cuda", "cpu"], "where both sides run")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "weights and compute dtype of both sides")
flags.DEFINE_float("seconds", 10.0, "audio per clip (25 frames a second)")
flags.DEFINE_integer("batch", 4, "clips")
flags.DEFINE_float("cfg_scale", 3.0, "guidance scale of the greedy runs")
flags.DEFINE_bool("compile", True, "also run PyTorch's torch.compile'd static-cache generate")


def model_config(name):
  from dreamfoley_jax import configs

  if name == "qwen05":
    cfg = configs.model_config(configs.load_config(str(pathlib.Path(__file__).parents[1] / "experiments/qwen05.py"))
                                 .model)
  else:
    cfg = bench_common.sample_configs()[name]
  return cfg.replace(decoder=cfg.decoder.replace(dtype="float32", param_dtype="float32"))


def main(argv):
  del argv
  import os

  if FLAGS.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np
  import torch

  from dreamfoley_jax import sampling as S
  from dreamfoley_jax.models import foley
  from dreamfoley_jax.models import loss as foley_loss
  from dreamfoley_jax.models import params as foley_params

  if FLAGS.dtype == "float32":
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  cfg = model_config(FLAGS.config)
  params = bench_common.random_params(cfg)
  t0 = time.perf_counter()
  tm = bench_common.torch_dreamfoley(cfg, params, dtype=getattr(torch, FLAGS.dtype)).to(FLAGS.device)
  print(f"{FLAGS.config}: exported and loaded the PyTorch model in {time.perf_counter() - t0:.1f} s "
        f"({tm.__class__.__module__}); device {FLAGS.device} ({jax.devices()[0].device_kind}, torch "
        f"{torch.cuda.get_device_name() if FLAGS.device == 'cuda' else 'cpu'}), dtype {FLAGS.dtype}", flush=True)
  jcfg, jparams = foley_params.inference_layout(cfg.replace(decoder=cfg.decoder.replace(dtype=FLAGS.dtype)), params)
  jparams = jax.device_put(jparams)

  frames, B, K = int(round(FLAGS.seconds * 25)), FLAGS.batch, cfg.num_codebooks
  b = bench_common.random_prompt_batch(cfg, B, frames, seed=1)
  lengths = [frames - 3 * i for i in range(B)]
  def to_torch(d):
    return {k: torch.from_numpy(np.asarray(v).astype(np.int64) if np.asarray(v).dtype.kind in "iu"
                                else np.array(v)).to(FLAGS.device) for k, v in d.items()}

  tb = to_torch(b)
  sc = S.SampleConfig(temperature=0.0, cfg_scale=FLAGS.cfg_scale)
  sampling = {"temperature": 0.0, "cfg_scale": FLAGS.cfg_scale}

  rj = S.sample(jcfg, jparams, b, lengths, sample_cfg=sc)
  t0 = time.perf_counter()
  rj = S.sample(jcfg, jparams, b, lengths, sample_cfg=sc)
  t_jax = time.perf_counter() - t0
  t0 = time.perf_counter()
  rt = tm.generate(**tb, lengths=lengths, sampling=sampling)
  t_torch = time.perf_counter() - t0

  # Teacher-forced: both forwards on JAX's delayed columns.
  ids = rj["delayed"]
  La = ids.shape[1]
  amask = np.arange(La)[None] < (np.asarray(lengths) + K + 1)[:, None]
  fb = dict(b, audio_ids=ids, audio_mask=amask, audio_vacant=rj["vacant"])
  lj, _ = jax.jit(foley.DreamFoley(jcfg).apply)({"params": jparams}, jax.tree.map(jax.numpy.asarray, fb))
  lj = np.asarray(lj, np.float32)
  with torch.no_grad():
    lt = tm(**to_torch(fb), return_loss=False).logits.float().cpu().numpy()
  tmask = np.asarray(foley_loss.target_mask(cfg, {"audio_ids": ids, "audio_mask": amask, "audio_vacant": rj["vacant"]}))
  rows = np.zeros(lj.shape[:3], bool)
  rows[:, :-1] = tmask                             # row j predicts column j + 1
  agree = float((lj.argmax(-1) == lt.argmax(-1))[rows].mean())
  diff = float(np.abs(lj - lt)[rows].max())
  print(f"teacher-forced argmax agreement {100 * agree:.2f}% of {int(rows.sum())} cells; max |logit diff| "
        f"{diff:.3g} (max |logit| {float(np.abs(lj[rows]).max()):.3g})", flush=True)

  gt = rt.delayed.cpu().numpy()
  codes_eq = float((rt.codes.cpu().numpy() == rj["codes"]).mean())
  first = [int(np.argmax((gt[i] != ids[i]).any(-1))) if (gt[i] != ids[i]).any() else -1 for i in range(B)]
  print(f"greedy (CFG {FLAGS.cfg_scale}): codes equal {100 * codes_eq:.2f}% of {rj['codes'].size}; first differing "
        f"column per clip {first} (-1: none; {La} columns); time JAX {t_jax:.2f} s, PyTorch eager static cache "
        f"{t_torch:.2f} s", flush=True)
  if FLAGS.compile:
    t0 = time.perf_counter()
    rc = tm.generate(**tb, lengths=lengths, sampling=sampling, compile=True)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc = tm.generate(**tb, lengths=lengths, sampling=sampling, compile=True)
    t_c = time.perf_counter() - t0
    ct = rc.delayed.cpu().numpy()
    first_c = [int(np.argmax((ct[i] != gt[i]).any(-1))) if (ct[i] != gt[i]).any() else -1 for i in range(B)]
    # Inductor fuses elementwise chains (one rounding where eager rounds each op): bitwise equal only in fp32,
    # up to near-ties.
    print(f"compiled static-cache generate vs eager: codes equal "
          f"{100 * float((rc.codes == rt.codes).float().mean()):.2f}%, first differing column per clip {first_c}; "
          f"first call {t_first:.1f} s, then {t_c:.2f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
