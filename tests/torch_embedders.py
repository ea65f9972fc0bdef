"""Embedders that delegate to the PyTorch reference classes (PaSST, LAION-CLAP, ImageBind, Synchformer).

Every metric embedder of the package is a Flax port (dreamfoley_jax/eval/embedders/); these PyTorch
reference models stay outside the JAX package, for cross-checks: `register()` adds them to its registry as
'passt_torch', 'clap_torch', 'imagebind_torch' and 'synchformer_torch' (tools/evaluate.py calls it when
--config.metrics names one).

These are NOT Flax ports. Each builds the reference architecture without pretrained weights, loads
the user's local checkpoint with `torch.load(weights_only=True)` and `load_state_dict(strict=True)`
(so a wrong file fails with every mismatched key listed), and feeds it inputs prepared by our
front ends exactly as av-benchmark does. Imports are guarded: a missing package raises
MissingPackageError naming what to `pip install`.
"""
from __future__ import annotations

import os

import numpy as np

from dreamfoley_jax.convert.common import check_keys, load_torch_file
from dreamfoley_jax.eval import frontends, metrics
from dreamfoley_jax.eval.embedders.base import Embedder, find_checkpoint, require


def _load_strict(model, ckpt, name: str, strip: tuple[str, ...] = ()):
  """Loads a local state dict into `model`, raising one ConversionError listing every bad key."""
  import torch

  sd = load_torch_file(ckpt)
  for prefix in strip:
    if sd and all(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items()}
  want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  check_keys(want, {k: tuple(v.shape) for k, v in sd.items()}, source=ckpt,
             ignore=lambda k: k.endswith("num_batches_tracked"))
  model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
  return model.eval()


def _fp(name, ckpt):
  st = os.stat(ckpt)
  return f"{name}|{ckpt}:{st.st_size}:{int(st.st_mtime)}"


class PasstEmbedder(Embedder):
  """FD_PaSST (768-d) and KL_PaSST (527 logits): hear21passt `passt_s_swa_p16_128_ap476`, 32 kHz, 10 s.

  Registered as 'passt_torch' (hear21passt needs torchaudio); 'passt' is the Flax port in passt.py.
  """
  FILES = ("passt-s-f128-p16-s10-ap.476-swa.pt",)

  def __init__(self, path=None, device: str = "cpu"):
    super().__init__(name="passt", native=False)
    ckpt = find_checkpoint("passt", path, self.FILES)
    base = require("hear21passt.base", "hear21passt", "passt_torch")
    passt = require("hear21passt.models.passt", "hear21passt", "passt_torch")
    import torch

    mel = base.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
                              htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
    net = passt.get_model(arch="passt_s_swa_p16_128_ap476", pretrained=False)
    _load_strict(net, ckpt, "passt", strip=("net.",))
    self.model = base.PasstBasicWrapper(mel=mel, net=net, mode="all").to(device).eval()
    self.device, self._torch, self._fp = device, torch, _fp("passt", ckpt)

  def fingerprint(self):
    return self._fp

  def audio_features(self, wav_CxT, sr, duration_s, name):
    x = frontends.passt_input(frontends.prepare_audio(wav_CxT, sr, 32000, duration_s))
    with self._torch.no_grad():
      out = self.model(self._torch.tensor(x[None], dtype=self._torch.float32, device=self.device)).cpu().numpy()[0]
    return {"passt_logits": out[:527], "passt_embed": out[527:]}


class ClapEmbedder(Embedder):
  """LAION-CLAP HTSAT-base (music_speech_audioset checkpoint): 48 kHz audio and caption embeddings.

  laion_clap's CLAP_Module also loads the `roberta-base` tokenizer through transformers: it must be in
  the local Hugging Face cache (HF_HUB_OFFLINE=1 is honoured; nothing is downloaded by this code).
  """
  FILES = ("music_speech_audioset_epoch_15_esc_89.98.pt",)

  def __init__(self, path=None, device: str = "cpu", seed: int = 0):
    super().__init__(name="clap", native=False, needs_text=True)
    ckpt = find_checkpoint("clap", path, self.FILES)
    laion_clap = require("laion_clap", "laion-clap", "clap")
    import torch

    self.model = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-base", device=device)
    self.model.load_ckpt(str(ckpt), verbose=False)  # a local path: load_ckpt downloads only without one
    self.model.eval()
    self.seed, self._torch, self._fp = seed, torch, _fp("clap", ckpt)

  def fingerprint(self):
    return f"{self._fp}|seed{self.seed}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    x = frontends.clap_input(frontends.prepare_audio(wav_CxT, sr, 48000, duration_s), seed=self.seed)
    with self._torch.no_grad():
      e = self.model.get_audio_embedding_from_data(self._torch.tensor(x[None], dtype=self._torch.float32),
                                                   use_tensor=True)
    return {"clap_audio": e.cpu().numpy().reshape(-1)}

  def text_features(self, caption):
    with self._torch.no_grad():
      e = self.model.get_text_embedding([caption], use_tensor=True)
    return {"clap_text": e.cpu().numpy().reshape(-1)}


class ImageBindEmbedder(Embedder):
  """IB-score: ImageBind-huge audio (three 2 s clips of the whole file) and video (0.5 fps, 3 crops)."""
  FILES = ("imagebind_huge.pth",)

  def __init__(self, path=None, device: str = "cpu"):
    super().__init__(name="imagebind", native=False, needs_video=True)
    ckpt = find_checkpoint("imagebind", path, self.FILES)
    ib = require("imagebind.models.imagebind_model", "git+https://github.com/facebookresearch/ImageBind",
                 "imagebind")
    import torch

    self.model = _load_strict(ib.imagebind_huge(pretrained=False), ckpt, "imagebind").to(device)
    self.modality = ib.ModalityType
    self.device, self._torch, self._fp = device, torch, _fp("imagebind", ckpt)

  def fingerprint(self):
    return self._fp

  def audio_features(self, wav_CxT, sr, duration_s, name):
    w = frontends.resample(np.atleast_2d(wav_CxT), sr, 16000)  # whole file, channels kept (reference)
    clips = frontends.imagebind_audio_clips(w)[None]  # (1, 3, 1, 128, 204)
    with self._torch.no_grad():
      t = self._torch.tensor(clips, dtype=self._torch.float32, device=self.device)
      e = self.model({self.modality.AUDIO: t})[self.modality.AUDIO]
    return {"ib_audio": e.cpu().numpy()[0]}

  def video_features(self, video, name):
    crops = video["ib_crops"]  # (3 crops, T, C, 224, 224), T = 0.5 fps * duration
    clips = np.concatenate([crops[:, i:i + 2] for i in range(crops.shape[1] - 1)], axis=0)  # (3*(T-1), 2, C, H, W)
    clips = clips.transpose(0, 2, 1, 3, 4)[None]
    with self._torch.no_grad():
      t = self._torch.tensor(clips, dtype=self._torch.float32, device=self.device)
      e = self.model({self.modality.VISION: t})[self.modality.VISION]
    return {"ib_video": e.cpu().numpy()[0]}


class SynchformerEmbedder(Embedder):
  """DeSync: av-benchmark's Synchformer feature extractors (PyTorch) + the 21-class offset head (Flax port)."""
  FILES = ("synchformer_state_dict.pth",)

  def __init__(self, path=None, device: str = "cpu", head: str = "flax"):
    super().__init__(name="synchformer", native=False, needs_video=True)
    ckpt = find_checkpoint("synchformer", path, self.FILES)
    sf = require("av_bench.synchformer.synchformer", "git+https://github.com/hkchengrex/av-benchmark",
                 "synchformer")
    import torch

    self.model = _load_strict(sf.Synchformer(), ckpt, "synchformer").to(device)
    self.device, self._torch, self._fp = device, torch, _fp("synchformer", ckpt)
    # The offset classifier runs as the Flax port (sync_head.py); head="torch" uses compare_v_a instead.
    self.head = head
    if head == "flax":
      import jax
      from dreamfoley_jax.convert.common import TensorSource
      from dreamfoley_jax.eval.embedders import sync_head

      self._head_vars = sync_head.convert_sync_head(TensorSource(ckpt))
      model = sync_head.SyncHead(sync_head.SyncHeadConfig())
      self._head = jax.jit(lambda p, v, a: model.apply(p, v, a)[0])

  def fingerprint(self):
    return self._fp

  def audio_features(self, wav_CxT, sr, duration_s, name):
    segs = frontends.check_sync_audio(wav_CxT, sr, duration_s, name)
    x = segs.transpose(0, 2, 1)[None, :, None]  # (1, S, 1, 128 mels, 66 frames)
    with self._torch.no_grad():
      f = self.model.extract_afeats(self._torch.tensor(x, dtype=self._torch.float32, device=self.device))
    return {"sync_audio": f.cpu().numpy()[0]}

  def video_features(self, video, name):
    v = video["sync_frames"]  # (T, C, 224, 224) in [-1, 1], 25 fps
    idx = [slice(i * metrics.SYNC_VIDEO_STEP, i * metrics.SYNC_VIDEO_STEP + metrics.SYNC_VIDEO_SEGMENT)
           for i in range(metrics.num_segments(len(v), metrics.SYNC_VIDEO_SEGMENT, metrics.SYNC_VIDEO_STEP))]
    segs = np.stack([v[s] for s in idx])[:, None]  # (S, 1, 16, C, H, W)
    with self._torch.no_grad():
      f = self.model.extract_vfeats(self._torch.tensor(segs, dtype=self._torch.float32, device=self.device))
    return {"sync_video": f.cpu().numpy()[:, 0]}  # (S, tv, D)

  def sync_logits(self, video_SxTxD, audio_SxTxD) -> np.ndarray:
    """(2, 21) logits for the first and the last 14 segments (4.8 s) of each stream, as av-benchmark."""
    out = []
    for v, a in metrics.desync_window_pairs(video_SxTxD, audio_SxTxD):
      if self.head == "flax":
        out.append(np.asarray(self._head(self._head_vars, v[None].astype(np.float32), a[None].astype(np.float32)))[0])
        continue
      with self._torch.no_grad():
        lg = self.model.compare_v_a(self._torch.tensor(v[None], device=self.device),
                                    self._torch.tensor(a[None], device=self.device))
      out.append(lg.cpu().numpy()[0])
    return np.stack(out)


def register():
  """Adds the `*_torch` cross-check embedders to dreamfoley_jax.eval.embedders' registry."""
  from dreamfoley_jax.eval import embedders

  for name, cls in (("passt_torch", PasstEmbedder), ("clap_torch", ClapEmbedder),
                    ("imagebind_torch", ImageBindEmbedder), ("synchformer_torch", SynchformerEmbedder)):
    embedders.register(name, cls, cls.FILES)
