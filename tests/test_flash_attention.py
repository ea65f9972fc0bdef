"""attention_impl="cudnn": the flash-kernel code path (mask split into causal + key-padding bias, odd-length
padding, cache transposes for prefill) run on CPU through jax.nn's XLA kernel, against the einsum attention.
On a GPU the same code calls cuDNN (benchmarks/train_gpu.py, generate_gpu.py measure it)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import sampling as S
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import loss as foley_loss
from dreamfoley_jax.models import params as foley_params
from sampler_helpers import CFG, prompt_batch


@pytest.fixture
def flash_on_cpu(monkeypatch):
  monkeypatch.setattr(qwen2, "FLASH_IMPLEMENTATION", "xla")


@pytest.mark.parametrize("T", [9, 10])
def test_flash_attention_equals_einsum_attention(flash_on_cpu, T):
  rng = np.random.default_rng(0)
  B, H, K, E = 2, 4, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, E)), jnp.float32) for n in (H, K, K))
  valid = np.ones((B, T), bool)
  valid[1, 2:4] = False                       # padding in the middle of the sequence, as [text | video | audio]
  mask = qwen2.make_mask(jnp.broadcast_to(jnp.arange(T)[None], (B, T)), jnp.asarray(valid))
  want = qwen2.attention(q, k, v, mask, "xla")
  got = qwen2.attention(q, k, v, mask, "cudnn")
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-6)
  # and the gradients (the training step differentiates through it)
  f = lambda impl: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(qwen2.attention(q, k, v, mask, impl))), (0, 1, 2))
  for a, b in zip(f("cudnn")(q, k, v), f("xla")(q, k, v)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  # a non-causal (cache) mask goes in whole
  mask_nc = jnp.asarray(rng.random((B, T, T)) < 0.7) | jnp.eye(T, dtype=bool)[None]
  np.testing.assert_allclose(qwen2.flash_attention(q, k, v, mask_nc, self_causal=False),
                             qwen2.attention(q, k, v, mask_nc, "xla"), atol=2e-6)




def test_model_with_cudnn_impl_trains_and_samples_like_xla(flash_on_cpu):
  params = foley_params.init_params(CFG, seed=1)
  params["heads"]["fc2_kernel"] = params["heads"]["fc2_kernel"] * 30.0      # well-separated greedy argmaxes
  flash = CFG.replace(decoder=CFG.decoder.replace(attention_impl="cudnn"))
  pb = prompt_batch()
  rng = np.random.default_rng(1)
  La = 11                                                                 # 5 + 25 + 11 = 41 slots: odd
  b = dict(pb, audio_ids=rng.integers(0, 16, (2, La, 4)).astype(np.int32), audio_mask=np.ones((2, La), bool))
  b = jax.tree.map(jnp.asarray, b)
  drops = jnp.asarray([False, True]), jnp.asarray([True, False])

  def loss(cfg, p):
    logits, _ = foley.DreamFoley(cfg).apply({"params": p}, b, *drops)
    return foley_loss.weighted_loss(cfg, logits, b)[0]

  (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(lambda p, c=c: loss(c, p)))(params) for c in (CFG, flash))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(x, y, atol=1e-5)
  # prefill through the flash path (cache transposes), decode through the cache path: same greedy codes
  sc = S.SampleConfig(temperature=0.0, cfg_scale=3.0)
  r0 = S.sample(CFG, params, pb, [7, 4], sample_cfg=sc)
  r1 = S.sample(flash, params, pb, [7, 4], sample_cfg=sc)
  np.testing.assert_array_equal(r1["codes"], r0["codes"])
  assert int(r1["steps"]) == 7 + 4
