"""Captions (paper 4.3): an audio caption, a video caption, their consistency check and the integrated caption.

Each of the three roles (audio captioner, video captioner, LLM) is either
  * an OpenAI-compatible HTTP endpoint the user runs (vLLM, SGLang, llama.cpp, ...; `/chat/completions`,
    media as base64 data URLs: `audio_url` (16 kHz wav) / `video_url` (the standardised mp4)), or
  * a local transformers directory (`from_pretrained(..., local_files_only=True)`): Qwen2-Audio /
    Qwen2.5-Omni thinker for audio, Qwen2.5-VL for video (transformers' video processor needs
    torchvision), a causal LM (Qwen2.5-Instruct) for the LLM.
Prompts live in caption_prompts.py; every caption keeps its provenance (role, model, prompt id) in the
record's `captions_json`, and `caption` becomes the integrated caption (the input's own caption, if any,
is kept in the provenance as role "input").

A request that times out, fails or gets a malformed reply (not JSON, no choices, empty text, a consistency
verdict that is not yes/no) is retried `retries` times with backoff; then the clip becomes a
`caption_failed` rejection with the last error: nothing is lost silently. Inconsistent captions are a
`caption_inconsistent` rejection. The clips of a batch are captioned concurrently and joined back to
their clips by clip id, checked (same count, same id set), never by order.
"""
from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import json
import time
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build import caption_prompts
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint


class ReplyError(Exception):
  """A request that failed or whose reply could not be used (retried)."""


@dataclasses.dataclass(frozen=True)
class CaptionConfig:
  # how it runs, not what it produces: a rerun may change these and resume into the same folder
  NOT_IN_HASH = ("audio_endpoint", "video_endpoint", "llm_endpoint", "api_key_env", "timeout_s", "retries",
                 "backoff_s", "concurrency")
  audio_endpoint: str = ""      # e.g. http://127.0.0.1:8000/v1 ; empty: audio_model is a local directory
  audio_model: str = ""         # the endpoint's model name, or a local Qwen2-Audio / Qwen2.5-Omni directory
  video_endpoint: str = ""
  video_model: str = ""         # endpoint model name, or a local Qwen2.5-VL directory
  llm_endpoint: str = ""
  llm_model: str = ""           # endpoint model name, or a local causal-LM directory (Qwen2.5-Instruct)
  api_key_env: str = ""         # name of an environment variable holding a bearer token (never the token)
  timeout_s: float = 120.0
  retries: int = 2
  backoff_s: float = 1.0
  max_new_tokens: int = 96
  check_consistency: bool = True
  integrate: bool = True
  concurrency: int = 8          # requests in flight per batch
  audio_prompt: str = "audio_caption@1"
  video_prompt: str = "video_caption@1"
  consistency_prompt: str = "consistency@1"
  integrate_prompt: str = "integrate@1"


# --------------------------------------------------------------------------------------------------
# Backends: (prompt text, media) -> reply text; raise ReplyError on anything unusable
# --------------------------------------------------------------------------------------------------

def wav_bytes(audio_N: np.ndarray, rate: int) -> bytes:
  import soundfile as sf

  buf = io.BytesIO()
  sf.write(buf, np.clip(audio_N, -1, 1), rate, format="WAV", subtype="PCM_16")
  return buf.getvalue()


class HttpChat:
  """An OpenAI-compatible chat endpoint (one request per call; greedy: temperature 0)."""

  def __init__(self, endpoint: str, model: str, cfg: CaptionConfig):
    self.url = endpoint.rstrip("/") + "/chat/completions"
    self.model, self.cfg = model, cfg
    self.name = f"{model}@{endpoint}"

  def __call__(self, text: str, audio: tuple[np.ndarray, int] | None = None, video: bytes | None = None) -> str:
    import os

    content: list = []
    if audio is not None:
      b64 = base64.b64encode(wav_bytes(*audio)).decode()
      content.append({"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}})
    if video is not None:
      b64 = base64.b64encode(video).decode()
      content.append({"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64}"}})
    content.append({"type": "text", "text": text})
    body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": content}],
                       "temperature": 0, "max_tokens": self.cfg.max_new_tokens}).encode()
    headers = {"Content-Type": "application/json"}
    if self.cfg.api_key_env and os.environ.get(self.cfg.api_key_env):
      headers["Authorization"] = f"Bearer {os.environ[self.cfg.api_key_env]}"
    req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
    try:
      with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
        raw = r.read()
    except urllib.error.HTTPError as e:
      raise ReplyError(f"{self.url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
      raise ReplyError(f"{self.url}: {type(e).__name__}: {getattr(e, 'reason', e)}") from None
    try:
      reply = json.loads(raw)
      out = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
      raise ReplyError(f"{self.url}: malformed reply {raw[:120]!r}") from None
    if not isinstance(out, str) or not out.strip():
      raise ReplyError(f"{self.url}: empty reply")
    return out.strip()


class LocalChat:
  """A local transformers model (greedy). kind: 'text' (AutoModelForCausalLM + chat template), 'audio'
  (Qwen2-Audio / Qwen2.5-Omni thinker via AutoProcessor), 'video' (Qwen2.5-VL via AutoProcessor)."""

  def __init__(self, path: str, kind: str, cfg: CaptionConfig):
    import transformers

    self.kind, self.cfg, self.name = kind, cfg, f"{path} (transformers)"
    kw = {"local_files_only": True}
    if kind == "text":
      self.tok = transformers.AutoTokenizer.from_pretrained(path, **kw)
      self.model = transformers.AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    else:
      self.processor = transformers.AutoProcessor.from_pretrained(path, **kw)
      arch = transformers.AutoConfig.from_pretrained(path, **kw).architectures[0]
      self.model = getattr(transformers, arch).from_pretrained(path, **kw).eval()

  def __call__(self, text, audio=None, video=None) -> str:
    import torch

    if self.kind == "text":
      ids = self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
      with torch.no_grad():
        out = self.model.generate(**ids, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
      reply = self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    else:
      kind = "audio" if audio is not None else "video"
      msgs = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]
      prompt = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
      if audio is not None:
        sr = self.processor.feature_extractor.sampling_rate
        inputs = self.processor(text=prompt, audio=[resample_np(audio[0], audio[1], sr)], sampling_rate=sr,
                                return_tensors="pt")
      else:
        from dreamfoley_jax.data.build import standardise

        with standardise.MediaFile(video) as p:
          frames = _frames_2fps(p)
        inputs = self.processor(text=prompt, videos=[frames], return_tensors="pt")
      with torch.no_grad():
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
      reply = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    if not reply.strip():
      raise ReplyError(f"{self.name}: empty reply")
    return reply.strip()


def _frames_2fps(path) -> np.ndarray:
  """(T, H, W, 3) uint8 frames at 2 fps (Qwen2.5-VL's default video rate), an even count >= 2."""
  import av

  from dreamfoley_jax.eval import media

  with av.open(str(path)) as c:
    s = c.streams.video[0]
    dur = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / 1e6
  n = max(2, int(dur * 2.0))
  f = media.sample_frames(path, 2.0, n - n % 2) if n >= 2 and dur >= 1.0 else media.sample_frames(path, 2.0, 1)
  return f if len(f) % 2 == 0 else np.concatenate([f, f[-1:]])


def make_backend(endpoint: str, model: str, kind: str, cfg: CaptionConfig):
  if not model:
    raise ValueError(f"the caption stage needs --caption_{kind if kind != 'text' else 'llm'}_model")
  return HttpChat(endpoint, model, cfg) if endpoint else LocalChat(model, kind, cfg)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------

def verdict(reply: str) -> bool:
  """The consistency discriminator's yes/no; anything else is a malformed reply (retried)."""
  w = reply.strip().split()[0].strip(".,!:;\"'*").lower() if reply.strip() else ""
  if w in ("yes", "no"):
    return w == "yes"
  raise ReplyError(f"consistency verdict {reply[:60]!r} is neither yes nor no")


def ask(backend, cfg: CaptionConfig, text: str, parse: Callable[[str], object] = str, **media):
  """backend(text, **media) parsed, retried `cfg.retries` times on ReplyError; the last error re-raised."""
  last = None
  for attempt in range(cfg.retries + 1):
    try:
      return parse(backend(text, **media))
    except ReplyError as e:
      last = e
      if attempt < cfg.retries:
        time.sleep(cfg.backoff_s * 2 ** attempt)
  raise ReplyError(f"{last} (after {cfg.retries + 1} attempts)")


def join_by_id(clips: Sequence[Clip], results: Mapping[str, object]) -> list:
  """The results of `clips`, in the clips' order, matched by clip id; the count and the id set are checked."""
  want = [c.clip_id for c in clips]
  if len(set(want)) != len(want):
    raise ValueError(f"caption join: duplicate clip ids in the batch: {sorted({i for i in want if want.count(i) > 1})}")
  missing, extra = sorted(set(want) - set(results)), sorted(set(results) - set(want))
  if missing or extra or len(results) != len(want):
    raise ValueError(f"caption join: {len(results)} results for {len(want)} clips; missing {missing[:5]}, "
                     f"unexpected {extra[:5]}")
  return [results[i] for i in want]


class CaptionStage(ModelStage):
  name = "caption"

  def load(self):
    c = self.cfg
    self.audio_cap = make_backend(c.audio_endpoint, c.audio_model, "audio", c)
    self.video_cap = make_backend(c.video_endpoint, c.video_model, "video", c)
    self.llm = make_backend(c.llm_endpoint, c.llm_model, "text", c) if (c.check_consistency or c.integrate) else None
    for p in (c.audio_prompt, c.video_prompt, c.consistency_prompt, c.integrate_prompt):
      caption_prompts.get(p)

  def identity(self):
    c = self.cfg
    out = {}
    for role, ep, m in (("audio", c.audio_endpoint, c.audio_model), ("video", c.video_endpoint, c.video_model),
                        ("llm", c.llm_endpoint, c.llm_model)):
      out[role] = m if ep else path_fingerprint(m) if m else ""   # an endpoint: its served model name
    out["prompts"] = {p: caption_prompts.get(p) for p in (c.audio_prompt, c.video_prompt, c.consistency_prompt,
                                                          c.integrate_prompt)}
    return out

  def caption_one(self, clip: Clip) -> Clip | Rejection:
    c = self.cfg
    prov = [{"role": "input", "model": "", "prompt": "", "text": clip.caption}] if clip.caption else []
    try:
      a = ask(self.audio_cap, c, caption_prompts.get(c.audio_prompt),
              audio=(resample_np(clip.mono(), clip.audio_rate, 16000), 16000))
      prov.append({"role": "audio", "model": self.audio_cap.name, "prompt": c.audio_prompt, "text": a})
      v = ask(self.video_cap, c, caption_prompts.get(c.video_prompt), video=clip.video_mp4)
      prov.append({"role": "video", "model": self.video_cap.name, "prompt": c.video_prompt, "text": v})
      if c.check_consistency:
        ok = ask(self.llm, c, caption_prompts.get(c.consistency_prompt).format(audio=a, video=v), verdict)
        prov.append({"role": "consistency", "model": self.llm.name, "prompt": c.consistency_prompt,
                     "text": "yes" if ok else "no"})
        if not ok:
          return Rejection(self.name, "caption_inconsistent", 0.0, clip.source, clip.file_key, clip.clip_id,
                           f"audio {a[:60]!r} vs video {v[:60]!r}")
      final = a
      if c.integrate:
        final = ask(self.llm, c, caption_prompts.get(c.integrate_prompt).format(audio=a, video=v))
        prov.append({"role": "integrated", "model": self.llm.name, "prompt": c.integrate_prompt, "text": final})
    except ReplyError as e:
      return Rejection(self.name, "caption_failed", None, clip.source, clip.file_key, clip.clip_id, str(e)[:300])
    out = dataclasses.replace(clip, caption=final)
    return out.with_fields(captions_json=json.dumps(prov, ensure_ascii=False))

  def process_batch(self, clips):
    if not self._loaded:
      super().process_batch([])   # loads once
    local = any(isinstance(b, LocalChat) for b in (self.audio_cap, self.video_cap, self.llm))
    n = 1 if local else max(1, min(self.cfg.concurrency, len(clips)))   # a local model: one generate at a time
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
      futs = {ex.submit(self.caption_one, c): c.clip_id for c in clips}
      results = {futs[f]: f.result() for f in concurrent.futures.as_completed(futs)}
    return join_by_id(clips, results)

  def process(self, clip):
    return self.process_batch([clip])[0]
