"""Mesh construction and the Qwen2 forward on 1 device vs an 8-device simulated CPU mesh."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dreamfoley_jax import sharding
from dreamfoley_jax.models import qwen2

CFG = qwen2.from_preset("tiny")  # D 64, 4 heads x 16, 2 kv heads, MLP 176, vocab 512


def test_mesh_shape():
  assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1)
  assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
  assert sharding.mesh_shape({"fsdp": 4, "tensor": -1}, 8) == (1, 4, 2)
  assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="not divisible by 3"):
    sharding.mesh_shape({"data": -1, "tensor": 3}, 8)
  with pytest.raises(ValueError, match="needs 4 devices, have 8"):
    sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)
  with pytest.raises(ValueError, match="positive or -1"):
    sharding.mesh_shape({"data": 0}, 8)


def _init_and_inputs(cfg):
  lm = qwen2.Qwen2ForCausalLM(cfg)
  ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (4, 16))
  mask = np.ones((4, 16), bool)
  mask[3, 10:] = False
  boxed = jax.jit(lambda: lm.init(jax.random.key(0), ids))()
  return lm, boxed, ids, mask


@pytest.mark.parametrize("spec,scan", [({"data": 2, "fsdp": 2, "tensor": 2}, False),
                                       ({"data": 1, "fsdp": 4, "tensor": 2}, True)])
def test_sharded_forward_matches_single_device(spec, scan):
  assert jax.device_count() == 8
  cfg = CFG.replace(scan_layers=scan)
  lm, boxed, ids, mask = _init_and_inputs(cfg)
  params = nn.unbox(boxed)["params"]
  fwd = lambda v, i, m: lm.apply(v, i, attention_mask_BxT=m)
  ref_logits, ref_aux = jax.jit(fwd)({"params": params}, ids, mask)

  mesh = sharding.make_mesh(spec)
  shardings = sharding.shardings_for(boxed, mesh)
  variables = sharding.shard_tree(nn.unbox(boxed), shardings)
  with sharding.use_mesh(mesh):
    q = variables["params"]["model"]
    q = (q["layers"]["layer"] if scan else q["layers_0"])["self_attn"]["q_proj"]["kernel"]
    assert len(q.sharding.device_set) == 8
    ids_s = jax.device_put(ids, sharding.data_sharding(mesh, 2))
    mask_s = jax.device_put(mask, sharding.data_sharding(mesh, 2))
    logits, aux = jax.jit(fwd)(variables, ids_s, mask_s)
  assert logits.sharding.num_devices == 8
  diff = float(jnp.max(jnp.abs(logits - ref_logits)))
  print(f"{spec} scan={scan}: max abs logits diff vs 1 device {diff:.3e}")
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["hidden_states"]), np.asarray(ref_aux["hidden_states"]),
                             rtol=1e-5, atol=1e-5)


def test_params_really_sharded():
  """Param shardings follow the logical rules: embed->fsdp, heads/mlp/vocab->tensor, layers replicated."""
  cfg = CFG.replace(scan_layers=True)
  lm = qwen2.Qwen2ForCausalLM(cfg)
  ids = jnp.zeros((4, 8), jnp.int32)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  variables, shardings = sharding.init_sharded(lm, mesh, jax.random.key(0), ids)
  p = variables["params"]
  layer = p["model"]["layers"]["layer"]
  D, HE, KE, F, V, L = 64, 64, 32, 176, 512, 2
  expect = {
      ("self_attn", "q_proj", "kernel"): (P(None, "fsdp", "tensor"), (L, D // 2, HE // 2)),
      ("self_attn", "k_proj", "kernel"): (P(None, "fsdp", "tensor"), (L, D // 2, KE // 2)),
      ("self_attn", "q_proj", "bias"): (P(None, "tensor"), (L, HE // 2)),
      ("self_attn", "o_proj", "kernel"): (P(None, "tensor", "fsdp"), (L, HE // 2, D // 2)),
      ("mlp", "gate_proj", "kernel"): (P(None, "fsdp", "tensor"), (L, D // 2, F // 2)),
      ("mlp", "down_proj", "kernel"): (P(None, "tensor", "fsdp"), (L, F // 2, D // 2)),
      ("input_layernorm", "weight"): (P(None, None), (L, D)),
  }
  for path, (spec, shard_shape) in expect.items():
    x = layer
    for k in path:
      x = x[k]
    assert x.sharding.spec == spec, (path, x.sharding.spec)
    assert x.addressable_shards[0].data.shape == shard_shape, path
  emb = p["model"]["embed_tokens"]["embedding"]
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (V // 2, D // 2)
  head = p["lm_head"]["kernel"]
  assert head.sharding.spec == P("fsdp", "tensor")
  assert head.addressable_shards[0].data.shape == (D // 2, V // 2)
  # Every param is partitioned by logical names (no unnamed leaves).
  specs = jax.tree.leaves(sharding.logical_specs(jax.eval_shape(lambda: lm.init(jax.random.key(0), ids))),
                          is_leaf=lambda s: isinstance(s, P))
  assert specs and all(isinstance(s, P) and len(s) > 0 for s in specs)


def test_mesh_shape_rejects_unknown_axes():
  with pytest.raises(ValueError, match=r"unknown axes \['model'\]"):
    sharding.mesh_shape({"model": 4, "data": 2}, 8)
