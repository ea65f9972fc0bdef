"""Qwen2 decoder parity with transformers' Qwen2ForCausalLM (fp32, random weights, converter in the loop)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _qwen2_ref as R
from dreamfoley_jax.convert import qwen2 as cq
from dreamfoley_jax.models import qwen2

TOL = 1e-5  # relative: max |jax - torch| / max |torch|

CASES = {
    "tiny_untied": dict(tie=False),
    "gqa7_tied": dict(tie=True, **R.GQA7),
    "gqa7_untied": dict(tie=False, **R.GQA7),
}


_MADE = {}


@pytest.fixture(scope="module")
def make_case(tmp_path_factory):
  """name -> (name, HF model, its saved directory), built once per module."""
  def make(name):
    if name not in _MADE:
      model = R.hf_model(seed=len(name), **CASES[name])
      d = tmp_path_factory.mktemp(name) / "hf"
      model.save_pretrained(d)
      _MADE[name] = (name, model, d)
    return _MADE[name]
  return make


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("scan", [False, True])
def test_parity_full_and_right_padded(make_case, name, scan):
  name, model, d = make_case(name)
  params, cfg = cq.load_hf(d, scan_layers=scan)
  assert cfg.tie_word_embeddings == CASES[name]["tie"]
  assert ("lm_head" in params) != cfg.tie_word_embeddings
  rng = np.random.RandomState(0)
  ids = rng.randint(0, cfg.vocab_size, (3, 20))
  mask = np.ones((3, 20), bool)
  mask[1, 13:] = False  # right padding
  mask[2, 5:] = False
  fwd = jax.jit(lambda p, i, m: qwen2.Qwen2ForCausalLM(cfg).apply({"params": p}, i, attention_mask_BxT=m))
  for m in (None, mask):
    logits, aux = fwd(params, ids, np.ones_like(mask) if m is None else m)
    ref_logits, ref_hidden = R.hf_forward(model, ids, m)
    where = None if m is None else m
    assert R.rel_err(aux["hidden_states"], ref_hidden, where) < TOL
    assert R.rel_err(logits, ref_logits, where) < TOL


@pytest.mark.parametrize("name,scan", [("tiny_untied", False), ("gqa7_tied", True)])
def test_kv_cache_decode_matches_full_forward(make_case, name, scan):
  """Prefill 8 tokens then 16 one-token steps == one forward over all 24 (and == transformers)."""
  name, model, d = make_case(name)
  params, cfg = cq.load_hf(d, scan_layers=scan)
  lm = qwen2.Qwen2ForCausalLM(cfg)
  ids = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 24))
  full, _ = jax.jit(lambda p, i: lm.apply({"params": p}, i))(params, ids)
  step = jax.jit(lambda p, i, c: lm.apply({"params": p}, i, cache=c))
  cache = qwen2.init_cache(cfg, batch=2, max_len=32)
  logits, aux = step(params, ids[:, :8], cache)
  outs = [logits]
  cache = aux["cache"]
  for t in range(8, 24):
    logits, aux = step(params, ids[:, t:t + 1], cache)
    cache = aux["cache"]
    outs.append(logits)
  assert int(cache["index"]) == 24
  decoded = np.concatenate(outs, axis=1)
  assert R.rel_err(decoded, full) < TOL
  ref_logits, _ = R.hf_forward(model, ids)
  assert R.rel_err(decoded, ref_logits) < TOL


def test_inputs_embeds_equal_token_ids(make_case):
  _, _, d = make_case("gqa7_tied")
  params, cfg = cq.load_hf(d)
  lm = qwen2.Qwen2ForCausalLM(cfg)
  ids = np.arange(10)[None] % cfg.vocab_size

  @jax.jit
  def both(p, i):
    a, _ = lm.apply({"params": p}, i)
    emb = lm.apply({"params": p}, i, method=lambda m, i: m.model.embed(i))
    b, _ = lm.apply({"params": p}, inputs_embeds_BxTxD=emb)
    return a, b

  a, b = both(params, ids)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_bf16_compute_close_to_fp32(tmp_path):
  model = R.hf_model(seed=3)
  model.save_pretrained(tmp_path / "hf")
  params, cfg = cq.load_hf(tmp_path / "hf")
  ids = np.random.RandomState(2).randint(0, cfg.vocab_size, (2, 16))
  f32, _ = jax.jit(qwen2.Qwen2ForCausalLM(cfg).apply)({"params": params}, ids)
  b16, aux = jax.jit(qwen2.Qwen2ForCausalLM(cfg.replace(dtype="bfloat16")).apply)({"params": params}, ids)
  assert aux["hidden_states"].dtype == jnp.bfloat16
  err = R.rel_err(np.asarray(b16, np.float32), f32)
  assert 0 < err < 3e-2  # bf16 has 8 mantissa bits; the fp32 path is exact to 1e-5 above


def _param_count(cfg):
  shapes = jax.eval_shape(lambda: qwen2.Qwen2ForCausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def test_preset_param_counts():
  assert _param_count(qwen2.from_preset("qwen2.5-0.5b")) == 494_032_768
  assert _param_count(qwen2.from_preset("qwen2.5-7b")) == 7_615_616_512


def test_from_hf_config(tmp_path):
  hf = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
        "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "use_sliding_window": False}
  (tmp_path / "config.json").write_text(json.dumps(hf))
  cfg = qwen2.from_hf_config(tmp_path)
  assert cfg == qwen2.from_preset("qwen2.5-7b", max_position_embeddings=131072)
  assert cfg.head_size == 128
  round_trip = qwen2.from_hf_config(qwen2.to_hf_config(cfg))
  assert round_trip == cfg
  with pytest.raises(ValueError, match="model_type is 'llama'"):
    qwen2.from_hf_config({**hf, "model_type": "llama"})
