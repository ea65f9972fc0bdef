"""Video file(s) in, soundtrack out: features -> windowed CFG sampling -> audio codec -> wav / mp4 / png.

The pieces that live on other branches are injected, so this runs end to end with any of them:
  feature_fn(video_path) -> {"sync_feats": (Tv, Ds) at 25 Hz, "clip_feats": (Tc, Dc) at 4 fps,
                             "video_mask": (Tv,) bool}      (the video front end + encoders)
  codec: .sample_rate (24000 for higgs-audio-v2), .decode(codes_KxT int) -> waveform (N,) float
  tokenize(text) -> list[int]                                (the Qwen BPE tokenizer)

Outputs per clip, in out_dir: <stem>.wav (codec rate or --sample_rate 44100/48000), <stem>.mp4 (the
original video stream copied packet by packet -- no re-encode -- plus the new audio as AAC), and
<stem>.png (log-magnitude spectrogram). The media I/O lives in audio.io (wav, resampling), video.io (probing,
muxing), video.preprocess (frames, batches) and plots; this module keeps the CSV, the checks, the Generator and
build_generator.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import pathlib
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from dreamfoley_jax import checks, plots
from dreamfoley_jax import sampling
from dreamfoley_jax.audio import io as aio
from dreamfoley_jax.models import foley
from dreamfoley_jax.models import params as foley_params
from dreamfoley_jax.video import io as vio
from dreamfoley_jax.video import preprocess as vpre

AUDIO_FRAME_RATE = 25.0   # higgs-audio-v2 codes per second (= the sync video rate)
CSV_COLUMNS = ("video", "caption", "negative", "duration", "name")


class Codec(Protocol):
  sample_rate: int

  def decode(self, codes_KxT: np.ndarray) -> np.ndarray:
    ...


@dataclasses.dataclass
class Item:
  video: Optional[str]                 # None: text-to-audio (needs duration)
  caption: str = ""
  negative: str = ""                   # negative prompt (replaces the unconditional text)
  duration: Optional[float] = None     # seconds; default: the video's decoded duration
  name: Optional[str] = None           # output stem; default: the video's stem / "clip<i>"
  where: Optional[str] = None          # how errors name it: "clips.csv:5", "--video"; default the video
  seed: Optional[int] = None           # the clip's sampling stream; default: its position in the run


class GenerateError(checks.InputError):
  pass


def audio_frames(duration_s: float) -> int:
  """Audio frames (25 Hz codes) for `duration_s` seconds: the project's length rule
  (video.preprocess.sync_cover_indices), a video of T frames at 25 fps -- floor(duration * 25), as
  video.io.sample_frames counts them -- gets T audio frames; at least one. The wav is then cut or padded to
  the exact duration (the last < 40 ms past frame T is silence)."""
  return max(1, math.floor(duration_s * AUDIO_FRAME_RATE + 1e-6))


# --------------------------------------------------------------------------------------------------
# Checks before any model work
# --------------------------------------------------------------------------------------------------

def validate_args(*, temperature=None, top_k=None, top_p=None, cfg_scale=None, window_s=None, context_s=None,
                  batch_size=8, bucket_s=2.0, sample_rate=None, seed=0, max_memory_gb=None,
                  vision_mode: str = "features") -> None:
  """Every generate flag's range, or checks.UsageError naming the flag (exit status 2)."""
  n = checks.number
  if temperature is not None:
    n(temperature, "--temperature", lo=0, accepted="a number >= 0 (0 = greedy)")
  if top_k is not None:
    n(top_k, "--top_k", lo=1, integer=True, accepted="an integer >= 1 (1 = greedy; the codebook size or "
      "more keeps every code)")
  if top_p is not None:
    n(top_p, "--top_p", lo=0, hi=1, lo_open=True, accepted="a number in (0, 1] (1 = off)")
  if cfg_scale is not None:
    n(cfg_scale, "--cfg_scale", lo=0, accepted="a number >= 0 (1 = conditional only; paper: 3)")
  n(batch_size, "--batch_size", lo=1, integer=True)
  n(bucket_s, "--bucket_s", lo=0, lo_open=True, accepted="seconds > 0")
  n(seed, "--seed", lo=0, hi=2**31 - 1, integer=True)
  if sample_rate is not None:
    n(sample_rate, "--sample_rate", lo=8000, hi=192000, integer=True,
      accepted="an integer number of Hz in [8000, 192000], e.g. 24000, 44100, 48000")
  if max_memory_gb is not None:
    n(max_memory_gb, "--max_memory_gb", lo=0, lo_open=True, accepted="GiB > 0")
  whole = vision_mode == "frames"
  if window_s is not None:
    w = n(window_s, "--window_s", lo=0, lo_open=True, accepted="seconds > 0")
    if whole and (w != int(w) or w < 1):
      raise checks.UsageError(f"--window_s: {window_s!r} is not accepted: this frames-mode model samples in "
                              "whole-second windows (accepted: 1, 2, 3, ...)")
  if context_s is not None:
    c = n(context_s, "--context_s", lo=0, accepted="seconds >= 0")
    if whole and c != int(c):
      raise checks.UsageError(f"--context_s: {context_s!r} is not accepted: this frames-mode model needs whole "
                              "seconds (accepted: 0, 1, 2, ...)")
    if window_s is not None and c >= float(window_s):
      raise checks.UsageError(f"--context_s: {context_s!r} must be shorter than --window_s ({window_s!r})")


def validate_sample_config(sc: sampling.SampleConfig) -> None:
  """The merged sampling settings (config file + flags); a config's top_k = 0 means off, as in the sampler (sampling/filters.py)."""
  validate_args(temperature=sc.temperature, top_k=sc.top_k if sc.top_k != 0 else None, top_p=sc.top_p,
                cfg_scale=sc.cfg_scale)


def _safe_name(name: str, where: str) -> str:
  if not name or name in (".", "..") or any(ch in name for ch in "/\\\0"):
    raise GenerateError(f"{where}: name {name!r} is not a file name (no '/', '\\', or empty names)")
  return name


def read_csv(path: str | os.PathLike, failures: Optional[checks.Failures] = None) -> list[Item]:
  """CSV with a header: `video` (required column, may be empty for text-to-audio), optional `caption`,
  `negative`, `duration`, `name`. Relative video paths are relative to the CSV file.

  A file that cannot be read (missing, not UTF-8, no `video` column, unknown columns) raises; a bad row
  raises GenerateError naming `file:line`, or, with `failures`, is recorded there and skipped.
  """
  p = pathlib.Path(path)
  header, rows = checks.read_csv(p)
  if "video" not in header:
    raise GenerateError(f"{p}: needs a 'video' column (has {header}; columns: {', '.join(CSV_COLUMNS)})")
  unknown = [h for h in header if h not in CSV_COLUMNS]
  if unknown:
    raise GenerateError(f"{p}: unknown column(s) {unknown} (accepted: {', '.join(CSV_COLUMNS)})")
  items = []
  for n, r in rows:
    where = f"{p}:{n}"
    try:
      if None in r:
        raise GenerateError(f"{where}: {len(header) + len(r[None])} fields, the header has {len(header)}")
      v = (r.get("video") or "").strip()
      if v and not pathlib.Path(v).is_absolute():
        v = str(p.parent / v)
      d = (r.get("duration") or "").strip()
      if not v and not d:
        raise GenerateError(f"{where}: a row without a video needs a duration (text-to-audio)")
      dur = checks.number(d, f"{where}: duration", lo=0, lo_open=True, accepted="seconds > 0",
                          error=GenerateError) if d else None
      name = (r.get("name") or "").strip() or None
      items.append(Item(video=v or None, caption=(r.get("caption") or "").strip(),
                        negative=(r.get("negative") or "").strip(), duration=dur,
                        name=None if name is None else _safe_name(name, where), where=where))
    except GenerateError as e:
      if failures is None:
        raise
      failures.add(where, str(e).removeprefix(f"{where}: "))
  return items


def probe_duration(path: str | os.PathLike) -> float:
  """Seconds of the first video stream as decoded (what the features and the mp4 get)."""
  try:
    return vio.probe_video_cached(path).duration_sec
  except FileNotFoundError:
    raise GenerateError(f"{path}: no such video") from None
  except vio.VideoError as e:
    raise GenerateError(str(e)) from None


def available_memory_bytes() -> int:
  """Host memory available now (Linux MemAvailable; else physical memory)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(max_memory_gb: Optional[float] = None) -> tuple[int, str]:
  """(bytes one item may use on the host, where that number came from)."""
  if max_memory_gb is not None:
    return int(float(max_memory_gb) * 2**30), f"--max_memory_gb {max_memory_gb:g}"
  avail = available_memory_bytes()
  return int(0.8 * avail), f"80% of the {avail / 2**30:.1f} GiB available; --max_memory_gb sets it"


def item_bytes_per_second(cfg: foley.FoleyConfig, codec_rate: int, out_rate: int, has_video: bool) -> float:
  """Host bytes one second of an item holds at once: its decoded video frames (twice: decoded and batched)
  and its audio (codec output, resampled copy, clipped copy)."""
  audio = 4 * (codec_rate + 2 * out_rate)
  if not has_video:
    return float(audio)
  if cfg.vision_mode == "frames":
    size = (cfg.synchformer if cfg.use_sync else cfg.eva).image_size
  else:
    size = 224   # features mode decodes at the encoders' 224 px (video.preprocess), then extracts
  return float(audio + 2 * (cfg.sync_rate + cfg.clip_rate) * size * size * 3)


@dataclasses.dataclass
class Prepared:
  index: int
  item: Item
  where: str
  name: str
  duration: float                   # seconds of audio written
  frames: int                       # audio frames generated
  video_duration: Optional[float]   # decoded seconds of the video (None: text-to-audio)


def validate_items(items: Sequence[Item], *, tokenize: Callable[[str], Sequence[int]], failures: checks.Failures,
                   bytes_per_s: Callable[[bool], float], budget: tuple[int, str], allow_longer: bool = False,
                   max_text_len: int = 64, log: Callable[[str], None] = print) -> list[Prepared]:
  """Probes every item before any model work; the bad ones go to `failures` with the reason, the good
  ones come back with their output name, duration and frame count."""
  names = _unique_names(items)
  out = []
  for i, it in enumerate(items):
    where = it.where or it.video or f"item {i}"
    try:
      for field in ("caption", "negative"):
        text = checks.utf8_text(getattr(it, field), f"{where}: {field}")
        try:
          n_tok = len(list(tokenize(text))) if text else 0
        except Exception as e:  # noqa: BLE001 -- any tokenizer failure is this item's
          raise GenerateError(f"{field} {text[:40]!r} cannot be tokenized ({checks.one_line(e)})") from None
        if n_tok > max_text_len:
          log(f"warning: {where}: {field} has {n_tok} tokens; the model reads the first {max_text_len}")
      vdur = None
      if it.video is not None:
        if not pathlib.Path(it.video).exists():
          raise FileNotFoundError(f"{it.video}: no such video")
        vdur = probe_duration(it.video)
      dur = it.duration if it.duration is not None else vdur
      if dur is None:
        raise GenerateError("a text-to-audio item needs a duration")
      checks.number(dur, "duration", lo=0, lo_open=True, accepted="seconds > 0", error=GenerateError)
      if vdur is not None and dur > vdur + 5e-4 and not allow_longer:
        raise GenerateError(f"duration {dur:g} s is longer than the video ({vdur:.2f} s decoded); the audio "
                            "would run past its end: pass --allow_longer to generate it anyway, or drop the duration")
      need = bytes_per_s(it.video is not None) * dur
      if need > budget[0]:
        limit = budget[0] / bytes_per_s(it.video is not None)
        raise GenerateError(f"{dur:g} s needs about {need / 2**30:.1f} GiB of host memory, over the limit of "
                            f"{budget[0] / 2**30:.1f} GiB ({budget[1]}): at most {limit:.0f} s per item here; "
                            "raise --max_memory_gb or cut the item with a CSV duration")
      out.append(Prepared(i, it, where, names[i], float(dur), audio_frames(dur), vdur))
    except (GenerateError, checks.InputError, FileNotFoundError, vio.VideoError) as e:
      failures.add(where, e, **({"video": it.video} if it.video else {}))
  return out


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


@dataclasses.dataclass
class Generator:
  """Everything a generate run needs; `run(items, out_dir)` writes the outputs and returns their paths."""
  cfg: foley.FoleyConfig
  params: dict
  codec: Codec
  feature_fn: Callable[[str], dict]
  tokenize: Callable[[str], Sequence[int]]
  sample_cfg: sampling.SampleConfig = sampling.SampleConfig()
  text_only_cfg: Optional[sampling.SampleConfig] = None   # text-to-audio items (default: sample_cfg)
  window_frames: int = 250            # the trained length: 10 s (paper sec. 5.1 crops of 2-10 s)
  context_frames: int = 75            # 3 s of generated audio + matching video carried into each new window
  max_text_len: int = 64
  batch_size: int = 8
  bucket_frames: int = 50             # 2 s duration buckets
  seed: int = 0
  sample_rate: Optional[int] = None   # output rate; None = the codec's (24 kHz)
  mesh: Optional[object] = None       # sample sharded over this (data, fsdp, tensor) mesh (sampling.sample)
  write_mp4: bool = True
  write_png: bool = True
  show_progress: bool = True
  max_memory_gb: Optional[float] = None   # host memory one item may use (default: 80% of what is available)
  log: Callable[[str], None] = print

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

  def _features(self, p: Prepared) -> dict:
    """One item's video inputs (frames or features), decoded only up to the item's duration."""
    cap = p.duration if p.video_duration is not None and p.duration < p.video_duration else None
    if cap is not None and _accepts(self.feature_fn, "max_duration_sec"):
      f = self.feature_fn(p.item.video, max_duration_sec=cap)
    else:
      f = self.feature_fn(p.item.video)
    need = (("frames_sync", "frames_clip") if self.cfg.vision_mode == "frames" else
            tuple(k for k, use in (("sync_feats", self.cfg.use_sync), ("clip_feats", self.cfg.use_clip)) if use))
    missing = [k for k in need if k not in f]
    if missing:
      raise GenerateError(f"{p.item.video}: feature_fn returned no {missing} (got {sorted(f)})")
    return f

  def _frames(self, vids: Sequence[Optional[dict]]):
    """frames mode: uint8 frame batches (the model runs its encoders); masks mark real frames."""
    c = self.cfg
    size = (c.synchformer if c.use_sync else c.eva).image_size
    win = c.synchformer.window if c.use_sync else 1
    # As long as the longest video, not the audio: text-to-audio / --allow_longer windows pad as they go.
    Tf = max([len(v["frames_sync"]) for v in vids if v is not None] + [win, c.null_video_len])
    Tc = math.ceil(Tf * c.clip_rate / c.sync_rate)
    return vpre.frames_batch(vids, Tf, Tc, size)

  def _video(self, vids: Sequence[Optional[dict]], frames: Sequence[int]):
    if self.cfg.vision_mode == "frames":
      return self._frames(vids)
    lens = [len(np.asarray(f.get("video_mask", f.get("sync_feats", np.zeros(n))))) for f, n in zip(vids, frames)
            if f is not None]
    Tv = max(lens + [min(max(frames), self.window_frames), self.cfg.null_video_len])
    Tc = math.ceil(Tv * self.cfg.clip_rate / self.cfg.sync_rate) + 1
    B = len(vids)
    batch = {"video_mask": np.zeros((B, Tv), bool)}
    if self.cfg.use_sync:
      batch["sync_feats"] = np.zeros((B, Tv, self.cfg.sync_dim), np.float32)
    if self.cfg.use_clip:
      batch["clip_feats"] = np.zeros((B, Tc, self.cfg.clip_dim), np.float32)
    for i, f in enumerate(vids):
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

  def bytes_per_second(self, has_video: bool) -> float:
    return item_bytes_per_second(self.cfg, self.codec.sample_rate, self.sample_rate or self.codec.sample_rate,
                                 has_video)

  def prepare(self, items: Sequence[Item], failures: checks.Failures, *, allow_longer: bool = False
              ) -> list[Prepared]:
    """validate_items with this generator's tokenizer, memory figures and text length."""
    return validate_items(items, tokenize=self.tokenize, failures=failures, bytes_per_s=self.bytes_per_second,
                          budget=memory_budget(self.max_memory_gb), allow_longer=allow_longer,
                          max_text_len=self.max_text_len, log=self.log)

  def run(self, items: Sequence[Item], out_dir: str | os.PathLike, *, failures: Optional[checks.Failures] = None,
          strict: bool = False, allow_longer: bool = False, prepared: Optional[list[Prepared]] = None,
          write_failures: bool = True) -> list[dict]:
    """Generates every good item; returns one dict per item in item order: {"name", "wav", "mp4", "png",
    "frames", "codes"}, or {"name", "error"} for an item that failed.

    Bad items (unreadable video, bad row, too long, ...) are reported in `failures` and in
    out_dir/failures.json while the others finish; strict=True stops at the first. Each item's files
    are written under temporary names and renamed together, so a failed item leaves none.
    write_failures=False leaves failures.json to the caller (hosts.generate merges every host's).
    """
    from tqdm.auto import tqdm

    out = checks.writable_dir(out_dir)
    failures = failures if failures is not None else checks.Failures(out, strict=strict, log=self.log)
    if write_failures:
      failures.out_dir = failures.out_dir or out
    if prepared is None:   # else validated already (Preflight.prepare with the same items)
      prepared = self.prepare(items, failures, allow_longer=allow_longer)
    names = _unique_names(items)
    results: list[dict] = [{"name": n} for n in names]
    sr_out = self.sample_rate or self.codec.sample_rate
    bar = tqdm(total=sum(p.frames for p in prepared), unit="frame", desc="generate",
               disable=not self.show_progress)
    # Text-to-audio items batch apart from video items: their groups then hold no whole-clip video arrays.
    for has_video in (True, False):
      todo = [p for p in prepared if (p.item.video is not None) == has_video]
      for group in buckets([p.frames for p in todo], self.bucket_frames, self._group_size(todo)):
        self._run_group([todo[g] for g in group], out, failures, results, bar, sr_out)
    bar.close()
    reasons = {f["item"]: f["reason"] for f in failures.items}
    for i, it in enumerate(items):
      if "wav" not in results[i]:
        results[i]["error"] = reasons.get(it.where or it.video or f"item {i}", "failed")
    if write_failures:
      failures.write()
    return results

  def _group_size(self, todo: Sequence[Prepared]) -> int:
    """batch_size, fewer where that many of the longest items would not fit the memory budget together."""
    if not todo:
      return self.batch_size
    worst = max(self.bytes_per_second(p.item.video is not None) * p.duration for p in todo)
    return max(1, min(self.batch_size, int(memory_budget(self.max_memory_gb)[0] // max(worst, 1.0))))

  def _run_group(self, group: list[Prepared], out, failures, results, bar, sr_out) -> None:
    vids, ok = [], []
    for p in group:
      try:
        vids.append(None if p.item.video is None else self._features(p))
        ok.append(p)
      except Exception as e:  # noqa: BLE001 -- one item's decode failure is that item's
        failures.add(p.where, e if isinstance(e, FileNotFoundError) else checks.one_line(e))
    if not ok:
      return
    fr = [p.frames for p in ok]
    try:
      text_ids, text_mask = self._text([p.item.caption for p in ok])
      batch = dict(self._video(vids, fr), text_ids=text_ids, text_mask=text_mask)
      kw = {"drop_text": np.array([not p.item.caption for p in ok]),
            "drop_video": np.array([p.item.video is None for p in ok])}
      if any(p.item.negative for p in ok):
        kw["negative_text_ids"], kw["negative_text_mask"] = self._text([p.item.negative for p in ok])
        kw["negative"] = np.array([bool(p.item.negative) for p in ok])
      sc = self.text_only_cfg if ok[0].item.video is None and self.text_only_cfg else self.sample_cfg
      res = sampling.sample_long(self.cfg, self.params, batch, fr, window_frames=self.window_frames,
                                 context_frames=self.context_frames, sample_cfg=sc, seed=self.seed,
                                 item_seeds=np.asarray([p.index if p.item.seed is None else p.item.seed for p in ok]), progress=bar.update, mesh=self.mesh,
                                 **kw)
    except Exception as e:  # noqa: BLE001 -- e.g. out of device memory: these items fail, the rest go on
      for p in ok:
        failures.add(p.where, f"sampling failed: {checks.one_line(e)}")
      return
    for j, p in enumerate(ok):
      try:
        results[p.index] = self._write(p, res["codes"][j, :, :p.frames], out, sr_out)
      except Exception as e:  # noqa: BLE001
        failures.add(p.where, f"writing outputs failed: {checks.one_line(e)}")

  def _write(self, p: Prepared, codes, out: pathlib.Path, sr_out: int) -> dict:
    audio = np.asarray(self.codec.decode(codes), np.float32).reshape(-1)
    want = int(round(p.duration * self.codec.sample_rate))
    audio = np.pad(audio, (0, max(0, want - len(audio))))[:want]
    audio = aio.resample(audio, self.codec.sample_rate, sr_out)
    r = {"name": p.name, "frames": p.frames, "codes": codes, "wav": out / f"{p.name}.wav"}
    if self.write_mp4 and p.item.video is not None:
      r["mp4"] = out / f"{p.name}.mp4"
    if self.write_png:
      r["png"] = out / f"{p.name}.png"
    kinds = [k for k in ("wav", "mp4", "png") if k in r]
    with checks.atomic_files(*(r[k] for k in kinds)) as tmps:
      tmp = dict(zip(kinds, tmps))
      aio.save_wav(tmp["wav"], audio, sr_out)
      if "mp4" in tmp:
        r["mux"] = vio.mux(p.item.video, audio, sr_out, tmp["mp4"])
      if "png" in tmp:
        plots.write_spectrogram(tmp["png"], audio, sr_out, title=p.item.caption or p.name)
    return r


def _accepts(fn, name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _unique_names(items: Sequence[Item]) -> list[str]:
  names, seen = [], {}
  for i, it in enumerate(items):
    base = it.name or (pathlib.Path(it.video).stem if it.video else f"clip{i}")
    n = seen.get(base, 0)
    seen[base] = n + 1
    names.append(base if n == 0 else f"{base}_{n}")
  return names


def bpe_tokenizer(path: str | os.PathLike, flag: str = "--tokenizer") -> Callable[[str], list[int]]:
  """A `tokenize` callable from a HF tokenizer.json (file or directory holding one)."""
  from tokenizers import Tokenizer

  p = pathlib.Path(path)
  p = p / "tokenizer.json" if p.is_dir() else p
  if not p.exists():
    raise FileNotFoundError(f"{flag} {p}: tokenizer.json not found")
  try:
    tok = Tokenizer.from_file(str(p))
  except Exception as e:  # noqa: BLE001 -- tokenizers raises a bare Exception for a file it cannot parse
    raise checks.InputError(f"{flag} {p}: not a tokenizer.json the tokenizers library reads "
                            f"({checks.one_line(e, 200)})") from None
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


def load_codec(path):
  """The audio decoder: a fitted synthetic codec (.npz, `synthetic/codec.py`) or a converted
  higgs-audio-v2 tokenizer checkpoint directory (tools/convert_checkpoint.py --family higgs)."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"--codec_checkpoint {p}: not found")
  if p.is_file() or p.with_suffix(".npz").is_file():
    from dreamfoley_jax.synthetic import codec as synthetic_codec

    try:
      return synthetic_codec.SyntheticCodec.load(str(p))
    except Exception as e:  # noqa: BLE001 -- np.load of a non-npz raises several kinds
      raise checks.InputError(f"--codec_checkpoint {p}: not a synthetic codec .npz (the main job's "
                              f"codec.npz) nor a higgs checkpoint directory ({checks.one_line(e, 200)})") from None
  if not (p / "params").exists():
    raise GenerateError(f"--codec_checkpoint {p}: neither a synthetic codec file nor an orbax checkpoint")
  try:
    from dreamfoley_jax.audio import tokenizer

    return tokenizer.HiggsCodec(p)
  except Exception as e:  # noqa: BLE001
    raise checks.InputError(f"--codec_checkpoint {p}: not a converted higgs-audio-v2 tokenizer "
                            f"({checks.one_line(e, 300)})") from None


def check_checkpoint(path, cfg: foley.FoleyConfig, flag: str = "--checkpoint", config: str = "--config") -> None:
  """The checkpoint exists, is a params checkpoint, and its shapes are the config's (read from orbax's
  metadata, nothing loaded); else one line naming the first differences."""
  p = pathlib.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"{flag} {p}: not found")
  if not (p / "params").is_dir():
    raise checks.InputError(f"{flag} {p}: not a params checkpoint (no 'params' directory inside; the main "
                            "job's workdir/params or tools/convert_checkpoint.py write one)")
  import flax.linen as nn
  import orbax.checkpoint as ocp

  from dreamfoley_jax.convert import common

  try:
    meta = ocp.StandardCheckpointer().metadata(p.absolute() / "params")
  except Exception as e:  # noqa: BLE001
    raise checks.InputError(f"{flag} {p}: unreadable orbax checkpoint ({checks.one_line(e, 200)})") from None
  meta = getattr(meta, "item_metadata", meta)
  found = {k: tuple(v.shape) for k, v in common.flatten(dict(meta)).items() if hasattr(v, "shape")}
  # Either layer layout (scanned or unrolled) is fine: foley_params.inference_layout converts.
  scanned = any(k.startswith("decoder/layers/layer/") for k in found)
  c = cfg.replace(decoder=cfg.decoder.replace(scan_layers=scanned))
  want = {k: tuple(v.shape) for k, v in common.flatten(nn.unbox(foley_params.abstract_params(c))).items()}
  checks.tree_mismatch(want, found, f"{flag} {p} does not fit {config}")


def load_feature_fn(cfg: foley.FoleyConfig, exp, *, eva_ckpt=None, sync_ckpt=None):
  """video path -> model inputs.

  frames mode (the encoders are part of the model): uint8 frames at 25 fps / 4 fps, resized and
  centre-cropped to the encoders' image size. features mode: EVA-CLIP / Synchformer features from
  converted checkpoints (`--eva_ckpt`, `--sync_ckpt`), exactly as tools/extract_features.py makes them.
  """
  from dreamfoley_jax.video import load_video_frames, sync_cover_windows

  if cfg.vision_mode == "frames":
    size = (cfg.synchformer if cfg.use_sync else cfg.eva).image_size

    def frames_fn(path, max_duration_sec=None):
      v = load_video_frames(path, size=size, max_duration_sec=max_duration_sec)
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

  def features_fn(path, max_duration_sec=None):
    v = load_video_frames(path, max_duration_sec=max_duration_sec)
    out = {}
    if cfg.use_sync:   # one token per 25 fps frame, as the training records (video.sync_cover_windows)
      win = sync_cover_windows(v.sync_u8)
      out["sync_feats"] = np.asarray(enc.sync(win)).reshape(-1, cfg.sync_dim)[:v.sync_u8.shape[0]]
      out["video_mask"] = np.ones(out["sync_feats"].shape[0], bool)
    if cfg.use_clip:
      out["clip_feats"] = np.asarray(enc.clip(v.clip_u8))
    return out

  return features_fn


def window_bytes(cfg: foley.FoleyConfig, window_frames: int, text_len: int, batch: int, guided: bool = True) -> int:
  """Device bytes one sampling window needs beyond the weights (an estimate): the KV cache of every row
  (x2 with CFG) and one layer's fp32 prefill attention scores and mask over (prompt, cache slots), which
  grow as the window squared. Against XLA's own figure (compile().memory_analysis(), synthetic config,
  batch 8, CPU): 20 s 0.143 GiB measured / 0.16 estimated, 60 s 1.14 / 1.25."""
  import jax.numpy as jnp

  d = cfg.decoder
  rows = (2 if guided else 1) * batch
  P = text_len + window_frames
  slots = sampling.cache_slots(P, sampling.num_columns(window_frames, cfg.num_codebooks))
  kv = 2 * d.num_hidden_layers * rows * slots * d.num_key_value_heads * d.head_size * jnp.dtype(d.dtype).itemsize
  return int(kv + rows * P * slots * (4 * d.num_attention_heads + 1))


def param_bytes(cfg: foley.FoleyConfig) -> int:
  """Bytes of the model's weights in the sampling layout (floats narrowed to the compute dtype, as
  foley_params.inference_layout stores them); from the abstract params, nothing allocated."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  cd = jnp.dtype(cfg.decoder.dtype).itemsize
  leaves = jax.tree.leaves(nn.unbox(foley_params.abstract_params(cfg)))
  return int(sum(np.prod(x.shape) * (min(cd, x.dtype.itemsize) if jnp.issubdtype(x.dtype, jnp.floating)
                                     else x.dtype.itemsize) for x in leaves))


def device_budget(host_budget: tuple[int, str]) -> tuple[int, str]:
  """(bytes a sampling window may take, where that came from): the accelerator's memory, or on CPU the host's."""
  import jax

  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return free, f"free memory of {jax.local_devices()[0].device_kind}"
  return host_budget


def check_window(cfg: foley.FoleyConfig, window_frames: int, context_frames: int, text_len: int, batch: int,
                 budget: tuple[int, str], guided: bool = True, devices: int = 1,
                 model_shards: Optional[int] = None) -> None:
  """--window_s / --context_s against the model (whole seconds in frames mode) and the memory budget of
  one device: window_bytes plus twice the weights (XLA keeps a working copy: sampling a 2-layer paper_7b
  on CPU, compile().memory_analysis() gave 4.94 GiB at 10 s and 6.69 at 30 s, this 4.95 / 6.76), split
  over `devices` (a --mesh): the KV cache and prefill over all of them, the weights over `model_shards`
  (the mesh's tensor x fsdp axes; replicated over data; default all devices)."""
  if window_frames < 1:
    raise checks.UsageError(f"--window_s: {window_frames / AUDIO_FRAME_RATE:g} s is under one audio frame "
                            f"({1 / AUDIO_FRAME_RATE:g} s)")
  if not 0 <= context_frames < window_frames:
    raise checks.UsageError(f"--context_s: {context_frames / AUDIO_FRAME_RATE:g} s must be >= 0 and shorter "
                            f"than --window_s ({window_frames / AUDIO_FRAME_RATE:g} s)")
  weights = 2 * param_bytes(cfg)

  def need(w):
    return window_bytes(cfg, w, text_len, batch, guided) / max(1, devices) + weights / max(1, model_shards or devices)

  if need(window_frames) > budget[0]:
    if need(1) > budget[0]:
      raise checks.UsageError(f"the model's weights alone need about {need(1) / 2**30:.1f} GiB per device for "
                              f"sampling, over the {budget[0] / 2**30:.1f} GiB limit ({budget[1]}): shard it "
                              "with --mesh (e.g. data=-1,tensor=4) or raise --max_memory_gb")
    w = window_frames
    while w > 1 and need(w) > budget[0]:
      w = int(w * 0.8)
    raise checks.UsageError(
        f"--window_s {window_frames / AUDIO_FRAME_RATE:g}: sampling needs about {need(window_frames) / 2**30:.1f} "
        f"GiB per device (KV cache and prefill at --batch_size {batch}{', x2 for CFG' if guided else ''}, and the "
        f"weights), over the {budget[0] / 2**30:.1f} GiB limit ({budget[1]}); use --window_s <= "
        f"{max(1, int(w / AUDIO_FRAME_RATE)):d} (the trained length is the config's sample.window_s) or a "
        "smaller --batch_size")


@dataclasses.dataclass
class Preflight:
  """What validate_items needs, known before the model is loaded (build_generator(load=False))."""
  cfg: foley.FoleyConfig
  tokenize: Callable[[str], Sequence[int]]
  codec_rate: int
  sample_rate: Optional[int]
  max_text_len: int
  max_memory_gb: Optional[float]

  def prepare(self, items: Sequence[Item], failures: checks.Failures, *, allow_longer: bool = False,
              log: Callable[[str], None] = print) -> list[Prepared]:
    def per_s(has_video):
      return item_bytes_per_second(self.cfg, self.codec_rate, self.sample_rate or self.codec_rate, has_video)

    return validate_items(items, tokenize=self.tokenize, failures=failures, bytes_per_s=per_s,
                          budget=memory_budget(self.max_memory_gb), allow_longer=allow_longer,
                          max_text_len=self.max_text_len, log=log)


def build_generator(config: str, *, checkpoint=None, codec_checkpoint=None, tokenizer=None, smoke_random=False,
                    eva_ckpt=None, sync_ckpt=None,
                    sample_overrides=None, window_s=None, context_s=None, batch_size=8, bucket_s=2.0, seed=0,
                    sample_rate=None, write_mp4=True, write_png=True, inference_layout=True,
                    mesh=None, max_memory_gb=None, load: bool = True) -> Generator:
  """A Generator from an experiment config (a path or a ConfigDict) and checkpoint paths (what tools/generate.py
  calls; `model_dir.build_generator` fills the paths from a model directory).

  Every flag, path and checkpoint is checked before anything large is loaded (checks.UsageError for a
  flag's value, exit 2; InputError / FileNotFoundError for a file, exit 1). load=False stops after the
  checks and returns a Preflight (tools/generate.py then validates the items before loading the model).

  inference_layout: sample with `foley_params.inference_layout(cfg, params)` (unrolled layers; bf16 weights for a
  bf16-compute config with fp32 weights). mesh: a {axis: size} spec (sharding.make_mesh; -1 = the rest) or
  a Mesh to sample sharded across devices, e.g. {"data": -1, "tensor": 4} for a 7B model on 16 GB chips.

  window_s / context_s default to the config's sample.window_s / sample.context_s (else 10 s / 3 s).
  """
  from dreamfoley_jax import configs
  from dreamfoley_jax.convert import common

  try:
    exp = configs.load_config(config) if isinstance(config, (str, os.PathLike)) else config
    cfg = configs.model_config(exp.model)
  except FileNotFoundError as e:
    raise checks.UsageError(f"--config: {e}") from None
  except Exception as e:  # noqa: BLE001 -- a broken experiment file
    raise checks.UsageError(f"--config {config}: cannot be loaded ({checks.one_line(e, 300)})") from None
  ov = dict(sample_overrides or {})
  validate_args(**ov, window_s=window_s, context_s=context_s, batch_size=batch_size, bucket_s=bucket_s,
                sample_rate=sample_rate, seed=seed, max_memory_gb=max_memory_gb, vision_mode=cfg.vision_mode)
  sc = configs.sample_config(exp.get("sample", {})).replace(**ov)
  validate_sample_config(sc)
  # Text-to-audio items: the config's sample.text_only settings under the flags (experiments/synthetic.py).
  text_only = dict(exp.get("sample", {}).get("text_only", None) or {})
  sc_text = configs.sample_config(exp.get("sample", {})).replace(**{**text_only, **ov}) if text_only else None
  if sc_text is not None:
    validate_sample_config(sc_text)
  fr = AUDIO_FRAME_RATE
  window_s = float(exp.get("sample", {}).get("window_s", 10.0)) if window_s is None else float(window_s)
  context_s = float(exp.get("sample", {}).get("context_s", 3.0)) if context_s is None else float(context_s)
  validate_args(window_s=window_s, context_s=context_s, vision_mode=cfg.vision_mode)
  max_text_len = int(exp.get("data", {}).get("max_text_len", 64))
  budget = memory_budget(max_memory_gb)
  n_dev, n_model = 1, 1
  if mesh is not None:
    import jax

    n_dev = len(mesh.devices.flat) if hasattr(mesh, "devices") else len(jax.devices())
    shape = dict(getattr(mesh, "shape", {}))
    n_model = int(shape.get("tensor", 1)) * int(shape.get("fsdp", 1)) if shape else n_dev
  check_window(cfg, int(round(window_s * fr)), int(round(context_s * fr)), max(max_text_len, cfg.null_text_len),
               int(batch_size), device_budget(budget), guided=sc.cfg_scale is not None, devices=n_dev,
               model_shards=n_model)
  if not smoke_random:
    missing = [n for n, v in (("--checkpoint", checkpoint), ("--codec_checkpoint", codec_checkpoint),
                              ("--tokenizer", tokenizer)) if not v]
    if missing:
      raise checks.UsageError(f"missing {', '.join(missing)} (or pass --smoke_random for a pipeline check)")
    if cfg.vision_mode != "frames":
      for flag, path, use in (("--eva_ckpt", eva_ckpt, cfg.use_clip), ("--sync_ckpt", sync_ckpt, cfg.use_sync)):
        if use and not path:
          raise checks.UsageError(f"video features need converted encoder checkpoints: pass {flag} "
                                  "(tools/convert_checkpoint.py --family eva_clip / synchformer)")
        if use and not pathlib.Path(path).exists():
          raise FileNotFoundError(f"{flag} {path}: not found")
    check_checkpoint(checkpoint, cfg)
    tokenize, codec = bpe_tokenizer(tokenizer), load_codec(codec_checkpoint)
    if not load:
      return Preflight(cfg, tokenize, codec.sample_rate, sample_rate, max_text_len, max_memory_gb)
    # To host memory first: any writer's mesh, any size; inference_layout + Generator then place it.
    params = common.load_params(checkpoint, host=True)
    feature_fn = load_feature_fn(cfg, exp, eva_ckpt=eva_ckpt, sync_ckpt=sync_ckpt)
  else:
    tokenize = bpe_tokenizer(tokenizer) if tokenizer else (lambda s: [b % cfg.decoder.vocab_size for b in s.encode()])
    if not load:
      return Preflight(cfg, tokenize, ToneCodec.sample_rate, sample_rate, max_text_len, max_memory_gb)
    params = foley_params.init_params(cfg, seed)
    codec, feature_fn = ToneCodec(), random_feature_fn(cfg)
  if inference_layout:
    cfg, params = foley_params.inference_layout(cfg, params)
  if isinstance(mesh, dict):
    from dreamfoley_jax import sharding

    mesh = sharding.make_mesh(mesh)
  return Generator(cfg, params, codec, feature_fn, tokenize, sample_cfg=sc, text_only_cfg=sc_text, mesh=mesh,
                   window_frames=int(round(window_s * fr)), context_frames=int(round(context_s * fr)),
                   batch_size=batch_size, bucket_frames=max(1, int(round(bucket_s * fr))), seed=seed,
                   sample_rate=sample_rate, write_mp4=write_mp4, write_png=write_png, max_text_len=max_text_len,
                   max_memory_gb=max_memory_gb)
