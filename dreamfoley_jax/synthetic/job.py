"""The main job on the embedded default: synthetic world -> codec -> records -> train -> CFG sampling -> metrics.

Everything runs from nothing on a CPU (no downloads): `tools/main_job.py --workdir DIR` (the README's first
command). Stages, each timed and logged:

  1. data      synthetic clips (train + held out), deterministic from the seed
  2. codec     the weights-free RVQ codec (K = 8, 25 Hz) fitted on the training audio; BPE on the captions
  3. records   ArrayRecord shards in the training-record format (frames + codes + caption ids)
  4. encoders  the video towers (Synchformer, EVA-CLIP at toy size) pretrained on a self-supervised
               audio-visual pretext (`synthetic.pretext`: predict each frame's audio band energies /
               onset strength, and the clip's timbre), then frozen in DreamFoley (our reading: the paper
               does not say its encoders are frozen) (main.pretrain_encoders; off: trained from scratch end to end)
  5. train     the real trainer (`dreamfoley_jax.train.train`) with experiments/synthetic.py
  6. sample    held-out clips with CFG: real video; video shuffled across clips (control); caption with
               another material (timbre control). Clips longer than the training crops are generated with
               the sampler's windowed continuation (`sampling.sample_long`, sample.window_s / context_s)
  7. write     wav, mp4 (synthetic video + generated sound), spectrogram PNG with true event times
               (stage 5 also writes model/: the model directory tools/generate.py / tools/demo.py --model read)
  8. metrics   onset F1 within +-40 ms, mean |onset offset|, same for shuffled video; spectral centroid
               shift under the caption swap -> metrics.json
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable

import numpy as np

from dreamfoley_jax.synthetic import world

MATERIAL_SWAP = {"metal": "rubber", "rubber": "metal", "glass": "wood", "wood": "glass"}
CFG_MODES = ("video+text", "video", "text")


class Preempted(RuntimeError):
  """Training stopped on SIGTERM before train.steps; rerunning the same command resumes it."""


class Stage:
  """Context manager that logs a stage's start and duration (progress for a person watching)."""

  def __init__(self, name: str, log: Callable[[str], None], timings: dict):
    self.name, self.log, self.timings = name, log, timings

  def __enter__(self):
    self.t0 = time.time()
    self.log(f"[{self.name}] ...")
    return self

  def __exit__(self, *exc):
    dt = time.time() - self.t0
    self.timings[self.name] = round(dt, 2)
    if exc[0] is None:
      self.log(f"[{self.name}] done in {dt:.1f} s")


def _log(msg: str):
  print(time.strftime("%H:%M:%S"), msg, flush=True)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def make_data(m, log=_log):
  """(train clips, held-out clips) from the synthetic world; held-out uses another seed stream."""
  kw = dict(max_events=int(m.get("max_events", 4)), min_gap=float(m.get("min_gap", 0.3)),
            look_shows_material=bool(m.get("look_shows_material", True)))
  train = world.make_dataset(int(m.num_train), seed=int(m.seed), cfg=world.SynthConfig(**kw))
  cfg_eval = world.SynthConfig(max_duration=float(m.max_eval_seconds), **kw)
  held = world.make_dataset(int(m.num_eval), seed=int(m.seed) + 1_000_003, cfg=cfg_eval)
  log(f"  {len(train)} training clips ({sum(float(c['duration']) for c in train):.0f} s), "
      f"{len(held)} held-out clips")
  return train, held


def fit_codec(train, m, workdir: pathlib.Path, log=_log):
  """The job's audio codec: the weights-free synthetic RVQ codec fitted on `train` (saved as codec.npz),
  or, with main.codec_checkpoint, the higgs-audio-v2 tokenizer from that converted checkpoint."""
  from dreamfoley_jax.synthetic import codec as sc

  if m.get("codec_checkpoint"):
    from dreamfoley_jax.audio import tokenizer

    codec = tokenizer.HiggsCodec(m.codec_checkpoint)
    log(f"  higgs-audio-v2 tokenizer from {m.codec_checkpoint}: K={codec.num_codebooks}, "
        f"{codec.codebook_size} entries, {codec.frame_rate:g} Hz")
    return codec
  cfg = sc.CodecConfig(codebook_size=int(m.codec_size), kmeans_iters=int(m.codec_iters), seed=int(m.seed))
  codec = sc.SyntheticCodec.fit([c["audio"] for c in train], cfg)
  codec.save(str(workdir / "codec.npz"))
  return codec


def check_codec(codec, c) -> None:
  """The codec must match the model config and the synthetic world (names the fields to change)."""
  want = {"sample_rate": world.SAMPLE_RATE, "frame_rate": float(world.FPS),
          "codebook_size": int(c.model.codebook_size)}
  bad = {k: (getattr(codec, k, None), v) for k, v in want.items()
         if getattr(codec, k, None) is None or float(getattr(codec, k)) != float(v)}
  # A model may predict the first k of the codec's K residual levels (Table 4: 1, 4, 8).
  if getattr(codec, "num_codebooks", 0) < int(c.model.num_codebooks):
    bad["num_codebooks"] = (getattr(codec, "num_codebooks", None), f">= {int(c.model.num_codebooks)}")
  if bad:
    raise ValueError("the audio codec does not fit this config: " + ", ".join(
        f"{k}={got} (config/world needs {need})" for k, (got, need) in bad.items()) +
        "; for the higgs tokenizer set --config.model.codebook_size=1024 (K = 8, 24 kHz, 25 Hz)")


def write_records(train, codec, tokenizer, max_text_len: int, out_dir: pathlib.Path):
  from dreamfoley_jax import text
  from dreamfoley_jax.data import writer

  ids, mask = text.encode(tokenizer, [c["caption"] for c in train], max_text_len)
  if hasattr(codec, "encode_many"):
    codes = codec.encode_many([c["audio"] for c in train])
  else:
    codes = [codec.encode(c["audio"]) for c in train]

  def examples():
    for c, i, mk, cd in zip(train, ids, mask, codes):
      T = c["frames_sync"].shape[0]
      if abs(cd.shape[1] - T) > 1:
        raise ValueError(f"clip {c['clip_id']}: the codec gave {cd.shape[1]} code frames for {T} video frames "
                         f"(it must run at {world.FPS} Hz)")
      cd = np.pad(cd, ((0, 0), (0, max(0, T - cd.shape[1]))), mode="edge")[:, :T]
      ex = world.to_example(c, cd)
      ex["text_ids"] = i[mk]
      yield ex

  return writer.write_records(examples(), out_dir, num_shards=2, overwrite=True)


def pretrain_encoders(c, train_clips, held, out_dir: pathlib.Path, log=_log) -> dict:
  """Pretrains the video towers on the audio-visual pretext, saves them, and points the trainer at them.

  Sets c.train.init_from (the pretrained subtrees from `out_dir`: main.pretext.towers) and
  c.train.frozen_regex so DreamFoley trains with those towers frozen (the others train end to end).
  Returns the pretext report (losses, impact diagnostics).
  """
  from dreamfoley_jax import configs
  from dreamfoley_jax.synthetic import pretext
  from dreamfoley_jax.convert import common

  fcfg = configs.model_config(c.model)
  if fcfg.vision_mode != "frames" or not (fcfg.use_sync and fcfg.use_clip):
    raise ValueError("main.pretrain_encoders needs model.vision_mode='frames' with both towers")
  pc = configs.pretext_config(c.main.get("pretext", {}))
  towers, report = pretext.pretrain(fcfg.synchformer, fcfg.eva, train_clips, pc, held=held, log=log)
  common.save_params(towers, out_dir, overwrite=True, metadata={"what": "pretext-pretrained video towers",
                                                                "pretext": dataclasses.asdict(pc)})
  c.train.init_from = tuple(f"{k}={out_dir}::{k}" for k in sorted(towers))
  c.train.frozen_regex = r"^(" + "|".join(sorted(towers)) + r")/"
  return report


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------

def prompt_batch(clips, captions, tokenizer, text_len: int, videos=None) -> tuple[dict, list[int]]:
  """Frames-mode prompt batch: the caption and duration of `clips[i]`, the video of `videos[i]`.

  A video from another clip is cut (or zero-padded and masked) to the target clip's duration.
  """
  from dreamfoley_jax import text
  from dreamfoley_jax.video import preprocess as vpre

  videos = clips if videos is None else videos
  lengths = [int(c["frames_sync"].shape[0]) for c in clips]
  Tf = int(np.ceil(max(lengths) / 8) * 8)
  Tc = int(np.ceil(Tf * 4 / 25))
  ids, mask = text.encode(tokenizer, captions, text_len)
  b = vpre.frames_batch(videos, Tf, Tc, clips[0]["frames_sync"].shape[1], lengths=lengths,
                        clip_fps=world.CLIP_FPS, sync_fps=world.FPS)
  return dict(b, text_ids=ids, text_mask=mask), lengths


def generate(fcfg, params, clips, captions, tokenizer, sample_cfg, *, text_len: int, seed: int, videos=None,
             batch_size: int = 16, window_frames: int = 0, context_frames: int = 0,
             mode: str = "video+text") -> list[np.ndarray]:
  """Codes (K, T_i) for each clip, sampled with the jitted CFG sampler, in batches of `batch_size`.

  window_frames > 0: batches with clips longer than that are generated in windows of the trained length
  overlapping by `context_frames` (`sampling.sample_long`); shorter batches in one pass.
  mode: "video+text", "video" (null text: video-only) or "text" (null video: text-to-audio).
  """
  if mode not in CFG_MODES:
    raise ValueError(f"mode must be one of {CFG_MODES}, got {mode!r}")
  from dreamfoley_jax import sampling

  videos = clips if videos is None else videos
  out = []
  for s in range(0, len(clips), batch_size):
    sl = slice(s, s + batch_size)
    b, lengths = prompt_batch(clips[sl], captions[sl], tokenizer, text_len, videos[sl])
    n = len(lengths)
    drops = dict(drop_text=np.full(n, mode == "video"), drop_video=np.full(n, mode == "text"))
    if window_frames and max(lengths) > window_frames:
      res = sampling.sample_long(fcfg, params, b, lengths, window_frames=window_frames,
                                 context_frames=context_frames, sample_cfg=sample_cfg, seed=seed + s, **drops)
    else:
      res = sampling.sample(fcfg, params, b, lengths, sample_cfg=sample_cfg, seed=seed + s, **drops)
    codes = np.asarray(res["codes"])
    out += [codes[i, :, :n] for i, n in enumerate(lengths)]
  return out


def derangement(n: int, seed: int) -> list[int]:
  """A permutation with no fixed point (the shuffled-video control never keeps a clip's own video)."""
  if n < 2:
    raise ValueError("the shuffled-video control needs at least 2 held-out clips")
  rng = np.random.default_rng(seed)
  while True:
    p = rng.permutation(n)
    if not np.any(p == np.arange(n)):
      return [int(x) for x in p]


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------

def _nanmean(x):
  x = np.asarray([v for v in x if np.isfinite(v)], np.float64)
  return float(x.mean()) if len(x) else float("nan")


def score(held, audios, shuffled_audios, swapped_audios, sr: int, material_centroid: dict) -> dict:
  """Onset F1/offsets (real vs shuffled video) and the timbre shift of the caption swap."""
  from dreamfoley_jax.synthetic import onsets

  real, shuf = [], []
  for c, a, s in zip(held, audios, shuffled_audios):
    real.append(onsets.onset_metrics(onsets.detect_onsets(a, sr), c["event_times"]))
    shuf.append(onsets.onset_metrics(onsets.detect_onsets(s, sr), c["event_times"]))
  toward, shifts, hits = [], [], []
  for c, a, w in zip(held, audios, swapped_audios):
    target = MATERIAL_SWAP[c["material"]]
    hits.append(nearest_material(w, sr, material_centroid) == target)
    ca = _nanmean(onsets.event_centroids(a, c["event_times"], sr))
    cw = _nanmean(onsets.event_centroids(w, c["event_times"], sr))
    ref = material_centroid[target]
    if np.isfinite(ca) and np.isfinite(cw):
      toward.append(abs(np.log(cw / ref)) < abs(np.log(ca / ref)))
      shifts.append(float(np.log2(cw / ca)) * (1 if ref > ca else -1))
  r, s = onsets.aggregate_onset_metrics(real), onsets.aggregate_onset_metrics(shuf)
  return {
      "onset_f1": r["f1"], "onset_precision": r["precision"], "onset_recall": r["recall"],
      "mean_abs_onset_offset_s": r["mean_abs_offset"],
      "shuffled_video_onset_f1": s["f1"], "shuffled_video_mean_abs_onset_offset_s": s["mean_abs_offset"],
      "caption_swap_moves_toward_material": float(np.mean(toward)) if toward else float("nan"),
      "caption_swap_centroid_shift_octaves": _nanmean(shifts),
      # the stronger reading: the swapped sound's nearest material (nearest_material) is the swapped caption's;
      # over every clip (no detected onset is a miss), where the two above skip clips without a centroid
      "caption_swap_material_match": float(np.mean(hits)) if hits else float("nan"),
      "num_clips": len(held), "num_events": r["n_ref"], "tolerance_s": 0.04,
      "per_clip": [{"clip_id": c["clip_id"], "material": c["material"], "caption": c["caption"],
                    "event_times": [round(float(t), 3) for t in c["event_times"]],
                    "onset_f1": m["f1"], "shuffled_onset_f1": sm["f1"]}
                   for c, m, sm in zip(held, real, shuf)],
  }


def is_silent(codes_KxT: np.ndarray, audio: np.ndarray, peak: float = 1e-3) -> bool:
  """Digital silence: every codebook holds one code for all frames, or the decoded audio never exceeds
  `peak` (what a mode that fails quietly writes)."""
  codes_KxT = np.asarray(codes_KxT)
  one_code = all(len(np.unique(k)) == 1 for k in codes_KxT)
  return bool(one_code or np.abs(np.asarray(audio)).max(initial=0.0) < peak)


def nearest_material(audio: np.ndarray, sr: int, material_centroid: dict) -> str | None:
  """The material whose training-set event centroid is closest (log scale) to the centroid of the sound
  after each detected onset of `audio`; None without an onset."""
  from dreamfoley_jax.synthetic import onsets

  on = onsets.detect_onsets(audio, sr)
  cen = _nanmean(onsets.event_centroids(audio, on, sr)) if len(on) else float("nan")
  if not np.isfinite(cen) or cen <= 0:
    return None
  return min(material_centroid, key=lambda m: abs(np.log(cen / material_centroid[m])))


def mode_metrics(held, codes, audios, sr: int, material_centroid: dict, mode: str) -> dict:
  """One CFG mode's figures: silent clips (is_silent), onsets per clip, onset F1 against the true events
  (meaningful with video), and how often the sound's material is the caption's (meaningful with text)."""
  from dreamfoley_jax.synthetic import onsets

  per = [onsets.onset_metrics(onsets.detect_onsets(a, sr), c["event_times"]) for c, a in zip(held, audios)]
  agg = onsets.aggregate_onset_metrics(per)
  mats = [nearest_material(a, sr, material_centroid) for a in audios]
  return {"mode": mode, "silent_clips": int(sum(is_silent(k, a) for k, a in zip(codes, audios))),
          "num_clips": len(held), "onsets_per_clip": float(np.mean([m["n_est"] for m in per])),
          "onset_f1": agg["f1"], "onset_precision": agg["precision"], "onset_recall": agg["recall"],
          "material_match": float(np.mean([m == c["material"] for m, c in zip(mats, held)])),
          "rms": [round(float(np.sqrt(np.mean(np.square(a)))), 4) for a in audios]}


def mode_sample_config(c, mode: str):
  """The sampling settings of a CFG mode: sample.*, with sample.text_only's overrides for text-only."""
  from dreamfoley_jax import configs

  sc = configs.sample_config(c.sample)
  over = c.sample.get("text_only") if mode == "text" else None
  return sc.replace(**dict(over)) if over else sc


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------

def run(c, workdir: str | os.PathLike, log: Callable[[str], None] = _log) -> dict:
  """Runs the whole job into `workdir` and returns the metrics (also written to metrics.json)."""
  import jax

  from dreamfoley_jax import configs, model_dir, plots, train
  from dreamfoley_jax.audio import io as aio
  from dreamfoley_jax.convert import common
  from dreamfoley_jax.synthetic import bpe, onsets
  from dreamfoley_jax.video import io as vio

  wd = pathlib.Path(workdir).absolute()
  wd.mkdir(parents=True, exist_ok=True)
  m = c.main
  if not m.get("codec_checkpoint") and int(c.model.codebook_size) != int(m.codec_size):
    raise ValueError(f"model.codebook_size={c.model.codebook_size} must equal main.codec_size={m.codec_size}")
  timings: dict[str, float] = {}
  t_start = time.time()
  log(f"DreamFoley main job -> {wd}  (JAX {jax.__version__}, {jax.devices()[0].platform}, "
      f"{len(jax.devices())} device(s))")

  with Stage("1/8 data", log, timings):
    train_clips, held = make_data(m, log)
  with Stage("2/8 codec + tokenizer", log, timings):
    codec = fit_codec(train_clips, m, wd, log)
    check_codec(codec, c)
    tok = bpe.train_bpe([x["caption"] for x in train_clips], int(m.bpe_vocab))
    tok.save(str(wd / "tokenizer.json"))
    if tok.get_vocab_size() > int(c.model.decoder.vocab_size):
      raise ValueError(f"BPE vocab {tok.get_vocab_size()} exceeds model.decoder.vocab_size")
  with Stage("3/8 records", log, timings):
    paths = write_records(train_clips, codec, tok, int(c.data.max_text_len), wd / "data")
    c.data.train_records = str(wd / "data" / "train-*.array_record")
    log(f"  {len(paths)} ArrayRecord shards in {wd / 'data'}")
  pretext_report = None
  if m.get("pretrain_encoders", False):
    with Stage("4/8 encoders", log, timings):
      pretext_report = pretrain_encoders(c, train_clips, held, wd / "encoders", log)
  with Stage("5/8 train", log, timings):
    result = train.train(c, str(wd / "train"))
    log(f"  {result.status} at step {result.step}")
    if result.status != "finished":
      # A preempted (SIGTERM) run must not go on to sample and score a half-trained model.
      raise Preempted(f"training was preempted at step {result.step} of {int(c.train.steps)}: its checkpoint is in "
                      f"{wd / 'train'}; run the same command again to resume (no model, samples or metrics "
                      "were written)")
    params = result.state.params
    # The trained weights as a params checkpoint, the layout tools/generate.py --checkpoint reads.
    common.save_params(params, wd / "params", overwrite=True,
                       metadata={"config": "experiments/synthetic.py", "step": int(result.step)})
    # ... and everything generate needs under one path (tools/generate.py --model, tools/demo.py).
    model_dir.write(wd / "model", c, params_dir=wd / "params", codec=m.get("codec_checkpoint") or wd / "codec.npz",
                    tokenizer=wd / "tokenizer.json", overwrite=True,
                    source={"what": "main job", "workdir": str(wd), "step": int(result.step)})
    log(f"  model directory {wd / 'model'} (tools/generate.py --model, tools/demo.py --model)")

  fcfg = configs.model_config(c.model)
  scfg = configs.sample_config(c.sample)
  text_len = max(int(c.data.max_text_len), fcfg.null_text_len)
  captions = [x["caption"] for x in held]
  swapped = [world.caption_for(MATERIAL_SWAP[x["material"]], x["floor"], int(x["num_events"]))
             for x in held]
  perm = derangement(len(held), int(m.seed))
  bs = int(m.sample_batch)
  fps = world.FPS
  win = dict(window_frames=int(round(float(c.sample.get("window_s", 0.0)) * fps)),
             context_frames=int(round(float(c.sample.get("context_s", 0.0)) * fps)))
  with Stage("6/8 sample", log, timings):
    codes = generate(fcfg, params, held, captions, tok, scfg, text_len=text_len, seed=1, batch_size=bs, **win)
    log("  real video + caption: done")
    codes_shuf = generate(fcfg, params, held, captions, tok, scfg, text_len=text_len, seed=1,
                          videos=[held[j] for j in perm], batch_size=bs, **win)
    log("  shuffled video: done")
    codes_swap = generate(fcfg, params, held, swapped, tok, scfg, text_len=text_len, seed=1, batch_size=bs, **win)
    log("  swapped caption: done")
    # The other CFG modes (issue 19): video only (null text) and text only (null video, the job's
    # sample.text_only settings), each measured below so a mode that goes silent shows.
    codes_vid = generate(fcfg, params, held, captions, tok, scfg, text_len=text_len, seed=1, batch_size=bs,
                         mode="video", **win)
    scfg_text = mode_sample_config(c, "text")
    codes_txt = generate(fcfg, params, held, captions, tok, scfg_text, text_len=text_len, seed=1, batch_size=bs,
                         mode="text", **win)
    log("  video-only and text-only modes: done")

  sr = world.SAMPLE_RATE
  with Stage("7/8 write", log, timings):
    out = wd / "samples"
    out.mkdir(exist_ok=True)
    audios = [codec.decode(x) for x in codes]
    audios_shuf = [codec.decode(x) for x in codes_shuf]
    audios_swap = [codec.decode(x) for x in codes_swap]
    audios_vid = [codec.decode(x) for x in codes_vid]
    audios_txt = [codec.decode(x) for x in codes_txt]
    # The sampled codes themselves (K x T per clip and mode): what a refactor must leave bit-identical.
    arrays = {f"{x['clip_id']}/{mode}": np.asarray(k, np.int32) for mode, cs in
              (("video+text", codes), ("shuffled_video", codes_shuf), ("swapped_caption", codes_swap),
               ("video_only", codes_vid), ("text_only", codes_txt)) for x, k in zip(held, cs)}
    with open(out / ".codes.npz.tmp", "wb") as f:
      np.savez(f, **arrays)
    os.replace(out / ".codes.npz.tmp", out / "codes.npz")
    for x, a, s, w in zip(held, audios, audios_shuf, audios_swap):
      name = x["clip_id"]
      aio.save_wav(out / f"{name}.wav", a, sr)
      aio.save_wav(out / f"{name}_groundtruth.wav", x["audio"], sr)
      aio.save_wav(out / f"{name}_shuffled_video.wav", s, sr)
      aio.save_wav(out / f"{name}_swapped_caption.wav", w, sr)
      aio.save_wav(out / f"{name}_video_only.wav", audios_vid[held.index(x)], sr)
      aio.save_wav(out / f"{name}_text_only.wav", audios_txt[held.index(x)], sr)
      vio.write_mp4(out / f"{name}.mp4", x["frames_sync"], a, fps=world.FPS, sample_rate=sr,
                    scale=world.PREVIEW_SCALE)
      plots.write_spectrogram(out / f"{name}.png", a, sr, f"{name}: generated (caption: {x['caption']}); dashed = "
                              "true events", event_times=x["event_times"], detected=onsets.detect_onsets(a, sr),
                              nfft=512, hop=128, figsize=(8, 3), title_size=9)
  with Stage("8/8 metrics", log, timings):
    ref = {}
    for mat in MATERIAL_SWAP:
      cs = [_nanmean(onsets.event_centroids(x["audio"], x["event_times"], sr)) for x in train_clips[:200]
            if x["material"] == mat]
      ref[mat] = _nanmean(cs)
    metrics = score(held, audios, audios_shuf, audios_swap, sr, ref)
    metrics["material_centroid_hz"] = {k: round(v, 1) for k, v in ref.items()}
    metrics["cfg_modes"] = {
        "video+text": mode_metrics(held, codes, audios, sr, ref, "video+text"),
        "video_only": mode_metrics(held, codes_vid, audios_vid, sr, ref, "video"),
        "text_only": dict(mode_metrics(held, codes_txt, audios_txt, sr, ref, "text"),
                          sample=dataclasses.asdict(scfg_text))}
    metrics["train_steps"] = int(result.step)
    if pretext_report is not None:
      metrics["encoder_pretext"] = pretext_report
    metrics["timings_s"] = timings
    metrics["total_s"] = round(time.time() - t_start, 1)
    metrics["config"] = {"sample": c.sample.to_dict(), "num_train": int(m.num_train), "num_eval": int(m.num_eval),
                         "codec": getattr(codec, "path", "synthetic codec (codec.npz)"),
                         "look_shows_material": bool(m.get("look_shows_material", True)),
                         "num_codebooks": fcfg.num_codebooks, "use_sync": fcfg.use_sync, "use_clip": fcfg.use_clip}
    tmp = wd / ".metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, wd / "metrics.json")
  vm, tm = metrics["cfg_modes"]["video_only"], metrics["cfg_modes"]["text_only"]
  log(f"video-only: onset F1 {vm['onset_f1']:.3f}, {vm['silent_clips']} silent clip(s); text-only: "
      f"{tm['silent_clips']} silent clip(s), caption's material in {100 * tm['material_match']:.0f}% of clips")
  log(f"onset F1 {metrics['onset_f1']:.3f} (shuffled video {metrics['shuffled_video_onset_f1']:.3f}), "
      f"mean |offset| {metrics['mean_abs_onset_offset_s'] * 1000:.1f} ms, caption swap moves timbre toward the "
      f"caption's material in {100 * metrics['caption_swap_moves_toward_material']:.0f}% of clips (sounds like it "
      f"in {100 * metrics['caption_swap_material_match']:.0f}%); "
      f"total {metrics['total_s']:.0f} s -> {wd / 'metrics.json'}")
  return metrics
