"""ImageBind-huge's vision and audio towers in Flax (the IB-score embedders), their converter and the embedder.

Legend: B batch, S clips per example (averaged), N = B*S clips, T frames, H/W height/width, C channels,
M mel bins, F fbank frames, L tokens (1 cls + patches), D width, A heads, E head dim, O output width.

Semantics (facebookresearch/ImageBind models/, checked line by line):
- vision preprocessor: a 1-frame input is repeated to 2 frames (PadIm2Video 'repeat'); Conv3d 2x14x14,
  stride = kernel, no bias, on 2x224x224 -> 16x16 patches; cls token prepended; learned pos embed (257).
- audio preprocessor: the normalised 128x204 kaldi fbank (frontends.imagebind_audio_clips) -> Conv2d 16x16
  stride 10, no bias -> 12x19 patches -> LayerNorm (eps 1e-5, torch default); cls; pos embed (229).
- trunk: SimpleTransformer of pre-LN blocks (LayerNorm eps 1e-6; nn.MultiheadAttention with in_proj
  bias; exact-GELU MLP x4). Vision has a LayerNorm (eps 1e-6) before the blocks, audio has none; audio's
  attention has add_bias_kv (one learned key/value token appended after the projections). No final norm
  in the trunk; drop_path (audio 0.1) is identity at eval.
- head: LayerNorm (eps 1e-6) -> the cls token -> Linear to 1024, no bias.
- postprocessor: L2 normalise; audio then multiplies by min(exp(log_logit_scale), 100) (a fixed buffer,
  log 20, stored in the checkpoint).
- clips: the embeddings of the S clips are averaged AFTER normalisation (and after audio's scale), so the
  returned vectors are not unit norm; IB-score takes a cosine, which ignores both the scale and the norm.

Param names follow the torch keys: `vision/preprocessor/rgbt_stem/proj_1/kernel` <->
`modality_preprocessors.vision.rgbt_stem.proj.1.weight`, `audio/trunk/blocks_3/attn/in_proj/kernel` <->
`modality_trunks.audio.blocks.3.attn.in_proj_weight`, `vision/head_2/kernel` <-> `modality_heads.vision.2.weight`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.convert.common import TensorSource, check_keys, conv_to_jax, linear_to_jax
from dreamfoley_jax.eval import frontends
from dreamfoley_jax.eval.embedders.base import Embedder, random_state_dict, resolve_variables
from dreamfoley_jax.models.vision_layers import LayerNorm, Linear, Mlp, l2_normalize, patchify

CHECKPOINT_FILES = ("imagebind_huge.pth",)
MODALITIES = ("vision", "audio")
IGNORED_MODALITIES = ("text", "depth", "thermal", "imu")  # in imagebind_huge.pth, unused by IB-score
MAX_LOGIT_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One ImageBind modality tower (preprocessor, trunk, head, postprocessor)."""
  modality: str                      # "vision" | "audio"
  width: int
  depth: int
  num_heads: int
  out_dim: int = 1024
  mlp_ratio: int = 4
  in_channels: int = 3
  input_size: tuple[int, ...] = (2, 224, 224)   # vision (T, H, W); audio (M, F)
  kernel: tuple[int, ...] = (2, 14, 14)
  stride: tuple[int, ...] = (2, 14, 14)
  pre_ln: bool = True                # LayerNorm before the blocks (vision)
  stem_norm: bool = False            # LayerNorm after the patch stem (audio, eps 1e-5)
  bias_kv: bool = False              # nn.MultiheadAttention(add_bias_kv=True) (audio)
  logit_scale: bool = False          # LearnableLogitScaling after Normalize (audio)
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def grid(self) -> tuple[int, ...]:
    return tuple((s - k) // st + 1 for s, k, st in zip(self.input_size, self.kernel, self.stride))

  @property
  def num_tokens(self) -> int:
    return 1 + int(np.prod(self.grid))

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


def vision_config(width=1280, depth=32, num_heads=16, out_dim=1024, **kw) -> TowerConfig:
  return TowerConfig("vision", width, depth, num_heads, out_dim, **kw)


def audio_config(width=768, depth=12, num_heads=12, out_dim=1024, **kw) -> TowerConfig:
  return TowerConfig("audio", width, depth, num_heads, out_dim, in_channels=1, input_size=(128, 204),
                     kernel=(16, 16), stride=(10, 10), pre_ln=False, stem_norm=True, bias_kv=True,
                     logit_scale=True, **kw)


@dataclasses.dataclass(frozen=True)
class ImageBindConfig:
  vision: TowerConfig = vision_config()
  audio: TowerConfig = audio_config()

  @classmethod
  def huge(cls) -> "ImageBindConfig":
    """imagebind_huge(): vision 1280 x 32 layers / 16 heads, audio 768 x 12 / 12, both to 1024."""
    return cls()

  @classmethod
  def tiny(cls) -> "ImageBindConfig":
    """tests/fixtures/make/make_imagebind_golden.py's constructor: real geometry, width 16, 2 layers, 4 heads, out 12."""
    return cls(vision_config(16, 2, 4, 12), audio_config(16, 2, 4, 12))


def _param(module, name, shape, axes, init=nn.initializers.normal(0.02)):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(module.config.param_dtype))


class _Kernel(nn.Module):
  """Holds a bias-free conv kernel in flax layout (*kernel, C, D) under the torch module's name."""
  config: TowerConfig

  @nn.compact
  def __call__(self):
    c = self.config
    axes = (None,) * len(c.kernel) + ("conv_in", "embed")
    return _param(self, "kernel", tuple(c.kernel) + (c.in_channels, c.width), axes, nn.initializers.lecun_normal())


class _PosEmbed(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self):
    c = self.config
    return _param(self, "pos_embed", (1, c.num_tokens, c.width), (None, None, "embed"))


class Stem(nn.Module):
  """PatchEmbedGeneric: the bias-free patch conv (+ audio's LayerNorm); params `proj_1` (vision) / `proj`."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    if c.modality == "vision":
      k = _Kernel(c, name="proj_1")()
      patches = patchify(x, c.kernel)  # stride == kernel: one matmul, patch flattened as (*kernel, C)
      n, l, kk = patches.shape
      y = jnp.dot(patches.reshape(n * l, kk).astype(c.dtype), k.reshape(kk, c.width).astype(c.dtype))
      return y.reshape(n, l, c.width)
    k = _Kernel(c, name="proj")()
    y = jax.lax.conv_general_dilated(x.astype(c.dtype), k.astype(c.dtype), c.stride, "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(y.shape[0], -1, c.width)  # row-major (M', F') like torch's flatten(2)
    return LayerNorm(1e-5, c.param_dtype, name="norm_layer")(y) if c.stem_norm else y


class Preprocessor(nn.Module):
  """RGBDTPreprocessor / AudioPreprocessor: stem tokens, cls token, learned position embedding."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    tokens = Stem(c, name="rgbt_stem")(x)
    cls = _param(self, "cls_token", (1, 1, c.width), (None, None, "embed"))
    cls = jnp.broadcast_to(cls.astype(tokens.dtype), (tokens.shape[0], 1, c.width))
    tokens = jnp.concatenate([cls, tokens], axis=1)
    return tokens + _PosEmbed(c, name="pos_embedding_helper")().astype(tokens.dtype)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention self-attention: fused in_proj with bias, optional bias_k/bias_v tokens."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x_NxLxD):
    c = self.config
    N, L, D = x_NxLxD.shape
    A, E = c.num_heads, c.head_dim
    qkv = Linear(3 * D, ("embed", "heads"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                 name="in_proj")(x_NxLxD)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    if c.bias_kv:
      bk = _param(self, "bias_k", (1, 1, D), (None, None, "heads"))
      bv = _param(self, "bias_v", (1, 1, D), (None, None, "heads"))
      k = jnp.concatenate([k, jnp.broadcast_to(bk.astype(k.dtype), (N, 1, D))], axis=1)
      v = jnp.concatenate([v, jnp.broadcast_to(bv.astype(v.dtype), (N, 1, D))], axis=1)
    Lk = k.shape[1]
    q = q.reshape(N, L, A, E) * (E ** -0.5)
    k = k.reshape(N, Lk, A, E)
    v = v.reshape(N, Lk, A, E)
    scores = jnp.einsum("nqae,nkae->naqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("naqk,nkae->nqae", probs, v).reshape(N, L, D)
    return Linear(D, ("heads", "embed"), use_bias=True, dtype=c.dtype, param_dtype=c.param_dtype,
                  name="out_proj")(out)


class Block(nn.Module):
  """BlockWithMasking without layer scale: x + attn(norm_1(x)); x + mlp(norm_2(x))."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x_NxLxD):
    c = self.config
    x = nn.with_logical_constraint(x_NxLxD, ("batch", "length", "act_embed"))
    x = x + MultiheadAttention(c, name="attn")(LayerNorm(1e-6, c.param_dtype, name="norm_1")(x))
    return x + Mlp(c.mlp_ratio * c.width, c.dtype, c.param_dtype, name="mlp")(
        LayerNorm(1e-6, c.param_dtype, name="norm_2")(x))


class Trunk(nn.Module):
  """SimpleTransformer: optional pre-transformer LayerNorm, then the blocks; no final norm."""
  config: TowerConfig

  @nn.compact
  def __call__(self, x_NxLxD):
    c = self.config
    if c.pre_ln:
      x_NxLxD = LayerNorm(1e-6, c.param_dtype, name="pre_transformer_layer_0")(x_NxLxD)
    for i in range(c.depth):
      x_NxLxD = Block(c, name=f"blocks_{i}")(x_NxLxD)
    return x_NxLxD


class _LogitScale(nn.Module):
  config: TowerConfig

  @nn.compact
  def __call__(self, x):
    s = _param(self, "log_logit_scale", (), (), nn.initializers.constant(np.log(20.0)))
    return jnp.minimum(jnp.exp(s.astype(jnp.float32)), MAX_LOGIT_SCALE) * x


class ImageBindTower(nn.Module):
  """Clips -> ((B, O) mean over S of the post-processed clip embeddings, aux).

  vision input: (B, S, T, H, W, C) channels-last, CLIP-normalised, T in {1, 2}; audio: (B, S, M, F) fbanks.
  aux: `clips` (B, S, O) post-processed per-clip embeddings, `head` (B, S, O) before normalisation.
  """
  config: TowerConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    B, S = x.shape[:2]
    x = x.reshape((B * S,) + x.shape[2:])
    if c.modality == "vision":
      if x.ndim != 5 or x.shape[2:4] != tuple(c.input_size[1:]) or x.shape[1] not in (1, c.input_size[0]):
        raise ValueError(f"ImageBind vision expects (B, S, T, H, W, C) with T in (1, {c.input_size[0]}) and "
                         f"H, W = {c.input_size[1:]}; got {(B, S) + x.shape[1:]}")
      if x.shape[1] == 1:  # PadIm2Video(pad_type='repeat', ntimes=2)
        x = jnp.repeat(x, c.input_size[0], axis=1)
    else:
      if x.shape[1:] != tuple(c.input_size):
        raise ValueError(f"ImageBind audio expects (B, S, {c.input_size[0]}, {c.input_size[1]}) fbanks; "
                         f"got {(B, S) + x.shape[1:]}")
      x = x[..., None]
    tokens = Preprocessor(c, name="preprocessor")(x)
    tokens = Trunk(c, name="trunk")(tokens)
    cls = LayerNorm(1e-6, c.param_dtype, name="head_0")(tokens[:, 0])  # LN is per token: cls only
    head = Linear(c.out_dim, ("embed", "embed_out"), use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                  name="head_2")(cls).astype(jnp.float32)
    emb = l2_normalize(head)
    if c.logit_scale:
      emb = _LogitScale(c, name="postprocessor_1")(emb)
    emb = emb.reshape(B, S, c.out_dim)
    return emb.mean(axis=1), {"clips": emb, "head": head.reshape(B, S, c.out_dim)}


class ImageBind(nn.Module):
  """Both towers; `vision(x)` / `audio(x)` run one (see ImageBindTower for the layouts)."""
  config: ImageBindConfig

  def setup(self):
    self.vision_tower = ImageBindTower(self.config.vision, name="vision")
    self.audio_tower = ImageBindTower(self.config.audio, name="audio")

  def vision(self, x):
    return self.vision_tower(x)

  def audio(self, x):
    return self.audio_tower(x)

  def __call__(self, vision_x, audio_x):
    return self.vision(vision_x), self.audio(audio_x)


# --------------------------------------------------------------------------------------------------
# Converter
# --------------------------------------------------------------------------------------------------

def _tower_table(c: TowerConfig) -> dict[str, tuple[str, tuple[int, ...], str]]:
  """{torch key: (flax path, torch shape, transform)} for one tower."""
  m, D, O = c.modality, c.width, c.out_dim
  pre, trunk = f"modality_preprocessors.{m}.", f"modality_trunks.{m}."
  t = {}
  stem = "rgbt_stem.proj.1.weight" if m == "vision" else "rgbt_stem.proj.weight"
  t[pre + stem] = (f"{m}/preprocessor/rgbt_stem/{'proj_1' if m == 'vision' else 'proj'}/kernel",
                   (D, c.in_channels) + tuple(c.kernel), "conv")
  if c.stem_norm:
    for p in ("weight", "bias"):
      t[pre + f"rgbt_stem.norm_layer.{p}"] = (f"{m}/preprocessor/rgbt_stem/norm_layer/{p}", (D,), "id")
  t[pre + "cls_token"] = (f"{m}/preprocessor/cls_token", (1, 1, D), "id")
  t[pre + "pos_embedding_helper.pos_embed"] = (f"{m}/preprocessor/pos_embedding_helper/pos_embed",
                                               (1, c.num_tokens, D), "id")
  if c.pre_ln:
    for p in ("weight", "bias"):
      t[trunk + f"pre_transformer_layer.0.{p}"] = (f"{m}/trunk/pre_transformer_layer_0/{p}", (D,), "id")
  F = c.mlp_ratio * D
  for i in range(c.depth):
    b, fb = trunk + f"blocks.{i}.", f"{m}/trunk/blocks_{i}/"
    t[b + "attn.in_proj_weight"] = (fb + "attn/in_proj/kernel", (3 * D, D), "linear")
    t[b + "attn.in_proj_bias"] = (fb + "attn/in_proj/bias", (3 * D,), "id")
    t[b + "attn.out_proj.weight"] = (fb + "attn/out_proj/kernel", (D, D), "linear")
    t[b + "attn.out_proj.bias"] = (fb + "attn/out_proj/bias", (D,), "id")
    if c.bias_kv:
      t[b + "attn.bias_k"] = (fb + "attn/bias_k", (1, 1, D), "id")
      t[b + "attn.bias_v"] = (fb + "attn/bias_v", (1, 1, D), "id")
    for n in ("norm_1", "norm_2"):
      for p in ("weight", "bias"):
        t[b + f"{n}.{p}"] = (fb + f"{n}/{p}", (D,), "id")
    for n, shape in (("fc1", (F, D)), ("fc2", (D, F))):
      t[b + f"mlp.{n}.weight"] = (fb + f"mlp/{n}/kernel", shape, "linear")
      t[b + f"mlp.{n}.bias"] = (fb + f"mlp/{n}/bias", shape[:1], "id")
  for p in ("weight", "bias"):
    t[f"modality_heads.{m}.0.{p}"] = (f"{m}/head_0/{p}", (D,), "id")
  t[f"modality_heads.{m}.2.weight"] = (f"{m}/head_2/kernel", (O, D), "linear")
  if c.logit_scale:
    t[f"modality_postprocessors.{m}.1.log_logit_scale"] = (f"{m}/postprocessor_1/log_logit_scale", (), "id")
  return t


def conversion_table(c: ImageBindConfig) -> dict[str, tuple[str, tuple[int, ...], str]]:
  return {**_tower_table(c.vision), **_tower_table(c.audio)}


def torch_shapes(c: ImageBindConfig = ImageBindConfig()) -> dict[str, tuple[int, ...]]:
  return {k: v[1] for k, v in conversion_table(c).items()}


def _ignored(key: str) -> bool:
  """Keys of the towers IB-score does not use (text, depth, thermal, imu), skipped on purpose."""
  parts = key.split(".")
  return len(parts) > 1 and parts[0].startswith("modality_") and parts[1] in IGNORED_MODALITIES


_TRANSFORMS = {"id": lambda a: a, "linear": linear_to_jax, "conv": conv_to_jax}


def convert_imagebind(src: TensorSource | Mapping, c: ImageBindConfig = ImageBindConfig()) -> dict:
  """imagebind_huge.pth state dict -> flax variables of ImageBind (vision + audio towers only)."""
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  table = conversion_table(c)
  check_keys({k: v[1] for k, v in table.items()}, src.shapes(), source=src.path, ignore=_ignored)
  params: dict = {}
  for key, (path, _, how) in table.items():
    node = params
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = np.asarray(_TRANSFORMS[how](np.asarray(src.get(key))), np.float32)
  return {"params": params}


def random_variables(c: ImageBindConfig, seed: int) -> dict:
  """Seeded random weights in the torch layout, through the converter; audio's logit scale kept at log 20."""
  sd = random_state_dict(torch_shapes(c), seed)
  if c.audio.logit_scale:
    sd["modality_postprocessors.audio.1.log_logit_scale"] = np.asarray(np.log(20.0), np.float32)
  return convert_imagebind(sd, c)


# --------------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------------

def video_clips(crops_KxTxCxHxW: np.ndarray, name: str = "<video>") -> np.ndarray:
  """(3 crops, T, C, H, W) -> (K*(T-1), 2, H, W, C): every pair of consecutive frames of every crop.

  av-benchmark's encode_video_with_imagebind order (clip index outer, crop inner); the mean over clips
  makes the order irrelevant to the result.
  """
  k, t = crops_KxTxCxHxW.shape[:2]
  if t < 2:
    raise ValueError(f"{name}: ImageBind video needs >= 2 frames at 0.5 fps (>= 4 s of video); got {t}")
  clips = np.concatenate([crops_KxTxCxHxW[:, i:i + 2] for i in range(t - 1)], axis=0)
  return np.ascontiguousarray(clips.transpose(0, 1, 3, 4, 2))


class ImageBindEmbedder(Embedder):
  """IB-score (Flax): ImageBind-huge audio (three 2 s clips of the whole file) and video (0.5 fps, 3 crops)."""
  FILES = CHECKPOINT_FILES

  def __init__(self, path: str | os.PathLike | None = None, *, config: ImageBindConfig = ImageBindConfig(),
               variables=None, seed: int | None = None):
    super().__init__(name="imagebind", native=True, needs_video=True)
    self.config = config
    self.model = ImageBind(config)
    self.variables, self.source, _ = resolve_variables(
        "imagebind", path, CHECKPOINT_FILES, variables=variables, seed=seed,
        random_fn=lambda s: random_variables(config, s),
        checkpoint_fn=lambda ckpt: convert_imagebind(TensorSource(ckpt), config))
    self.variables = jax.tree.map(jnp.asarray, self.variables)
    self._vision = jax.jit(lambda v, x: self.model.apply(v, x, method=ImageBind.vision)[0])
    self._audio = jax.jit(lambda v, x: self.model.apply(v, x, method=ImageBind.audio)[0])

  def fingerprint(self) -> str:
    return f"imagebind|flax|{self.source}|{self.config}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    w = frontends.resample(np.atleast_2d(wav_CxT), sr, 16000)  # whole file, channels kept (reference)
    clips = frontends.imagebind_audio_clips(w)[:, 0].astype(np.float32)  # (3, 128, 204)
    return {"ib_audio": np.asarray(self._audio(self.variables, clips[None]))[0]}

  def video_features(self, video, name):
    clips = video_clips(np.asarray(video["ib_crops"], np.float32), name)  # (3*(T-1), 2, 224, 224, 3)
    return {"ib_video": np.asarray(self._vision(self.variables, clips[None]))[0]}
