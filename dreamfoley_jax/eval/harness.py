"""Evaluation harness: pair generated audio with videos/ground truth/captions, cache per-clip embeddings,
compute av-benchmark's metrics plus the paper's combined KL, and render the paper's table.

Sets of clips (av-benchmark's choices, kept):
- FD-PANN, FD-VGG: all ground-truth clips vs all generated clips (VGGish: all 0.96 s patches pooled).
- FD-PASST, KL-*: paired clips only. ISC-PANNS (the table's IS): all generated clips; ISC-PASST: the
  paired generated clips (all of them when there is no reference).
- IB-Score, DeSync: paired (video, generated audio). CLAP: paired (caption, generated audio).

Pairing (`EvalInputs.pairing`): "av-benchmark" maps a generated stem to its video as av-benchmark's
`clean_sample_name` does (`av_benchmark_name`) and, as its KL_PANNs code does, pairs KL_PANNs by the exact
stem only; "stem" pairs the exact stem, else the stem without a '-<k>' sample suffix, for every metric.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import uuid
from typing import Callable, Mapping, Sequence

import numpy as np

from dreamfoley_jax import checks, hosts
from dreamfoley_jax.eval import media, metrics
from dreamfoley_jax.eval.embedders.base import Embedder

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Pairing
# --------------------------------------------------------------------------------------------------


def list_media(folder, exts: Sequence[str], what: str = "folder") -> dict[str, pathlib.Path]:
  """{stem: path} of the files in `folder` with one of `exts`; a stem present twice is an error."""
  out: dict[str, pathlib.Path] = {}
  folder = pathlib.Path(folder).expanduser()
  if not folder.exists():
    raise FileNotFoundError(f"{what} {folder}: no such directory")
  if not folder.is_dir():
    raise checks.InputError(f"{what} {folder}: not a directory")
  for p in sorted(folder.iterdir()):
    if p.is_file() and p.suffix.lower() in exts:
      if p.stem in out:
        raise ValueError(f"{folder}: two files share the name {p.stem!r}: {out[p.stem].name} and {p.name}")
      out[p.stem] = p
  return out


def read_captions(path) -> dict[str, str]:
  """`name,caption` CSV (header row required, extra columns ignored) -> {name: caption}."""
  header, rows = checks.read_csv(pathlib.Path(path).expanduser(), "captions CSV")
  if "name" not in header or "caption" not in header:
    raise checks.InputError(f"{path}: needs a header with 'name' and 'caption' columns, got {header}")
  return {str(r["name"]).strip(): r["caption"] or "" for _, r in rows}


_SAMPLE_SUFFIX = re.compile(r"^(.*)-\d+$")


def match_name(gen_name: str, known: Mapping[str, object]) -> str | None:
  """The reference name a generated clip belongs to: exact stem, else the stem without a '-<k>' suffix."""
  if gen_name in known:
    return gen_name
  m = _SAMPLE_SUFFIX.match(gen_name)
  if m and m.group(1) in known:
    return m.group(1)
  return None


PAIRING_RULES = ("av-benchmark", "stem")


def av_benchmark_name(gen_name: str) -> str:
  """The video name av-benchmark pairs a generated stem with (its `clean_sample_name`), decided by the length
  of the stem alone:
    30 characters, VGGSound as MMAudio names its outputs, '000000014_zxpo56cpUBU_000007-0': characters 10-27
       ('zxpo56cpUBU_000007', the YouTube id and start second);
    20 characters, 'zxpo56cpUBU_000007-0': the first 18;
    21 characters, AudioSet, 'Y---g-f_I2yQ_000001_0': characters 1-18 ('---g-f_I2yQ_000001');
    any other length: the stem itself.
  Like av-benchmark, a stem of one of those lengths in another scheme is cut too (and then finds no video)."""
  n = len(gen_name)
  if n == 30:
    return gen_name[10:28]
  if n == 20:
    return gen_name[:18]
  if n == 21:
    return gen_name[1:19]
  return gen_name


@dataclasses.dataclass
class Pairing:
  gen_to_ref: dict[str, str]  # generated stem -> reference name
  gen_unpaired: list[str]  # generated clips with no video / ground truth
  ref_unpaired: list[str]  # videos / ground truth with no generated clip
  no_caption: list[str]  # paired clips without a caption (excluded from CLAP only)
  rule: str = "stem"
  kl_panns: dict[str, str] | None = None   # the pairs KL-PANNS uses (av-benchmark: exact stems only)

  def __post_init__(self):
    if self.kl_panns is None:
      self.kl_panns = dict(self.gen_to_ref)

  def report(self) -> dict:
    renamed = {g: r for g, r in self.gen_to_ref.items() if g != r}
    return {"rule": self.rule, "paired": len(self.gen_to_ref), "generated_without_reference": self.gen_unpaired,
            "reference_without_generated": self.ref_unpaired, "paired_without_caption": self.no_caption,
            "paired_by_renaming": len(renamed), "renamed_examples": dict(list(renamed.items())[:5]),
            "kl_panns_paired": len(self.kl_panns)}


def pair(gen: Mapping[str, object], refs: Mapping[str, object], captions: Mapping[str, str] | None,
         rule: str = "stem") -> Pairing:
  """Generated stems -> reference names under `rule` (PAIRING_RULES; module docstring)."""
  if rule not in PAIRING_RULES:
    raise ValueError(f"pairing={rule!r}: expected one of {PAIRING_RULES}")
  g2r, unp = {}, []
  for g in sorted(gen):
    r = match_name(g, refs) if rule == "stem" else (av_benchmark_name(g) if av_benchmark_name(g) in refs else None)
    if r is None:
      unp.append(g)
    else:
      g2r[g] = r
  used = set(g2r.values())
  ref_unp = sorted(r for r in refs if r not in used)
  no_cap = sorted({r for r in used if captions is not None and r not in captions})
  kl = {g: r for g, r in g2r.items() if g == r} if rule == "av-benchmark" else None
  return Pairing(g2r, unp, ref_unp, no_cap, rule, kl)


# --------------------------------------------------------------------------------------------------
# Per-clip feature cache
# --------------------------------------------------------------------------------------------------


class FeatureCache:
  """One npz per (role, embedder, clip), tagged with the embedder's fingerprint and the clip length."""

  def __init__(self, root):
    self.root = pathlib.Path(root).expanduser() if root else None
    self.hits = self.misses = 0

  def _path(self, role, emb, name):
    return self.root / role / emb / f"{name}.npz"

  def get_or_compute(self, role: str, emb: Embedder, name: str, tag: str,
                     fn: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    key = f"{emb.fingerprint()}|{tag}"
    if self.root is not None:
      p = self._path(role, emb.name, name)
      if p.exists():
        try:
          with np.load(p, allow_pickle=False) as z:
            if str(z["__key__"]) == key:
              self.hits += 1
              return {k: z[k] for k in z.files if k != "__key__"}
        except (OSError, KeyError, ValueError):
          pass  # unreadable or stale: recompute
    self.misses += 1
    out = {k: np.asarray(v) for k, v in fn().items()}
    if self.root is not None:
      p.parent.mkdir(parents=True, exist_ok=True)
      tmp = p.with_name(f".{p.stem}.{uuid.uuid4().hex}.tmp.npz")   # unique: hosts may share the cache
      np.savez(tmp, __key__=np.array(key), **out)
      tmp.replace(p)
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalInputs:
  gen_dir: str
  video_dir: str | None = None
  captions_csv: str | None = None
  gt_audio_dir: str | None = None  # default: the audio tracks of the videos
  duration_s: float = 8.0
  cache_dir: str | None = None  # generated-clip features; default <gen_dir>/eval_cache
  ref_cache_dir: str | None = None  # ground-truth audio / video / caption features; default cache_dir
  fd_method: str = "sqrtm"  # "sqrtm" = av-benchmark; "eig" = exact symmetric form (see metrics.py)
  pairing: str = "stem"  # PAIRING_RULES; the protocol configs (experiments/eval_*.py) use "av-benchmark"


def _progress(it, desc):
  try:
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False)
  except ImportError:  # pragma: no cover
    return it


def _inception(m, key, logits, notes, splits: int = 10):
  if len(logits) < splits:
    notes.append(f"{key}: skipped, {len(logits)} generated clips < {splits} splits")
    log.warning(notes[-1])
    return
  m[f"{key}-mean"], m[f"{key}-std"] = metrics.inception_score(logits, splits=splits)


def _check_audio(path) -> None:
  """The file decodes to a non-empty, finite signal (else InputError naming it)."""
  try:
    wav, _ = media.load_audio(path)
  except Exception as e:  # noqa: BLE001 -- soundfile / PyAV raise several kinds
    raw = " ".join(str(e).split())   # the reader's own message when it names the file, else its type too
    msg = raw.removeprefix(f"{path}: ") if raw.startswith(f"{path}: ") else checks.one_line(e)
    raise checks.InputError(f"{path}: {msg if 'decode' in msg or 'audio' in msg else 'cannot read audio (' + msg + ')'}"
                            ) from None
  if wav.size == 0 or wav.shape[-1] == 0:
    raise checks.InputError(f"{path}: no audio samples")
  if not np.isfinite(wav).all():
    raise checks.InputError(f"{path}: audio holds NaN or infinite samples")


def _check_video(path, duration_s: float) -> None:
  from dreamfoley_jax.video import io as vio

  info = vio.probe_video(path)
  if info.duration_sec + 1e-6 < duration_s:
    raise ValueError(f"{path}: {info.duration_sec:.3f} s of decodable video, the protocol needs {duration_s:g} s")


def screen_clips(gen, gt, videos, *, duration_s: float, check_videos: bool, failures: checks.Failures,
                 log=log.warning) -> tuple[dict, dict, dict]:
  """(gen, gt, videos) without the clips whose files cannot be scored; each one goes to `failures`.

  A generated clip that fails is left out of every metric; a reference whose audio fails is left out of
  the reference audio sets only (its video still scores IB/DeSync), and the other way round. With several
  hosts each checks its share (hosts.share) and every host gets every host's failures, in host order."""
  todo = [("generated", n, p, _check_audio) for n, p in gen.items()]
  todo += [("reference audio", n, p, _check_audio) for n, p in gt.items()]
  if check_videos:
    todo += [("video", n, p, lambda p: _check_video(p, duration_s)) for n, p in videos.items()]
  several = hosts.index_count()[1] > 1
  mine = checks.Failures() if several else failures   # strict acts once all hosts know (below)
  for i in hosts.share(todo):
    role, name, path, check = todo[i]
    try:
      check(path)
    except Exception as e:  # noqa: BLE001 -- any unreadable clip is reported and left out
      log(f"{role} clip {name} left out: {checks.one_line(e)}")
      mine.add(str(path), e, role=role, name=name, pos=i)
  if several:   # in list order, as one process finds them
    for f in sorted((f for part in hosts.allgather_json(mine.items) for f in part), key=lambda f: f["pos"]):
      failures.add(f.pop("item"), f.pop("reason"), **f)
  bad = {(f["role"], f.get("name")) for f in failures.items}
  for f in failures.items:
    f.pop("name", None)
    f.pop("pos", None)
  return ({n: p for n, p in gen.items() if ("generated", n) not in bad},
          {n: p for n, p in gt.items() if ("reference audio", n) not in bad},
          {n: p for n, p in videos.items() if ("video", n) not in bad})


class _Passes:
  """The feature passes one `evaluate` call shares between its scorers: an embedder's features of the
  generated audio, the reference audio, the videos or the captions, cached per clip and spread over the hosts
  (each host computes its share, all get all). A clip an embedder cannot score is reported with the embedder
  and left out. Scorers add their figures to `metrics`, `counts` and `notes`."""

  def __init__(self, inputs: EvalInputs, gen, gt, videos, captions, pairing: Pairing, failures: checks.Failures):
    self.inputs, self.gen, self.gt, self.videos, self.captions = inputs, gen, gt, videos, captions
    self.pairing, self.failures = pairing, failures
    self.paired = [(g, r) for g, r in pairing.gen_to_ref.items()]
    cache_root = inputs.cache_dir or str(pathlib.Path(inputs.gen_dir).expanduser() / "eval_cache")
    self.gen_cache, self.ref_cache = FeatureCache(cache_root), FeatureCache(inputs.ref_cache_dir or cache_root)
    self.dur, self.fdm = inputs.duration_s, inputs.fd_method
    self.several = hosts.index_count()[1] > 1
    self.pending: list[dict] = []     # several hosts: this host's failures since the last sync_failures()
    self.metrics: dict[str, float] = {}
    self.counts: dict[str, int] = {}
    self.notes: list[str] = []

  def tag(self, path):  # a clip's features are stale once its file (or the clip length) changes
    st = pathlib.Path(path).stat()
    return f"dur={self.dur}|{pathlib.Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"

  def guarded(self, path, role, emb, fn):
    """fn() or None: a clip one embedder cannot score is reported (with the embedder) and left out."""
    try:
      return fn()
    except Exception as e:  # noqa: BLE001
      if self.failures.strict and not self.several:
        raise
      msg = checks.one_line(e).removeprefix(f"{path}: ")
      if role in ("generated", "reference audio"):
        wav, sr = media.load_audio(path)
        msg = f"{emb.name} cannot score its {wav.shape[-1] / sr:.3f} s of audio ({msg})"
      else:
        msg = f"{emb.name} cannot score it ({msg})"
      log.warning("%s clip %s left out: %s", role, path, msg)
      self.pending.append({"item": str(path), "reason": msg, "role": role, "embedder": emb.name})
      return None

  def sync_failures(self):
    """After each pass (spread): this pass's failures of every host, on every host, sorted by file, so
    one host and many list the same (with several hosts --strict then stops all of them together instead
    of one host leaving the others waiting in a collective)."""
    parts = hosts.allgather_json(self.pending) if self.several else [list(self.pending)]
    self.pending.clear()
    for f in sorted((f for part in parts for f in part), key=lambda f: (f["item"], f["role"])):
      self.failures.add(f.pop("item"), f.pop("reason"), **f)

  def spread(self, names, fn, desc):
    """{name: fn(name)} without the names fn gave None for (a clip it could not score): with several hosts
    each computes its share (hosts.map_features), all get all, and every host learns every host's failures."""
    names = list(names)
    bar = _progress(range(len(hosts.share(names))), desc)
    it = iter(bar)

    def step(n):
      out = fn(n)
      next(it, None)
      return out

    out = hosts.map_features(names, step)
    getattr(bar, "close", lambda: None)()
    self.sync_failures()
    return out

  def gen_audio(self, e, g):
    p = self.gen[g]
    return self.guarded(p, "generated", e, lambda: self.gen_cache.get_or_compute(
        "gen", e, g, self.tag(p), lambda: e.audio_features(*media.load_audio(p), self.dur, str(p))))

  def gen_audio_feats(self, emb, names=None):
    return self.spread(sorted(self.gen) if names is None else names, lambda g: self.gen_audio(emb, g),
                       f"{emb.name}: generated audio")

  def ref_audio_feats(self, emb):
    def one(r):
      p = self.gt[r]
      return self.guarded(p, "reference audio", emb, lambda: self.ref_cache.get_or_compute(
          "gt", emb, r, self.tag(p), lambda: emb.audio_features(*media.load_audio(p), self.dur, str(p))))
    return self.spread(sorted(self.gt), one, f"{emb.name}: reference audio")

  def video_feat(self, emb, key, loader, r):
    p = self.videos[r]
    return self.guarded(p, "video", emb, lambda: self.ref_cache.get_or_compute(
        "video", emb, r, self.tag(p), lambda: emb.video_features({key: loader(p, self.dur)}, str(p))))

  def video_feats(self, emb, key, loader):
    return self.spread(sorted(set(self.pairing.gen_to_ref.values()) & set(self.videos)),
                       lambda r: self.video_feat(emb, key, loader, r), f"{emb.name}: video")

  def caption_feats(self, emb, names):
    def one(r):
      return self.guarded(f"{self.inputs.captions_csv} [{r}]", "caption", emb, lambda: self.ref_cache.get_or_compute(
          "text", emb, r, "caption=" + self.captions[r], lambda: emb.text_features(self.captions[r])))
    return self.spread(names, one, f"{emb.name}: captions")


# --------------------------------------------------------------------------------------------------
# Scorers: one per metric family, run in the order of SCORERS
# --------------------------------------------------------------------------------------------------


def _score_panns(p: _Passes, e: Embedder):
  """FD-PANN (all vs all), KL-PANNS (the KL_PANNs pairs), ISC-PANNS (every generated clip)."""
  m, counts = p.metrics, p.counts
  fg, fr = p.gen_audio_feats(e), p.ref_audio_feats(e)
  if fr:
    m["FD-PANN"] = metrics.frechet_distance(np.stack([v["panns_2048"] for v in fg.values()]),
                                            np.stack([v["panns_2048"] for v in fr.values()]), method=p.fdm)
  pp = [(g, r) for g, r in p.pairing.kl_panns.items() if r in fr and g in fg]
  if pp:
    m["KL-PANNS-softmax"] = metrics.kl_softmax(np.stack([fr[r]["panns_logits"] for _, r in pp]),
                                               np.stack([fg[g]["panns_logits"] for g, _ in pp]))
  elif p.pairing.kl_panns != p.pairing.gen_to_ref and p.paired:
    p.notes.append("KL-PANNS-softmax: skipped, no generated stem equals a reference name (av-benchmark pairs "
                   "KL_PANNs by the exact stem; --config.pairing=stem pairs NAME-K too)")
  counts["KL-PANNS-softmax"] = len(pp)
  logits = np.stack([fg[g]["panns_logits"] for g in sorted(fg)])
  _inception(m, "ISC-PANNS", logits, p.notes)
  counts["ISC-PANNS"] = len(logits)


def _score_vggish(p: _Passes, e: Embedder):
  """FD-VGG: every 0.96 s patch of every clip, generated vs reference."""
  fg, fr = p.gen_audio_feats(e), p.ref_audio_feats(e)
  if fr:
    p.metrics["FD-VGG"] = metrics.frechet_distance(np.concatenate([v["vggish"] for v in fg.values()]),
                                                   np.concatenate([v["vggish"] for v in fr.values()]), method=p.fdm)
    p.counts["FD-VGG-patches-generated"] = sum(len(v["vggish"]) for v in fg.values())


def _score_passt(p: _Passes, e: Embedder):
  """FD-PASST and KL-PASST on the paired clips; ISC-PASST."""
  m, counts = p.metrics, p.counts
  fg, fr = p.gen_audio_feats(e), p.ref_audio_feats(e)
  pp = [(g, r) for g, r in p.paired if r in fr and g in fg]
  if pp:
    m["FD-PASST"] = metrics.frechet_distance(np.stack([fg[g]["passt_embed"] for g, _ in pp]),
                                             np.stack([fr[r]["passt_embed"] for _, r in pp]), method=p.fdm)
    m["KL-PASST-softmax"] = metrics.kl_softmax(np.stack([fr[r]["passt_logits"] for _, r in pp]),
                                               np.stack([fg[g]["passt_logits"] for g, _ in pp]))
  counts["FD-PASST"] = len(pp)
  # av-benchmark (paired mode) scores ISC-PASST on the paired generated clips, ISC-PANNS on all of them.
  isc = [g for g, _ in pp] if fr else sorted(fg)
  _inception(m, "ISC-PASST", np.stack([fg[g]["passt_logits"] for g in isc]), p.notes)
  counts["ISC-PASST"] = len(isc)


def _score_imagebind(p: _Passes, e: Embedder):
  """IB-Score: cosine of the video's and the generated audio's embeddings, paired clips."""
  fv = p.video_feats(e, "ib_crops", media.imagebind_video_input)
  fa = p.gen_audio_feats(e, [g for g, r in p.paired if r in fv])
  pp = [(g, r) for g, r in p.paired if r in fv and g in fa]
  if pp:
    p.metrics["IB-Score"] = metrics.mean_cosine(np.stack([fv[r]["ib_video"] for _, r in pp]),
                                                np.stack([fa[g]["ib_audio"] for g, _ in pp]))
  p.counts["IB-Score"] = len(pp)


def _score_desync(p: _Passes, e: Embedder):
  """DeSync: Synchformer's offset between each video and its generated audio."""
  pp = [(g, r) for g, r in p.paired if r in p.videos]
  pair_of = dict(pp)

  def desync(g):   # per pair on the host that owns it: only the (2, 21) logits travel, not the features
    v = p.video_feat(e, "sync_frames", media.sync_video_input, pair_of[g])
    a = None if v is None else p.gen_audio(e, g)
    lg = None if a is None else p.guarded(p.gen[g], "generated", e,
                                          lambda: e.sync_logits(v["sync_video"], a["sync_audio"]))
    return None if lg is None else {"logits": lg}

  lg = p.spread([g for g, _ in pp], desync, "synchformer: DeSync")
  if lg:
    p.metrics["DeSync"] = metrics.desync_from_logits(np.stack([lg[g]["logits"] for g, _ in pp if g in lg]))
  p.counts["DeSync"] = len(lg)


def _score_clap(p: _Passes, e: Embedder):
  """LAION-CLAP-Score: cosine of the caption's and the generated audio's embeddings, paired clips."""
  pp = [(g, r) for g, r in p.paired if r in p.captions]
  ft = p.caption_feats(e, sorted({r for _, r in pp}))
  fa = p.gen_audio_feats(e, [g for g, r in pp if r in ft])
  pp = [(g, r) for g, r in pp if r in ft and g in fa]
  if pp:
    p.metrics["LAION-CLAP-Score"] = metrics.mean_cosine(np.stack([ft[r]["clap_text"] for _, r in pp]),
                                                        np.stack([fa[g]["clap_audio"] for g, _ in pp]))
  p.counts["LAION-CLAP-Score"] = len(pp)


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A metric family: `score(passes, embedder)` adds its metrics; it runs when the inputs hold what it needs."""
  score: Callable[[_Passes, Embedder], None]
  needs_video: bool = False
  needs_captions: bool = False

  def ready(self, p: _Passes) -> bool:
    return (not self.needs_video or bool(p.videos)) and (not self.needs_captions or p.captions is not None)


# The embedder slot (embedders.metric_key) -> its scorer, in the order evaluate runs them.
SCORERS: dict[str, Scorer] = {
    "panns": Scorer(_score_panns),
    "vggish": Scorer(_score_vggish),
    "passt": Scorer(_score_passt),
    "imagebind": Scorer(_score_imagebind, needs_video=True),
    "synchformer": Scorer(_score_desync, needs_video=True),
    "clap": Scorer(_score_clap, needs_captions=True),
}
ALL_EMBEDDERS = tuple(SCORERS)


def evaluate(inputs: EvalInputs, embedders: Mapping[str, Embedder], *, failures: checks.Failures | None = None,
             strict: bool = False) -> dict:
  """Runs every given embedder over the clips it needs and returns {'metrics', 'pairing', 'counts',
  'failures'}. Clips that cannot be scored are listed under 'failures' ([{"item", "reason", "role"}])
  and left out; strict=True raises at the first one instead."""
  failures = failures if failures is not None else checks.Failures(strict=strict)
  gen = list_media(inputs.gen_dir, media.AUDIO_EXTS, "gen_dir")
  if not gen:
    raise checks.InputError(f"gen_dir {inputs.gen_dir}: no .wav/.flac files")
  videos = list_media(inputs.video_dir, media.VIDEO_EXTS, "video_dir") if inputs.video_dir else {}
  gt = list_media(inputs.gt_audio_dir, media.AUDIO_EXTS, "gt_audio_dir") if inputs.gt_audio_dir else dict(videos)
  captions = read_captions(inputs.captions_csv) if inputs.captions_csv else None
  listed_gen, listed_videos = dict(gen), dict(videos)
  gen, gt, videos = screen_clips(gen, gt, videos, duration_s=inputs.duration_s, failures=failures,
                                 check_videos=any(s.needs_video for k, s in SCORERS.items() if k in embedders))
  if not gen:
    raise checks.InputError(f"gen_dir {inputs.gen_dir}: none of the {len(listed_gen)} generated clips can be "
                            f"read ({failures.items[0]['item']}: {failures.items[0]['reason']}, ...)")
  refs = {**{k: None for k in gt}, **{k: None for k in listed_videos}}
  pairing = pair(gen, refs, captions, inputs.pairing)
  if pairing.gen_unpaired:
    log.warning("%d generated clips have no reference and count only in IS/FD: %s",
                len(pairing.gen_unpaired), pairing.gen_unpaired[:10])
  p = _Passes(inputs, gen, gt, videos, captions, pairing, failures)
  for name, scorer in SCORERS.items():
    if name in embedders and scorer.ready(p):
      scorer.score(p, embedders[name])

  m, counts = p.metrics, p.counts
  kl = metrics.combined_kl(m)
  if kl is not None:
    m["KL"] = kl
  p.sync_failures()   # (every guarded call runs inside a spread; this keeps a later one from being lost)
  counts.update(generated=len(gen), reference_audio=len(gt), videos=len(videos), failed=len(failures))
  cache = {"hits": p.gen_cache.hits + p.ref_cache.hits, "misses": p.gen_cache.misses + p.ref_cache.misses}
  per_host = hosts.allgather_json(cache)
  if len(per_host) > 1:   # this host's own counts first, then every host's
    cache = dict(cache, hosts=per_host)
  return {"metrics": {k: float(v) for k, v in m.items()}, "pairing": pairing.report(), "counts": counts,
          "failures": list(failures.items), "cache": cache,
          "duration_s": p.dur, "notes": p.notes,
          "embedders": {k: ("flax" if v.native else "pytorch") for k, v in embedders.items()}}


def write_outputs(result: dict, out_json, *, row_name: str = "generated", ib_scale: float = 100.0) -> str:
  """Writes the JSON (metrics + pairing report; IB-Score raw) and returns the markdown table (also saved
  as .md; IB-score x ib_scale, x100 as the paper prints it)."""
  table = metrics.markdown_table({row_name: result["metrics"]}, ib_scale=ib_scale)
  result = dict(result, table=table, ib_scale=ib_scale)
  p = pathlib.Path(out_json).expanduser()
  checks.writable_dir(p.parent, "--config.out's folder")
  with checks.atomic_files(p, p.with_suffix(".md"), p.parent / "failures.json") as (tj, tm, tf):
    tj.write_text(json.dumps(result, indent=1, sort_keys=True))
    tm.write_text(table + "\n")
    tf.write_text(json.dumps(result.get("failures", []), indent=1) + "\n")
  return table
