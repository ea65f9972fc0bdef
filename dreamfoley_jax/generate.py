"""Video file(s) in, soundtrack out: features -> windowed CFG sampling -> audio codec -> wav / mp4 / png.

The pieces that live on other branches are injected, so this runs end to end with any of them:
  feature_fn(video_path) -> {"sync_feats": (Tv, Ds) at 25 Hz, "clip_feats": (Tc, Dc) at 4 fps,
                             "video_mask": (Tv,) bool}      (the video front end + encoders)
  codec: .sample_rate (24000 for higgs-audio-v2), .decode(codes_KxT int) -> waveform (N,) float
  tokenize(text) -> list[int]                                (the Qwen BPE tokenizer)

Outputs per clip, in out_dir: <stem>.wav (codec rate or --sample_rate 44100/48000), <stem>.mp4 (the
original video stream copied packet by packet -- no re-encode -- plus the new audio as AAC), and
<stem>.png (log-magnitude spectrogram).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
from fractions import Fraction
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from dreamfoley_jax import sample as sampling
from dreamfoley_jax.models import foley

AUDIO_FRAME_RATE = 25.0   # higgs-audio-v2 codes per second (= the sync video rate)


class Codec(Protocol):
  sample_rate: int

  def decode(self, codes_KxT: np.ndarray) -> np.ndarray:
    ...


@dataclasses.dataclass
class Item:
  video: Optional[str]                 # None: text-to-audio (needs duration)
  caption: str = ""
  negative: str = ""                   # negative prompt (replaces the unconditional text)
  duration: Optional[float] = None     # seconds; default: the video's duration
  name: Optional[str] = None           # output stem; default: the video's stem / "clip<i>"
  seed: Optional[int] = None           # the clip's sampling stream; default: its position in the run


class GenerateError(ValueError):
  pass


def read_csv(path: str | os.PathLike) -> list[Item]:
  """CSV with a header: `video` (required column, may be empty for text-to-audio), optional `caption`,
  `negative`, `duration`, `name`. Relative video paths are relative to the CSV file."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{p}: no such CSV")
  with open(p, newline="") as f:
    rows = list(csv.DictReader(f))
  if rows and "video" not in rows[0]:
    raise GenerateError(f"{p}: needs a 'video' column (has {sorted(rows[0])})")
  items = []
  for n, r in enumerate(rows, start=2):
    v = (r.get("video") or "").strip()
    if v and not pathlib.Path(v).is_absolute():
      v = str(p.parent / v)
    d = (r.get("duration") or "").strip()
    if not v and not d:
      raise GenerateError(f"{p}:{n}: a row without a video needs a duration (text-to-audio)")
    items.append(Item(video=v or None, caption=(r.get("caption") or "").strip(),
                      negative=(r.get("negative") or "").strip(), duration=float(d) if d else None,
                      name=(r.get("name") or "").strip() or None))
  return items


def probe_duration(path: str | os.PathLike) -> float:
  """Seconds of the first video stream (container duration as a fallback)."""
  import av

  try:
    with av.open(str(path)) as c:
      if not c.streams.video:
        raise GenerateError(f"{path}: has no video stream")
      s = c.streams.video[0]
      if s.duration is not None and s.time_base is not None:
        return float(s.duration * s.time_base)
      if c.duration is not None:
        return c.duration / 1e6
      n = sum(1 for _ in c.decode(video=0))
      return n / float(s.average_rate or 25)
  except av.error.FFmpegError as e:
    raise GenerateError(f"{path}: PyAV cannot read it: {e}") from e


def buckets(frames: Sequence[int], bucket_frames: int, batch_size: int) -> list[list[int]]:
  """Item indices grouped by duration bucket (ceil to a multiple of bucket_frames), <= batch_size each."""
  keyed: dict[int, list[int]] = {}
  for i, n in enumerate(frames):
    keyed.setdefault(math.ceil(n / bucket_frames), []).append(i)
  out = []
  for k in sorted(keyed):
    idx = keyed[k]
    out.extend(idx[s:s + batch_size] for s in range(0, len(idx), batch_size))
  return out


def resample(audio: np.ndarray, src: int, dst: int) -> np.ndarray:
  if src == dst:
    return audio
  from scipy.signal import resample_poly

  g = math.gcd(src, dst)
  return resample_poly(audio, dst // g, src // g).astype(np.float32)


def write_wav(path, audio: np.ndarray, sr: int) -> None:
  import soundfile as sf

  sf.write(str(path), np.clip(audio, -1.0, 1.0).astype(np.float32), sr, subtype="PCM_16")


def mux(video_path, audio: np.ndarray, sr: int, out_path, audio_codec: str = "aac") -> None:
  """Copies the video stream packets (no re-encode) and adds `audio` (mono float) as a new audio track."""
  import av

  audio = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
  with av.open(str(video_path)) as src, av.open(str(out_path), "w") as dst:
    vin = src.streams.video[0]
    vout = dst.add_stream_from_template(vin)
    aout = dst.add_stream(audio_codec, rate=sr, layout="mono")
    for pkt in src.demux(vin):
      if pkt.dts is None:
        continue
      pkt.stream = vout
      dst.mux(pkt)
    n = aout.codec_context.frame_size or 1024
    pts = 0
    for s in range(0, len(audio), n):
      chunk = audio[s:s + n]
      fr = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
      fr.sample_rate = sr
      fr.pts = pts
      fr.time_base = Fraction(1, sr)
      pts += len(chunk)
      for p in aout.encode(fr):
        dst.mux(p)
    for p in aout.encode(None):
      dst.mux(p)


def write_spectrogram(path, audio: np.ndarray, sr: int, title: str = "") -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(10, 3.5), dpi=100)
  nfft = 1024 if sr >= 22050 else 512
  ax.specgram(np.asarray(audio, np.float64) + 1e-9, NFFT=nfft, Fs=sr, noverlap=nfft // 2, cmap="magma")
  ax.set_xlabel("time (s)")
  ax.set_ylabel("frequency (Hz)")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(str(path))
  plt.close(fig)


@dataclasses.dataclass
class Generator:
  """Everything a generate run needs; `run(items, out_dir)` writes the outputs and returns their paths."""
  cfg: foley.FoleyConfig
  params: dict
  codec: Codec
  feature_fn: Callable[[str], dict]
  tokenize: Callable[[str], Sequence[int]]
  sample_cfg: sampling.SampleConfig = sampling.SampleConfig()
  window_frames: int = 250            # the trained length: 10 s (paper sec. 5.1 crops of 2-10 s)
  context_frames: int = 75            # 3 s of generated audio + matching video carried into each new window
  max_text_len: int = 64
  batch_size: int = 8
  bucket_frames: int = 50             # 2 s duration buckets
  seed: int = 0
  sample_rate: Optional[int] = None   # output rate; None = the codec's (24 kHz)
  mesh: Optional[object] = None       # sample sharded over this (data, fsdp, tensor) mesh (sample.sample)
  write_mp4: bool = True
  write_png: bool = True
  show_progress: bool = True

  def __post_init__(self):
    # Once, here: each window's `sample` call then finds the params already in place (host numpy params,
    # e.g. from load_params(host=True), would otherwise be transferred again for every window).
    if self.mesh is not None:
      self.params = sampling.place_params(self.cfg, self.params, self.mesh)
    else:
      import jax

      self.params = jax.device_put(self.params)

  def _text(self, captions: Sequence[str]):
    L = max(self.cfg.null_text_len, 1)
    toks = []
    for c in captions:
      t = list(self.tokenize(c))[:self.max_text_len] if c else []
      toks.append(t)
      L = max(L, len(t))
    ids = np.zeros((len(toks), L), np.int32)
    mask = np.zeros((len(toks), L), bool)
    for i, t in enumerate(toks):
      ids[i, :len(t)] = t
      mask[i, :len(t)] = True
    return ids, mask

  def _frames(self, items: Sequence[Item], frames: Sequence[int]):
    """frames mode: uint8 frame batches (the model runs its encoders); masks mark real frames."""
    c = self.cfg
    vids = [None if it.video is None else self.feature_fn(it.video) for it in items]
    size = (c.synchformer if c.use_sync else c.eva).image_size
    win = c.synchformer.window if c.use_sync else 1
    Tf = max(max(frames), win, c.null_video_len)
    Tc = math.ceil(Tf * c.clip_rate / c.sync_rate)
    B = len(items)
    batch = {"frames_sync": np.zeros((B, Tf, size, size, 3), np.uint8), "frames_sync_mask": np.zeros((B, Tf), bool),
             "frames_clip": np.zeros((B, Tc, size, size, 3), np.uint8), "frames_clip_mask": np.zeros((B, Tc), bool)}
    for i, v in enumerate(vids):
      if v is None:
        continue
      fs, fc = np.asarray(v["frames_sync"])[:Tf], np.asarray(v["frames_clip"])[:Tc]
      batch["frames_sync"][i, :len(fs)], batch["frames_sync_mask"][i, :len(fs)] = fs, True
      batch["frames_clip"][i, :len(fc)], batch["frames_clip_mask"][i, :len(fc)] = fc, True
    return batch

  def _video(self, items: Sequence[Item], frames: Sequence[int]):
    if self.cfg.vision_mode == "frames":
      return self._frames(items, frames)
    feats = []
    for it, n in zip(items, frames):
      if it.video is None:
        feats.append(None)
        continue
      f = self.feature_fn(it.video)
      missing = [k for k, use in (("sync_feats", self.cfg.use_sync), ("clip_feats", self.cfg.use_clip))
                 if use and k not in f]
      if missing:
        raise GenerateError(f"{it.video}: feature_fn returned no {missing} (got {sorted(f)})")
      feats.append(f)
    Tv = max(max(frames), self.cfg.null_video_len)
    Tc = math.ceil(Tv * self.cfg.clip_rate / self.cfg.sync_rate) + 1
    B = len(items)
    batch = {"video_mask": np.zeros((B, Tv), bool)}
    if self.cfg.use_sync:
      batch["sync_feats"] = np.zeros((B, Tv, self.cfg.sync_dim), np.float32)
    if self.cfg.use_clip:
      batch["clip_feats"] = np.zeros((B, Tc, self.cfg.clip_dim), np.float32)
    for i, f in enumerate(feats):
      if f is None:
        continue
      vm = np.asarray(f.get("video_mask", np.ones(len(f.get("sync_feats", np.zeros(frames[i]))), bool)), bool)
      n = min(len(vm), Tv)
      batch["video_mask"][i, :n] = vm[:n]
      if self.cfg.use_sync:
        s = np.asarray(f["sync_feats"])[:Tv]
        batch["sync_feats"][i, :len(s)] = s
      if self.cfg.use_clip:
        c = np.asarray(f["clip_feats"])[:Tc]
        batch["clip_feats"][i, :len(c)] = c
    return batch

  def run(self, items: Sequence[Item], out_dir: str | os.PathLike) -> list[dict]:
    """Generates every item; returns [{"name", "wav", "mp4", "png", "frames", "codes"}] in item order."""
    from tqdm.auto import tqdm

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    durations = []
    for it in items:
      if it.video is not None and not pathlib.Path(it.video).exists():
        raise FileNotFoundError(f"{it.video}: no such video")
      d = it.duration if it.duration is not None else (probe_duration(it.video) if it.video else None)
      if d is None or d <= 0:
        raise GenerateError(f"item {it}: unknown or zero duration")
      durations.append(d)
    frames = [max(1, int(round(d * AUDIO_FRAME_RATE))) for d in durations]
    names = _unique_names(items)
    results: list[Optional[dict]] = [None] * len(items)
    sr_out = self.sample_rate or self.codec.sample_rate
    bar = tqdm(total=sum(frames), unit="frame", desc="generate", disable=not self.show_progress)
    for group in buckets(frames, self.bucket_frames, self.batch_size):
      its = [items[i] for i in group]
      fr = [frames[i] for i in group]
      text_ids, text_mask = self._text([it.caption for it in its])
      batch = dict(self._video(its, fr), text_ids=text_ids, text_mask=text_mask)
      kw = {"drop_text": np.array([not it.caption for it in its]),
            "drop_video": np.array([it.video is None for it in its])}
      if any(it.negative for it in its):
        kw["negative_text_ids"], kw["negative_text_mask"] = self._text([it.negative for it in its])
        kw["negative"] = np.array([bool(it.negative) for it in its])
      res = sampling.sample_long(self.cfg, self.params, batch, fr, window_frames=self.window_frames,
                                 context_frames=self.context_frames, sample_cfg=self.sample_cfg, seed=self.seed,
                                 item_seeds=np.asarray([i if items[i].seed is None else items[i].seed for i in group]),
                                 progress=bar.update, mesh=self.mesh, **kw)
      for j, i in enumerate(group):
        codes = res["codes"][j, :, :fr[j]]
        audio = np.asarray(self.codec.decode(codes), np.float32).reshape(-1)
        want = int(round(durations[i] * self.codec.sample_rate))
        audio = np.pad(audio, (0, max(0, want - len(audio))))[:want]
        audio = resample(audio, self.codec.sample_rate, sr_out)
        r = {"name": names[i], "frames": fr[j], "codes": codes, "wav": out / f"{names[i]}.wav"}
        write_wav(r["wav"], audio, sr_out)
        if self.write_mp4 and items[i].video is not None:
          r["mp4"] = out / f"{names[i]}.mp4"
          mux(items[i].video, audio, sr_out, r["mp4"])
        if self.write_png:
          r["png"] = out / f"{names[i]}.png"
          write_spectrogram(r["png"], audio, sr_out, title=items[i].caption or names[i])
        results[i] = r
    bar.close()
    return results


def _unique_names(items: Sequence[Item]) -> list[str]:
  names, seen = [], {}
  for i, it in enumerate(items):
    base = it.name or (pathlib.Path(it.video).stem if it.video else f"clip{i}")
    n = seen.get(base, 0)
    seen[base] = n + 1
    names.append(base if n == 0 else f"{base}_{n}")
  return names


def bpe_tokenizer(path: str | os.PathLike) -> Callable[[str], list[int]]:
  """A `tokenize` callable from a HF tokenizer.json (file or directory holding one)."""
  from tokenizers import Tokenizer

  p = pathlib.Path(path)
  p = p / "tokenizer.json" if p.is_dir() else p
  if not p.exists():
    raise FileNotFoundError(f"{p}: tokenizer.json not found")
  tok = Tokenizer.from_file(str(p))
  return lambda s: tok.encode(s, add_special_tokens=False).ids


class ToneCodec:
  """Placeholder codec for --smoke_random: a tone per frame chosen by codebook 0 (960 samples / frame)."""
  sample_rate = 24000

  def decode(self, codes_KxT):
    t = np.arange(self.sample_rate // 25) / self.sample_rate
    return np.concatenate([0.3 * np.sin(2 * np.pi * (100 + 4 * int(c)) * t) for c in np.asarray(codes_KxT)[0]])


def random_feature_fn(cfg: foley.FoleyConfig) -> Callable[[str], dict]:
  """Placeholder video features for --smoke_random: the right shapes for the video's duration."""
  def fn(path):
    n = max(1, int(round(probe_duration(path) * AUDIO_FRAME_RATE)))
    rng = np.random.default_rng(n)
    return {"sync_feats": rng.normal(size=(n, cfg.sync_dim)).astype(np.float32),
            "clip_feats": rng.normal(size=(math.ceil(n * cfg.clip_rate / cfg.sync_rate), cfg.clip_dim)
                                     ).astype(np.float32),
            "video_mask": np.ones(n, bool)}
  return fn


class HiggsCodec:
  """The higgs-audio-v2 tokenizer (converted orbax checkpoint) behind the codec interface."""

  def __init__(self, path):
    from dreamfoley_jax.audio import tokenizer
    from dreamfoley_jax.convert import higgs as convert_higgs

    cfg, params = convert_higgs.load_orbax(path)
    self.tok = tokenizer.AudioTokenizer(params, cfg)
    self.path = str(path)
    self.sample_rate = int(cfg.sample_rate)
    self.frame_rate = float(cfg.frame_rate)
    self.num_codebooks = int(cfg.num_quantizers)
    self.codebook_size = int(cfg.codebook_size)

  def encode(self, audio_N):
    """(N,) float at sample_rate -> (K, T) int32 codes."""
    return self.tok.encode([np.asarray(audio_N, np.float32).reshape(-1)])[0]

  def encode_many(self, audios):
    """Batched (bucketed) encode of many clips: list of (K, T_i)."""
    return self.tok.encode([np.asarray(a, np.float32).reshape(-1) for a in audios])

  def decode(self, codes_KxT):
    return np.asarray(self.tok.decode([np.asarray(codes_KxT)])[0], np.float32).reshape(-1)


def load_codec(path):
  """The audio decoder: a fitted synthetic codec (.npz, `audio/synthetic_codec.py`) or a converted
  higgs-audio-v2 tokenizer checkpoint directory (tools/convert_checkpoint.py --family higgs)."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"--codec_checkpoint {p}: not found")
  if p.is_file() or p.with_suffix(".npz").is_file():
    from dreamfoley_jax.audio import synthetic_codec

    return synthetic_codec.SyntheticCodec.load(str(p))
  if not (p / "params").exists():
    raise GenerateError(f"--codec_checkpoint {p}: neither a synthetic codec file nor an orbax checkpoint")
  return HiggsCodec(p)


def load_feature_fn(cfg: foley.FoleyConfig, exp, *, eva_ckpt=None, sync_ckpt=None):
  """video path -> model inputs.

  frames mode (the encoders are part of the model): uint8 frames at 25 fps / 4 fps, resized and
  centre-cropped to the encoders' image size. features mode: EVA-CLIP / Synchformer features from
  converted checkpoints (`--eva_ckpt`, `--sync_ckpt`), exactly as tools/extract_features.py makes them.
  """
  from dreamfoley_jax.video import load_video_frames, sync_cover_windows

  if cfg.vision_mode == "frames":
    size = (cfg.synchformer if cfg.use_sync else cfg.eva).image_size

    def frames_fn(path):
      v = load_video_frames(path, size=size)
      return {"frames_sync": v.sync_u8, "frames_clip": v.clip_u8}

    return frames_fn
  missing = [n for n, v in (("--eva_ckpt", eva_ckpt if cfg.use_clip else 1),
                            ("--sync_ckpt", sync_ckpt if cfg.use_sync else 1)) if not v]
  if missing:
    raise GenerateError(f"video features need converted encoder checkpoints: pass {', '.join(missing)} "
                        "(tools/convert_checkpoint.py --family eva_clip / synchformer)")
  from dreamfoley_jax import sharding
  from dreamfoley_jax.data import extract

  enc = extract.build_real_encoders(eva_ckpt, sync_ckpt, sharding.make_mesh({"data": -1}), extract.ExtractConfig())

  def features_fn(path):
    v = load_video_frames(path)
    out = {}
    if cfg.use_sync:   # one token per 25 fps frame, as the training records (video.sync_cover_windows)
      win = sync_cover_windows(v.sync_u8)
      out["sync_feats"] = np.asarray(enc.sync(win)).reshape(-1, cfg.sync_dim)[:v.sync_u8.shape[0]]
      out["video_mask"] = np.ones(out["sync_feats"].shape[0], bool)
    if cfg.use_clip:
      out["clip_feats"] = np.asarray(enc.clip(v.clip_u8))
    return out

  return features_fn


def build_generator(config: str, *, checkpoint=None, codec_checkpoint=None, tokenizer=None, smoke_random=False,
                    eva_ckpt=None, sync_ckpt=None,
                    sample_overrides=None, window_s=None, context_s=None, batch_size=8, bucket_s=2.0, seed=0,
                    sample_rate=None, write_mp4=True, write_png=True, inference_layout=True,
                    mesh=None) -> Generator:
  """A Generator from an experiment config (a path or a ConfigDict) and checkpoint paths (what tools/generate.py
  calls; `model_dir.build_generator` fills the paths from a model directory).

  inference_layout: sample with `foley.inference_layout(cfg, params)` (unrolled layers; bf16 weights for a
  bf16-compute config with fp32 weights). mesh: a {axis: size} spec (sharding.make_mesh; -1 = the rest) or
  a Mesh to sample sharded across devices, e.g. {"data": -1, "tensor": 4} for a 7B model on 16 GB chips.

  window_s / context_s default to the config's sample.window_s / sample.context_s (else 10 s / 3 s).
  """
  from dreamfoley_jax import configs
  from dreamfoley_jax.convert import common

  exp = configs.load_config(config) if isinstance(config, (str, os.PathLike)) else config
  cfg = foley.config_from_dict(exp.model)
  sc = sampling.sample_config_from_dict(exp.get("sample", {})).replace(**(sample_overrides or {}))
  if smoke_random:
    params = foley.init_params(cfg, seed)
    codec, feature_fn = ToneCodec(), random_feature_fn(cfg)
    tokenize = bpe_tokenizer(tokenizer) if tokenizer else (lambda s: [b % cfg.decoder.vocab_size for b in s.encode()])
  else:
    missing = [n for n, v in (("--checkpoint", checkpoint), ("--codec_checkpoint", codec_checkpoint),
                              ("--tokenizer", tokenizer)) if not v]
    if missing:
      raise GenerateError(f"missing {', '.join(missing)} (or pass --smoke_random for a pipeline check)")
    # To host memory first: any writer's mesh, any size; inference_layout + Generator then place it.
    params = common.load_params(checkpoint, host=True)
    codec, tokenize = load_codec(codec_checkpoint), bpe_tokenizer(tokenizer)
    feature_fn = load_feature_fn(cfg, exp, eva_ckpt=eva_ckpt, sync_ckpt=sync_ckpt)
  if inference_layout:
    cfg, params = foley.inference_layout(cfg, params)
  fr = AUDIO_FRAME_RATE
  window_s = float(exp.get("sample", {}).get("window_s", 10.0)) if window_s is None else float(window_s)
  context_s = float(exp.get("sample", {}).get("context_s", 3.0)) if context_s is None else float(context_s)
  if isinstance(mesh, dict):
    from dreamfoley_jax import sharding

    mesh = sharding.make_mesh(mesh)
  return Generator(cfg, params, codec, feature_fn, tokenize, sample_cfg=sc, mesh=mesh, window_frames=int(round(window_s * fr)),
                   context_frames=int(round(context_s * fr)), batch_size=batch_size,
                   bucket_frames=max(1, int(round(bucket_s * fr))), seed=seed, sample_rate=sample_rate,
                   write_mp4=write_mp4, write_png=write_png,
                   max_text_len=int(exp.get("data", {}).get("max_text_len", 64)))
