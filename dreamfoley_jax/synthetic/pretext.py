"""Self-supervised audio-visual pretraining of the video towers, for worlds without pretrained encoders.

DreamFoley builds on pretrained vision encoders (EVA-CLIP, Synchformer; frozen is OUR READING, the paper
does not say): Synchformer learnt audio-visual
timing from millions of videos before the decoder ever sees it. The main job's synthetic world has no
such checkpoints, and training the towers from scratch through the decoder does not bootstrap within a
CPU budget (docs/main_job.md: the decoder only starts to look up the video once the video already
carries the timing, and the encoder only learns timing once the decoder looks). So the main job first
pretrains the same tower architectures on a pretext that needs no labels, only the clip's own audio,
in the spirit of Synchformer's audio-visual pretraining:

  * Synchformer tower, per 25 fps frame t: regress the audio of video frame t's 40 ms, summarised as
    log energies in `num_bands` bands and their positive frame-to-frame change (onset strength).
  * EVA-CLIP tower (optional, `towers`), per 4 fps frame: regress the clip's mean log band energies over
    its sounding frames (what the object sounds like). The main job leaves it out: a tower that outputs
    the timbre outright made the decoder take the timbre from the video and ignore the caption (caption
    swap moved the timbre toward the caption in 50% of clips vs 94% without it; docs/main_job.md), so
    EVA trains end to end inside DreamFoley there.

Targets are standardised over the training set; the towers then go into DreamFoley frozen
(`train.init_from` + `train.frozen_regex`), our reading of how the paper uses its encoders. Nothing here reads the
ground-truth event times: they are only used to *report* how well the pretext features mark impacts.

Legend: B clips, T frames (25 fps), Tc frames (4 fps), H, W frame size, N samples, NB bands.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dreamfoley_jax.models import eva_clip, foley, synchformer


@dataclasses.dataclass(frozen=True)
class PretextConfig:
  steps: int = 300
  batch: int = 16
  frames: int = 48                 # 25 fps frames per training crop (a multiple of the Synchformer window)
  lr: float = 3e-3
  num_bands: int = 8
  sample_rate: int = 24000
  fps: int = 25
  clip_fps: int = 4
  seed: int = 0
  towers: str = "synchformer"      # comma list of towers to pretrain: synchformer[,eva_clip]


def audio_frame_targets(audio_N: np.ndarray, num_frames: int, cfg: PretextConfig = PretextConfig()) -> np.ndarray:
  """(T, 1 + NB) per video frame: [onset strength, log band energies] of that frame's samples.

  Frame t covers samples [t * sr/fps, (t+1) * sr/fps). Bands split the rfft of the frame (Hann window)
  into `num_bands` log-spaced bands from 60 Hz to sr/2. Onset strength = sum over bands of the positive
  change of log energy from frame t-1 to t (0 at frame 0: a crop's first frame has no past).
  """
  hop = cfg.sample_rate // cfg.fps
  x = np.zeros(num_frames * hop, np.float64)
  a = np.asarray(audio_N, np.float64).reshape(-1)[: num_frames * hop]
  x[: len(a)] = a
  fr = x.reshape(num_frames, hop) * np.hanning(hop)[None]
  spec = np.abs(np.fft.rfft(fr, axis=-1)) ** 2
  freqs = np.fft.rfftfreq(hop, 1.0 / cfg.sample_rate)
  edges = np.geomspace(60.0, cfg.sample_rate / 2 + 1, cfg.num_bands + 1)
  band = np.stack([spec[:, (freqs >= lo) & (freqs < hi)].sum(-1) for lo, hi in zip(edges[:-1], edges[1:])], -1)
  loge = np.log(band + 1e-6)
  prev = np.concatenate([loge[:1], loge[:-1]], 0)
  onset = np.maximum(loge - prev, 0.0).sum(-1, keepdims=True)
  return np.concatenate([onset, loge], -1).astype(np.float32)


def timbre_target(targets_TxF: np.ndarray) -> np.ndarray:
  """(NB,) mean log band energy over the sounding frames (the louder half) of a clip."""
  loge = targets_TxF[:, 1:]
  level = loge.max(-1)
  loud = level >= np.median(level)
  return loge[loud].mean(0).astype(np.float32)


class PretextModel(nn.Module):
  """The DreamFoley video towers (same module names, so their params drop into DreamFoley) + pretext heads."""
  sync_config: Any
  eva_config: Any
  num_bands: int
  use_clip: bool = True

  def setup(self):
    self.synchformer = synchformer.Synchformer(self.sync_config)
    self.sync_head = nn.Dense(1 + self.num_bands, name="sync_head")
    if self.use_clip:
      self.eva_clip = eva_clip.EvaVisionTower(self.eva_config)
      self.clip_head = nn.Dense(self.num_bands, name="clip_head")

  def sync_features(self, frames_BxTxHxWxC):
    """uint8 frames -> (B, T', D) per-frame Synchformer tokens, exactly as DreamFoley.encode_frames."""
    feats, _ = self.synchformer(foley.sync_windows_input(frames_BxTxHxWxC, self.sync_config))
    B, T = frames_BxTxHxWxC.shape[:2]
    return feats.reshape(B, -1, feats.shape[-1])[:, :T]

  def clip_features(self, frames_BxTcxHxWxC):
    """uint8 frames -> (B, Tc, O) EVA embeddings, exactly as DreamFoley.encode_frames."""
    B, Tc = frames_BxTcxHxWxC.shape[:2]
    emb, _ = self.eva_clip(foley.clip_pixels_input(frames_BxTcxHxWxC))
    return emb.reshape(B, Tc, -1)

  def __call__(self, frames_sync, frames_clip):
    s = self.sync_features(frames_sync)
    if not self.use_clip:
      return self.sync_head(s), None
    c = self.clip_features(frames_clip)
    return self.sync_head(s), self.clip_head(c)


def _crop_batch(clips, targets, rng, cfg: PretextConfig, clip_frames: int):
  B = len(clips)
  H = clips[0]["frames_sync"].shape[1]
  fs = np.zeros((B, cfg.frames, H, H, 3), np.uint8)
  fc = np.zeros((B, clip_frames, H, H, 3), np.uint8)
  ts = np.zeros((B, cfg.frames, targets[0][0].shape[-1]), np.float32)
  tc = np.zeros((B, targets[0][1].shape[-1]), np.float32)
  for j, (c, (t_sync, t_clip)) in enumerate(zip(clips, targets)):
    T = c["frames_sync"].shape[0]
    s = int(rng.integers(0, max(T - cfg.frames, 0) + 1))
    n = min(cfg.frames, T - s)
    fs[j, :n] = c["frames_sync"][s:s + n]
    ts[j, :n] = t_sync[s:s + n]
    # CLIP frames at 4 fps covering the crop (the last one repeated if the clip ends).
    ci = np.minimum((s / cfg.fps + np.arange(clip_frames) / cfg.clip_fps) * cfg.clip_fps,
                    c["frames_clip"].shape[0] - 1).astype(int)
    fc[j] = c["frames_clip"][ci]
    tc[j] = t_clip
  return fs, fc, ts, tc


def pretrain(sync_config, eva_config, clips: Sequence[Mapping[str, Any]], cfg: PretextConfig = PretextConfig(),
             held: Sequence[Mapping[str, Any]] = (), log: Callable[[str], None] = print) -> tuple[dict, dict]:
  """Trains the towers on the pretext; returns ({"synchformer": ...[, "eva_clip": ...]} params, report).

  report: final pretext losses and, on `held` clips (if given), how well the Synchformer onset output
  marks the true impact frames (mean predicted onset at impact frames vs elsewhere, in target std units,
  and the fraction of impacts whose frame is a local maximum above the clip's median).
  """
  if cfg.frames % sync_config.stride or cfg.frames < sync_config.window:
    raise ValueError(f"PretextConfig.frames={cfg.frames} must be a multiple of the Synchformer stride "
                     f"({sync_config.stride}) and >= its window ({sync_config.window})")
  t0 = time.time()
  targets = []
  for c in clips:
    t = audio_frame_targets(c["audio"], c["frames_sync"].shape[0], cfg)
    targets.append((t, timbre_target(t)))
  all_s = np.concatenate([t for t, _ in targets], 0)
  all_c = np.stack([t for _, t in targets], 0)
  mu_s, sd_s = all_s.mean(0), all_s.std(0) + 1e-6
  mu_c, sd_c = all_c.mean(0), all_c.std(0) + 1e-6
  targets = [((t - mu_s) / sd_s, (tc - mu_c) / sd_c) for t, tc in targets]
  clip_frames = int(np.ceil(cfg.frames * cfg.clip_fps / cfg.fps))

  towers_wanted = {t.strip() for t in cfg.towers.split(",") if t.strip()}
  if not towers_wanted <= {"synchformer", "eva_clip"} or "synchformer" not in towers_wanted:
    raise ValueError(f"PretextConfig.towers={cfg.towers!r}: 'synchformer' or 'synchformer,eva_clip'")
  use_clip = "eva_clip" in towers_wanted
  model = PretextModel(sync_config, eva_config, cfg.num_bands, use_clip)
  rng = np.random.default_rng(cfg.seed)
  fs, fc, _, _ = _crop_batch(clips[:2], targets[:2], rng, cfg, clip_frames)
  params = nn.unbox(model.init(jax.random.key(cfg.seed), fs, fc)["params"])
  sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(20, cfg.steps // 4 + 1), max(cfg.steps, 2),
                                             cfg.lr * 0.1)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=0.01))
  opt = tx.init(params)

  def loss_fn(p, fs, fc, ts, tc):
    ps, pc = model.apply({"params": p}, fs, fc)
    ls = jnp.mean((ps - ts) ** 2)
    lc = jnp.mean((pc - tc[:, None]) ** 2) if pc is not None else jnp.zeros(())
    return ls + lc, (ls, lc)

  @jax.jit
  def step(p, o, fs, fc, ts, tc):
    (l, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, fs, fc, ts, tc)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, aux

  every = max(cfg.steps // 5, 1)
  ls = lc = float("nan")
  for i in range(cfg.steps):
    idx = rng.choice(len(clips), cfg.batch, replace=len(clips) < cfg.batch)
    fs, fc, ts, tc = _crop_batch([clips[k] for k in idx], [targets[k] for k in idx], rng, cfg, clip_frames)
    params, opt, (ls, lc) = step(params, opt, fs, fc, ts, tc)
    if (i + 1) % every == 0 or i + 1 == cfg.steps:
      log(f"  pretext step {i + 1}/{cfg.steps}: frame loss {float(ls):.3f}, timbre loss {float(lc):.3f} "
          f"(targets standardised: 1.0 = predicting the mean) [{time.time() - t0:.0f} s]")
  report = {"steps": cfg.steps, "frame_loss": float(ls), "timbre_loss": float(lc),
            "seconds": round(time.time() - t0, 1)}
  if held:
    report.update(impact_report(model, params, held, sync_config))
    log(f"  pretext onset output on {len(held)} held-out clips: {report['impact_contrast']:.2f} std higher at "
        f"impact frames; {100 * report['impact_peak_rate']:.0f}% of impacts are a local peak")
  towers = {k: params[k] for k in sorted(towers_wanted)}
  return towers, report


def impact_report(model, params, held, sync_config) -> dict:
  """Diagnostics only (the ground-truth event frames are never a training target)."""
  apply = jax.jit(lambda p, f: model.apply({"params": p}, f, method=PretextModel.sync_features))
  head = params["sync_head"]
  clips = [c for c in held if c["frames_sync"].shape[0] >= sync_config.window]
  if not clips:
    return {"impact_contrast": float("nan"), "impact_peak_rate": float("nan"), "num_impacts": 0}
  # One batch padded to a whole number of windows: one compile whatever the clip lengths.
  T = max(c["frames_sync"].shape[0] for c in clips)
  T = int(np.ceil(T / sync_config.stride) * sync_config.stride)
  fr = np.zeros((len(clips), T) + clips[0]["frames_sync"].shape[1:], np.uint8)
  for i, c in enumerate(clips):
    fr[i, :c["frames_sync"].shape[0]] = c["frames_sync"]
  feats = np.asarray(apply(params, fr))
  onsets = feats @ np.asarray(head["kernel"])[:, 0] + np.asarray(head["bias"])[0]
  at, off, peaks, n = [], [], 0, 0
  for c, on in zip(clips, onsets):
    on = on[:c["frames_sync"].shape[0]]
    ev = [int(e) for e in c["event_frames"] if int(e) < len(on)]
    mask = np.zeros(len(on), bool)
    mask[ev] = True
    at += list(on[mask])
    off += list(on[~mask])
    med = np.median(on)
    for e in ev:
      n += 1
      lo, hi = max(e - 1, 0), min(e + 2, len(on))
      peaks += int(on[e] >= on[lo:hi].max() and on[e] > med)
  sd = np.std(off) + 1e-9
  return {"impact_contrast": float((np.mean(at) - np.mean(off)) / sd) if at else float("nan"),
          "impact_peak_rate": peaks / max(n, 1), "num_impacts": n}
