"""Sampling: one jitted `lax.while_loop` with a KV cache, classifier-free guidance and the delay pattern.

inputs (sampler.make_prompt -> state.Prompt) -> prefill (prefill.py: the doubled CFG batch into the KV
cache) -> loop (loop.SamplerLoop over state.SamplingState, one delayed column per step; token choice in
filters.py) -> decode (layout.py: delay reverted to frame-aligned codes). `sample` runs the four for one
batch, `sample_long` (long.py) in overlapping windows; `sample_program` is the jitted program itself
(`sample_program.lower(...)` compiles it ahead of time, aot.py). Settings: config.py; mesh: placement.py.
"""
from dreamfoley_jax.sampling.config import SECTION_KEYS, SampleConfig
from dreamfoley_jax.sampling.filters import (argmax_last, categorical, choose_tokens, filter_logits, guide,
                                             gumbel_noise, top_k_mask, top_p_mask)
from dreamfoley_jax.sampling.layout import delay_pattern, delayed_layout, frames_from_delayed, num_columns
from dreamfoley_jax.sampling.long import fused_video, frames_windower, sample_long, window_plan
from dreamfoley_jax.sampling.loop import NOISE_BLOCK, SamplerLoop, decode_weights, step_heads, step_heads_weights
from dreamfoley_jax.sampling.placement import clip_sharding, mesh_rules, param_shardings, place_params
from dreamfoley_jax.sampling.prefill import CACHE_ALIGN, cache_slots
from dreamfoley_jax.sampling.sampler import decode, item_keys, make_prompt, sample, sample_program
from dreamfoley_jax.sampling.state import Prompt, SamplingState
