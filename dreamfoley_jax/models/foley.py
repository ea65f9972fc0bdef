"""The DreamFoley model (paper section 3): [text | video | audio] through a Qwen2 decoder, K codebook heads.

Legend (dreamfoley_jax.models): B batch, Lt text tokens, Tv video frames (25 Hz), Tc CLIP frames (4 fps),
La delayed audio columns, P prompt (= Lt + Tv), K codebooks, V per-codebook vocab (codebook_size + BOS + EOS),
D width, Ds / Dc / Dv sync / CLIP / fused video widths, Nw Synchformer windows, Tw token frames per window.

Sequence order and special tokens (our choices, documented here because the paper does not spell them out):
  * [text | video | audio]: the condition precedes what is generated, so one causal pass trains all
    audio positions and sampling can prefill the whole condition into the KV cache once.
  * No separator tokens. Modalities differ in their embedding source (word table, video projector, K
    summed audio tables), and the first audio column is all-BOS (delay pattern, `audio/delay.py`), which
    already acts as the "start of audio" token.
  * Padding inside the batch (shorter captions, shorter videos) is masked out as keys; positions
    are `cumsum(mask) - 1`, so every real token gets the position it would have without padding and the
    same example packed differently gives the same output.
  * CFG nulls (section 3.2): `null_text` (n_t, D) and `null_video` (n_v, D) are trained parameters. When
    an example's text (video) is dropped, its text (video) region holds the null sequence in its first
    n slots and the rest of the region is masked out.
  * Vacant delay-pattern cells (staircase) take a learnable per-codebook padding embedding (eq. 2)
    instead of the BOS/EOS embedding.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax import sharding
from dreamfoley_jax.models import eva_clip, fusion, heads, qwen2, synchformer
from dreamfoley_jax.video import preprocess as vpre

Array = jax.Array

PAPER_LOSS_WEIGHTS = (0.240, 0.192, 0.154, 0.123, 0.099, 0.079, 0.063, 0.050)  # section 5.1


@dataclasses.dataclass(frozen=True)
class FoleyConfig:
  decoder: qwen2.Qwen2Config = qwen2.PRESETS["tiny"]
  num_codebooks: int = 8
  codebook_size: int = 1024
  loss_weights: tuple[float, ...] = PAPER_LOSS_WEIGHTS
  # Video: fused features F_v = concat(sync @ 25 Hz, up(clip @ 4 fps)) (eq. 1), projected by an MLP.
  use_sync: bool = True
  use_clip: bool = True
  sync_dim: int = 768
  clip_dim: int = 1024
  sync_rate: float = 25.0
  clip_rate: float = 4.0
  upsample: str = "nearest"           # nearest | nearest_exact | linear (models.fusion)
  projector_depth: int = 2            # our choice: Linear -> GELU -> Linear
  head_hidden: int = 0                # 0 = decoder width; our choice
  head_depth: int = 2                 # our choice: Linear -> GELU -> Linear per codebook
  null_text_len: int = 8              # our choice
  null_video_len: int = 8             # our choice
  learnable_pad: bool = True          # eq. 2
  cfg_drop_text: float = 0.1          # sections 3.2 / 5.1
  cfg_drop_video: float = 0.1
  position_scheme: str = "sequential"  # sequential | time_aligned (see `sequence_positions`)
  # features: the batch carries encoder outputs (sync_feats, clip_feats); frames: the batch carries
  # uint8 frames (frames_sync @ 25 fps, frames_clip @ 4 fps) and the encoders run inside the model
  # (params "synchformer/..." and "eva_clip/...", frozen or trained by the train config).
  vision_mode: str = "features"
  synchformer: Optional[synchformer.SynchformerConfig] = None
  eva: Optional[eva_clip.EvaClipConfig] = None

  @property
  def vocab_per_codebook(self) -> int:
    return self.codebook_size + 2

  @property
  def bos_id(self) -> int:
    return self.codebook_size

  @property
  def eos_id(self) -> int:
    return self.codebook_size + 1

  @property
  def video_dim(self) -> int:
    return (self.sync_dim if self.use_sync else 0) + (self.clip_dim if self.use_clip else 0)

  def replace(self, **kw) -> "FoleyConfig":
    return dataclasses.replace(self, **kw)

  def __post_init__(self):
    if len(self.loss_weights) < self.num_codebooks:
      raise ValueError(f"loss_weights has {len(self.loss_weights)} entries, need num_codebooks="
                       f"{self.num_codebooks}")
    if self.position_scheme not in ("sequential", "time_aligned"):
      raise ValueError(f"position_scheme must be 'sequential' or 'time_aligned', got {self.position_scheme!r}")
    if self.vision_mode not in ("features", "frames"):
      raise ValueError(f"vision_mode must be 'features' or 'frames', got {self.vision_mode!r}")
    if self.vision_mode == "frames":
      if self.use_sync and (self.synchformer is None or self.synchformer.width != self.sync_dim):
        raise ValueError("vision_mode='frames' with use_sync needs a synchformer config whose width == sync_dim")
      if self.use_sync and self.synchformer.token_frames != self.synchformer.stride:
        sc = self.synchformer
        raise ValueError(f"synchformer: {sc.token_frames} tokens per window (num_frames / tubelet) must equal "
                         f"the window stride {sc.stride}, so that token i stands for frame i")
      if self.use_clip and (self.eva is None or self.eva.embed_dim != self.clip_dim):
        raise ValueError("vision_mode='frames' with use_clip needs an eva config whose embed_dim == clip_dim")
    if not (self.use_sync or self.use_clip):
      raise ValueError("at least one of use_sync / use_clip must be True")


# --------------------------------------------------------------------------------------------------
# Video fusion (eq. 1): parameter-free time alignment + concatenation.
# --------------------------------------------------------------------------------------------------

def upsample_index(num_out: int, out_rate: float, in_rate: float, num_in: int) -> np.ndarray:
  """Nearest-previous source index for each output frame: frame i at time i/out_rate -> floor(t*in_rate)."""
  idx = np.floor(np.arange(num_out) * (in_rate / out_rate) + 1e-6).astype(np.int32)
  return np.clip(idx, 0, max(num_in - 1, 0))


def fuse_video(cfg: FoleyConfig, sync_BxTvxDs: Optional[Array], clip_BxTcxDc: Optional[Array],
               num_frames: int) -> Array:
  """F_v = concat(sync, up(clip)) at the sync rate (eq. 1, `models.fusion`); `num_frames` = Tv.

  The ablations of Table 3 use one stream: sync alone is already at 25 Hz; clip alone is upsampled
  with the same rule as the fused path.
  """
  fcfg = fusion.FusionConfig(upsample=cfg.upsample)
  if cfg.use_sync and cfg.use_clip:
    fused, _ = fusion.DualStreamFusion(fcfg, parent=None).apply({}, sync_BxTvxDs.astype(jnp.float32),
                                                    clip_BxTcxDc.astype(jnp.float32), target_len=num_frames)
    return fused
  if cfg.use_sync:
    return sync_BxTvxDs[:, :num_frames].astype(jnp.float32)
  c = clip_BxTcxDc.astype(jnp.float32)
  i0, w = fusion.clip_source_index(num_frames, fcfg)
  last = c.shape[1] - 1
  out = c[:, jnp.minimum(i0, last)]
  if cfg.upsample == "linear":
    out = out * (1 - w[None, :, None]) + c[:, jnp.minimum(i0 + 1, last)] * w[None, :, None]
  return out


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------

class MLP(nn.Module):
  """Linear -> GELU -> ... -> Linear (depth Linear layers), 2-D flattened matmuls."""
  hidden: int
  out: int
  depth: int = 2
  in_axis: str = "embed"
  out_axis: str = "embed"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.depth - 1):
      x = qwen2.Linear(self.hidden, (self.in_axis if i == 0 else "embed", "mlp"), use_bias=True,
                       name=f"fc{i + 1}", **kw)(x)
      x = nn.gelu(x, approximate=False)
      x = sharding.constrain(x, ("batch", "length", "act_mlp"))
    return qwen2.Linear(self.out, ("mlp" if self.depth > 1 else self.in_axis, self.out_axis), use_bias=True,
                        name=f"fc{self.depth}", **kw)(x)


def positions_from_mask(mask_BxT: Array) -> Array:
  return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=1) - 1, 0)


def audio_position_offset(cfg: FoleyConfig, prompt_mask_BxP: Array, text_len: int) -> Array:
  """(B,) position of audio column 0; column j sits at offset + j."""
  n_text = prompt_mask_BxP[:, :text_len].sum(axis=1).astype(jnp.int32)
  if cfg.position_scheme == "time_aligned":
    return n_text
  return prompt_mask_BxP.sum(axis=1).astype(jnp.int32)


def sequence_positions(cfg: FoleyConfig, prompt_mask_BxP: Array, text_len: int, num_audio: int) -> Array:
  """Rotary positions of [text | video | audio] (B, P + La).

  sequential: real tokens count up through the whole sequence (padding skipped).
  time_aligned (our option, in the spirit of Qwen2.5-Omni's TMRoPE): video frame f and audio column f
  share position n_text + f, so "the sound at time t" and "the frame at time t" sit at relative distance
  0 whatever the clip length; the mask still orders the sequence causally as [text | video | audio].
  """
  if cfg.position_scheme == "sequential":
    B = prompt_mask_BxP.shape[0]
    mask = jnp.concatenate([prompt_mask_BxP, jnp.ones((B, num_audio), bool)], axis=1)
    pos = positions_from_mask(mask)
    # Audio columns count on from the prompt's real tokens (right-padded audio never precedes real audio).
    off = audio_position_offset(cfg, prompt_mask_BxP, text_len)
    return pos.at[:, prompt_mask_BxP.shape[1]:].set(off[:, None] + jnp.arange(num_audio)[None])
  tmask = prompt_mask_BxP[:, :text_len]
  n_text = tmask.sum(axis=1, keepdims=True).astype(jnp.int32)
  pt = positions_from_mask(tmask)
  pv = n_text + positions_from_mask(prompt_mask_BxP[:, text_len:])
  pa = n_text + jnp.arange(num_audio, dtype=jnp.int32)[None]
  return jnp.concatenate([pt, pv, pa], axis=1)


def sync_windows_input(frames_BxTxHxWxC: Array, sc, lengths_B: Optional[Array] = None) -> Array:
  """uint8 25 fps frames -> Synchformer input (B, ceil(T / stride), window, H, W, C): Normalize(0.5, 0.5) on
  [0, 1], cut by the length rule (`video.preprocess.sync_cover_indices`: the first T tokens are the T
  frames'); each example's windows repeat its own last real frame (`lengths_B`, default all T).
  Shared by DreamFoley.encode_frames and synthetic.pretext."""
  T = frames_BxTxHxWxC.shape[1]
  idx = vpre.sync_cover_indices(T, sc.window, sc.stride)                 # (Nw, window), clamped to T - 1
  if lengths_B is None:
    x = frames_BxTxHxWxC[:, idx]
  else:
    last = jnp.maximum(jnp.asarray(lengths_B, jnp.int32) - 1, 0)
    x = jax.vmap(lambda f, n: f[jnp.minimum(idx, n)])(frames_BxTxHxWxC, last)
  return x.astype(jnp.float32) / 127.5 - 1.0


def clip_pixels_input(frames_BxTcxHxWxC: Array) -> Array:
  """uint8 4 fps frames -> EVA-CLIP input (B*Tc, H, W, C) normalised with the OpenAI CLIP mean/std."""
  mean = jnp.asarray(vpre.OPENAI_CLIP_MEAN, jnp.float32)
  std = jnp.asarray(vpre.OPENAI_CLIP_STD, jnp.float32)
  x = (frames_BxTcxHxWxC.astype(jnp.float32) / 255.0 - mean) / std
  return x.reshape((-1,) + frames_BxTcxHxWxC.shape[2:])


class DreamFoley(nn.Module):
  config: FoleyConfig

  def setup(self):
    c = self.config
    d = c.decoder
    D = d.hidden_size
    self.decoder = qwen2.Qwen2Model(d)
    self.projector = MLP(hidden=D, out=D, depth=c.projector_depth, in_axis="embed_in", dtype=d.dtype,
                         param_dtype=d.param_dtype)
    init = nn.initializers.normal(d.initializer_range)
    pd = jnp.dtype(d.param_dtype)
    self.audio_embed = self.param(
        "audio_embed", nn.with_logical_partitioning(init, ("codebooks", "codebook_vocab", "embed")),
        (c.num_codebooks, c.vocab_per_codebook, D), pd)
    if c.learnable_pad:
      self.audio_pad = self.param("audio_pad", nn.with_logical_partitioning(init, ("codebooks", "embed")),
                                  (c.num_codebooks, D), pd)
    self.null_text = self.param("null_text", nn.with_logical_partitioning(init, ("null", "embed")),
                                (c.null_text_len, D), pd)
    self.null_video = self.param("null_video", nn.with_logical_partitioning(init, ("null", "embed")),
                                 (c.null_video_len, D), pd)
    self.heads = heads.CodebookHeads(c.num_codebooks, c.vocab_per_codebook, c.head_hidden or D, c.head_depth,
                                     dtype=d.dtype, param_dtype=d.param_dtype)
    if c.vision_mode == "frames":
      if c.use_sync:
        self.synchformer = synchformer.Synchformer(c.synchformer)
      if c.use_clip:
        self.eva_clip = eva_clip.EvaVisionTower(c.eva)

  def encode_frames(self, batch: dict):
    """frames mode: uint8 frames -> (sync tokens (B,Tv,Ds) or None, clip embeddings (B,Tc,Dc) or None, mask)."""
    c = self.config
    sync = clip = None
    mask = None
    if c.use_sync:
      fr = batch["frames_sync"]
      B, Tf = fr.shape[:2]
      # Real frames come first (a prefix mask); token i stands for frame i (the length rule).
      n_B = batch.get("frames_sync_mask", jnp.ones((B, Tf), bool)).astype(jnp.int32).sum(axis=1)
      feats, _ = self.synchformer(sync_windows_input(fr, c.synchformer, n_B))   # (B,Nw,Tw,Ds)
      sync = feats.reshape(B, -1, feats.shape[-1])[:, :Tf]
      mask = jnp.arange(Tf)[None] < n_B[:, None]
    if c.use_clip:
      fc = batch["frames_clip"]
      B, Tc = fc.shape[:2]
      emb, _ = self.eva_clip(clip_pixels_input(fc))
      clip = emb.reshape(B, Tc, -1)
      if mask is None:
        Tv = int(round(Tc * c.sync_rate / c.clip_rate))
        cm = batch.get("frames_clip_mask", jnp.ones((B, Tc), bool)).astype(bool)
        mask = cm[:, upsample_index(Tv, c.sync_rate, c.clip_rate, Tc)]
    return sync, clip, mask

  # -- pieces (also used by the sampler) -----------------------------------------------------------

  def _substitute(self, x_BxTxD, mask_BxT, null_NxD, drop_B, field: str):
    T, N = x_BxTxD.shape[1], null_NxD.shape[0]
    if T < N:
      raise ValueError(f"{field}: region length {T} is shorter than the null sequence ({N}); pad it to >= {N}")
    null_TxD = jnp.zeros((T, x_BxTxD.shape[-1]), x_BxTxD.dtype).at[:N].set(null_NxD.astype(x_BxTxD.dtype))
    null_mask_T = jnp.arange(T) < N
    d = drop_B[:, None]
    return jnp.where(d[..., None], null_TxD[None], x_BxTxD), jnp.where(d, null_mask_T[None], mask_BxT)

  def embed_prompt(self, batch: dict, drop_text_B: Optional[Array] = None, drop_video_B: Optional[Array] = None):
    """[text | video] embeddings (B,P,D) and mask (B,P); drop_* swap in the null sequences."""
    c = self.config
    dt = jnp.dtype(c.decoder.dtype)
    text_ids = batch["text_ids"]
    B = text_ids.shape[0]
    text_mask = batch.get("text_mask", jnp.ones(text_ids.shape, bool)).astype(bool)
    xt = self.decoder.embed(text_ids).astype(dt)
    if c.vision_mode == "frames":
      sync, clip, vmask = self.encode_frames(batch)
      fused = fuse_video(c, sync, clip, vmask.shape[1])
      batch = dict(batch, video_mask=vmask)
    elif "video_feats" in batch:
      fused = batch["video_feats"]
    else:
      ref = batch["sync_feats"] if c.use_sync else batch["clip_feats"]
      Tv = batch["video_mask"].shape[1] if "video_mask" in batch else ref.shape[1]
      fused = fuse_video(c, batch.get("sync_feats"), batch.get("clip_feats"), Tv)
    Tv = fused.shape[1]
    video_mask = batch.get("video_mask", jnp.ones((B, Tv), bool)).astype(bool)
    xv = self.projector(fused.astype(dt))
    if drop_text_B is not None:
      xt, text_mask = self._substitute(xt, text_mask, self.null_text, drop_text_B, "text_ids")
    if drop_video_B is not None:
      xv, video_mask = self._substitute(xv, video_mask, self.null_video, drop_video_B, "video")
    return jnp.concatenate([xt, xv], axis=1), jnp.concatenate([text_mask, video_mask], axis=1)

  def embed_audio(self, ids_BxLaxK: Array, vacant_BxLaxK: Optional[Array] = None) -> Array:
    """Sum over codebooks of table_k[id_k]; vacant staircase cells use the learnable pad (eq. 2)."""
    c = self.config
    K = c.num_codebooks
    e = self.audio_embed[jnp.arange(K), ids_BxLaxK]            # (B,La,K,D)
    if c.learnable_pad and vacant_BxLaxK is not None:
      e = jnp.where(vacant_BxLaxK[..., None], self.audio_pad[None, None].astype(e.dtype), e)
    return e.sum(axis=2).astype(jnp.dtype(c.decoder.dtype))

  def decode(self, x_BxTxD, mask_BxT, positions_BxT, cache=None):
    return self.decoder(inputs_embeds_BxTxD=x_BxTxD, attention_mask_BxT=mask_BxT, positions_BxT=positions_BxT,
                        cache=cache)

  def predict(self, h_BxLaxD) -> Array:
    return self.heads(h_BxLaxD)      # fp32 (`heads.logits_fp32`)

  # -- training forward -------------------------------------------------------------------------------

  def __call__(self, batch: dict, drop_text_B: Optional[Array] = None, drop_video_B: Optional[Array] = None):
    """Logits (B, La, K, V) at the audio positions of `batch["audio_ids"]` (each predicts the next column).

    batch: text_ids (B,Lt) int, text_mask (B,Lt); sync_feats (B,Tv,Ds) and/or clip_feats (B,Tc,Dc) (or
    pre-fused video_feats (B,Tv,Dv)), video_mask (B,Tv); audio_ids (B,La,K) delayed, audio_mask (B,La),
    audio_vacant (B,La,K).
    """
    prompt, pmask = self.embed_prompt(batch, drop_text_B, drop_video_B)
    ids = batch["audio_ids"]
    amask = batch.get("audio_mask", jnp.ones(ids.shape[:2], bool)).astype(bool)
    xa = self.embed_audio(ids, batch.get("audio_vacant"))
    x = jnp.concatenate([prompt, xa], axis=1)
    mask = jnp.concatenate([pmask, amask], axis=1)
    pos = sequence_positions(self.config, pmask, batch["text_ids"].shape[1], ids.shape[1])
    h, _ = self.decode(x, mask, pos)
    P = prompt.shape[1]
    logits = self.predict(h[:, P:])
    return logits, {"prompt_len": P}
