r"""Converts checkpoints between PyTorch / Hugging Face and dreamfoley_jax (orbax).

  # HF Qwen2.5 directory -> orbax params checkpoint (scanned layer layout)
  python tools/convert_checkpoint.py --family qwen2 --input /ckpt/Qwen2.5-7B --output /ckpt/qwen7b_jax \
      --scan_layers
  # orbax -> HF directory (safetensors shards of at most 5GB + config.json)
  python tools/convert_checkpoint.py --family qwen2 --direction to_hf --input /ckpt/qwen7b_jax \
      --output /ckpt/qwen7b_hf --max_shard_size 5GB
  # audio tokenizer and vision encoders (PyTorch -> orbax)
  python tools/convert_checkpoint.py --family higgs --input /ckpt/higgs-audio-v2-tokenizer --output /ckpt/higgs_jax
  python tools/convert_checkpoint.py --family eva_clip --input /ckpt/EVA01_CLIP_g_14_psz14_s11B.pt --output /ckpt/eva_jax
  python tools/convert_checkpoint.py --family synchformer --input /ckpt/synchformer_state_dict.pth --output /ckpt/sync_jax
  # the whole DreamFoley model: a trained checkpoint -> an HF directory with modeling_dreamfoley.py, and back
  python tools/convert_checkpoint.py --family dreamfoley --direction to_hf --input runs/7b/params \
      --model_config experiments/paper_7b.py --output /ckpt/dreamfoley_hf
  python tools/convert_checkpoint.py --family dreamfoley --input /ckpt/dreamfoley_hf --output /ckpt/dreamfoley_jax
"""
from __future__ import annotations

import inspect
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without install

from absl import app, flags, logging

from dreamfoley_jax import convert
from dreamfoley_jax.convert.common import ConversionError

_FAMILY = flags.DEFINE_string("family", None, f"checkpoint family: {', '.join(sorted(convert.FAMILIES))}")
_INPUT = flags.DEFINE_string("input", None, "input directory (HF) or orbax checkpoint (to_hf; dreamfoley: a params "
                             "checkpoint or a training workdir, whose latest step is read)")
_OUTPUT = flags.DEFINE_string("output", None, "output directory (written atomically)")
_DIRECTION = flags.DEFINE_enum("direction", "to_jax", ["to_jax", "to_hf"], "to_jax: HF -> orbax; to_hf: back")
_SCAN = flags.DEFINE_bool("scan_layers", False, "to_jax: stack layers under layers/layer (nn.scan layout)")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", None, "to_jax: cast params (float32, bfloat16); default: config")
_DTYPE = flags.DEFINE_string("dtype", None, "to_hf: dtype of the written tensors; default: as stored")
_MODEL_CONFIG = flags.DEFINE_string(
    "model_config", None, "to_jax, eva_clip/synchformer/higgs: a preset name or config JSON of the model "
    "(default: the real model, with sizes read off the checkpoint); to_hf, dreamfoley: the experiment the "
    "checkpoint was trained with (experiments/<name>.py[:arg]) or a config JSON (default: the checkpoint's "
    "dreamfoley_meta.json)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing output directory")
_MAX_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "to_hf: largest safetensors shard (5GB, 500MB, ...)")
flags.mark_flags_as_required(["family", "input", "output"])


def _accepted(fn, options: dict) -> dict:
  """The options `fn` takes (families differ: e.g. only qwen2 reports progress)."""
  params = inspect.signature(fn).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    return options
  return {k: v for k, v in options.items() if k in params}


def main(argv):
  del argv
  try:
    module = convert.get_family(_FAMILY.value)
  except KeyError as e:
    sys.exit(f"error: {e.args[0]}")
  try:
    if _DIRECTION.value == "to_jax":
      options = {"scan_layers": _SCAN.value, "progress": True}
      if _PARAM_DTYPE.value:
        options["param_dtype"] = _PARAM_DTYPE.value
      if _MODEL_CONFIG.value:
        options["config"] = _MODEL_CONFIG.value
      out = module.convert_to_orbax(_INPUT.value, _OUTPUT.value, overwrite=_OVERWRITE.value,
                                    **_accepted(module.convert_to_orbax, options))
    else:
      if not hasattr(module, "export_from_orbax"):
        sys.exit(f"error: family {_FAMILY.value!r} has no export to PyTorch")
      options = {"max_shard_size": _MAX_SHARD.value, "progress": True}
      if _DTYPE.value:
        options["dtype"] = _DTYPE.value
      if _MODEL_CONFIG.value:
        options["config"] = _MODEL_CONFIG.value
      out = module.export_from_orbax(_INPUT.value, _OUTPUT.value, overwrite=_OVERWRITE.value,
                                     **_accepted(module.export_from_orbax, options))
  except (ConversionError, FileExistsError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  if isinstance(out, tuple):  # vision families also return the config they used
    out = out[0]
  logging.info("wrote %s", out)
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
