"""Writes tests/fixtures/imagebind_tiny.npz: ImageBind's vision and audio towers, tiny widths, random weights.

Runs the ORIGINAL facebookresearch/ImageBind model code (not vendored: pass the directory that holds its
`imagebind/` package) on CPU in fp32 and stores its state dict (vision + audio keys only), the inputs and
the per-modality outputs, following the conventions of tests/fixtures/README.md (param/, input/, inter/,
output/ prefixes; torch layouts).

    python tools/goldens/make_imagebind_golden.py --imagebind_src /tmp/imagebind_ref \
        --out tests/fixtures/imagebind_tiny.npz

ImageBind's model files import `timm.layers` (DropPath, trunc_normal_), `ftfy` and `iopath` (the last two
only for the text tokenizer). When those are not installed, small stand-ins are registered: DropPath is
identity in eval() exactly as timm's, trunc_normal_ only affects the init, which is overwritten here anyway.

Geometry kept real: 224x224 RGB, 2-frame clips, 2x14x14 Conv3d stem (257 tokens), the 128x204 fbank with
the 16x16/stride-10 Conv2d (229 tokens), pre-transformer LayerNorm (vision), bias_k/bias_v (audio), heads,
Normalize and the audio logit scale, and the mean over clips. Only widths, depths and heads are tiny.
Inputs are stored small and expanded deterministically by `expand_inputs` (the test does the same), so
the file stays under 400 KB.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import types

import numpy as np

TINY = dict(vision_embed_dim=16, vision_num_blocks=2, vision_num_heads=4, audio_embed_dim=16, audio_num_blocks=2,
            audio_num_heads=4, out_embed_dim=12, audio_drop_path=0.1,
            # towers the IB-score does not use: as small as the constructor allows, dropped from the file
            text_embed_dim=4, text_num_blocks=1, text_num_heads=1, depth_embed_dim=4, depth_num_blocks=1,
            depth_num_heads=1, thermal_embed_dim=4, thermal_num_blocks=1, thermal_num_heads=1, imu_embed_dim=4,
            imu_num_blocks=1, imu_num_heads=1)
VISION_CLIPS = 2   # B=1 video, S=2 two-frame clips (the reference averages over S)
AUDIO_CLIPS = 3    # B=1 audio, S=3 two-second fbank clips
UPSAMPLE_VISION = 8
UPSAMPLE_AUDIO = 4


def expand_inputs(vision_small, audio_small):
  """Nearest upsampling of the stored low-res inputs plus a fixed high-frequency pattern (float32)."""
  def up(x, f):
    x = np.repeat(np.repeat(x, f, axis=-2), f, axis=-1)
    h, w = x.shape[-2:]
    fine = 0.3 * np.cos(0.7 * np.arange(h)[:, None] + 1.3 * np.arange(w)[None, :])
    return (x + fine).astype(np.float32)
  return up(vision_small, UPSAMPLE_VISION), up(audio_small, UPSAMPLE_AUDIO)


def _install_stand_ins():
  import torch

  try:
    import timm.layers  # noqa: F401
  except ImportError:
    class DropPath(torch.nn.Module):
      def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

      def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
          return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    timm = types.ModuleType("timm")
    layers = types.ModuleType("timm.layers")
    layers.DropPath = DropPath
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    timm.layers = layers
    sys.modules.update({"timm": timm, "timm.layers": layers})
  for name in ("ftfy",):
    try:
      __import__(name)
    except ImportError:
      sys.modules[name] = types.ModuleType(name)
  try:
    import iopath.common.file_io  # noqa: F401
  except ImportError:
    mods = {n: types.ModuleType(n) for n in ("iopath", "iopath.common", "iopath.common.file_io")}
    mods["iopath.common.file_io"].g_pathmgr = None
    sys.modules.update(mods)


def import_reference(imagebind_src):
  """The original `imagebind.models.imagebind_model` from a fetched checkout (stand-ins where needed)."""
  src = pathlib.Path(imagebind_src).resolve()
  if not (src / "imagebind" / "models" / "imagebind_model.py").is_file():
    raise FileNotFoundError(f"{src}: no imagebind/models/imagebind_model.py (pass the fetched ImageBind checkout)")
  sys.path.insert(0, str(src))
  _install_stand_ins()
  # imagebind/__init__.py imports its data loaders (torchvision, pytorchvideo); only models/ is needed
  pkg = types.ModuleType("imagebind")
  pkg.__path__ = [str(src / "imagebind")]
  sys.modules["imagebind"] = pkg
  from imagebind.models import imagebind_model

  return imagebind_model


def _randomise(model, seed):
  """Every parameter/buffer of the kept towers: weights ~ N(0, 1/fan_in), LN 1+0.1N / 0.1N, tokens 0.5N."""
  import torch

  g = torch.Generator().manual_seed(seed)
  rules = {}
  with torch.no_grad():
    for k, t in model.state_dict().items():
      if not k.split(".")[1] in ("vision", "audio"):
        continue
      n = lambda: torch.randn(t.shape, generator=g)  # noqa: E731
      if k.endswith("log_logit_scale"):
        continue  # a fixed buffer (log 20) in the real model; kept
      if "norm" in k or "pre_transformer_layer" in k or k.startswith("modality_heads") and k.endswith(".0.weight") \
         or k.startswith("modality_heads") and k.endswith(".0.bias"):
        val, rule = (1 + 0.1 * n(), "1+0.1N") if k.endswith("weight") else (0.1 * n(), "0.1N")
      elif k.endswith("cls_token") or k.endswith("pos_embed") or k.endswith("bias_k") or k.endswith("bias_v"):
        val, rule = 0.5 * n(), "0.5N"
      elif k.endswith("bias"):
        val, rule = 0.1 * n(), "0.1N"
      else:
        fan_in = math.prod(t.shape[1:])
        val, rule = n() / math.sqrt(fan_in), "N/sqrt(fan_in)"
      t.copy_(val)
      rules[k] = rule
  return rules


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--imagebind_src", required=True, help="directory holding the fetched `imagebind/` package")
  ap.add_argument("--out", default="tests/fixtures/imagebind_tiny.npz")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  import torch

  torch.set_num_threads(2)
  ib = import_reference(args.imagebind_src)

  torch.manual_seed(args.seed)
  model = ib.ImageBindModel(**TINY).eval()
  rules = _randomise(model, args.seed + 1)

  rng = np.random.default_rng(args.seed + 2)
  vision_small = rng.standard_normal((1, VISION_CLIPS, 3, 2, 224 // UPSAMPLE_VISION, 224 // UPSAMPLE_VISION)
                                     ).astype(np.float32)
  audio_small = rng.standard_normal((1, AUDIO_CLIPS, 1, 128 // UPSAMPLE_AUDIO, 204 // UPSAMPLE_AUDIO)
                                    ).astype(np.float32)
  vision_in, audio_in = expand_inputs(vision_small, audio_small)

  # per-clip embeddings (before the mean) by hooking the postprocessors
  inter = {}

  def hook(name):
    def f(mod, inp, out):
      inter[f"inter/{name}_clips"] = out.detach().numpy().copy()
    return f

  def hook_in(name):
    def f(mod, inp, out):
      inter[f"inter/{name}_head"] = out.detach().numpy().copy()
    return f

  handles = []
  for m in ("vision", "audio"):
    handles.append(model.modality_postprocessors[m].register_forward_hook(hook(m)))
    handles.append(model.modality_heads[m].register_forward_hook(hook_in(m)))
  with torch.no_grad():
    out = model({"vision": torch.from_numpy(vision_in), "audio": torch.from_numpy(audio_in)})
    for h in handles:
      h.remove()
    # a single image (B, C, H, W): PadIm2Video repeats it to 2 frames
    img = torch.from_numpy(vision_in[0, 0, :, 0])[None]
    out_img = model({"vision": img})["vision"]

  arrays = {}
  for k, v in model.state_dict().items():
    if k.split(".")[1] in ("vision", "audio"):
      arrays[f"param/{k}"] = v.numpy().astype(np.float32)
  arrays["input/vision_small"] = vision_small
  arrays["input/audio_small"] = audio_small
  arrays["derived/vision_input_sum"] = np.float64(vision_in.astype(np.float64).sum())
  arrays["derived/audio_input_sum"] = np.float64(audio_in.astype(np.float64).sum())
  arrays.update(inter)
  arrays["output/vision"] = out["vision"].numpy()
  arrays["output/audio"] = out["audio"].numpy()
  arrays["output/vision_image"] = out_img.numpy()
  meta = {"constructor": TINY, "vision_clips": VISION_CLIPS, "audio_clips": AUDIO_CLIPS,
          "upsample": {"vision": UPSAMPLE_VISION, "audio": UPSAMPLE_AUDIO}, "seed": args.seed,
          "torch": torch.__version__, "numpy": np.__version__, "randomisation": sorted(set(rules.values()))}
  arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
  out_path = pathlib.Path(args.out)
  np.savez_compressed(out_path, **arrays)

  # The real imagebind_huge() layout (built on the meta device: shapes only, no memory, no weights).
  linspace = torch.linspace
  torch.linspace = lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})  # drop-path rates use .item()
  try:
    with torch.device("meta"):
      huge = ib.imagebind_huge(pretrained=False)
  finally:
    torch.linspace = linspace
  sd = huge.state_dict()
  kept = {k: list(v.shape) for k, v in sd.items() if k.split(".")[1] in ("vision", "audio")}
  ignored = {}
  for k in sd:
    if k.split(".")[1] not in ("vision", "audio"):
      ignored[k.split(".")[1]] = ignored.get(k.split(".")[1], 0) + 1
  shapes_path = out_path.with_name("imagebind_huge_shapes.json")
  shapes_path.write_text(json.dumps({
      "source": "facebookresearch/ImageBind imagebind_model.imagebind_huge() state_dict() on the meta device",
      "vision_audio_keys": kept, "num_params": int(sum(math.prod(v) for v in kept.values())),
      "ignored_key_counts": ignored}, indent=1, sort_keys=True) + "\n")
  print(f"wrote {shapes_path} ({len(kept)} vision/audio keys, ignored per modality {ignored})")
  print(f"wrote {out_path} ({out_path.stat().st_size} bytes, {len(arrays)} arrays)")
  for k in sorted(arrays):
    print(f"  {k}: {arrays[k].shape}")


if __name__ == "__main__":
  main()
