"""Writes tests/fixtures/clap_tiny.npz: a tiny random LAION-CLAP (HTSAT audio + RoBERTa text) golden.

Runs the real laion_clap 1.1.7 classes (clap_module.model.CLAP, clap_module.htsat.HTSAT_Swin_Transformer,
torchlibrosa front end) and transformers' RobertaModel, in the scratch venv:

  /work/venv_ta/bin/pip install --no-deps laion_clap-1.1.7-py3-none-any.whl torchlibrosa==0.1.0
  /work/venv_ta/bin/pip install librosa
  /work/venv_ta/bin/python tools/goldens/make_clap_golden.py [--laion_clap_dir DIR]

laion_clap's package __init__ pulls torchvision/h5py/webdataset and CLAP_Module downloads the roberta-base
tokenizer, so this script imports clap_module.model / clap_module.htsat as files (stubbing the unused
torchvision/h5py imports of clap_module.utils) and builds CLAP below CLAP_Module, exactly as
create_model does, except: HTSAT gets a tiny config (create_htsat_model hard-codes base/tiny/large), the
text branch is RobertaModel(tiny RobertaConfig) instead of from_pretrained('roberta-base'), and
text_projection is the same Linear-ReLU-Linear with the tiny RoBERTa width instead of 768.

Every float parameter and buffer is random and rounded to float16 values (stored as float16, so the
fixture is lossless and half the size); the reference runs in float32.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import types

import numpy as np
import torch
from torch import nn

# Tiny config: the same classes, small widths. spec_size 128 / 32 mels keeps freq_ratio 4 (as base:
# 256 / 64); the 4 stages see 32, 16, 8, 4 patches with window 8, so stage 3 runs the "window covers the
# whole map, no shift" path (base's stage 4) and stage 4 shrinks the window to 4.
AUDIO_CFG = dict(model_type="HTSAT", model_name="base", sample_rate=16000, audio_length=512,
                 window_size=256, hop_size=32, fmin=50, fmax=8000, class_num=5, mel_bins=32,
                 clip_samples=15000)
SWIN = dict(spec_size=128, patch_size=4, patch_stride=(4, 4), embed_dim=6, depths=[2, 2, 2, 1],
            num_heads=[1, 2, 2, 4], window_size=8)
TEXT = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu")
JOINT = 16
N_SAMPLES = 15000  # 1 + 15000 // 32 = 469 frames, interpolated (bicubic) to 512
SKIP_BUFFERS = ("relative_position_index", "attn_mask", "stft.conv_real.weight", "stft.conv_imag.weight",
                "position_ids", "token_type_ids")


def import_clap_module(root: pathlib.Path):
  """clap_module.{htsat,model} as modules, without the package __init__ (torchvision, webdataset...)."""
  utils_stub = types.ModuleType("torchvision.ops.misc")
  utils_stub.FrozenBatchNorm2d = nn.BatchNorm2d  # only used by freeze_batch_norm_2d, never called here
  for name, mod in {"torchvision": types.ModuleType("torchvision"),
                    "torchvision.ops": types.ModuleType("torchvision.ops"),
                    "torchvision.ops.misc": utils_stub, "h5py": types.ModuleType("h5py")}.items():
    sys.modules.setdefault(name, mod)
  pkg = types.ModuleType("clap_module")
  pkg.__path__ = [str(root / "clap_module")]
  sys.modules["clap_module"] = pkg
  mods = {}
  for name in ("utils", "feature_fusion", "timm_model", "pann_model", "htsat", "model"):
    spec = importlib.util.spec_from_file_location(f"clap_module.{name}", root / "clap_module" / f"{name}.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules[f"clap_module.{name}"] = m
    spec.loader.exec_module(m)
    mods[name] = m
  return mods


def randomise(model: nn.Module, gen: torch.Generator) -> None:
  """Overwrites every float parameter/buffer (except fixed geometry buffers) with fp16-exact randoms."""
  sd = model.state_dict()
  with torch.no_grad():
    for k, v in sd.items():
      if not v.is_floating_point() or any(s in k for s in SKIP_BUFFERS) or k.endswith("melW"):
        continue
      leaf = k.rsplit(".", 1)[-1]
      if leaf == "running_var":
        new = torch.rand(v.shape, generator=gen) + 0.5
      elif leaf == "running_mean":
        new = 5.0 * torch.randn(v.shape, generator=gen) - 20.0  # log-mel dB scale
      elif "relative_position_bias_table" in k or "embeddings" in k:
        new = 0.5 * torch.randn(v.shape, generator=gen)
      elif leaf == "weight" and v.ndim == 1:
        new = 1.0 + 0.1 * torch.randn(v.shape, generator=gen)
      elif leaf == "bias" or v.ndim <= 1:
        new = 0.1 * torch.randn(v.shape, generator=gen)
      else:
        fan_in = int(np.prod(v.shape[1:]))
        new = torch.randn(v.shape, generator=gen) / fan_in ** 0.5
      v.copy_(new.half().float())


# roberta-base's published config.json (transformers' RobertaConfig defaults differ: 512 positions, 2 types)
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu")


def real_shapes(model_mod, root: pathlib.Path, out: pathlib.Path) -> None:
  """Key -> shape of the full CLAP(HTSAT-base, roberta) state dict, built exactly as create_model does
  (random init, nothing downloaded): what music_speech_audioset_epoch_15_esc_89.98.pt holds."""
  import json

  from transformers import RobertaConfig, RobertaModel

  cfg = json.loads((root / "clap_module/model_configs/HTSAT-base.json").read_text())
  cfg["text_cfg"]["model_type"] = "roberta"  # create_model(amodel, tmodel='roberta') sets this
  orig = model_mod.RobertaModel.from_pretrained
  model_mod.RobertaModel.from_pretrained = classmethod(lambda cls, name: RobertaModel(RobertaConfig(**ROBERTA_BASE)))
  clap = model_mod.CLAP(**cfg, enable_fusion=False)
  model_mod.RobertaModel.from_pretrained = orig
  shapes = {k: list(v.shape) for k, v in clap.state_dict().items()}
  out.write_text(json.dumps({"source": "laion_clap 1.1.7 CLAP(**HTSAT-base.json, tmodel='roberta', "
                                       "enable_fusion=False) + RobertaModel(roberta-base config.json)",
                             "num_params": sum(v.numel() for v in clap.parameters()), "shapes": shapes}, indent=0))
  print(f"wrote {out}: {len(shapes)} keys")
  del clap


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--laion_clap_dir", default="/tmp/clapsrc/laion_clap",
                  help="the laion_clap package directory (unzipped laion_clap-1.1.7 wheel)")
  ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/clap_tiny.npz"))
  args = ap.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(2)
  mods = import_clap_module(pathlib.Path(args.laion_clap_dir))
  htsat, model_mod = mods["htsat"], mods["model"]
  from transformers import RobertaConfig, RobertaModel

  real_shapes(model_mod, pathlib.Path(args.laion_clap_dir), pathlib.Path(args.out).with_name("clap_real_shapes.json"))
  audio_cfg = model_mod.CLAPAudioCfp(**AUDIO_CFG)
  model_mod.create_htsat_model = lambda cfg, enable_fusion=False, fusion_type="None": \
      htsat.HTSAT_Swin_Transformer(num_classes=cfg.class_num, config=cfg, enable_fusion=False, **SWIN)
  rcfg = RobertaConfig(**TEXT)
  model_mod.RobertaModel.from_pretrained = classmethod(lambda cls, name: RobertaModel(rcfg))
  num_features = SWIN["embed_dim"] * 2 ** (len(SWIN["depths"]) - 1)
  text_cfg = dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12, model_type="roberta")
  clap = model_mod.CLAP(embed_dim=num_features, audio_cfg=audio_cfg, text_cfg=text_cfg,
                        joint_embed_shape=JOINT, mlp_act="relu")
  clap.text_projection = nn.Sequential(nn.Linear(TEXT["hidden_size"], JOINT), nn.ReLU(), nn.Linear(JOINT, JOINT))
  gen = torch.Generator().manual_seed(1234)
  randomise(clap, gen)
  clap.eval()

  wav = (0.1 * torch.randn(1, N_SAMPLES, generator=gen)).half().float()
  rng = np.random.default_rng(7)
  lengths = (77, 9)  # one truncated-length caption, one short one padded with <pad>=1
  ids = np.ones((2, 77), np.int64)
  mask = np.zeros((2, 77), np.int64)
  for b, n in enumerate(lengths):
    ids[b, 0], ids[b, n - 1] = 0, 2
    ids[b, 1:n - 1] = rng.integers(3, TEXT["vocab_size"], n - 2)
    mask[b, :n] = 1

  inter = {}
  ab = clap.audio_branch
  hooks = [ab.logmel_extractor.register_forward_hook(lambda m, i, o: inter.__setitem__("logmel", o)),
           ab.patch_embed.register_forward_hook(lambda m, i, o: inter.__setitem__("swin_in", i[0])),
           ab.norm.register_forward_hook(lambda m, i, o: inter.__setitem__("swin_out", o)),
           clap.text_branch.register_forward_hook(lambda m, i, o: inter.__setitem__("pooler", o["pooler_output"]))]
  with torch.no_grad():
    audio_out = ab({"waveform": wav}, device="cpu")
    audio_embed = clap.get_audio_embedding([{"waveform": wav[0]}])
    text_embed = clap.get_text_embedding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})
  for h in hooks:
    h.remove()

  out = {}
  sd = clap.state_dict()
  for k, v in sd.items():
    if any(s in k for s in SKIP_BUFFERS):
      continue
    a = v.numpy()
    out[f"param/{k}"] = a.astype(np.float16) if v.is_floating_point() and not k.endswith("melW") else a
  out["input/waveform"] = wav.numpy().astype(np.float16)
  out["input/input_ids"] = ids.astype(np.int32)
  out["input/attention_mask"] = mask.astype(np.int32)
  out["inter/logmel"] = inter["logmel"][0, 0].numpy()  # (frames, mels), torchlibrosa output in dB
  out["inter/swin_in"] = inter["swin_in"][0, 0].numpy()  # (spec, spec): bn0, bicubic, reshape_wav2img
  out["inter/embedding"] = audio_out["embedding"].numpy()  # (1, num_features), before audio_projection
  out["inter/pooler"] = inter["pooler"].numpy()  # (2, hidden), RoBERTa pooler_output
  out["output/audio_embed"] = audio_embed.numpy()
  out["output/text_embed"] = text_embed.numpy()
  skipped = sorted(f"{k} {tuple(v.shape)}" for k, v in sd.items() if any(s in k for s in SKIP_BUFFERS))
  out["meta/skipped_buffers"] = np.array("\n".join(skipped))
  np.savez_compressed(args.out, **out)
  size = pathlib.Path(args.out).stat().st_size
  print(f"wrote {args.out}: {size} bytes, {len(sd)} state-dict keys "
        f"({sum(v.numel() for v in clap.parameters())} params), logmel {tuple(out['inter/logmel'].shape)}")


if __name__ == "__main__":
  main()
