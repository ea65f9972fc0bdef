"""DreamFoley (video-to-audio) in PyTorch, on transformers' Qwen2Model: the reference implementation of the
dreamfoley_jax model, written into every directory it exports (tools/convert_checkpoint.py --family dreamfoley
--direction to_hf). Tested against the JAX model: same logits (fp32, <= 1e-5), same loss, same codes.

  model = AutoModel.from_pretrained(path, trust_remote_code=True, use_safetensors=True)
  out = model(text_ids=..., sync_feats=..., clip_feats=..., audio_ids=..., ...)   # out.logits, out.loss
  gen = model.generate(text_ids=..., sync_feats=..., clip_feats=..., lengths=[250])  # gen.codes (B, K, 250)

Legend: B batch, Lt text tokens, Tv video frames (25 Hz), Ts sync features (25 Hz), Tc CLIP features (4 fps),
P prompt (= Lt + Tv), La delayed audio columns, C prefix frames, K codebooks, V per-codebook vocab
(codebook_size codes, then BOS, then EOS), D width, H head width.

The sequence is [text | video | audio], one causal Qwen2 pass:
  * text: caption token embeddings (the decoder's own table);
  * video: F_v = concat(Synchformer feats @ 25 Hz, CLIP feats @ 4 fps upsampled to 25 Hz) (paper eq. 1) through the
    projector MLP, one position per 25 Hz frame;
  * audio: delayed column j is the sum over codebooks k of audio_embed[k, id[j, k]] (one table per codebook);
    vacant staircase cells take the learnable audio_pad[k] instead (eq. 2). Column j predicts column j + 1
    through K independent MLP heads.
  Padding inside the batch is masked out as keys; rotary positions skip it (`sequence_positions`).

Delay pattern of a clip of T frames (`delayed_layout`), column j, codebook k, d = j - k:
  d < 0 BOS (vacant) | d == 0 BOS | 1 <= d <= T code of frame d - 1 | d == T + 1 EOS | d > T + 1 EOS (vacant)
so La = T + K + 1 columns, and the clip is complete after column T + K.

Classifier-free guidance (section 3.4): null_text (n_t, D) and null_video (n_v, D) are trained embeddings. A
dropped text (video) region holds the null sequence in its first n slots, the rest masked out. Sampling runs
[conditional; unconditional (null text + null video)] as one doubled batch with one KV cache and guides the fp32
logits: uncond + s * (cond - uncond). Each token: BOS/EOS masked out, top-k, then top-p on the softmax of what
top-k kept, then temperature, then a Gumbel-max draw (`choose_tokens`).
"""
from __future__ import annotations

import dataclasses
import inspect
from fractions import Fraction
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, PreTrainedModel, Qwen2Model, StaticCache
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_dreamfoley import DreamFoleyConfig

Tensor = torch.Tensor
# transformers renamed Qwen2Model.forward's `past_key_values` to `cache` (5.2x); both work.
_CACHE_ARG = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


# --------------------------------------------------------------------------------------------------
# Delay pattern (index math)
# --------------------------------------------------------------------------------------------------

def num_columns(num_frames: int, num_codebooks: int) -> int:
  """Delayed columns of a clip: BOS + frames + EOS + K - 1 staircase."""
  return num_frames + num_codebooks + 1


def delayed_layout(config: DreamFoleyConfig, lengths_B: Tensor, num_cols: int,
                   prefix_BxKxC: Optional[Tensor] = None):
  """(ids, known, vacant), each (B, La, K): every cell fixed before sampling (BOS, EOS, prefix codes), which
  cells those are, and which are vacant staircase cells. ids is 0 where a code is still to be drawn."""
  K = config.num_codebooks
  dev = lengths_B.device
  j = torch.arange(num_cols, device=dev)[None, :, None]
  k = torch.arange(K, device=dev)[None, None, :]
  d = (j - k).expand(lengths_B.shape[0], num_cols, K)
  T = lengths_B[:, None, None]
  ids = torch.where(d <= 0, config.bos_id, torch.where(d > T, config.eos_id, 0))
  code = (d >= 1) & (d <= T)
  known = ~code
  if prefix_BxKxC is not None:
    C = prefix_BxKxC.shape[-1]
    in_prefix = code & (d <= C)
    src = (d - 1).clamp(0, max(C - 1, 0))
    given = prefix_BxKxC.transpose(1, 2).long().gather(1, src)          # given[b, j, k] = prefix[b, k, d - 1]
    ids = torch.where(in_prefix, given, ids)
    known = known | in_prefix
  vacant = (d < 0) | (d > T + 1)
  return ids.long(), known, vacant


def delay_codes(config: DreamFoleyConfig, codes_BxKxT: Tensor, lengths_B: Optional[Tensor] = None):
  """Training inputs from frame-aligned codes: (audio_ids (B, La, K), audio_mask (B, La), audio_vacant (B, La, K)),
  each clip right-padded (EOS, masked out) to the longest."""
  B, K, T = codes_BxKxT.shape
  if lengths_B is None:
    lengths_B = torch.full((B,), T, dtype=torch.long, device=codes_BxKxT.device)
  La = num_columns(int(lengths_B.max()), K)
  ids, _, vacant = delayed_layout(config, lengths_B, La, codes_BxKxT)
  mask = torch.arange(La, device=ids.device)[None] < (lengths_B + K + 1)[:, None]
  return ids, mask, vacant


def codes_from_delayed(config: DreamFoleyConfig, ids_BxLaxK: Tensor, lengths_B: Tensor, num_frames: int) -> Tensor:
  """Delayed columns -> frame-aligned codes (B, K, num_frames): frame t of codebook k is column t + 1 + k; codes
  clipped to [0, codebook_size) and zero beyond each clip's length."""
  K = config.num_codebooks
  t = torch.arange(num_frames, device=ids_BxLaxK.device)
  cols = t[None, :] + 1 + torch.arange(K, device=t.device)[:, None]                  # (K, T)
  codes = ids_BxLaxK[:, cols, torch.arange(K, device=t.device)[:, None]]             # (B, K, T)
  codes = codes.clamp(0, config.codebook_size - 1)
  return torch.where(t[None, None] < lengths_B[:, None, None], codes, 0)


# --------------------------------------------------------------------------------------------------
# Video fusion (eq. 1) and positions
# --------------------------------------------------------------------------------------------------

def clip_source_index(config: DreamFoleyConfig, num_frames: int, device=None):
  """(i0, w) per 25 Hz frame j: the CLIP frame it reads and the weight of frame i0 + 1 ('linear' only), from
  the exact rate ratio r = clip_rate / sync_rate. nearest: floor(j r); nearest_exact: floor(j r + 1/2)."""
  r = Fraction(config.clip_rate).limit_denominator(1_000_000) / Fraction(config.sync_rate).limit_denominator(1_000_000)
  num, den = r.numerator, r.denominator
  j = torch.arange(num_frames, device=device)
  if config.upsample == "nearest_exact":
    return (2 * j * num + den) // (2 * den), torch.zeros(num_frames, device=device)
  i0 = (j * num) // den
  w = ((j * num) % den).float() / den if config.upsample == "linear" else torch.zeros(num_frames, device=device)
  return i0, w


def fuse_video(config: DreamFoleyConfig, sync_BxTsxDs: Optional[Tensor], clip_BxTcxDc: Optional[Tensor],
               num_frames: int) -> Tensor:
  """F_v (B, Tv, Dv) in fp32 at 25 Hz: sync feature j is frame j; CLIP features are repeated (or interpolated)
  onto the 25 Hz grid; frames past the end of a stream are zero when both streams are used."""
  if config.use_sync and not config.use_clip:
    return sync_BxTsxDs[:, :num_frames].float()
  clip = clip_BxTcxDc.float()
  Tc = clip.shape[1]
  i0, w = clip_source_index(config, num_frames, clip.device)
  up = clip[:, i0.clamp(max=Tc - 1)]
  if config.upsample == "linear":
    w = w[None, :, None]
    up = up * (1 - w) + clip[:, (i0 + 1).clamp(max=Tc - 1)] * w
  if not config.use_sync:
    return up
  sync = sync_BxTsxDs.float()
  Ts = sync.shape[1]
  j = torch.arange(num_frames, device=sync.device)
  sync = torch.where((j < Ts)[None, :, None], sync[:, j.clamp(max=Ts - 1)], 0.0)
  up = torch.where((i0 < Tc)[None, :, None], up, 0.0)
  return torch.cat([sync, up], dim=-1)


def positions_from_mask(mask_BxT: Tensor) -> Tensor:
  return (mask_BxT.long().cumsum(1) - 1).clamp(min=0)


def audio_position_offset(config: DreamFoleyConfig, prompt_mask_BxP: Tensor, text_len: int) -> Tensor:
  """(B,) rotary position of audio column 0 (column j sits at offset + j)."""
  if config.position_scheme == "time_aligned":
    return prompt_mask_BxP[:, :text_len].long().sum(1)
  return prompt_mask_BxP.long().sum(1)


def sequence_positions(config: DreamFoleyConfig, prompt_mask_BxP: Tensor, text_len: int, num_audio: int) -> Tensor:
  """Rotary positions (B, P + La) of [text | video | audio].

  sequential: real tokens count up through the sequence, padding skipped (a clip gets the same positions
  however its batch is padded). time_aligned: video frame f and audio column f share position n_text + f.
  """
  a = audio_position_offset(config, prompt_mask_BxP, text_len)[:, None] + torch.arange(
      num_audio, device=prompt_mask_BxP.device)[None]
  if config.position_scheme == "sequential":
    return torch.cat([positions_from_mask(prompt_mask_BxP), a], dim=1)
  tmask = prompt_mask_BxP[:, :text_len]
  n_text = tmask.long().sum(1, keepdim=True)
  return torch.cat([positions_from_mask(tmask), n_text + positions_from_mask(prompt_mask_BxP[:, text_len:]), a], 1)


# --------------------------------------------------------------------------------------------------
# Sampling rules and the loss
# --------------------------------------------------------------------------------------------------

def filter_logits(logits_xV: Tensor, top_k: int, top_p: float) -> Tensor:
  """top-k, then top-p on the softmax of what top-k kept; removed logits become -inf. A logit tied with the
  k-th largest is kept (as transformers' TopKLogitsWarper); top-p drops the smallest tokens whose ascending
  cumulative probability is <= 1 - top_p, always keeping the largest (TopPLogitsWarper with min_keep=1)."""
  V = logits_xV.shape[-1]
  use_k = 0 < top_k < V
  desc = torch.topk(logits_xV, top_k).values if use_k else torch.sort(logits_xV, descending=True).values
  thr = desc[..., -1:] if use_k else torch.full_like(desc[..., -1:], -float("inf"))
  if top_p < 1.0:
    asc = desc.flip(-1)
    remove = asc.softmax(-1).cumsum(-1) <= 1.0 - top_p
    remove[..., -1] = False
    thr = torch.maximum(thr, asc.gather(-1, remove.sum(-1, keepdim=True)))
  return logits_xV.masked_fill(logits_xV < thr, -float("inf"))


def choose_tokens(logits_BxKxV: Tensor, codebook_size: int, temperature: float, top_k: int, top_p: float,
                  uniform_BxKxV: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
  """Codes in [0, codebook_size) per (item, codebook): BOS/EOS masked, filters, temperature, then
  argmax(logits / temperature + Gumbel(u)), u uniform (drawn here unless given). temperature 0: argmax."""
  V = logits_BxKxV.shape[-1]
  x = logits_BxKxV.float().masked_fill(torch.arange(V, device=logits_BxKxV.device) >= codebook_size, -float("inf"))
  if temperature == 0:
    return x.argmax(-1)
  x = filter_logits(x, top_k, top_p) / temperature
  if uniform_BxKxV is None:
    uniform_BxKxV = torch.rand(x.shape, generator=generator, device=x.device)
  u = uniform_BxKxV.float().clamp_min(torch.finfo(torch.float32).tiny)
  return (x - torch.log(-torch.log(u))).argmax(-1)


def guide(logits_2BxKxV: Tensor, cfg_scale: float) -> Tensor:
  """Classifier-free guidance on fp32 logits: [cond; uncond] -> uncond + s * (cond - uncond)."""
  cond, unc = logits_2BxKxV.float().chunk(2)
  return unc + cfg_scale * (cond - unc)


def target_mask(config: DreamFoleyConfig, audio_ids: Tensor, audio_mask: Tensor, audio_vacant: Optional[Tensor]):
  """(B, La - 1, K): the next-column cells that are trained: real codes and the final EOS, not BOS/staircase."""
  tgt = audio_ids[:, 1:]
  m = audio_mask[:, 1:, None].bool() & (tgt != config.bos_id)
  if audio_vacant is not None:
    m = m & ~audio_vacant[:, 1:].bool()
  return m


def weighted_loss(config: DreamFoleyConfig, logits_BxLaxKxV: Tensor, audio_ids: Tensor, audio_mask: Tensor,
                  audio_vacant: Optional[Tensor]):
  """(loss, ce_per_codebook, acc_per_codebook, num_targets): sum_k w_k CE_k (section 5.1), CE_k averaged over the
  trained cells of codebook k."""
  K = config.num_codebooks
  logits = logits_BxLaxKxV[:, :-1].float()
  tgt = audio_ids[:, 1:].long()
  m = target_mask(config, audio_ids, audio_mask, audio_vacant).float()
  nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none").view(tgt.shape)
  count = m.sum((0, 1))
  ce_k = (nll * m).sum((0, 1)) / count.clamp(min=1.0)
  acc_k = ((logits.argmax(-1) == tgt).float() * m).sum((0, 1)) / count.clamp(min=1.0)
  w = torch.tensor(config.loss_weights[:K], dtype=torch.float32, device=logits.device)
  return (w * ce_k).sum(), ce_k, acc_k, count.sum()


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------

class MLP(nn.Module):
  """The video projector: fc1 -> GELU -> ... -> fc{depth} (exact GELU)."""

  def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int):
    super().__init__()
    dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
    self.depth = depth
    for i in range(depth):
      setattr(self, f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))

  def forward(self, x):
    for i in range(1, self.depth):
      x = F.gelu(getattr(self, f"fc{i}")(x))
    return getattr(self, f"fc{self.depth}")(x)


class StackedLinear(nn.Module):
  """K independent Linear layers in one tensor: weight (K, out, in), bias (K, out); weight[k] is an nn.Linear
  weight."""

  def __init__(self, num: int, in_dim: int, out_dim: int):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(num, out_dim, in_dim))
    self.bias = nn.Parameter(torch.empty(num, out_dim))

  def forward(self, x):
    """(N, in) -> (N, K, out) with every layer on the same input, or (N, K, in) -> (N, K, out) layer by layer."""
    if x.dim() == 2:
      return torch.einsum("nd,kod->nko", x, self.weight) + self.bias
    return torch.einsum("nkd,kod->nko", x, self.weight) + self.bias


class CodebookHeads(nn.Module):
  """K independent MLP heads (h -> fc1 -> GELU -> fc2 per codebook); the last projection always in fp32 (its
  input and weights cast up, autocast off), as dreamfoley_jax.models.heads.logits_fp32."""

  def __init__(self, num_codebooks: int, width: int, hidden: int, vocab: int, depth: int):
    super().__init__()
    self.depth = depth
    self.fc1 = StackedLinear(num_codebooks, width, hidden if depth == 2 else vocab)
    if depth == 2:
      self.fc2 = StackedLinear(num_codebooks, hidden, vocab)

  def forward(self, h_xD: Tensor) -> Tensor:
    """(..., D) -> fp32 logits (..., K, V)."""
    lead = h_xD.shape[:-1]
    x = h_xD.reshape(-1, h_xD.shape[-1])
    last = self.fc1
    if self.depth == 2:
      x, last = F.gelu(self.fc1(x)), self.fc2
    # fp32 logits whatever the compute dtype (also under bf16 autocast): the softmax, the loss and the CFG
    # difference cond - uncond all read them.
    with torch.autocast(device_type=x.device.type, enabled=False):
      y = torch.einsum("nkd,kvd->nkv" if x.dim() == 3 else "nd,kvd->nkv", x.float(), last.weight.float())
      y = y + last.bias.float()
    return y.reshape(*lead, *y.shape[1:])


@dataclasses.dataclass
class DreamFoleyOutput(ModelOutput):
  """logits (B, La, K, V) fp32, row j predicting column j + 1; loss = sum_k w_k CE_k when audio_ids are given."""
  loss: Optional[Tensor] = None
  logits: Optional[Tensor] = None
  ce_per_codebook: Optional[Tensor] = None
  acc_per_codebook: Optional[Tensor] = None
  num_targets: Optional[Tensor] = None


@dataclasses.dataclass
class DreamFoleyGenerateOutput(ModelOutput):
  """codes (B, K, max_frames) frame-aligned (zero past each length); delayed (B, La, K) the whole token buffer;
  logits (B, La, K, V) the guided fp32 logits, row j predicting column j + 1 (only with return_logits)."""
  codes: Optional[Tensor] = None
  delayed: Optional[Tensor] = None
  vacant: Optional[Tensor] = None
  lengths: Optional[Tensor] = None
  logits: Optional[Tensor] = None


class DreamFoleyPreTrainedModel(PreTrainedModel):
  config_class = DreamFoleyConfig
  config: DreamFoleyConfig
  base_model_prefix = "model"
  # Loaded in bf16, these keep fp32 weights, as dreamfoley_jax's inference layout keeps them: the heads' last
  # projection (fp32 logits; head_depth 1: heads.fc1) and the audio tables (summed over K in fp32, then cast).
  _keep_in_fp32_modules_strict = ["heads.fc2", "audio_embed", "audio_pad"]
  supports_gradient_checkpointing = True
  _no_split_modules = ["Qwen2DecoderLayer"]
  _supports_sdpa = True
  _supports_flash_attn = True

  def _init_weights(self, module):
    std = self.config.initializer_range
    if isinstance(module, StackedLinear):
      init.normal_(module.weight, mean=0.0, std=std)
      init.zeros_(module.bias)
    elif isinstance(module, DreamFoleyModel):
      for p in (module.audio_embed, module.audio_pad, module.null_text, module.null_video):
        if p is not None:
          init.normal_(p, mean=0.0, std=std)
    else:
      super()._init_weights(module)


class DreamFoleyModel(DreamFoleyPreTrainedModel):
  """[text | video | audio] through a Qwen2 decoder (`self.model`, standard Qwen2 keys), K codebook heads."""

  def __init__(self, config: DreamFoleyConfig):
    super().__init__(config)
    c = config
    D, K, V = c.hidden_size, c.num_codebooks, c.vocab_per_codebook
    self.model = Qwen2Model(c)
    self.projector = MLP(c.video_dim, D, D, c.projector_depth)
    self.audio_embed = nn.Parameter(torch.empty(K, V, D))           # audio_embed[k] is codebook k's table
    self.audio_pad = nn.Parameter(torch.empty(K, D)) if c.learnable_pad else None
    self.null_text = nn.Parameter(torch.empty(c.null_text_len, D))
    self.null_video = nn.Parameter(torch.empty(c.null_video_len, D))
    self.heads = CodebookHeads(K, D, c.head_hidden or D, V, c.head_depth)
    if c.head_depth == 1:
      self._keep_in_fp32_modules_strict = ["heads.fc1", "audio_embed", "audio_pad"]
    self._compiled_step = None
    self.post_init()

  # -- pieces (shared by forward and generate) ------------------------------------------------------

  @staticmethod
  def _substitute(x_BxLxD, mask_BxL, null_NxD, drop_B, field):
    """Dropped items: the region holds the null sequence in its first N slots, the rest masked out."""
    L, N = x_BxLxD.shape[1], null_NxD.shape[0]
    if L < N:
      raise ValueError(f"{field}: region length {L} is shorter than the null sequence ({N}); pad it to >= {N}")
    null = torch.zeros_like(x_BxLxD[0])
    null[:N] = null_NxD.to(x_BxLxD.dtype)
    null_mask = torch.arange(L, device=mask_BxL.device) < N
    d = drop_B.bool().to(x_BxLxD.device)[:, None]
    return torch.where(d[..., None], null[None], x_BxLxD), torch.where(d, null_mask[None], mask_BxL)

  def embed_prompt(self, text_ids, text_mask=None, sync_feats=None, clip_feats=None, video_feats=None,
                   video_mask=None, drop_text=None, drop_video=None):
    """[text | video] embeddings (B, P, D) and mask (B, P); drop_text / drop_video (B,) swap in the nulls."""
    c = self.config
    B = text_ids.shape[0]
    text_mask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask.bool()
    xt = self.model.embed_tokens(text_ids)
    if video_feats is None:
      ref = sync_feats if c.use_sync else clip_feats
      Tv = video_mask.shape[1] if video_mask is not None else ref.shape[1]
      video_feats = fuse_video(c, sync_feats, clip_feats, Tv)
    Tv = video_feats.shape[1]
    video_mask = (torch.ones(B, Tv, dtype=torch.bool, device=xt.device) if video_mask is None
                  else video_mask.bool())
    xv = self.projector(video_feats.to(self.projector.fc1.weight.dtype)).to(xt.dtype)
    if drop_text is not None:
      xt, text_mask = self._substitute(xt, text_mask, self.null_text, drop_text, "text_ids")
    if drop_video is not None:
      xv, video_mask = self._substitute(xv, video_mask, self.null_video, drop_video, "video")
    return torch.cat([xt, xv], 1), torch.cat([text_mask, video_mask], 1)

  def embed_audio(self, ids_BxLxK: Tensor, vacant_BxLxK: Optional[Tensor] = None) -> Tensor:
    """sum_k audio_embed[k, id_k]; vacant staircase cells take audio_pad[k] (eq. 2)."""
    K = self.config.num_codebooks
    e = self.audio_embed[torch.arange(K, device=ids_BxLxK.device), ids_BxLxK]          # (B, L, K, D)
    if self.audio_pad is not None and vacant_BxLxK is not None:
      e = torch.where(vacant_BxLxK.bool()[..., None], self.audio_pad, e)
    return e.sum(2)

  def decode(self, x_BxTxD, mask_BxS, positions_BxT, cache=None) -> Tensor:
    """Qwen2 hidden states; mask_BxS covers every key slot (cached + new), True = real token."""
    out = self.model(inputs_embeds=x_BxTxD, attention_mask=mask_BxS, position_ids=positions_BxT,
                     use_cache=cache is not None, **{_CACHE_ARG: cache})
    return out.last_hidden_state

  # -- training forward -------------------------------------------------------------------------------

  def forward(self, text_ids: Tensor, audio_ids: Tensor, text_mask: Optional[Tensor] = None,
              sync_feats: Optional[Tensor] = None, clip_feats: Optional[Tensor] = None,
              video_feats: Optional[Tensor] = None, video_mask: Optional[Tensor] = None,
              audio_mask: Optional[Tensor] = None, audio_vacant: Optional[Tensor] = None,
              drop_text: Optional[Tensor] = None, drop_video: Optional[Tensor] = None,
              return_loss: bool = True) -> DreamFoleyOutput:
    """Logits at every delayed audio column and the weighted loss.

    text_ids (B, Lt) + text_mask; sync_feats (B, Ts, Ds) and/or clip_feats (B, Tc, Dc), or pre-fused
    video_feats (B, Tv, Dv), + video_mask (B, Tv); audio_ids (B, La, K) delayed (`delay_codes`) + audio_mask
    (B, La) + audio_vacant (B, La, K); drop_text / drop_video (B,) bool: CFG training drops (draw them with
    `cfg_drop`).
    """
    prompt, pmask = self.embed_prompt(text_ids, text_mask, sync_feats, clip_feats, video_feats, video_mask,
                                      drop_text, drop_video)
    B, La = audio_ids.shape[:2]
    audio_mask = (torch.ones(B, La, dtype=torch.bool, device=audio_ids.device) if audio_mask is None
                  else audio_mask.bool())
    x = torch.cat([prompt, self.embed_audio(audio_ids, audio_vacant).to(prompt.dtype)], 1)
    pos = sequence_positions(self.config, pmask, text_ids.shape[1], La)
    h = self.decode(x, torch.cat([pmask, audio_mask], 1), pos)
    logits = self.heads(h[:, prompt.shape[1]:])
    if not return_loss:
      return DreamFoleyOutput(logits=logits)
    loss, ce_k, acc_k, n = weighted_loss(self.config, logits, audio_ids, audio_mask, audio_vacant)
    return DreamFoleyOutput(loss=loss, logits=logits, ce_per_codebook=ce_k, acc_per_codebook=acc_k, num_targets=n)

  def cfg_drop(self, batch_size: int, generator: Optional[torch.Generator] = None):
    """Independent per-item training drops (drop_text, drop_video) at the config's rates."""
    u = torch.rand(2, batch_size, generator=generator, device=self.device)
    return u[0] < self.config.cfg_drop_text, u[1] < self.config.cfg_drop_video

  # -- sampling ---------------------------------------------------------------------------------------

  def _decode_step(self, col_Bx1xK, vac_Bx1xK, mask_BxS, pos_Bx1, cache):
    """One audio column through the decoder (its K/V written into the cache) -> fp32 logits (B, K, V)."""
    h = self.decode(self.embed_audio(col_Bx1xK, vac_Bx1xK).to(self.model.embed_tokens.weight.dtype), mask_BxS,
                    pos_Bx1, cache)
    return self.heads(h[:, 0])

  def _prompts(self, guided, text_ids, text_mask, sync_feats, clip_feats, video_feats, video_mask, drop_text,
               drop_video, negative_text_ids, negative_text_mask, negative):
    """(x (nB, P, D), mask (nB, P), Lt): [conditional; unconditional] prompts as one doubled batch (nB = 2B) when
    guided. Unconditional = null text + null video, or the negative text + null video for `negative` items.
    Text regions are padded (masked out) to hold the null text: a short caption needs no padding by the caller,
    and padding changes no result (masked keys; positions count real tokens only)."""
    c, B, dev = self.config, text_ids.shape[0], text_ids.device
    as_mask = lambda m, ids: torch.ones_like(ids, dtype=torch.bool) if m is None else m.bool()
    L = max(text_ids.shape[1], c.null_text_len, 0 if negative_text_ids is None else negative_text_ids.shape[1])
    pad = lambda a, v: F.pad(a, (0, L - a.shape[1]), value=v)
    text_ids, text_mask = pad(text_ids, 0), pad(as_mask(text_mask, text_ids), False)
    x, pmask = self.embed_prompt(text_ids, text_mask, sync_feats, clip_feats, video_feats, video_mask,
                                 drop_text, drop_video)
    if not guided:
      if negative_text_ids is not None:
        raise ValueError("a negative prompt needs cfg_scale (it replaces the unconditional text)")
      return x, pmask, L
    ut, um, drop_t = text_ids, text_mask, torch.ones(B, dtype=torch.bool, device=dev)
    if negative_text_ids is not None:
      ut, um = pad(negative_text_ids, 0), pad(as_mask(negative_text_mask, negative_text_ids), False)
      drop_t = torch.zeros(B, dtype=torch.bool, device=dev) if negative is None else ~negative.bool().to(dev)
    xu, mu = self.embed_prompt(ut, um, sync_feats, clip_feats, video_feats, video_mask, drop_t,
                               torch.ones(B, dtype=torch.bool, device=dev))
    return torch.cat([x, xu]), torch.cat([pmask, mu]), L

  @torch.no_grad()
  def generate(self, text_ids: Tensor, text_mask: Optional[Tensor] = None, sync_feats: Optional[Tensor] = None,
               clip_feats: Optional[Tensor] = None, video_feats: Optional[Tensor] = None,
               video_mask: Optional[Tensor] = None, *, lengths, max_frames: Optional[int] = None,
               sampling: Optional[dict] = None, drop_text: Optional[Tensor] = None,
               drop_video: Optional[Tensor] = None, negative_text_ids: Optional[Tensor] = None,
               negative_text_mask: Optional[Tensor] = None, negative: Optional[Tensor] = None,
               prefix_codes: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
               uniform_noise: Optional[Tensor] = None, cache_implementation: str = "static",
               compile: bool = False, return_logits: bool = False) -> DreamFoleyGenerateOutput:
    """Audio codes for a batch of clips, with CFG and a KV cache.

    The prompt fields are those of `forward`. lengths (B,): frames to generate per clip (25 per second), each
    <= max_frames (default max(lengths)). sampling: overrides of config.sampling {"temperature", "top_k",
    "top_p", "cfg_scale"} (cfg_scale None: no unconditional pass; temperature 0: greedy). drop_text /
    drop_video (B,): the conditional pass's drops (video only: drop_text; text only: drop_video).
    negative_text_ids/_mask (B, Ln) + negative (B,): items whose unconditional pass reads that text (with the
    null video) instead of the null text. prefix_codes (B, K, C): the first C frames are given (continuation).
    uniform_noise (La, B, K, V): the uniforms column j's draw uses (else drawn from `generator`).
    cache_implementation: "static" (preallocated, one shape every step: torch.compile / CUDA graphs) or
    "dynamic". compile: torch.compile the decode step (CUDA graphs on a GPU).
    """
    c = self.config
    s = {**c.sampling, **(sampling or {})}
    dev, K = self.device, c.num_codebooks
    if cache_implementation not in ("static", "dynamic"):
      raise ValueError(f"cache_implementation must be 'static' or 'dynamic', got {cache_implementation!r}")
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=dev).reshape(-1)
    B = lengths.shape[0]
    T = int(max_frames or lengths.max())
    if int(lengths.min()) < 1 or int(lengths.max()) > T:
      raise ValueError(f"lengths must be in [1, max_frames={T}], got {lengths.tolist()}")
    C = 0 if prefix_codes is None else prefix_codes.shape[-1]
    if C and int(lengths.min()) < C:
      raise ValueError(f"every length must cover the prefix ({C} frames): {lengths.tolist()}")
    La = num_columns(T, K)
    ids, known, vacant = delayed_layout(c, lengths, La, None if prefix_codes is None else prefix_codes.to(dev))
    guided = s["cfg_scale"] is not None

    x, pmask, Lt = self._prompts(guided, text_ids, text_mask, sync_feats, clip_feats, video_feats, video_mask,
                                 drop_text, drop_video, negative_text_ids, negative_text_mask, negative)
    dup = (lambda a: torch.cat([a, a])) if guided else (lambda a: a)
    nB, P = x.shape[:2]
    a0 = audio_position_offset(c, pmask, Lt)                                       # (nB,) column 0's position

    # Prefill [text | video | prefix columns] into the KV cache: slot = sequence index, prompt padding masked.
    slots = P + La
    mask = torch.zeros(nB, slots, dtype=torch.bool, device=dev)
    mask[:, :P] = pmask
    mask[:, P:P + C] = True
    if C:
      x = torch.cat([x, self.embed_audio(dup(ids[:, :C]), dup(vacant[:, :C])).to(x.dtype)], 1)
    static = cache_implementation == "static"
    cache = StaticCache(config=c, max_cache_len=slots) if static else DynamicCache(config=c)
    self.decode(x, mask[:, :P + C], sequence_positions(c, pmask, Lt, C), cache)

    # Decode column col, predict column col + 1 (drawn where not known); every clip is complete after column
    # length + K.
    step = self._decode_step
    if compile:
      if self._compiled_step is None:
        self._compiled_step = torch.compile(self._decode_step, mode="reduce-overhead" if dev.type == "cuda" else None)
      step = self._compiled_step
    logits_out = torch.zeros(B, La, K, c.vocab_per_codebook, device=dev) if return_logits else None
    for col in range(C, min(La - 1, int(lengths.max()) + K)):
      mask[:, P + col] = True
      lg = step(dup(ids[:, col:col + 1]), dup(vacant[:, col:col + 1]), mask if static else mask[:, :P + col + 1],
                (a0 + col)[:, None], cache)
      lg = guide(lg, s["cfg_scale"]) if guided else lg
      if return_logits:
        logits_out[:, col] = lg
      drawn = choose_tokens(lg, c.codebook_size, s["temperature"], s["top_k"], s["top_p"],
                            None if uniform_noise is None else uniform_noise[col + 1].to(dev), generator)
      ids[:, col + 1] = torch.where(known[:, col + 1], ids[:, col + 1], drawn)
    return DreamFoleyGenerateOutput(codes=codes_from_delayed(c, ids, lengths, T), delayed=ids, vacant=vacant,
                                    lengths=lengths, logits=logits_out)
