"""Sampled codes pinned bit-exactly: the tiny model's sampler at six settings (CFG with the compacted
unconditional prefill, greedy logits; slow: no CFG with a prefix, negative prompt + text-only item, scanned
layers, windowed continuation) against the sha256 of the codes the pre-refactor sampler (sample.py, main 841144d)
produced on this machine. A refactor of the sampler must leave every digest unchanged."""
import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import sampling as S
from dreamfoley_jax.models import foley
from sampler_helpers import CFG, init_params, prompt_batch


PINNED = {
    "cfg_default": "4d2214a820f75e4f",
    "nocfg_prefix": "c316754b4470f64b",
    "negative_text_only": "21a1c728ce3ba949",
    "scanned": "348f797b4ff2fb28",
    "greedy_logits": "6fb308fdc76d6ad9",
    "long": "933617d860416f2c",
}


def _digest(*arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _run(name, params):
  pb = prompt_batch()
  if name == "cfg_default":
    r = S.sample(CFG, params, pb, (7, 4), sample_cfg=S.SampleConfig(), seed=0)
    return _digest(r["codes"], r["delayed"])
  if name == "nocfg_prefix":
    prefix = np.random.default_rng(2).integers(0, CFG.codebook_size, (2, CFG.num_codebooks, 2))
    r = S.sample(CFG, params, pb, (6, 9), sample_cfg=S.SampleConfig(temperature=0.8, top_k=0, top_p=0.8,
                                                                      cfg_scale=None),
                 seed=4, item_seeds=(11, 3), drop_text=(False, True), prefix_codes=prefix)
    return _digest(r["codes"], r["delayed"])
  if name == "negative_text_only":
    neg = np.random.default_rng(3).integers(0, 100, (2, 7)).astype(np.int32)
    r = S.sample(CFG, params, pb, (5, 8), sample_cfg=S.SampleConfig(top_k=5, top_p=1.0, cfg_scale=2.0), seed=1,
                 drop_video=(True, False), negative_text_ids=neg, negative=(True, False), max_frames=10)
    return _digest(r["codes"], r["delayed"])
  if name == "greedy_logits":
    r = S.sample(CFG, params, pb, (7, 4), sample_cfg=S.SampleConfig(temperature=0.0), return_logits=True)
    return _digest(r["codes"], r["delayed"], r["logits"])
  if name == "long":
    r = S.sample_long(CFG, params, pb, (23, 9), window_frames=10, context_frames=4, seed=2)
    return _digest(r["codes"], *[w["codes"] for w in r["windows"]])
  raise KeyError(name)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG)


@pytest.mark.parametrize("name", ["cfg_default", "greedy_logits"])
def test_sampled_codes_are_pinned(params, name):
  assert _run(name, params) == PINNED[name]


@pytest.mark.slow   # ~5-20 s each (a compilation each): run with -m slow after touching the sampler
@pytest.mark.parametrize("name", ["nocfg_prefix", "negative_text_only", "long"])
def test_more_sampled_codes_are_pinned(params, name):
  assert _run(name, params) == PINNED[name]


@pytest.mark.slow
def test_scanned_decoder_codes_are_pinned():
  cfg = CFG.replace(decoder=CFG.decoder.replace(scan_layers=True))
  b = dict(prompt_batch(), audio_ids=np.zeros((2, 6, 4), np.int32))
  p = nn.unbox(jax.jit(foley.DreamFoley(cfg).init)(jax.random.key(0), jax.tree.map(jnp.asarray, b))["params"])
  r = S.sample(cfg, p, prompt_batch(), (7, 4), sample_cfg=S.SampleConfig(), seed=0)
  assert _digest(r["codes"], r["delayed"]) == PINNED["scanned"]
