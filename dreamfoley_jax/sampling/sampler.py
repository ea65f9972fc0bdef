"""The public sampler: inputs -> prefill -> loop -> decode, as one jitted program (`sample_program`).

Legend: B clips, Lt text tokens, Ln negative-text tokens, Tv video frames (25 Hz), C prefix frames,
La delayed columns, K codebooks, V per-codebook vocab.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax import sharding
from dreamfoley_jax.models import foley
from dreamfoley_jax.sampling import layout, placement
from dreamfoley_jax.sampling.config import SampleConfig
from dreamfoley_jax.sampling.loop import SamplerLoop
from dreamfoley_jax.sampling.prefill import prefill
from dreamfoley_jax.sampling.state import Prompt, SamplingState

Array = jax.Array


def decode(cfg: foley.FoleyConfig, state: SamplingState, max_frames: int) -> dict:
  """The finished buffer as the sampler's result (see `sample`), still on device."""
  res = {"delayed": state.ids_BxLaxK, "vacant": state.vacant_BxLaxK,
         "codes": layout.frames_from_delayed(cfg, state.ids_BxLaxK, state.lengths_B, max_frames, xp=jnp),
         "lengths": state.lengths_B}
  if state.logits_BxLaxKxV is not None:
    res["logits"] = state.logits_BxLaxKxV
  return res


@functools.partial(jax.jit, static_argnames=("cfg", "sc", "max_frames", "return_logits"))
def sample_program(params, prompt: Prompt, keys_B: Array, *, cfg: foley.FoleyConfig, sc: SampleConfig,
                   max_frames: int, return_logits: bool = False) -> dict:
  """The jitted sampler: prefill -> loop -> decode. `sample` calls it; `sample_program.lower(...)` with
  abstract (ShapeDtypeStruct) params / prompt / keys compiles it ahead of time (aot.py)."""
  state = prefill(cfg, sc, params, prompt, keys_B, max_frames, return_logits)
  state = SamplerLoop(cfg, sc).run(params, state)
  res = decode(cfg, state, max_frames)
  res["steps"] = state.step - prompt.num_prefix
  return res


def _pad_text(ids, mask, n):
  ids, mask = np.asarray(ids), np.asarray(mask, bool)
  pad = n - ids.shape[1]
  if pad <= 0:
    return ids, mask
  return np.pad(ids, ((0, 0), (0, pad))), np.pad(mask, ((0, 0), (0, pad)))


def item_keys(seed: int, item_seeds) -> Array:
  """(B,) PRNG keys: fold_in(key(seed), item_seed_i)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(item_seeds, jnp.uint32))


def make_prompt(cfg: foley.FoleyConfig, batch: dict, lengths, *, sample_cfg: SampleConfig = SampleConfig(),
                drop_text=None, drop_video=None, negative_text_ids=None, negative_text_mask=None, negative=None,
                prefix_codes=None) -> Prompt:
  """The checked `Prompt` of `sample`'s arguments (host side; see `sample` for their meaning)."""
  lengths = np.asarray(lengths, np.int32).reshape(-1)
  B = lengths.shape[0]
  batch = dict(batch)
  Lt = np.asarray(batch["text_ids"]).shape[1]
  batch.setdefault("text_mask", np.ones((B, Lt), bool))
  neg_ids = neg_mask = neg = None
  if negative_text_ids is not None:
    if sample_cfg.cfg_scale is None:
      raise ValueError("a negative prompt needs cfg_scale (it replaces the unconditional text)")
    neg_ids = np.asarray(negative_text_ids)
    neg_mask = np.ones(neg_ids.shape, bool) if negative_text_mask is None else np.asarray(negative_text_mask)
    neg = np.ones((B,), bool) if negative is None else np.asarray(negative, bool)
    Lt = max(Lt, neg_ids.shape[1])
    batch["text_ids"], batch["text_mask"] = _pad_text(batch["text_ids"], batch["text_mask"], Lt)
    neg_ids, neg_mask = _pad_text(neg_ids, neg_mask, Lt)
    neg_ids, neg_mask, neg = jnp.asarray(neg_ids, jnp.int32), jnp.asarray(neg_mask), jnp.asarray(neg)
  if prefix_codes is not None:
    prefix_codes = jnp.asarray(prefix_codes, jnp.int32)
    if prefix_codes.shape[:2] != (B, cfg.num_codebooks):
      raise ValueError(f"prefix_codes must be (B={B}, K={cfg.num_codebooks}, C), got {prefix_codes.shape}")
    if lengths.min() < prefix_codes.shape[-1]:
      raise ValueError(f"every length must cover the prefix ({prefix_codes.shape[-1]} frames): {lengths.tolist()}")
  # Always arrays (all-False = keep): one compiled program for every mode.
  dt = jnp.zeros((B,), bool) if drop_text is None else jnp.asarray(drop_text, bool).reshape(B)
  dv = jnp.zeros((B,), bool) if drop_video is None else jnp.asarray(drop_video, bool).reshape(B)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  text = {k: batch.pop(k) for k in ("text_ids", "text_mask")}
  return Prompt(text_ids=text["text_ids"], text_mask=text["text_mask"], video=batch, lengths=jnp.asarray(lengths),
                drop_text=dt, drop_video=dv, negative_text_ids=neg_ids, negative_text_mask=neg_mask,
                negative=neg, prefix_codes=prefix_codes)


def sample(cfg: foley.FoleyConfig, params, batch: dict, lengths, *, sample_cfg: SampleConfig = SampleConfig(),
           seed: int = 0, item_seeds=None, max_frames: Optional[int] = None, drop_text=None, drop_video=None,
           negative_text_ids=None, negative_text_mask=None, negative=None, prefix_codes=None,
           return_logits: bool = False, mesh=None) -> dict:
  """Generates audio codes for a batch of clips.

  cfg, params: the model (unboxed params). batch: the prompt fields of `DreamFoley.__call__` (text_ids,
  text_mask, sync_feats/clip_feats or video_feats, video_mask). lengths (B,): frames to generate per clip
  (25 per second), each <= max_frames (default max(lengths); pass a bucket size to share compilations).
  drop_text / drop_video (B,) bool: conditional-pass drops (video-only: drop_text; text-only:
  drop_video). mesh: sample sharded over a (data, fsdp, tensor) mesh (sharding.make_mesh): params are laid
  out as the trainer lays them out (`place_params`), the clips split over (data, fsdp) when they divide
  evenly. negative_text_ids/_mask (B, Ln) + negative (B,) bool: items whose unconditional pass uses
  the negative text (with null video) instead of null text. prefix_codes (B, K, C): the first C frames
  of every clip are given (windowed continuation); each length must be >= C.

  Returns numpy {"codes": (B,K,max_frames) frame-aligned, zero beyond lengths; "lengths": (B,);
  "delayed": (B,La,K) the full delayed token buffer; "vacant": (B,La,K); "steps": decode steps run;
  "logits" (B,La,K,V) guided logits, row j predicting column j+1 (only with return_logits)}.
  """
  lengths = np.asarray(lengths, np.int32).reshape(-1)
  B = lengths.shape[0]
  max_frames = int(max_frames or lengths.max())
  if lengths.min() < 1 or lengths.max() > max_frames:
    raise ValueError(f"lengths must be in [1, max_frames={max_frames}], got {lengths.tolist()}")
  prompt = make_prompt(cfg, batch, lengths, sample_cfg=sample_cfg, drop_text=drop_text, drop_video=drop_video,
                       negative_text_ids=negative_text_ids, negative_text_mask=negative_text_mask,
                       negative=negative, prefix_codes=prefix_codes)
  keys_B = item_keys(seed, np.arange(B) if item_seeds is None else np.asarray(item_seeds))
  ctx = contextlib.nullcontext()
  if mesh is not None:
    rules = placement.mesh_rules(mesh, B)
    params = placement.place_params(cfg, params, mesh, rules)
    put = lambda d: {k: jax.device_put(v, placement.clip_sharding(mesh, rules, v.ndim)) for k, v in d.items()}
    text = put({"text_ids": prompt.text_ids, "text_mask": prompt.text_mask})
    prompt = prompt.replace(video=put(prompt.video), **text)
    ctx = sharding.use_mesh(mesh, rules)
  with ctx:
    out = sample_program(params, prompt, keys_B, cfg=cfg, sc=sample_cfg, max_frames=max_frames,
                         return_logits=return_logits)
  return jax.tree.map(np.asarray, out)
