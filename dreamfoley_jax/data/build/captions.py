"""Captions (paper 4.3): an audio caption, a video caption, their consistency check and the integrated caption.

Each of the three roles (audio captioner, video captioner, LLM) is either
  * an OpenAI-compatible HTTP endpoint the user runs (vLLM, SGLang, llama.cpp, ...; `/chat/completions`,
    media as base64 data URLs: `audio_url` (16 kHz wav) / `video_url` (the standardised mp4)), or
  * a local transformers directory (`from_pretrained(..., local_files_only=True)`): Qwen2-Audio /
    Qwen2.5-Omni thinker for audio, Qwen2.5-VL for video (frames at 2 fps through its image processor,
    packed into video patches: no torchvision needed), a causal LM (Qwen2.5-Instruct) for the LLM.
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
import functools
import io
import json
import pathlib
import time
import urllib.error
import urllib.request
from typing import Callable, Mapping, Sequence

import numpy as np

from dreamfoley_jax.audio.resample import resample_np
from dreamfoley_jax.data.build import caption_prompts
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.data.build.model_stage import ModelStage, path_fingerprint


LLM_BACKENDS = ("transformers", "jax")


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
  llm_backend: str = "transformers"   # a local llm_model: transformers (HF directory) | jax (converted, JaxChat)
  llm_tokenizer: str = ""       # jax: the HF directory with the tokenizer files (default: the converted one's source)
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

  def __post_init__(self):
    if self.llm_backend not in LLM_BACKENDS:
      raise ValueError(f"--caption_llm_backend {self.llm_backend!r}: choose from {', '.join(LLM_BACKENDS)}")
    if self.llm_backend == "jax" and self.llm_endpoint:
      raise ValueError("--caption_llm_backend=jax runs a local converted checkpoint: drop --caption_llm_endpoint")


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
  (Qwen2-Audio / Qwen2.5-Omni thinker via AutoProcessor), 'video' (Qwen2.5-VL: tokenizer + image processor,
  see video_inputs)."""

  def __init__(self, path: str, kind: str, cfg: CaptionConfig):
    import transformers

    self.kind, self.cfg, self.name = kind, cfg, f"{path} (transformers)"
    kw = {"local_files_only": True}
    if kind == "text":
      self.tok = transformers.AutoTokenizer.from_pretrained(path, **kw)
      self.model = transformers.AutoModelForCausalLM.from_pretrained(path, **kw).eval()
      return
    arch = transformers.AutoConfig.from_pretrained(path, **kw).architectures[0]
    self.model = getattr(transformers, arch).from_pretrained(path, **kw).eval()
    if kind == "video":
      # not AutoProcessor: transformers' Qwen2-VL video processor needs torchvision, and PyPI's torchvision
      # builds are CUDA builds that do not load beside the CPU torch
      self.tok = transformers.AutoTokenizer.from_pretrained(path, **kw)
      self.image_processor = transformers.AutoImageProcessor.from_pretrained(path, **kw)
      self.chat_template = processor_chat_template(path) or self.tok.chat_template
      if not self.chat_template:
        raise ValueError(f"{path}: no chat template (chat_template.jinja / chat_template.json / tokenizer_config.json)")
      self.video_token_id = int(self.model.config.video_token_id)
      self.video_token = self.tok.convert_ids_to_tokens(self.video_token_id)
      self.video_size = video_size(path)
    else:
      self.processor = transformers.AutoProcessor.from_pretrained(path, **kw)

  def __call__(self, text, audio=None, video=None) -> str:
    import torch

    if self.kind == "text":
      ids = self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
      with torch.no_grad():
        out = self.model.generate(**ids, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
      reply = self.tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    elif audio is not None:
      msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}]
      prompt = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
      sr = self.processor.feature_extractor.sampling_rate
      inputs = self.processor(text=prompt, audio=[resample_np(audio[0], audio[1], sr)], sampling_rate=sr,
                              return_tensors="pt")
      with torch.no_grad():
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
      reply = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    else:
      from dreamfoley_jax.data.build import standardise

      with standardise.MediaFile(video) as p:
        frames = _frames_2fps(p)
      inputs = self.video_prompt_inputs(text, frames, VIDEO_FPS)
      with torch.no_grad():
        out = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
      reply = self.tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    if not reply.strip():
      raise ReplyError(f"{self.name}: empty reply")
    return reply.strip()

  def video_prompt_inputs(self, text: str, frames_TxHxWx3: np.ndarray, fps: float) -> dict:
    """Qwen2.5-VL generate() inputs for one video + prompt: the chat prompt with the video placeholder
    expanded to one token per merged patch, and the video tensors (video_inputs)."""
    import torch

    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
    prompt = self.tok.apply_chat_template(msgs, chat_template=self.chat_template, add_generation_prompt=True,
                                          tokenize=False)
    if prompt.count(self.video_token) != 1:
      raise ValueError(f"{self.name}: the chat template put {prompt.count(self.video_token)} {self.video_token} "
                       "in a one-video prompt")
    vid = video_inputs(self.image_processor, frames_TxHxWx3, fps, self.video_size)
    n = int(np.prod(vid["video_grid_thw"][0])) // self.image_processor.merge_size ** 2
    enc = self.tok(prompt.replace(self.video_token, self.video_token * n), return_tensors="pt")
    ids = enc["input_ids"]
    if int((ids == self.video_token_id).sum()) != n:
      raise ValueError(f"{self.name}: {self.video_token} did not tokenize to one id per video patch")
    return {"input_ids": ids, "attention_mask": enc["attention_mask"],
            "mm_token_type_ids": (ids == self.video_token_id).to(torch.int32) * 2,   # 0 text, 1 image, 2 video
            **{k: torch.from_numpy(v) for k, v in vid.items()}}


VIDEO_FPS = 2.0   # Qwen2.5-VL's default video sampling rate
# pixels per frame: qwen-vl-utils' / transformers' Qwen2-VL video processor defaults (a checkpoint's
# video_preprocessor_config.json overrides them)
VIDEO_SIZE = {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28}


def video_size(path) -> dict[str, int]:
  """The per-frame pixel range of a local checkpoint's video processor config, else VIDEO_SIZE."""
  f = pathlib.Path(path) / "video_preprocessor_config.json"
  if not f.exists():
    return dict(VIDEO_SIZE)
  d = json.loads(f.read_text())
  size = dict(d.get("size") or {})
  return {"shortest_edge": int(d.get("min_pixels") or size.get("shortest_edge") or VIDEO_SIZE["shortest_edge"]),
          "longest_edge": int(d.get("max_pixels") or size.get("longest_edge") or VIDEO_SIZE["longest_edge"])}


def video_inputs(image_processor, frames_TxHxWx3: np.ndarray, fps: float,
                 size: Mapping[str, int] = VIDEO_SIZE) -> dict[str, np.ndarray]:
  """Qwen2-VL / Qwen2.5-VL video tensors from an even number of frames, without the video processor.

  Each frame goes through the model's own image processor (resize into `size` pixels on the 28-px grid, CLIP
  normalisation, patchify), which lays out one frame as (patches, C x tp x P x P) with the frame repeated tp times along
  the temporal patch; frames 2g..2g+tp-1 are then packed into the tp slots of temporal patch g, the
  layout of the video processor (grid (T/tp, h, w), patches t-major). second_per_grid_ts = tp / fps.
  """
  tp = int(image_processor.temporal_patch_size)
  T = len(frames_TxHxWx3)
  if T == 0 or T % tp:
    raise ValueError(f"video_inputs: {T} frames; need a positive multiple of temporal_patch_size={tp}")
  out = image_processor(images=list(frames_TxHxWx3), size=dict(size), return_tensors="np")
  pv, grid = np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])
  if not (grid == grid[0]).all():
    raise ValueError(f"video_inputs: frames resized to different grids {np.unique(grid, axis=0).tolist()}")
  n, P = int(grid[0, 1] * grid[0, 2]), int(image_processor.patch_size)
  x = pv.reshape(T // tp, tp, n, -1, tp, P, P)                     # (group, frame in group, patch, C, slot, P, P)
  x = np.stack([x[:, k, :, :, k] for k in range(tp)], axis=3)      # slot k <- frame k of the group
  return {"pixel_values_videos": x.reshape(T // tp * n, -1),
          "video_grid_thw": np.array([[T // tp, grid[0, 1], grid[0, 2]]], np.int64),
          "second_per_grid_ts": np.array([tp / fps], np.float32)}


def processor_chat_template(path) -> str | None:
  """The processor's chat template of a local checkpoint (chat_template.jinja or chat_template.json)."""
  p = pathlib.Path(path)
  if (p / "chat_template.jinja").exists():
    return (p / "chat_template.jinja").read_text()
  if (p / "chat_template.json").exists():
    return json.loads((p / "chat_template.json").read_text()).get("chat_template")
  return None


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


class JaxChat:
  """A Qwen2 / Qwen2.5(-Instruct) causal LM converted to the project's Flax Qwen2 (tools/convert_checkpoint.py
  --family qwen2), greedy with the chat template. The prompt is prefilled into the decoder's KV cache and
  each new token is one cached decode step (models/qwen2.py's cache path, as the sampler uses it).

  The tokenizer and chat template come from transformers' tokenizer files (tokenizer.json +
  tokenizer_config.json / chat_template.jinja) in `tokenizer_dir`, by default the directory the checkpoint
  was converted from (recorded in its dreamfoley_meta.json); generation stops at generation_config.json's
  eos_token_id(s) there (Qwen2.5-Instruct: <|im_end|> and <|endoftext|>), else config.json's, else the
  tokenizer's. Prompts are padded to a multiple of PROMPT_BUCKET tokens so a few shapes get compiled."""

  PROMPT_BUCKET = 64

  def __init__(self, path: str, cfg: CaptionConfig, tokenizer_dir: str = ""):
    import transformers

    from dreamfoley_jax.convert import common as convert_common
    from dreamfoley_jax.convert import qwen2 as convert_qwen2

    params, model_cfg = convert_qwen2.load_orbax(path)
    tok_dir = tokenizer_dir or convert_common.read_metadata(path).get("source", "")
    if not tok_dir or not (pathlib.Path(tok_dir) / "tokenizer.json").exists():
      raise ValueError(f"{path}: no tokenizer.json in {tok_dir or '(no source recorded)'}; pass "
                       "--caption_llm_tokenizer (the Qwen2.5-Instruct directory it was converted from)")
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    self._setup(params, model_cfg, cfg, f"{path} (jax)", tok, _stop_ids(pathlib.Path(tok_dir), tok))

  @classmethod
  def from_params(cls, params, model_cfg, cfg: CaptionConfig, name: str, tok=None, stop_ids=frozenset()):
    """From in-memory params (benchmarks; `generate_ids` needs no tokenizer)."""
    self = cls.__new__(cls)
    self._setup(params, model_cfg, cfg, name, tok, frozenset(stop_ids))
    return self

  def _setup(self, params, model_cfg, cfg, name, tok, stop_ids):
    import jax

    from dreamfoley_jax.models import qwen2

    self.cfg, self.name, self.model_cfg, self.tok, self.stop_ids = cfg, name, model_cfg, tok, stop_ids
    self.params = jax.device_put(params)
    self.init_cache = lambda n: qwen2.init_cache(self.model_cfg, 1, n)
    self._prefill, self._step = _greedy_fns(model_cfg)

  def generate_ids(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of `prompt_ids` (the stop token included when reached)."""
    import jax.numpy as jnp

    T = len(prompt_ids)
    Tp = -(-T // self.PROMPT_BUCKET) * self.PROMPT_BUCKET
    if Tp + max_new_tokens > self.model_cfg.max_position_embeddings:
      raise ReplyError(f"{self.name}: prompt of {T} tokens + {max_new_tokens} new exceeds the model's "
                       f"{self.model_cfg.max_position_embeddings} positions")
    ids = np.zeros((1, Tp), np.int32)
    ids[0, :T] = prompt_ids
    valid = np.arange(Tp)[None] < T             # padding slots stay invalid keys in the cache
    token, cache = self._prefill(self.params, jnp.asarray(ids), jnp.asarray(valid), T - 1,
                                 self.init_cache(Tp + max_new_tokens))
    out = []
    for i in range(max_new_tokens):
      t = int(token)
      out.append(t)
      if t in self.stop_ids or i == max_new_tokens - 1:
        break
      # position T + i (the real prompt length, not the padded slot the cache writes next)
      token, cache = self._step(self.params, token, jnp.asarray(T + i, jnp.int32), cache)
    return out

  def prompt_ids(self, text: str) -> list[int]:
    ids = self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"]
    return list(ids)

  def __call__(self, text, audio=None, video=None) -> str:
    if audio is not None or video is not None:
      raise ValueError(f"{self.name}: a text-only LLM backend got media")
    out = self.generate_ids(self.prompt_ids(text), self.cfg.max_new_tokens)
    reply = self.tok.decode(out, skip_special_tokens=True)
    if not reply.strip():
      raise ReplyError(f"{self.name}: empty reply")
    return reply.strip()


@functools.lru_cache(maxsize=4)
def _greedy_fns(model_cfg):
  """Jitted (prefill, decode step) of a Qwen2ForCausalLM, shared by every JaxChat of one model config (Beam
  makes a stage copy per worker thread; their compiled programs are the same)."""
  import jax
  import jax.numpy as jnp

  from dreamfoley_jax.models import qwen2

  model = qwen2.Qwen2ForCausalLM(model_cfg)

  def prefill(params, ids_1xT, valid_1xT, last, cache):
    logits, aux = model.apply({"params": params}, ids_1xT, attention_mask_BxT=valid_1xT, cache=cache)
    return jnp.argmax(logits[0, last]).astype(jnp.int32), aux["cache"]

  def step(params, token, position, cache):
    logits, aux = model.apply({"params": params}, token.reshape(1, 1), positions_BxT=position.reshape(1, 1),
                              cache=cache)
    return jnp.argmax(logits[0, -1]).astype(jnp.int32), aux["cache"]

  return jax.jit(prefill, donate_argnums=4), jax.jit(step, donate_argnums=3)


def _stop_ids(d: pathlib.Path, tok) -> frozenset[int]:
  for name in ("generation_config.json", "config.json"):
    f = d / name
    if f.exists():
      eos = json.loads(f.read_text()).get("eos_token_id")
      if eos is not None:
        return frozenset(eos if isinstance(eos, list) else [eos])
  if tok.eos_token_id is None:
    raise ValueError(f"{d}: no eos_token_id in generation_config.json, config.json or the tokenizer")
  return frozenset([tok.eos_token_id])


def make_backend(endpoint: str, model: str, kind: str, cfg: CaptionConfig):
  if not model:
    raise ValueError(f"the caption stage needs --caption_{kind if kind != 'text' else 'llm'}_model")
  if endpoint:
    return HttpChat(endpoint, model, cfg)
  if kind == "text" and cfg.llm_backend == "jax":
    return JaxChat(model, cfg, cfg.llm_tokenizer)
  return LocalChat(model, kind, cfg)


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
    local = any(isinstance(b, (LocalChat, JaxChat)) for b in (self.audio_cap, self.video_cap, self.llm))
    n = 1 if local else max(1, min(self.cfg.concurrency, len(clips)))   # a local model: one generate at a time
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
      futs = {ex.submit(self.caption_one, c): c.clip_id for c in clips}
      results = {futs[f]: f.result() for f in concurrent.futures.as_completed(futs)}
    return join_by_id(clips, results)

  def process(self, clip):
    return self.process_batch([clip])[0]
