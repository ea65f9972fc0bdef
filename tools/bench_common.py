"""Shared pieces of the benchmark scripts in tools/."""
import time



def random_prompt_batch(cfg, B, frames, seed=0, text_len=16):
  """A random [text | video] prompt batch for `sample.sample`: text ids, 25 Hz sync and 4 fps clip features."""
  import numpy as np

  rng = np.random.default_rng(seed)
  return {"text_ids": rng.integers(0, cfg.decoder.vocab_size, (B, text_len)).astype(np.int32),
          "text_mask": np.ones((B, text_len), bool),
          "sync_feats": rng.normal(size=(B, frames, cfg.sync_dim)).astype(np.float32),
          "clip_feats": rng.normal(size=(B, frames * 4 // 25 + 1, cfg.clip_dim)).astype(np.float32),
          "video_mask": np.ones((B, frames), bool)}


def time_ms(fn, n):
  """Mean ms per call of `fn` over `n` calls, after one warm-up call (compile / first-touch)."""
  fn()
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n * 1e3


def decode_weights(params) -> list:
  """The arrays every decode step reads: decoder layers + final norm (not the token embedding) + heads."""
  import jax

  return [x for k, v in params["decoder"].items() if k not in ("embed_tokens", "lm_head")
          for x in jax.tree.leaves(v)] + jax.tree.leaves(params["heads"])
