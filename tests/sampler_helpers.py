"""The tiny sampler model shared by test_sample, test_sampling_pinned and test_flash_attention: its config, a
prompt batch with padding inside it, and random params with sharpened heads."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamfoley_jax.models import foley, qwen2

CFG = foley.FoleyConfig(
    decoder=qwen2.PRESETS["tiny"].replace(vocab_size=100, hidden_size=32, intermediate_size=48,
                                          num_attention_heads=4, num_key_value_heads=2),
    num_codebooks=4, codebook_size=16, loss_weights=(0.4, 0.3, 0.2, 0.1), sync_dim=12, clip_dim=8,
    null_text_len=2, null_video_len=3)


def prompt_batch(B=2, Lt=5, Tv=25, seed=0):
  rng = np.random.default_rng(seed)
  text_mask = np.ones((B, Lt), bool)
  text_mask[1, 3:] = False          # padding inside the batch must not matter
  video_mask = np.ones((B, Tv), bool)
  video_mask[1, 20:] = False
  return {"text_ids": rng.integers(0, 100, (B, Lt)).astype(np.int32), "text_mask": text_mask,
          "sync_feats": rng.normal(size=(B, Tv, CFG.sync_dim)).astype(np.float32),
          "clip_feats": rng.normal(size=(B, 4, CFG.clip_dim)).astype(np.float32), "video_mask": video_mask}


def init_params(cfg):
  b = dict(prompt_batch(), audio_ids=np.zeros((2, 6, 4), np.int32))
  p = nn.unbox(jax.jit(foley.DreamFoley(cfg).init)(jax.random.key(0), jax.tree.map(jnp.asarray, b))["params"])
  # Random init gives near-uniform heads; sharpen them so greedy / CFG differences are far from ties.
  p["heads"]["fc2_kernel"] = p["heads"]["fc2_kernel"] * 30.0
  return p
