"""Writes tests/fixtures/msclap_tiny.npz (a tiny random MS-CLAP 2023 golden) and msclap_2023_shapes.json.

Runs msclap 1.3.4's own model classes (msclap/models/{clap,audio,htsat}.py, the code PAM's PAM/models holds
for the GPT-2 path) with torchlibrosa and transformers' GPT2Model:

  pip download msclap==1.3.4 --no-deps -d /tmp/w && unzip -o /tmp/w/msclap-1.3.4-py3-none-any.whl -d /tmp/msclap
  python tools/goldens/make_pam_golden.py --msclap_dir /tmp/msclap

msclap's package __init__ imports torchaudio (CLAPWrapper), so its `models` package is imported on its own
(a stand-in parent package). CLAP(...) is built as PAM.load_clap builds it from config.yml, except: the
text model directory is a tiny random GPT-2 saved here (AutoModel.from_pretrained on a local path), the
HTSAT is htsat.HTSAT_Swin_Transformer at a tiny geometry with a config namespace copied from msclap's
htsat config module (32 kHz filterbank, as the real one; hop 640 so 7 s at 44.1 kHz fits 512 frames),
and the audio projection takes its width. Every parameter and buffer is random, rounded to float16 values
(stored as float16); the forward runs in float32. PAM's score is computed as PAM.evaluate does.

The shapes manifest is the real-size CLAP(version 2023) (config.yml: HTSAT, d_proj 1024, GPT2Config()),
built on the meta device.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import tempfile
import types

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SECONDS, RATE = 10.0, 44100
PAM_IDS = [[1, 2, 3, 4, 5, 6, 7, 8, 12] + [0] * 15, [1, 2, 3, 9, 5, 10, 11, 7, 8, 12] + [0] * 14]


def signal(seconds=SECONDS, rate=RATE) -> np.ndarray:
  """The golden's input (tests rebuild it): AM tone + FM tone + a click train, float32 mono."""
  t = np.arange(int(seconds * rate)) / rate
  x = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
  x += 0.1 * np.sin(2 * np.pi * 3000 * t + 5 * np.sin(2 * np.pi * 0.5 * t))
  x += 0.2 * ((np.arange(t.size) % 11025) < 40)
  return x.astype(np.float32)


def import_models(msclap_dir: pathlib.Path):
  pkg = types.ModuleType("msclap")
  pkg.__path__ = [str(msclap_dir / "msclap")]
  sys.modules["msclap"] = pkg
  return (importlib.import_module("msclap.models.clap"), importlib.import_module("msclap.models.htsat"),
          importlib.import_module("msclap.models.config"))


def tiny_gpt2_dir(d: pathlib.Path, cfg) -> str:
  from transformers import GPT2Config, GPT2Model

  GPT2Model(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                       n_layer=cfg.n_layer, n_head=cfg.n_head)).save_pretrained(d)
  return str(d)


def randomise(model, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(model.state_dict(keep_vars=True).items()):
      if not t.dtype.is_floating_point or "stft" in name or name.endswith(("melW", "attn_mask")):
        continue   # fixed buffers stay (the STFT kernels, the SW-MSA masks; melW is the reference's filterbank)
      if name.endswith("running_var"):
        v = torch.rand(t.shape, generator=g) + 0.5
      elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "norm.weight", "norm1.weight",
                          "norm2.weight", "layer_norm.weight", "bn0.weight")):
        v = 1 + 0.1 * torch.randn(t.shape, generator=g)
      elif t.dim() >= 2:
        v = torch.randn(t.shape, generator=g) / np.sqrt(np.prod(t.shape[1:]) if "c_" not in name else t.shape[0])
      else:
        v = 0.1 * torch.randn(t.shape, generator=g)
      t.copy_(v.half().float())


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--msclap_dir", required=True, type=pathlib.Path)
  args = ap.parse_args()
  from dreamfoley_jax.eval.embedders import msclap as M

  clap_mod, htsat_mod, hconf = import_models(args.msclap_dir)
  c = M.MsClapConfig.tiny()
  tmp = pathlib.Path(tempfile.mkdtemp())
  torch.manual_seed(0)
  model = clap_mod.CLAP(audioenc_name="HTSAT", sample_rate=44100, window_size=1024, hop_size=320, mel_bins=64,
                        fmin=50, fmax=8000, classes_num=527, out_emb=768, text_model=tiny_gpt2_dir(tmp / "gpt2", c.text),
                        transformer_embed_dim=c.text.n_embd, d_proj=c.d_proj)
  tcfg = types.SimpleNamespace(**{k: getattr(hconf, k) for k in dir(hconf) if not k.startswith("_")})
  a = c.audio
  tcfg.window_size, tcfg.hop_size, tcfg.sample_rate, tcfg.mel_bins = a.n_fft, a.hop, a.sample_rate, a.mel_bins
  tcfg.fmin, tcfg.fmax, tcfg.classes_num = a.fmin, a.fmax, a.num_classes
  model.audio_encoder.base.htsat = htsat_mod.HTSAT_Swin_Transformer(
      spec_size=a.spec_size, patch_size=a.patch_size, patch_stride=(4, 4), num_classes=a.num_classes,
      embed_dim=a.embed_dim, depths=list(a.depths), num_heads=list(a.num_heads), window_size=a.window_size,
      config=tcfg)
  model.audio_encoder.projection = clap_mod.Projection(a.num_features, c.d_proj)
  randomise(model)
  model.logit_scale.data.fill_(0.5)   # keeps the random model's softmax away from 0 and 1
  model.eval()

  wav = signal()
  wins = torch.from_numpy(M.pam_windows(wav, c.window_samples))           # (2, 308700): [0, 7) s and [3, 10) s
  # PAM's two prompts as the word-level stand-in GPT-2 tokenizer of tests/test_msclap_pam.py encodes them
  # ('the sound is clear and clean.' + ' <|endoftext|>', '!'-padded), so the pipeline stage reproduces PAM_IDS
  ids = torch.tensor(PAM_IDS)
  mask = (ids != 0).long()
  with torch.no_grad():
    h = model.audio_encoder.base.htsat
    logmel = h.logmel_extractor(h.spectrogram_extractor(wins))[:, 0]
    base = model.audio_encoder.base(wins)
    audio = model.audio_encoder(wins)[0]
    text = model.caption_encoder({"input_ids": ids, "attention_mask": mask})
    # PAM.compute_similarity + evaluate
    ae = audio / torch.norm(audio, dim=-1, keepdim=True)
    te = text / torch.norm(text, dim=-1, keepdim=True)
    sim = (model.logit_scale.exp() * te @ ae.T).T
    pam = torch.softmax(sim, dim=1)[:, 0]
  fixed = ("stft", "relative_position_index", "attn_mask", "num_batches_tracked")   # rebuilt from the config
  out = {f"param/{k}": v.numpy().astype(np.float32 if k.endswith("melW") else np.float16)
         for k, v in model.state_dict().items() if not any(f in k for f in fixed)}
  out.update({"input/ids": ids.numpy().astype(np.int32), "input/mask": mask.numpy().astype(np.int32),
              "inter/logmel": logmel.numpy()[0, :100],   # window 0, first 100 frames
              "inter/embedding": base["embedding"].numpy(),
              "output/audio_embed": audio.numpy(), "output/text_embed": text.numpy(),
              "output/similarity": sim.numpy(), "output/pam": pam.numpy(),
              "output/file_score": np.float32(pam.mean().item())})
  fix = ROOT / "tests" / "fixtures"
  np.savez_compressed(fix / "msclap_tiny.npz", **out)
  print(fix / "msclap_tiny.npz", "pam per window", pam.numpy())

  # the real-size layout (torchlibrosa's STFT cannot be built on the meta device: ~150M params on the CPU)
  from transformers import GPT2Config, GPT2Model

  class _Meta(clap_mod.TextEncoder):
    def __init__(self, d_out, text_model, transformer_embed_dim):
      torch.nn.Module.__init__(self)
      self.text_model = text_model
      self.base = GPT2Model(GPT2Config())
      self.projection = clap_mod.Projection(transformer_embed_dim, d_out)

  clap_mod.TextEncoder = _Meta
  real = clap_mod.CLAP(audioenc_name="HTSAT", sample_rate=44100, window_size=1024, hop_size=320, mel_bins=64,
                       fmin=50, fmax=8000, classes_num=527, out_emb=768, text_model="gpt2",
                       transformer_embed_dim=768, d_proj=1024)
  sd = real.state_dict()
  man = {"source": "msclap 1.3.4 CLAP(**PAM config.yml) (HTSATWrapper + GPT2Model(GPT2Config()) + Projection); "
                   "the state dict CLAP_weights_2023.pth['model'] holds",
         "num_params": int(sum(p.numel() for p in real.parameters())),
         "shapes": {k: list(v.shape) for k, v in sd.items()}}
  (fix / "msclap_2023_shapes.json").write_text(json.dumps(man, indent=0) + "\n")
  print(fix / "msclap_2023_shapes.json", len(sd), "keys", man["num_params"], "params")


if __name__ == "__main__":
  main()
