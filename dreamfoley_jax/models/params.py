"""DreamFoley params without a training run: dummy batches, abstract / random init, the inference layout
and a per-component parameter table.

Legend (dreamfoley_jax.models): B batch, Lt text tokens, Tv video frames, Tc CLIP frames, La audio columns,
K codebooks, D width.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.models import qwen2
from dreamfoley_jax.models.foley import DreamFoley, FoleyConfig


def dummy_batch(cfg: FoleyConfig, batch: int = 1, text_len: int = 16, video_frames: int = 50,
                audio_cols: int = 59) -> dict:
  """Abstract-shaped example inputs (zeros) for init / eval_shape."""
  Tc = max(1, math.ceil(video_frames * cfg.clip_rate / cfg.sync_rate))
  b = {"text_ids": jnp.zeros((batch, max(text_len, cfg.null_text_len)), jnp.int32),
       "video_mask": jnp.ones((batch, max(video_frames, cfg.null_video_len)), bool),
       "audio_ids": jnp.zeros((batch, audio_cols, cfg.num_codebooks), jnp.int32),
       "audio_mask": jnp.ones((batch, audio_cols), bool),
       "audio_vacant": jnp.zeros((batch, audio_cols, cfg.num_codebooks), bool)}
  b["text_mask"] = jnp.ones(b["text_ids"].shape, bool)
  Tv = b["video_mask"].shape[1]
  if cfg.vision_mode == "frames":
    del b["video_mask"]
    if cfg.use_sync:
      sc = cfg.synchformer
      Tf = max(Tv, sc.window + sc.stride * ((cfg.null_video_len + sc.token_frames - 1) // sc.token_frames))
      b["frames_sync"] = jnp.zeros((batch, Tf, sc.image_size, sc.image_size, 3), jnp.uint8)
    if cfg.use_clip:
      ec = cfg.eva
      b["frames_clip"] = jnp.zeros((batch, max(Tc, cfg.null_video_len), ec.image_size, ec.image_size, 3), jnp.uint8)
    return b
  if cfg.use_sync:
    b["sync_feats"] = jnp.zeros((batch, Tv, cfg.sync_dim), jnp.float32)
  if cfg.use_clip:
    b["clip_feats"] = jnp.zeros((batch, Tc, cfg.clip_dim), jnp.float32)
  return b


def init_inputs(cfg: FoleyConfig) -> dict:
  return dummy_batch(cfg, text_len=cfg.null_text_len, video_frames=cfg.null_video_len,
                     audio_cols=cfg.num_codebooks + 2)


def abstract_params(cfg: FoleyConfig):
  """The params' shapes, dtypes and logical partitioning (boxed), without allocating anything: the key is
  made inside the traced function too, so this is safe under any mesh (also an AOT topology's)."""
  model = DreamFoley(cfg)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), init_inputs(cfg)))["params"]


def init_params(cfg: FoleyConfig, seed: int = 0):
  """Randomly initialised (unboxed) params of the model, made by its own jitted init."""
  model = DreamFoley(cfg)
  return nn.unbox(jax.jit(model.init)(jax.random.key(seed), init_inputs(cfg))["params"])


# Params whose every use casts them to the decoder's compute dtype first (qwen2.Linear kernels/biases, the
# token embedding, RMSNorm scales applied in the activation dtype, the heads, the null embeddings), so storing
# them in that dtype changes no result. audio_embed / audio_pad are summed over the K codebooks in their own
# dtype before the cast, and the encoders have their own dtypes: those stay as they are. The heads' last
# projection runs in fp32 (`logits_fp32`): its params keep their dtype (7B: +59 MB per decode step, 0.4%).
_COMPUTE_DTYPE_PARAMS = ("decoder", "projector", "heads", "null_text", "null_video")
_FP32_HEAD_PARAMS = ("fc2_kernel", "fc2_bias", "kernel", "bias")


def inference_layout(cfg: FoleyConfig, params, *, unscan: bool = True, cast: bool = True):
  """(cfg, params) laid out for sampling; the same model:
  - unscan: a `scan_layers` checkpoint (the training layout) becomes the unrolled layers_0..L-1 layout,
    whose per-layer KV caches the decode step updates in place (same weights; logits equal up to float
    reassociation, ~6e-7 on the tiny model);
  - cast: with a lower-precision compute dtype (experiments/paper_7b.py: bf16 compute, fp32 master weights)
    the params in `_COMPUTE_DTYPE_PARAMS` are stored in that dtype (only ever narrowed): half the memory and half the bytes each
    decode step reads (7B: 13.3 instead of 26.6 GB per step). Every use of them casts to the compute dtype
    anyway, so the logits are bit-identical when XLA must honour each rounding
    (XLA_FLAGS=--xla_allow_excess_precision=false; tested). By default XLA may skip some fp32 -> bf16
    roundings of fp32 weights inside a fused dot, so with fp32 weights the result carries a little excess
    precision (tiny model: logits differ by <= 0.01, bf16 rounding level).
  """
  params = dict(nn.unbox(params))
  d = cfg.decoder
  if "decoder" not in params:
    raise ValueError(f"params have no 'decoder' (keys: {sorted(params)})")
  scanned = qwen2.is_scanned(params["decoder"], "params/decoder")
  if scanned != d.scan_layers:      # the checkpoint's layout decides (e.g. an HF conversion under paper_7b)
    d = d.replace(scan_layers=scanned)
  cd = jnp.dtype(d.dtype)
  # Only ever narrower (fp32 -> bf16), never widening bf16 weights into an fp32 compute dtype.
  narrow = cast and cd.itemsize < jnp.dtype(d.param_dtype).itemsize
  to_cd = ((lambda x: x.astype(cd) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != cd else x)
           if narrow else (lambda x: x))
  if unscan and d.scan_layers:
    # Slice and cast each layer in one step (works on host numpy too): no full-size unstacked copy.
    params["decoder"] = qwen2.unstack_layers(params["decoder"], d.num_hidden_layers, where="params/decoder",
                                             fn=to_cd)
    d = d.replace(scan_layers=False)
  if narrow:
    for k in _COMPUTE_DTYPE_PARAMS:
      if k == "heads" and k in params:
        params[k] = {n: (v if n in _FP32_HEAD_PARAMS else to_cd(v)) for n, v in params[k].items()}
      elif k in params:
        params[k] = jax.tree.map(to_cd, params[k])
    d = d.replace(param_dtype=d.dtype)
  return cfg.replace(decoder=d), params


def param_table(params) -> list[tuple[str, int]]:
  """(component, #params) rows; decoder split into embedding / layers / norm."""
  params = nn.unbox(params)
  rows: dict[str, int] = {}

  def count(t):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))

  for k, v in params.items():
    if k == "decoder":
      for kk, vv in v.items():
        name = "decoder/layers" if kk.startswith("layers") else f"decoder/{kk}"
        rows[name] = rows.get(name, 0) + count(vv)
    else:
      rows[k] = count(v)
  return sorted(rows.items())


def summary(cfg: FoleyConfig) -> str:
  """The parameter table of `cfg` (abstract shapes: nothing allocated) and a line on the decoder."""
  rows = param_table(abstract_params(cfg))
  total = sum(n for _, n in rows)
  w = max(len(r) for r, _ in rows)
  lines = [f"{'component':<{w}}  {'params':>15}  {'share':>7}"]
  lines += [f"{name:<{w}}  {n:>15,}  {100 * n / total:6.2f}%" for name, n in rows]
  lines.append(f"{'total':<{w}}  {total:>15,}")
  d = cfg.decoder
  lines.append(f"decoder: {d.num_hidden_layers} layers, width {d.hidden_size}, {d.num_attention_heads} heads "
               f"({d.num_key_value_heads} kv), MLP {d.intermediate_size}, vocab {d.vocab_size}; "
               f"K={cfg.num_codebooks} codebooks x {cfg.vocab_per_codebook}; video dim {cfg.video_dim}")
  return "\n".join(lines)
