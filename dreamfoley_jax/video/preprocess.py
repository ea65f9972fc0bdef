"""Resize / crop / normalise frames for EVA-CLIP (4 fps) and Synchformer (25 fps), and cut sync windows.

Both references resize the short side to 224 with antialiased bicubic (PIL's BICUBIC, a = -0.5, support
scaled with the downscale factor) and centre-crop 224x224, with torchvision's size and crop rounding:
  size: short side -> 224, long side -> int(224 * long / short)       (torchvision Resize(int))
  crop: top = round((H - 224) / 2), left = round((W - 224) / 2)       (Python round, as CenterCrop)
We resize uint8 frames with PIL, which is exactly open_clip's EVA path (Resize on PIL images). MMAudio's
Synchformer path runs torchvision's uint8-tensor antialiased bicubic kernel, which was written to
reproduce PIL; the two may differ by one grey level on some pixels (not verifiable here without
torchvision).
Normalisation, in float32 as torchvision computes it:
  CLIP:        (u8 / 255 - OPENAI_MEAN) / OPENAI_STD
  Synchformer: (u8 / 255 - 0.5) / 0.5  in [-1, 1]
Synchformer windows (MMAudio encode_video_with_sync): S = (T - 16) // 8 + 1 windows, window s covers
frames [8 s, 8 s + 16); trailing frames that do not fill a window are dropped.
"""
from __future__ import annotations

import dataclasses
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


def center_crop(img_HxWxC: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  top, left = center_crop_offsets(img_HxWxC.shape[0], img_HxWxC.shape[1], size)
  return np.ascontiguousarray(img_HxWxC[top:top + size, left:left + size])


def resize_crop(img_HxWx3: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
  """Short-side bicubic resize then centre crop: uint8 (size, size, 3). Both encoders use this."""
  return center_crop(resize_short_side(img_HxWx3, size), size)


def clip_normalize(frames_u8: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 EVA-CLIP pixels with OpenAI CLIP mean/std."""
  x = frames_u8.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(OPENAI_CLIP_MEAN, np.float32)) / np.asarray(OPENAI_CLIP_STD, np.float32)


def sync_normalize(frames_u8: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 Synchformer pixels in [-1, 1]."""
  x = frames_u8.astype(np.float32) / np.float32(255.0)
  return (x - np.float32(0.5)) / np.float32(0.5)


def num_sync_windows(num_frames: int) -> int:
  """S = (T - 16) // 8 + 1 (0 when T < 16)."""
  if num_frames < SYNC_WINDOW:
    return 0
  return (num_frames - SYNC_WINDOW) // SYNC_STRIDE + 1


def sync_window_indices(num_frames: int) -> np.ndarray:
  """(S, 16) int32 frame indices of MMAudio's Synchformer windows for a T-frame 25 fps video."""
  s = num_sync_windows(num_frames)
  if s == 0:
    raise ValueError(f"{num_frames} frames is shorter than one Synchformer window ({SYNC_WINDOW})")
  return (np.arange(s, dtype=np.int32)[:, None] * SYNC_STRIDE
          + np.arange(SYNC_WINDOW, dtype=np.int32)[None, :])


def sync_windows(frames_TxHxWxC: np.ndarray) -> np.ndarray:
  """(T, H, W, C) -> (S, 16, H, W, C) windows (a gather; works for uint8 or float)."""
  return frames_TxHxWxC[sync_window_indices(frames_TxHxWxC.shape[0])]


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
    """(S, 16, 224, 224, 3) float32 Synchformer windows in [-1, 1]."""
    return sync_normalize(sync_windows(self.sync_u8))


def load_video_frames(path: str | os.PathLike, *, max_duration_sec: float | None = None,
                      rule: str = "nearest", clip_fps: float = CLIP_FPS, sync_fps: float = SYNC_FPS,
                      size: int = IMAGE_SIZE) -> VideoFrames:
  """Decodes `path` once and returns the resized/cropped 4 fps and 25 fps frames.

  Raises VideoError naming the file if it cannot be decoded, has no video stream, or gives fewer than
  16 frames at 25 fps (one Synchformer window, 0.64 s).
  """
  tf = lambda img: resize_crop(img, size)  # noqa: E731  (one object: a frame used by both is resized once)
  (clip_u8, sync_u8), meta = vio.sample_frames(path, [clip_fps, sync_fps], rule=rule,
                                               max_duration_sec=max_duration_sec,
                                               transforms=[tf, tf])
  if sync_u8.shape[0] < SYNC_WINDOW:
    raise vio.VideoError(
        f"{os.fspath(path)}: {meta.duration_sec:.3f} s gives {sync_u8.shape[0]} frames at {sync_fps} fps, "
        f"fewer than one Synchformer window ({SYNC_WINDOW} frames = {SYNC_WINDOW / sync_fps:.2f} s)")
  if clip_u8.shape[0] < 1:
    raise vio.VideoError(f"{os.fspath(path)}: {meta.duration_sec:.3f} s gives no frame at {clip_fps} fps")
  return VideoFrames(clip_u8=clip_u8, sync_u8=sync_u8, meta=meta)
