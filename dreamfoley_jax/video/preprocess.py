"""Resize / crop / normalise frames for EVA-CLIP (4 fps) and Synchformer (25 fps), and cut sync windows.

Both references resize the short side to 224 with antialiased bicubic (a = -0.5, support scaled with the
downscale factor) and centre-crop 224x224, with torchvision's size and crop rounding:
  size: short side -> 224, long side -> int(224 * long / short)       (torchvision Resize(int))
  crop: top = round((H - 224) / 2), left = round((W - 224) / 2)       (Python round, as CenterCrop)
The two references round differently, and each path reproduces its own bit for bit:
  method="pil"   Pillow's BICUBIC: open_clip's EVA transform resizes PIL images (the CLIP path).
  method="torch" torch's native uint8 antialiased bicubic kernel (int16 weights with a per-axis
                 precision, width pass then height pass, each rounded to uint8), which torchvision's
                 v2.Resize runs on the uint8 frame tensors MMAudio feeds it (the Synchformer path). Written
                 here with numpy/scipy.sparse; tests check it bit-exact against
                 torch.nn.functional.interpolate. Only the 224x224 that survive the crop are computed.
The two differ by one grey level on well under 1% of pixels.
Normalisation, in float32 as torchvision computes it:
  CLIP:        (u8 / 255 - OPENAI_MEAN) / OPENAI_STD
  Synchformer: (u8 / 255 - 0.5) / 0.5  in [-1, 1]
Synchformer windows (MMAudio encode_video_with_sync): S = (T - 16) // 8 + 1 windows, window s covers
frames [8 s, 8 s + 16); trailing frames that do not fill a window are dropped (`sync_window_indices`,
kept for the DeSync metric, which follows MMAudio).

The project's length rule (`sync_cover_indices`): a video of T frames at 25 fps yields T audio frames
(10 s: 250) and T Synchformer tokens, token i standing for frame i. MMAudio's windows would give
8 * ((T - 16) // 8 + 1) tokens (10 s: 240), leaving the last 0.4 s without video. So ceil(T / 8) windows
are cut at MMAudio's stride, frame indices past the end repeat the last frame (edge padding), and the
8 * ceil(T / 8) >= T tokens are cut back to T. Records, the model's frames mode, generate and the long-clip
windows all use it, so training and sampling see the same lengths.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os

import numpy as np
from PIL import Image

from dreamfoley_jax.video import io as vio

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_FPS = 4          # r_t, DreamFoley section 3.2
SYNC_FPS = 25         # r_a
IMAGE_SIZE = 224
SYNC_WINDOW = 16
SYNC_STRIDE = 8
SYNC_TOKENS_PER_WINDOW = 8


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
  """(new_h, new_w) of torchvision Resize(size): short side -> size, long side truncated."""
  if width <= height:
    return int(size * height / width), size
  return size, int(size * width / height)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
  """(top, left) of torchvision CenterCrop(size) on an image at least `size` on both sides."""
  if height < size or width < size:
    raise ValueError(f"cannot centre-crop {size}x{size} from {height}x{width}")
  return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def resize_short_side(img_HxWx3: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """Antialiased bicubic resize (PIL BICUBIC) of a uint8 RGB image so its short side is `size`."""
  h, w = img_HxWx3.shape[:2]
  nh, nw = short_side_size(h, w, size)
  if (nh, nw) == (h, w):
    return np.ascontiguousarray(img_HxWx3)
  out = Image.fromarray(np.ascontiguousarray(img_HxWx3)).resize((nw, nh), Image.Resampling.BICUBIC)
  return np.asarray(out)


def _cubic(x, a=-0.5):
  ax = np.abs(x)
  return np.where(ax < 1, ((a + 2) * ax - (a + 3)) * ax * ax + 1,
                  np.where(ax < 2, ((a * ax - 5 * a) * ax + 8 * a) * ax - 4 * a, 0.0))


@functools.lru_cache(maxsize=64)
def _torch_aa_weights(n_in: int, n_out: int):
  """(taps index (n_out, K), int16-valued weights (n_out, K), precision) of torch's uint8 AA bicubic."""
  scale = n_in / n_out
  support = 2.0 * scale if scale >= 1.0 else 2.0
  inv = 1.0 / scale if scale >= 1.0 else 1.0
  k = int(math.ceil(support)) * 2 + 1
  idx = np.zeros((n_out, k), np.int64)
  w = np.zeros((n_out, k), np.float64)
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    n = min(max(min(int(center + support + 0.5), n_in) - lo, 0), k)
    ww = _cubic((np.arange(n) + lo - center + 0.5) * inv)
    tot = ww.sum()
    w[i, :n] = ww / tot if tot != 0 else ww
    idx[i, :n] = np.arange(lo, lo + n)
    idx[i, n:] = lo
  # the largest precision (<= 22 bits) at which the biggest weight still fits in int16
  wmax, p = w.max(), 0
  while p < 22 and int(0.5 + wmax * (1 << (p + 1))) < (1 << 15):
    p += 1
  v = w * (1 << p)
  w16 = np.trunc(np.where(v < 0, v - 0.5, v + 0.5)).astype(np.int32)
  return idx, w16, p


@functools.lru_cache(maxsize=64)
def _torch_aa_band(n_in: int, n_out: int, start: int, size: int):
  """Output rows [start, start + size) of the int16 weights as an int32 CSR matrix over the input band.

  Returns (first input index, band length, matrix (size, band), precision p).
  """
  import scipy.sparse

  idx, w16, p = _torch_aa_weights(n_in, n_out)
  idx, w16 = idx[start:start + size], w16[start:start + size]
  lo, n = int(idx.min()), int(idx.max()) + 1 - int(idx.min())
  rows = np.repeat(np.arange(size), idx.shape[1])
  m = scipy.sparse.csr_matrix((w16.reshape(-1), (rows, (idx - lo).reshape(-1))), shape=(size, n),
                              dtype=np.int32)   # padded taps repeat an index with weight 0: sums are exact
  return lo, n, m, p


def _torch_aa_apply(m, p, x_NxM):
  """clamp((2^(p-1) + m @ x) >> p) in int32, exactly torch's accumulate-shift-clamp."""
  acc = m @ x_NxM.astype(np.int32)
  acc += 1 << (p - 1)
  np.right_shift(acc, p, out=acc)
  return np.clip(acc, 0, 255).astype(np.uint8)


def resize_crop_torch(img_HxWx3: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """torchvision Resize(size, BICUBIC) + CenterCrop(size) on a uint8 tensor, bit-exact, crop-only work.

  torch's uint8 antialiased kernel: width pass then height pass, int16 weights at a per-axis precision
  p (the largest <= 22 keeping the biggest weight below 2^15), accumulators start at 2^(p-1), results
  shifted right by p and clamped to uint8 after each pass. Only the kept rows/columns are computed,
  each pass as one sparse int32 product (sums stay far below 2^31).
  """
  h, w = img_HxWx3.shape[:2]
  nh, nw = short_side_size(h, w, size)
  top, left = center_crop_offsets(nh, nw, size)
  x = img_HxWx3
  if nh != h:  # the input rows the kept output rows read: the width pass only needs those
    r0, rn, mv, pv = _torch_aa_band(h, nh, top, size)
    x = x[r0:r0 + rn]
  else:
    x = x[top:top + size]
  rows = x.shape[0]
  if nw != w:
    c0, cn, mh, ph = _torch_aa_band(w, nw, left, size)
    xt = np.ascontiguousarray(x[:, c0:c0 + cn].transpose(1, 0, 2)).reshape(cn, rows * 3)
    x = _torch_aa_apply(mh, ph, xt).reshape(size, rows, 3).transpose(1, 0, 2)   # (rows, size, 3)
  else:
    x = x[:, left:left + size]
  if nh != h:
    x = _torch_aa_apply(mv, pv, np.ascontiguousarray(x).reshape(rows, size * 3)).reshape(size, size, 3)
  return np.ascontiguousarray(x)


def center_crop(img_HxWxC: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  top, left = center_crop_offsets(img_HxWxC.shape[0], img_HxWxC.shape[1], size)
  return np.ascontiguousarray(img_HxWxC[top:top + size, left:left + size])


def resize_crop(img_HxWx3: np.ndarray, size: int = IMAGE_SIZE, method: str = "pil") -> np.ndarray:
  """Short-side bicubic resize then centre crop: uint8 (size, size, 3); method "pil" or "torch"."""
  if method == "torch":
    return resize_crop_torch(img_HxWx3, size)
  if method != "pil":
    raise ValueError(f"method must be 'pil' or 'torch', got {method!r}")
  return center_crop(resize_short_side(img_HxWx3, size), size)


def clip_normalize(frames_u8: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 EVA-CLIP pixels with OpenAI CLIP mean/std, bit-equal to open_clip's
  ToTensor + Normalize. Host-side numpy on purpose: XLA may turn the divisions into reciprocal multiplies
  (1-ulp differences)."""
  x = np.asarray(frames_u8).astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(OPENAI_CLIP_STD, np.float32)


def sync_normalize(frames_u8: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 Synchformer pixels in [-1, 1]."""
  x = frames_u8.astype(np.float32) / np.float32(255.0)
  return (x - np.float32(0.5)) / np.float32(0.5)


def normalize_lut(kind: str) -> np.ndarray:
  """(256, 3) float32 table u8 -> normalised value ("clip" or "sync"): `lut[u8, arange(3)]` inside jit
  gives the same bits as clip_normalize / sync_normalize, for frames stored as uint8."""
  u = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  if kind == "clip":
    return clip_normalize(u)
  if kind == "sync":
    return sync_normalize(u)
  raise ValueError(f"kind must be 'clip' or 'sync', got {kind!r}")


def num_sync_windows(num_frames: int, window: int = SYNC_WINDOW, stride: int = SYNC_STRIDE) -> int:
  """S = (T - window) // stride + 1 (0 when T < window): trailing frames that do not fill a window drop."""
  if num_frames < window:
    return 0
  return (num_frames - window) // stride + 1


def sync_window_indices(num_frames: int, window: int = SYNC_WINDOW, stride: int = SYNC_STRIDE) -> np.ndarray:
  """(S, window) int32 frame indices of MMAudio's Synchformer windows (encode_video_with_sync) for a
  T-frame 25 fps video: row s = [s * stride, s * stride + window)."""
  s = num_sync_windows(num_frames, window, stride)
  if s == 0:
    raise ValueError(f"a video of {num_frames} frames is shorter than one Synchformer window ({window} frames)")
  return (np.arange(s, dtype=np.int32)[:, None] * stride
          + np.arange(window, dtype=np.int32)[None, :])


def sync_windows(frames, window: int = SYNC_WINDOW, stride: int = SYNC_STRIDE, *, axis: int = 0):
  """(..., T, H, W, C) with T at `axis` -> (..., S, window, H, W, C) windows (a gather; numpy or jax
  arrays, uint8 or float), e.g. axis=1 for a (B, T, H, W, C) batch."""
  return frames[(slice(None),) * axis + (sync_window_indices(frames.shape[axis], window, stride),)]


def sync_cover_indices(num_frames: int, window: int = SYNC_WINDOW, stride: int = SYNC_STRIDE) -> np.ndarray:
  """(ceil(T / stride), window) int32 frame indices giving each of T frames its own token (the length rule
  above; `stride` = tokens per window): MMAudio's windows, indices past the end clamped to T - 1."""
  if num_frames < 1:
    raise ValueError(f"a video needs at least one frame at {SYNC_FPS} fps, got {num_frames}")
  s = -(-num_frames // stride)
  idx = np.arange(s, dtype=np.int32)[:, None] * stride + np.arange(window, dtype=np.int32)[None, :]
  return np.minimum(idx, num_frames - 1)


def sync_cover_windows(frames_TxHxWxC: np.ndarray, window: int = SYNC_WINDOW, stride: int = SYNC_STRIDE):
  """(T, H, W, C) -> (ceil(T / stride), window, H, W, C) windows whose first T tokens are the T frames'."""
  return frames_TxHxWxC[sync_cover_indices(frames_TxHxWxC.shape[0], window, stride)]


def frames_batch(videos, num_sync: int, num_clip: int, size: int, *, lengths=None, clip_fps: float = CLIP_FPS,
                 sync_fps: float = SYNC_FPS) -> dict:
  """Frames-mode model input for B clips: uint8 frames_sync (B, num_sync, size, size, 3) and frames_clip
  (B, num_clip, size, size, 3), zero-padded, with masks (B, num_sync) / (B, num_clip) True on real frames.

  videos[i]: {"frames_sync", "frames_clip"} or None (no video: all masked). lengths[i] cuts video i to that
  many 25 fps frames and its 4 fps frames to ceil(n * clip_fps / sync_fps), e.g. another clip's video cut
  to this clip's duration (the main job's shuffled-video control); default: as many as fit.
  """
  B = len(videos)
  batch = {"frames_sync": np.zeros((B, num_sync, size, size, 3), np.uint8),
           "frames_sync_mask": np.zeros((B, num_sync), bool),
           "frames_clip": np.zeros((B, num_clip, size, size, 3), np.uint8),
           "frames_clip_mask": np.zeros((B, num_clip), bool)}
  for i, v in enumerate(videos):
    if v is None:
      continue
    fs, fc = np.asarray(v["frames_sync"]), np.asarray(v["frames_clip"])
    n = min(len(fs), num_sync if lengths is None else int(lengths[i]))
    nc = min(len(fc), num_clip if lengths is None else math.ceil(n * clip_fps / sync_fps))
    batch["frames_sync"][i, :n], batch["frames_sync_mask"][i, :n] = fs[:n], True
    batch["frames_clip"][i, :nc], batch["frames_clip_mask"][i, :nc] = fc[:nc], True
  return batch


@dataclasses.dataclass
class VideoFrames:
  """Both encoder inputs of one clip, uint8 224x224 RGB (the record fields frames_clip/frames_sync)."""
  clip_u8: np.ndarray        # (Tc, 224, 224, 3) at 4 fps
  sync_u8: np.ndarray        # (Tf, 224, 224, 3) at 25 fps, Tf >= 16
  meta: vio.VideoMeta

  @property
  def duration_sec(self) -> float:
    return self.meta.duration_sec

  def clip_pixels(self) -> np.ndarray:
    """(Tc, 224, 224, 3) float32 EVA-CLIP input."""
    return clip_normalize(self.clip_u8)

  def sync_pixels(self) -> np.ndarray:
    """(ceil(Tf / 8), 16, 224, 224, 3) float32 Synchformer windows in [-1, 1] (`sync_cover_windows`)."""
    return sync_normalize(sync_cover_windows(self.sync_u8))


def load_video_frames(path: str | os.PathLike, *, max_duration_sec: float | None = None,
                      rule: str = "nearest", clip_fps: float = CLIP_FPS, sync_fps: float = SYNC_FPS,
                      size: int = IMAGE_SIZE, clip_resize: str = "pil",
                      sync_resize: str = "torch") -> VideoFrames:
  """Decodes `path` once and returns the resized/cropped 4 fps and 25 fps frames.

  Defaults resize each stream as its reference does: Pillow for EVA-CLIP (open_clip), torchvision's
  uint8 kernel for Synchformer (MMAudio).

  Raises VideoError naming the file if it cannot be decoded, has no video stream, or gives fewer than
  16 frames at 25 fps (one Synchformer window, 0.64 s).
  """
  clip_tf = functools.partial(resize_crop, size=size, method=clip_resize)
  sync_tf = (clip_tf if sync_resize == clip_resize     # one object: shared frames are resized once
             else functools.partial(resize_crop, size=size, method=sync_resize))
  (clip_u8, sync_u8), meta = vio.sample_frames(path, [clip_fps, sync_fps], rule=rule,
                                               max_duration_sec=max_duration_sec,
                                               transforms=[clip_tf, sync_tf])
  if sync_u8.shape[0] < SYNC_WINDOW:
    raise vio.VideoError(
        f"{os.fspath(path)}: {meta.duration_sec:.3f} s gives {sync_u8.shape[0]} frames at {sync_fps} fps, "
        f"fewer than one Synchformer window ({SYNC_WINDOW} frames = {SYNC_WINDOW / sync_fps:.2f} s)")
  if clip_u8.shape[0] < 1:
    raise vio.VideoError(f"{os.fspath(path)}: {meta.duration_sec:.3f} s gives no frame at {clip_fps} fps")
  return VideoFrames(clip_u8=clip_u8, sync_u8=sync_u8, meta=meta)
