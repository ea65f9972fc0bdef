"""A procedural audio-visual world: objects bounce on a floor and every visible impact makes a sound.

One clip = one object of one material bouncing 1-4 times on a floor, seen from the side in small RGB
frames. The object's material sets its look (colour, shape; or, with SynthConfig.look_shows_material False,
every object looks the same and only the caption names the material) and the sound's timbre (modal partials:
metal rings high and long, wood is mid and short, glass is very high and sparse, rubber is a low thud);
the floor's material sets the floor colour and a small floor "body" component of the sound. Impacts
happen exactly on video frames: impact i is at frame `event_frames[i]`, time `event_frames[i] / fps`,
sample `event_frames[i] * sample_rate / fps`, and in that frame the object's bottom touches the floor
line. Between impacts the object follows a parabola; before the first impact it hangs still and then
falls; after the last impact it rises and does not come back within the clip. In each impact frame
the object is squashed (wider, shorter) as a local visual cue (SynthConfig.impact_squash).

Everything is deterministic from a seed: `make_clip(seed)` and `make_dataset(n, seed)` (clip i of a
dataset uses the seed pair (seed, i), so it does not depend on n).

Legend: T video frames (25 fps), C CLIP frames (4 fps), H, W frame size, N audio samples, E events.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

SAMPLE_RATE = 24000
FPS = 25
CLIP_FPS = 4
MATERIALS = ("metal", "wood", "glass", "rubber")
FLOORS = ("wooden", "stone", "tiled")
PREVIEW_SCALE = 8     # the written mp4s show the tiny frames upscaled this many times (nearest)


@dataclasses.dataclass(frozen=True)
class Material:
  """Look and sound of one object material."""
  noun: str                       # caption noun phrase, e.g. "metal ball"
  shape: str                      # "circle" | "square" | "diamond"
  rgb: tuple[int, int, int]
  f0_range: tuple[float, float]   # fundamental of the modal partials, Hz
  ratios: tuple[float, ...]       # partial frequency ratios (inharmonic for bars/plates)
  rolloff: float                  # partial m has amplitude rolloff**m
  tau_range: tuple[float, float]  # decay time constant of the fundamental, s
  tau_power: float                # tau_m = tau * (f0 / f_m) ** tau_power (higher partials die faster)
  noise_ms: float                 # length scale of the contact-noise burst
  noise_gain: float
  noise_cutoff: float             # one-pole low-pass cutoff of the burst, Hz (0: no filter)


MATERIAL_SPECS: dict[str, Material] = {
    "metal": Material("metal ball", "circle", (190, 200, 215), (900.0, 1500.0),
                      (1.0, 2.76, 5.40, 8.93, 13.34), 0.85, (0.35, 0.6), 0.5, 2.0, 0.15, 0.0),
    "wood": Material("wooden block", "square", (150, 95, 45), (250.0, 450.0),
                     (1.0, 2.57, 4.21), 0.6, (0.025, 0.045), 0.3, 5.0, 0.35, 4000.0),
    "glass": Material("glass marble", "diamond", (120, 220, 235), (2600.0, 3600.0),
                      (1.0, 2.32), 0.7, (0.15, 0.3), 0.3, 1.0, 0.08, 0.0),
    "rubber": Material("rubber ball", "circle", (220, 40, 50), (70.0, 140.0),
                       (1.0, 1.59), 0.5, (0.03, 0.06), 0.0, 8.0, 0.5, 600.0),
}

# Floor: colour of the floor band, and a short low "body" resonance mixed in at a small gain.
FLOOR_SPECS: dict[str, dict[str, Any]] = {
    "wooden": {"rgb": (120, 80, 40), "body_hz": 160.0, "body_tau": 0.03, "gain": 0.25},
    "stone": {"rgb": (110, 110, 110), "body_hz": 90.0, "body_tau": 0.02, "gain": 0.2},
    "tiled": {"rgb": (200, 200, 180), "body_hz": 300.0, "body_tau": 0.015, "gain": 0.2},
}

# The one look of every object when SynthConfig.look_shows_material is False (the per-clip colour jitter stays).
NEUTRAL_LOOK = {"shape": "circle", "rgb": (170, 170, 170)}

COUNT_WORDS = ("once", "twice", "three times", "four times", "five times", "six times")
CAPTION_TEMPLATES = (
    "a {obj} bounces {count} on a {floor} floor",
    "a {obj} hits a {floor} floor {count}",
    "a {obj} falls and bounces {count} on a {floor} floor",
    "the sound of a {obj} bouncing {count} on a {floor} floor",
)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Knobs of the synthetic world (defaults sized for the CPU main job)."""
  frame_size: int = 32            # H = W of the rendered frames
  min_duration: float = 2.0       # s; durations are whole video frames
  max_duration: float = 10.0
  min_events: int = 1
  max_events: int = 4
  min_gap: float = 0.3            # s between impacts (onsets stay separable)
  first_event_after: float = 0.3  # s: the first fall is visible
  last_event_before: float = 0.25  # s before the clip end: the last impact is heard
  materials: tuple[str, ...] = MATERIALS
  floors: tuple[str, ...] = FLOORS
  noise_level: float = 3e-4       # std of the background noise floor
  peak: float = 0.7               # the loudest impact's template peak
  impact_squash: float = 0.3      # the object flattens by this fraction in its impact frame (0: never)
  impact_flash: float = 0.7       # a bright contact flash on the floor under the object in the impact
                                  # frame (blend weight toward white; 0: none): a cue a tiny encoder
                                  # trained from scratch picks up in minutes
  look_shows_material: bool = True  # False: every object is the same grey circle (NEUTRAL_LOOK), so only
                                  # the caption says the material and only the video says when: the
                                  # main job's split, which makes the caption swap a clean timbre control


def caption_for(material: str, floor: str, n_events: int, template: int = 0) -> str:
  """Caption text for a clip (also used to build swapped-caption controls)."""
  if material not in MATERIAL_SPECS:
    raise ValueError(f"unknown material {material!r}; known: {sorted(MATERIAL_SPECS)}")
  if floor not in FLOOR_SPECS:
    raise ValueError(f"unknown floor {floor!r}; known: {sorted(FLOOR_SPECS)}")
  count = COUNT_WORDS[n_events - 1] if 1 <= n_events <= len(COUNT_WORDS) else f"{n_events} times"
  return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(
      obj=MATERIAL_SPECS[material].noun, count=count, floor=floor)


def _event_frames(rng, num_frames: int, cfg: SynthConfig) -> np.ndarray:
  """Sorted impact frames with at least min_gap between them (stars-and-bars, no rejection)."""
  gap = int(round(cfg.min_gap * FPS))
  lo = int(np.ceil(cfg.first_event_after * FPS))
  hi = num_frames - 1 - int(np.ceil(cfg.last_event_before * FPS))
  max_fit = max(1, (hi - lo) // gap + 1)
  n = int(rng.integers(cfg.min_events, min(cfg.max_events, max_fit) + 1))
  slack = hi - lo - (n - 1) * gap
  offs = np.sort(rng.integers(0, slack + 1, size=n))
  return (lo + offs + gap * np.arange(n)).astype(np.int32)


def _trajectory(rng, event_t: np.ndarray, duration: float, span: float):
  """Piecewise-parabolic height above the floor: returns h(t) for an array of times (in px)."""
  n = len(event_t)
  # Segment boundaries: [release, e0], [e0, e1], ..., [e_last, virtual landing after the clip].
  fall = float(rng.uniform(0.35, 0.7))
  h0 = float(rng.uniform(0.6, 1.0)) * span
  arcs_h = rng.uniform(0.35, 1.0, size=max(n - 1, 0)) * span
  tail_d = 2.0 * (duration - event_t[-1]) + float(rng.uniform(0.2, 0.6))
  tail_h = float(rng.uniform(0.5, 1.5)) * span

  def height(t):
    t = np.asarray(t, np.float64)
    h = np.zeros_like(t)
    # Before the first impact: hang at h0, then fall freely for `fall` seconds.
    t0 = event_t[0]
    before = t < t0
    u = np.clip((t0 - t) / fall, 0.0, 1.0)
    h = np.where(before, h0 * _fall_profile(u), h)
    # Arcs between impacts: h = 4 H s (1 - s), s in [0, 1].
    for i in range(n - 1):
      a, b = event_t[i], event_t[i + 1]
      inside = (t >= a) & (t < b)
      s = (t - a) / (b - a)
      h = np.where(inside, 4.0 * arcs_h[i] * s * (1.0 - s), h)
    last = t >= event_t[-1]
    s = (t - event_t[-1]) / tail_d
    h = np.where(last, 4.0 * tail_h * s * (1.0 - s), h)
    return h

  return height


def _fall_profile(u):
  """Height fraction in a free fall from rest: u = time-to-impact / fall time (1 released, 0 impact)."""
  return u * (2.0 - u)


def _render(times: np.ndarray, height_fn, x_fn, look: Mapping[str, Any], size: int) -> np.ndarray:
  """Frames (len(times), size, size, 3) uint8 at the given times, anti-aliased object.

  Only a small patch around the object is shaded per frame (the background is a broadcast copy), so
  rendering costs ~T * P^2 rather than T * H * W.
  """
  floor_y = look["floor_y"]
  r = look["radius"]
  rows = np.arange(size)
  bg = np.empty((size, size, 3), np.float32)
  bg[:] = look["background"]
  bg[rows >= floor_y] = look["floor_rgb"]
  if look["floor"] == "tiled":                                    # checker pattern on the tiles
    tile = ((rows[:, None] // 3 + rows[None, :] // 3) % 2 == 0) & (rows[:, None] >= floor_y)
    bg[tile] = np.asarray(look["floor_rgb"], np.float32) * 0.8
  bg[int(floor_y)] = np.asarray(look["floor_rgb"], np.float32) * 0.6   # the floor line
  frames = np.broadcast_to(np.round(bg).astype(np.uint8), (len(times), size, size, 3)).copy()

  # Squash at contact: within one frame of an impact the object flattens (wider, shorter), its bottom
  # still on the floor, a local cue for the impact frame on top of the bottom of the trajectory.
  times = np.asarray(times, np.float64)
  impacts = np.asarray(look["impacts"], np.float64)
  near = np.abs(times[:, None] - impacts[None, :]).min(axis=1) * FPS if len(impacts) else np.inf + times
  sq = look["squash"] * np.clip(1.0 - near, 0.0, 1.0)                # (T,)
  ry, rx = r * (1.0 - sq), r * (1.0 + sq)
  cy = floor_y - ry - height_fn(times)                            # (T,) centre, pixel units
  cx = x_fn(times)
  P = int(np.ceil(2 * r * (1.0 + look["squash"]) + 3))
  top = np.floor(cy - ry - 1).astype(np.int64)
  left = np.floor(cx - rx - 1).astype(np.int64)
  rr = top[:, None] + np.arange(P)                                # (T, P)
  cc = left[:, None] + np.arange(P)
  dy = ((rr + 0.5 - cy[:, None]) * (r / ry)[:, None])[:, :, None]  # in units of the unsquashed shape
  dx = ((cc + 0.5 - cx[:, None]) * (r / rx)[:, None])[:, None, :]
  shape = look["shape"]
  if shape == "circle":
    dist = np.sqrt(dx * dx + dy * dy)
  elif shape == "square":
    dist = np.maximum(np.abs(dx), np.abs(dy))
  elif shape == "diamond":
    dist = (np.abs(dx) + np.abs(dy)) / 1.25
  else:
    raise ValueError(f"unknown shape {shape!r}")
  alpha = np.clip(r + 0.5 - dist, 0.0, 1.0)                       # (T, P, P)
  valid = ((rr >= 0) & (rr < size))[:, :, None] & ((cc >= 0) & (cc < size))[:, None, :] & (alpha > 0)
  ti, pi, pj = np.nonzero(valid)
  R, C, a = rr[ti, pi], cc[ti, pj], alpha[ti, pi, pj][:, None].astype(np.float32)
  obj = np.asarray(look["rgb"], np.float32)
  frames[ti, R, C] = np.round(bg[R, C] * (1.0 - a) + obj * a).astype(np.uint8)
  flash = float(look.get("flash", 0.0))
  if flash > 0:
    # Contact flash: the floor band under the object lights up in the impact frame only.
    fl = int(floor_y)
    for t in np.flatnonzero(near < 0.5):
      c0, c1 = max(int(cx[t] - 3 * r), 0), min(int(np.ceil(cx[t] + 3 * r)) + 1, size)
      band = frames[t, fl:fl + 4, c0:c1].astype(np.float32)
      frames[t, fl:fl + 4, c0:c1] = np.round(band * (1 - flash) + np.float32(250.0) * flash).astype(np.uint8)
  return frames


def _impact_template(rng, mat: Material, floor: Mapping[str, Any], length: int) -> np.ndarray:
  """The object's modal ringing (shared by all its impacts), float32 (length,), peak 1."""
  t = np.arange(length, dtype=np.float32) / np.float32(SAMPLE_RATE)
  f0 = float(rng.uniform(*mat.f0_range))
  tau0 = float(rng.uniform(*mat.tau_range))
  out = np.zeros(length, np.float32)
  for m, ratio in enumerate(mat.ratios):
    f = f0 * ratio * float(rng.uniform(0.985, 1.015))
    if f >= 0.45 * SAMPLE_RATE:
      continue
    tau = tau0 * (f0 / f) ** mat.tau_power
    n = min(length, int(tau * 6.0 * SAMPLE_RATE))               # -52 dB
    amp = mat.rolloff ** m * float(rng.uniform(0.7, 1.0))
    tn = t[:n]
    out[:n] += np.float32(amp) * _decay(tn, tau) * np.sin(
        tn * np.float32(2 * np.pi * f) + np.float32(rng.uniform(0, 2 * np.pi)))
  # Floor body resonance: a short damped low mode.
  tau = floor["body_tau"]
  n = min(length, int(tau * 6.0 * SAMPLE_RATE))
  tn = t[:n]
  out[:n] += np.float32(floor["gain"]) * _decay(tn, tau) * np.sin(
      tn * np.float32(2 * np.pi * floor["body_hz"]))
  out /= max(float(np.max(np.abs(out))), 1e-9)
  return out


def _decay(t: np.ndarray, tau: float) -> np.ndarray:
  """exp(-t/tau) faded to exactly 0 over the last 25% of t (a hard cut would click like an onset)."""
  env = np.exp(t * np.float32(-1.0 / tau))
  k = max(1, len(t) // 4)
  env[-k:] *= np.linspace(1.0, 0.0, k, dtype=np.float32)
  return env


def _noise_burst(rng, mat: Material) -> np.ndarray:
  """Contact noise: exponentially decaying (optionally low-passed) white noise."""
  tau = mat.noise_ms * 1e-3
  n = int(tau * 6 * SAMPLE_RATE)
  x = rng.standard_normal(n) * np.exp(-np.arange(n) / (tau * SAMPLE_RATE))
  if mat.noise_cutoff > 0:
    from scipy.signal import lfilter
    a = np.exp(-2 * np.pi * mat.noise_cutoff / SAMPLE_RATE)     # one-pole low-pass
    y = lfilter([1 - a], [1, -a], x)
    x = y / max(np.max(np.abs(y)), 1e-9)
  else:
    x = x / max(np.max(np.abs(x)), 1e-9)
  return x


def make_clip(seed: int | Sequence[int], cfg: SynthConfig = SynthConfig(), *,
              duration: float | None = None, material: str | None = None,
              floor: str | None = None, clip_id: str | None = None) -> dict[str, Any]:
  """One clip, deterministic from `seed`. Returns a dict (see module docstring and the keys below).

  Keys: clip_id str, caption str, material str, floor str, num_events int, duration float32 (),
  sample_rate int, fps int, clip_fps int, frames_sync uint8 (T, H, W, 3) at 25 fps,
  frames_clip uint8 (C, H, W, 3) at 4 fps, clip_times float32 (C,) = arange(C) / 4,
  audio float32 (N,) with N = T * sample_rate / fps, event_times float32 (E,) s,
  event_frames int32 (E,), event_samples int64 (E,), event_gains float32 (E,).
  """
  rng = np.random.default_rng(seed)
  material = material or cfg.materials[int(rng.integers(len(cfg.materials)))]
  floor = floor or cfg.floors[int(rng.integers(len(cfg.floors)))]
  if material not in MATERIAL_SPECS:
    raise ValueError(f"unknown material {material!r}; known: {sorted(MATERIAL_SPECS)}")
  if floor not in FLOOR_SPECS:
    raise ValueError(f"unknown floor {floor!r}; known: {sorted(FLOOR_SPECS)}")
  mat, fl = MATERIAL_SPECS[material], FLOOR_SPECS[floor]
  if duration is None:
    duration = float(rng.uniform(cfg.min_duration, cfg.max_duration))
  num_frames = max(int(round(duration * FPS)), int(np.ceil((cfg.first_event_after + cfg.last_event_before) * FPS)) + 2)
  duration = num_frames / FPS
  hop = SAMPLE_RATE // FPS

  # Events and motion.
  event_frames = _event_frames(rng, num_frames, cfg)
  event_t = event_frames / FPS
  size = cfg.frame_size
  floor_y = float(size - max(3, size // 6))
  shows = cfg.look_shows_material
  radius = float(rng.uniform(0.08, 0.12) * size) * (1.2 if material == "rubber" and shows else 1.0)
  span = floor_y - 2 * radius - 1.0                       # apex keeps the object inside the frame
  height_fn = _trajectory(rng, event_t, duration, span)
  x0 = float(rng.uniform(radius + 1, size - radius - 1))
  x1 = float(rng.uniform(radius + 1, size - radius - 1))
  x_fn = lambda t: x0 + (x1 - x0) * np.asarray(t, np.float64) / duration  # noqa: E731

  jitter = rng.integers(-15, 16, size=3)
  look = {
      "floor_y": floor_y, "radius": radius, "shape": mat.shape if shows else NEUTRAL_LOOK["shape"],
      "floor": floor,
      "rgb": tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(mat.rgb if shows else NEUTRAL_LOOK["rgb"], jitter)),
      "floor_rgb": fl["rgb"],
      "background": np.asarray(rng.integers(10, 60, size=3), np.float32),
      "flash": cfg.impact_flash,
      "impacts": event_t, "squash": cfg.impact_squash,
  }
  t_sync = np.arange(num_frames) / FPS
  num_clip = int(np.ceil(num_frames * CLIP_FPS / FPS))
  t_clip = np.arange(num_clip) / CLIP_FPS
  frames_sync = _render(t_sync, height_fn, x_fn, look, size)
  frames_clip = _render(t_clip, height_fn, x_fn, look, size)

  # Sound: one modal template per object, scaled per impact by the impact speed, plus a noise burst.
  n_samples = num_frames * hop
  event_samples = event_frames.astype(np.int64) * hop
  tmpl_len = min(n_samples, int(max(mat.tau_range[1] * 6.0, 0.3) * SAMPLE_RATE))
  template = _impact_template(rng, mat, fl, tmpl_len)
  arcs = np.concatenate([[1.0], rng.uniform(0.55, 1.0, size=len(event_frames) - 1)])
  gains = (arcs * cfg.peak).astype(np.float32)
  noise = _noise_table(n_samples)
  off = int(rng.integers(len(noise) - n_samples + 1))
  audio = noise[off:off + n_samples] * np.float32(cfg.noise_level)
  for s, g in zip(event_samples, gains):
    n = min(tmpl_len, n_samples - s)
    burst = _noise_burst(rng, mat)
    nb = min(len(burst), n_samples - s)
    audio[s:s + n] += g * template[:n]
    audio[s:s + nb] += np.float32(g * mat.noise_gain) * burst[:nb].astype(np.float32)
  peak = float(np.max(np.abs(audio)))
  if peak > 0.95:                                # overlapping rings: scale down rather than clip
    audio *= np.float32(0.95 / peak)
    gains = (gains * (0.95 / peak)).astype(np.float32)

  template_idx = int(rng.integers(len(CAPTION_TEMPLATES)))
  return {
      "clip_id": clip_id if clip_id is not None else f"synth-{_seed_str(seed)}",
      "caption": caption_for(material, floor, len(event_frames), template_idx),
      "material": material,
      "floor": floor,
      "num_events": int(len(event_frames)),
      "duration": np.float32(duration),
      "sample_rate": SAMPLE_RATE,
      "fps": FPS,
      "clip_fps": CLIP_FPS,
      "frames_sync": frames_sync,
      "frames_clip": frames_clip,
      "clip_times": t_clip.astype(np.float32),
      "audio": audio,
      "event_times": event_t.astype(np.float32),
      "event_frames": event_frames,
      "event_samples": event_samples,
      "event_gains": gains,
  }


_NOISE: list[np.ndarray] = []


def _noise_table(min_len: int) -> np.ndarray:
  """A fixed unit-variance noise table; clips take slices (drawing fresh noise dominated the cost)."""
  if not _NOISE or len(_NOISE[0]) < min_len:
    n = max(min_len, 2 ** 19)
    _NOISE[:] = [np.random.default_rng(20251201).standard_normal(n, dtype=np.float32)]
  return _NOISE[0]


def _seed_str(seed) -> str:
  return "-".join(str(int(s)) for s in np.atleast_1d(seed))


def iter_dataset(n: int, seed: int = 0, cfg: SynthConfig = SynthConfig(), **kw) -> Iterator[dict]:
  """Clips 0..n-1 one at a time (clip i uses seed (seed, i)); keeps memory flat."""
  for i in range(n):
    yield make_clip((seed, i), cfg, clip_id=f"synth-{seed}-{i:06d}", **kw)


def make_dataset(n: int, seed: int = 0, cfg: SynthConfig = SynthConfig(), **kw) -> list[dict]:
  """A list of n clips (about 1 MB each at 32x32 and 6 s on average: use iter_dataset for many)."""
  return list(iter_dataset(n, seed, cfg, **kw))


def to_example(clip: Mapping[str, Any], audio_codes_KxT: np.ndarray | None = None) -> dict[str, Any]:
  """The clip as a training-example record (dreamfoley_jax.data.records fields; no raw audio).

  audio_codes (K, T) from a codec at 25 Hz must have one frame per video frame.
  """
  ex = {k: clip[k] for k in ("clip_id", "caption", "frames_sync", "frames_clip", "duration",
                             "event_times")}
  if audio_codes_KxT is not None:
    codes = np.asarray(audio_codes_KxT)
    if codes.ndim != 2 or codes.shape[1] != clip["frames_sync"].shape[0]:
      raise ValueError(f"audio_codes must be (K, {clip['frames_sync'].shape[0]}) for clip "
                       f"{clip['clip_id']}, got {codes.shape}")
    ex["audio_codes"] = codes.astype(np.int16)
  return ex


# ---------------------------------------------------------------------------------------------
# Writers for a person to look at and listen to.

def write_clip(out_dir: str, clip: Mapping[str, Any], audio: np.ndarray | None = None,
               name: str | None = None) -> dict[str, str]:
  """<name>.wav and <name>.mp4 (video upscaled PREVIEW_SCALE x + `audio`, default the clip's own audio) in
  out_dir."""
  from dreamfoley_jax.audio import io as aio
  from dreamfoley_jax.video import io as vio

  name = name or clip["clip_id"]
  audio = clip["audio"] if audio is None else audio
  wav = os.path.join(out_dir, f"{name}.wav")
  aio.save_wav(wav, audio, clip["sample_rate"])
  return {
      "wav": wav,
      "mp4": vio.write_mp4(os.path.join(out_dir, f"{name}.mp4"), clip["frames_sync"], audio, fps=clip["fps"],
                           sample_rate=clip["sample_rate"], scale=PREVIEW_SCALE),
  }
