"""Video front end: decoding (io), frame sampling at 4/25 fps, resize/crop/normalise (preprocess)."""
from dreamfoley_jax.video.io import RULES, VIDEO_EXTENSIONS, VideoError, VideoMeta, sample_frames
from dreamfoley_jax.video.preprocess import (CLIP_FPS, IMAGE_SIZE, SYNC_FPS, VideoFrames,
                                             clip_normalize, load_video_frames, normalize_lut,
                                             num_sync_windows, resize_crop, sync_cover_indices,
                                             sync_cover_windows, sync_normalize,
                                             sync_window_indices, sync_windows)

__all__ = ["RULES", "VIDEO_EXTENSIONS", "VideoError", "VideoMeta", "sample_frames", "CLIP_FPS",
           "IMAGE_SIZE", "SYNC_FPS", "VideoFrames", "clip_normalize", "load_video_frames",
           "normalize_lut", "num_sync_windows", "resize_crop", "sync_cover_indices", "sync_cover_windows",
           "sync_normalize", "sync_window_indices",
           "sync_windows"]
