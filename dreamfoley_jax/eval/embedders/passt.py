"""PaSST-S (hear21passt `passt_s_swa_p16_128_ap476`) in Flax, its converter, and the FD/KL_PaSST embedder.

Legend: B batch, M mel bins (128), T mel frames, F/G frequency/time patch positions, N tokens,
D width (768), A heads, E head dim, H MLP width, K classes (527).

What av-benchmark runs is hear21passt.base.get_basic_model(mode="all"): AugmentMelSTFT in eval mode
(`frontends.passt_logmel`, numpy float64) followed by PaSST:
- Conv2d patch embedding, kernel 16, stride 10 over the (M, T) = (128, 1000) log-mel -> (F, G) = (12, 99);
- separate learned frequency (1, D, F, 1) and time (1, D, 1, G) position embeddings added on the grid
  (the time one cut to the input's G when shorter), patches flattened frequency-major;
- cls and distillation tokens, each plus its own `new_pos_embed` row, prepended;
- 12 pre-LN blocks (LayerNorm eps 1e-6, fused qkv with bias, exact GELU MLP of 3072), final norm;
- features = (cls + dist) / 2 after the final norm (768-d: FD_PaSST), logits = head(features) with
  head = LayerNorm (eps 1e-5, torch default) + Linear (527: KL_PaSST). `head_dist` exists in the
  checkpoint but the eval forward never uses it.
mode="all" returns cat([logits, features]); the embedder splits it as av-benchmark does.

Parameter names follow the torch keys (`patch_embed/proj`, `blocks_{i}/attn/qkv`, `head_0`, `head_1`);
the five token/position tensors keep their torch shapes so the converter copies them unchanged.
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
from dreamfoley_jax.models.vision_layers import LayerNorm, Linear, Mlp

CHECKPOINT_FILES = ("passt-s-f128-p16-s10-ap.476-swa.pt",)


@dataclasses.dataclass(frozen=True)
class PasstConfig:
  input_fdim: int = 128        # mel bins
  input_tdim: int = 998        # hear21passt's img_size time; with stride 10 the time grid is 99 (1000 frames in)
  patch_size: int = 16
  stride: int = 10
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  num_classes: int = 527
  layernorm_eps: float = 1e-6  # blocks and final norm
  head_eps: float = 1e-5       # head.0 is a plain nn.LayerNorm

  @property
  def grid(self) -> tuple[int, int]:
    """Position-embedding grid, as hear21passt's PatchEmbed computes it (img_size // stride)."""
    return self.input_fdim // self.stride, self.input_tdim // self.stride

  @property
  def mlp_dim(self) -> int:
    return int(self.embed_dim * self.mlp_ratio)

  @classmethod
  def tiny(cls, **kw):
    """The test model: real geometry (10 s in), width 32, 2 blocks of 2 heads."""
    return cls(**{**dict(embed_dim=32, depth=2, num_heads=2), **kw})


class PasstAttention(nn.Module):
  config: PasstConfig

  @nn.compact
  def __call__(self, x_BxNxD):
    c = self.config
    B, N, D = x_BxNxD.shape
    A = c.num_heads
    E = D // A
    qkv = Linear(3 * D, ("embed", "heads"), use_bias=True, name="qkv")(x_BxNxD)
    q, k, v = (t.reshape(B, N, A, E) for t in jnp.split(qkv, 3, axis=-1))
    scores_BxAxNxN = jnp.einsum("bqae,bkae->baqk", q, k) * (E ** -0.5)
    probs = jax.nn.softmax(scores_BxAxNxN, axis=-1)
    out_BxNxD = jnp.einsum("baqk,bkae->bqae", probs, v).reshape(B, N, D)
    return Linear(D, ("heads", "embed"), use_bias=True, name="proj")(out_BxNxD)


class PasstBlock(nn.Module):
  config: PasstConfig

  @nn.compact
  def __call__(self, x_BxNxD):
    c = self.config
    x = nn.with_logical_constraint(x_BxNxD, ("batch", "length", "act_embed"))
    x = x + PasstAttention(c, name="attn")(LayerNorm(c.layernorm_eps, name="norm1")(x))
    return x + Mlp(c.mlp_dim, name="mlp")(LayerNorm(c.layernorm_eps, name="norm2")(x))


def _param(module, name, shape, axes, std=0.02):
  return module.param(name, nn.with_logical_partitioning(nn.initializers.normal(std), axes), shape, jnp.float32)


class _PatchEmbed(nn.Module):
  """Conv2d(1, D, 16, stride 10) on the channels-last (B, M, T, 1) mel; param `proj`."""
  config: PasstConfig

  @nn.compact
  def __call__(self, x_BxMxTx1):
    c = self.config
    return nn.Conv(c.embed_dim, (c.patch_size, c.patch_size), strides=(c.stride, c.stride), padding="VALID",
                   name="proj",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            (None, None, "conv_in", "embed")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x_BxMxTx1)


class Passt(nn.Module):
  """Log-mel (B, M, T) -> ({'logits': (B, K), 'embed': (B, D)}, aux{'cls', 'dist': (B, D)})."""
  config: PasstConfig

  @nn.compact
  def __call__(self, mel_BxMxT):
    c = self.config
    B, M, T = mel_BxMxT.shape
    D = c.embed_dim
    if M != c.input_fdim:
      raise ValueError(f"Passt expects (B, {c.input_fdim}, frames) log-mel, got {mel_BxMxT.shape}")
    x_BxFxGxD = _PatchEmbed(c, name="patch_embed")(mel_BxMxT[..., None])
    _, F, G, _ = x_BxFxGxD.shape
    gf, gt = c.grid
    if F != gf or G > gt:
      raise ValueError(f"Passt: {T} frames give a {F}x{G} patch grid, but the position embeddings cover "
                       f"{gf}x{gt} (config input_tdim={c.input_tdim}); 10 s at 32 kHz gives 1000 frames")
    freq_pos = _param(self, "freq_new_pos_embed", (1, D, gf, 1), (None, "embed", None, None))
    time_pos = _param(self, "time_new_pos_embed", (1, D, 1, gt), (None, "embed", None, None))
    x_BxFxGxD = (x_BxFxGxD + jnp.transpose(time_pos[:, :, :, :G], (0, 2, 3, 1))
                 + jnp.transpose(freq_pos, (0, 2, 3, 1)))
    x_BxNxD = x_BxFxGxD.reshape(B, F * G, D)  # frequency-major, as torch's flatten(2) of (B, D, F, G)
    cls = _param(self, "cls_token", (1, 1, D), (None, None, "embed"))
    dist = _param(self, "dist_token", (1, 1, D), (None, None, "embed"))
    tok_pos = _param(self, "new_pos_embed", (1, 2, D), (None, None, "embed"))
    tokens = jnp.concatenate([cls + tok_pos[:, :1], dist + tok_pos[:, 1:]], axis=1)
    x = jnp.concatenate([jnp.broadcast_to(tokens, (B, 2, D)), x_BxNxD], axis=1)
    for i in range(c.depth):
      x = PasstBlock(c, name=f"blocks_{i}")(x)
    x = LayerNorm(c.layernorm_eps, name="norm")(x)
    embed_BxD = (x[:, 0] + x[:, 1]) / 2
    h = LayerNorm(c.head_eps, name="head_0")(embed_BxD)
    logits_BxK = Linear(c.num_classes, ("embed", "null"), use_bias=True, name="head_1")(h)
    return {"logits": logits_BxK, "embed": embed_BxD}, {"cls": x[:, 0], "dist": x[:, 1]}


# --------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------

_TOKEN_KEYS = ("cls_token", "dist_token", "new_pos_embed", "freq_new_pos_embed", "time_new_pos_embed")
_LN = ("weight", "bias")


def torch_shapes(c: PasstConfig = PasstConfig()) -> dict[str, tuple[int, ...]]:
  """Every key of the reference PaSST state dict (distilled, 1 input channel) with its shape."""
  D, H, K = c.embed_dim, c.mlp_dim, c.num_classes
  gf, gt = c.grid
  s = {"cls_token": (1, 1, D), "dist_token": (1, 1, D), "new_pos_embed": (1, 2, D),
       "freq_new_pos_embed": (1, D, gf, 1), "time_new_pos_embed": (1, D, 1, gt),
       "patch_embed.proj.weight": (D, 1, c.patch_size, c.patch_size), "patch_embed.proj.bias": (D,)}
  for i in range(c.depth):
    p = f"blocks.{i}"
    for n in ("norm1", "norm2"):
      s.update({f"{p}.{n}.{w}": (D,) for w in _LN})
    s.update({f"{p}.attn.qkv.weight": (3 * D, D), f"{p}.attn.qkv.bias": (3 * D,),
              f"{p}.attn.proj.weight": (D, D), f"{p}.attn.proj.bias": (D,),
              f"{p}.mlp.fc1.weight": (H, D), f"{p}.mlp.fc1.bias": (H,),
              f"{p}.mlp.fc2.weight": (D, H), f"{p}.mlp.fc2.bias": (D,)})
  s.update({f"norm.{w}": (D,) for w in _LN})
  s.update({f"head.0.{w}": (D,) for w in _LN})
  s.update({"head.1.weight": (K, D), "head.1.bias": (K,), "head_dist.weight": (K, D), "head_dist.bias": (K,)})
  return s


def _prefix(keys) -> str:
  """'net.' when the file is a PasstBasicWrapper state dict (its keys under net., plus device_proxy)."""
  keys = [k for k in keys if k != "device_proxy"]
  return "net." if keys and all(k.startswith("net.") for k in keys) else ""


def convert_passt(src: TensorSource | Mapping, c: PasstConfig = PasstConfig()) -> dict:
  """Reference state dict (bare PaSST or the hear21passt wrapper's, 'net.' stripped) -> {'params': ...}.

  Raises one ConversionError naming the file and every missing, unexpected or mis-shaped key.
  `head_dist` is checked but dropped: the eval forward averages the two tokens and uses `head` only.
  """
  if not isinstance(src, TensorSource):
    src = TensorSource.from_dict(src)
  pre = _prefix(src.keys())
  found = {k[len(pre):]: v for k, v in src.shapes().items() if k != "device_proxy"}
  check_keys(torch_shapes(c), found, source=src.path)
  get = lambda k: np.asarray(src.get(pre + k), np.float32)  # noqa: E731
  ln = lambda k: {"weight": get(f"{k}.weight"), "bias": get(f"{k}.bias")}  # noqa: E731
  lin = lambda k: {"kernel": linear_to_jax(get(f"{k}.weight")), "bias": get(f"{k}.bias")}  # noqa: E731
  params: dict = {k: get(k) for k in _TOKEN_KEYS}
  params["patch_embed"] = {"proj": {"kernel": conv_to_jax(get("patch_embed.proj.weight")),
                                    "bias": get("patch_embed.proj.bias")}}
  for i in range(c.depth):
    p = f"blocks.{i}"
    params[f"blocks_{i}"] = {"norm1": ln(f"{p}.norm1"), "norm2": ln(f"{p}.norm2"),
                             "attn": {"qkv": lin(f"{p}.attn.qkv"), "proj": lin(f"{p}.attn.proj")},
                             "mlp": {"fc1": lin(f"{p}.mlp.fc1"), "fc2": lin(f"{p}.mlp.fc2")}}
  params["norm"] = ln("norm")
  params["head_0"] = ln("head.0")
  params["head_1"] = lin("head.1")
  return {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), params)}


# --------------------------------------------------------------------------------------------------
# Embedder
# --------------------------------------------------------------------------------------------------


class PasstEmbedder(Embedder):
  """FD_PaSST (768-d embedding) and KL_PaSST (527 logits) from 32 kHz audio padded/trimmed to 10 s."""
  FILES = CHECKPOINT_FILES

  def __init__(self, path: str | os.PathLike | None = None, *, config: PasstConfig = PasstConfig(),
               variables=None, seed: int | None = None):
    super().__init__(name="passt", native=True)
    self.config = config
    self.model = Passt(config)
    self.variables, self.source, _ = resolve_variables(
        "passt", path, CHECKPOINT_FILES, variables=variables, seed=seed,
        random_fn=lambda s: convert_passt(random_state_dict(torch_shapes(config), s), config),
        checkpoint_fn=lambda ckpt: convert_passt(TensorSource(ckpt), config))
    self._apply = jax.jit(lambda v, x: self.model.apply(v, x)[0])

  def fingerprint(self) -> str:
    return f"passt|{self.source}|{self.config}"

  def audio_features(self, wav_CxT, sr, duration_s, name):
    x = frontends.passt_input(frontends.prepare_audio(wav_CxT, sr, 32000, duration_s))
    mel = frontends.passt_logmel(x)[None].astype(np.float32)
    out = self._apply(self.variables, mel)
    return {"passt_logits": np.asarray(out["logits"][0]), "passt_embed": np.asarray(out["embed"][0])}
