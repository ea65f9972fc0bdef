"""Every Flax model's params carry unique, known logical axis names; the metric embedders init and run on a mesh.

Flax rejects a param whose logical axes repeat a name ("Dimensions ('kernel',) occur more than once") as soon
as it is initialised or constrained under a mesh, so a single bad annotation breaks evaluation on TPU pods /
multi-GPU while every single-device test still passes. These tests check the annotations of every Flax
module in the project and run each native metric embedder (tiny config) on the 8-device simulated CPU mesh.
"""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import sharding
from dreamfoley_jax.audio.higgs import HiggsAudioV2Tokenizer, HiggsTokenizerConfig
from dreamfoley_jax.eval.embedders import clap, imagebind, panns, passt, sync_audio, sync_head, vggish
from dreamfoley_jax.models import eva_clip, foley, qwen2, synchformer
from dreamfoley_jax.models import params as foley_params

KNOWN = {name for name, _ in sharding.LOGICAL_RULES}
MESH_SPEC = {"data": 2, "fsdp": 2, "tensor": 2}
B = 4  # batch: divisible by data x fsdp, so inputs are batch-sharded


def _f32(rng, *shape):
  return rng.normal(size=shape).astype(np.float32)


def _ids(rng, b):
  ids = rng.integers(3, 64, (b, 77)).astype(np.int32)
  mask = np.ones((b, 77), np.int32)
  mask[-1, 20:] = 0
  ids[-1, 20:] = 1
  return ids, mask


# name -> (model, inputs(rng, batch)): each native metric embedder's Flax model with its tiny config.
EMBEDDERS = {
    "panns": (lambda: panns.Cnn14(panns.Cnn14Config.tiny()), lambda r, b: (_f32(r, b, 64, 64),)),
    "vggish": (lambda: vggish.VGGish(vggish.VGGishConfig.tiny()), lambda r, b: (_f32(r, b, 96, 64),)),
    # real mel bins, 100 frames (a 12 x 9 patch grid; the position table covers 12 x 99)
    "passt": (lambda: passt.Passt(passt.PasstConfig.tiny()), lambda r, b: (_f32(r, b, 128, 100),)),
    # the golden's tiny config has 1 head in stage 1, which a tensor axis cannot split: 2 here
    "clap": (lambda: clap.Clap(dataclasses.replace(clap.ClapConfig.tiny(), audio=dataclasses.replace(
        clap.HTSATConfig.tiny(), depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4)))), lambda r, b: (0.1 * _f32(r, b, 15000),) + _ids(r, b)),
    # the golden's tiny towers on smaller inputs (4 x 4 video patches, 12 x 4 spectrogram patches)
    "imagebind": (lambda: imagebind.ImageBind(imagebind.ImageBindConfig(
        dataclasses.replace(imagebind.ImageBindConfig.tiny().vision, input_size=(2, 56, 56)),
        dataclasses.replace(imagebind.ImageBindConfig.tiny().audio, input_size=(128, 54)))),
                  lambda r, b: (_f32(r, b, 1, 2, 56, 56, 3), _f32(r, b, 1, 128, 54))),
    "sync_audio": (lambda: sync_audio.SyncAudioEncoder(sync_audio.SyncAudioConfig.tiny()),
                   lambda r, b: (_f32(r, b, 2, 26, 36),)),
    "sync_head": (lambda: sync_head.SyncHead(sync_head.SyncHeadConfig.tiny()),
                  lambda r, b: (_f32(r, b, 3, 2, 16), _f32(r, b, 3, 1, 16))),
    # DeSync's video tower (eval/embedders/synchformer.py): the tiny preset at a small frame size
    "synchformer": (lambda: synchformer.Synchformer(synchformer.from_preset("tiny", image_size=32)),
                    lambda r, b: (_f32(r, b, 1, 16, 32, 32, 3),)),
}


def axis_problems(abstract) -> list:
  """(path, problem, names) for every params leaf without logical names, with a repeated or unknown name,
  or with names not matching its rank. Variables outside 'params' may be plain (Flax's BatchNorm running
  stats carry no metadata; they are replicated)."""
  out = []
  for path, v in jax.tree_util.tree_leaves_with_path(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    k = jax.tree_util.keystr(path)
    if not isinstance(v, nn.Partitioned):
      if "'params'" in k:
        out.append((k, "no logical axis names", None))
      continue
    names = [n for n in v.names if n is not None]
    if len(set(names)) != len(names):
      out.append((k, "repeated name", v.names))
    if not set(names) <= KNOWN:
      out.append((k, f"not in sharding.LOGICAL_RULES: {sorted(set(names) - KNOWN)}", v.names))
    if len(v.names) != v.value.ndim:
      out.append((k, f"{len(v.names)} names for rank {v.value.ndim}", v.names))
  return out


def _abstract_init(model, args):
  return jax.eval_shape(lambda r, *a: model.init(r, *a), jax.random.key(0), *args)


def test_axis_checker_catches_repeats_and_unknown_names():
  class Bad(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), use_bias=False, kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ("kernel", "kernel", "conv_in", "conv_out")))(x)
      return nn.Dense(2, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                  ("embed", "no_such_axis")))(x)

  probs = axis_problems(_abstract_init(Bad(), (jnp.zeros((1, 8, 8, 1)),)))
  assert [(p[0], p[1].split(":")[0]) for p in probs] == [
      ("['params']['Conv_0']['kernel']", "repeated name"),
      ("['params']['Dense_0']['bias']", "no logical axis names"),
      ("['params']['Dense_0']['kernel']", "not in sharding.LOGICAL_RULES")]
  # ...and this is what Flax does with such a param under a mesh
  mesh = sharding.make_mesh(MESH_SPEC)
  with pytest.raises(ValueError, match="more than once"):
    sharding.init_sharded(Bad(), mesh, jax.random.key(0), jnp.zeros((4, 8, 8, 1)))


@pytest.mark.parametrize("name", sorted(EMBEDDERS))
def test_embedder_logical_axes_unique_and_known(name):
  make, inputs = EMBEDDERS[name]
  abstract = _abstract_init(make(), inputs(np.random.default_rng(0), 1))
  assert jax.tree.leaves(abstract["params"])
  assert axis_problems(abstract) == []


@pytest.mark.parametrize("name", sorted(EMBEDDERS))
def test_embedder_inits_and_runs_sharded(name):
  """init_sharded on a (data 2, fsdp 2, tensor 2) mesh; the sharded forward equals the single-device one.

  CLAP guards a miscompile: without the activation constraint after HTSAT's PatchMerging, XLA's SPMD partitioner
  gave batch items 1 and 2 embeddings ~2e-2 off (of ~2) on this mesh (reduction kernel on (fsdp, tensor) feeding
  the next block's attention proj on (tensor, fsdp)); (1, 4, 2) and (4, 1, 2) meshes were exact.
  """
  assert jax.device_count() == 8
  make, inputs = EMBEDDERS[name]
  model = make()
  args = inputs(np.random.default_rng(1), B)
  mesh = sharding.make_mesh(MESH_SPEC)
  # rbg keys: the same sharded init program, ~5x faster to compile on XLA:CPU than threefry's bit generator
  variables, shardings = sharding.init_sharded(model, mesh, jax.random.key(0, impl="unsafe_rbg"), *args)
  # Params really are laid out on the mesh: some are split across devices, all live on all 8.
  leaves = jax.tree.leaves(variables["params"])
  assert all(len(x.sharding.device_set) == 8 for x in leaves)
  assert any(not x.sharding.is_fully_replicated for x in leaves), "nothing sharded: logical rules unused?"

  with sharding.use_mesh(mesh):
    xs = [jax.device_put(x, sharding.data_sharding(mesh, x.ndim)) for x in args]
    out = jax.jit(model.apply)(variables, *xs)
  host = jax.device_get(variables)
  ref = jax.jit(model.apply)(host, *args)
  out_leaves, ref_leaves = jax.tree.leaves(out), jax.tree.leaves(ref)
  assert len(out_leaves) == len(ref_leaves) > 0
  for o, r in zip(out_leaves, ref_leaves):
    assert o.shape == r.shape
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-5, atol=1e-5)


def _tiny_vision():
  sc = synchformer.from_preset("tiny", image_size=32, patch_size=8, width=16, num_heads=2, depth=2)
  ec = eva_clip.from_preset("tiny", image_size=32, patch_size=8, width=16, num_heads=2, depth=2, mlp_dim=32,
                            embed_dim=8)
  return sc, ec


def _lm(scan, **kw):
  cfg = qwen2.from_preset("tiny", scan_layers=scan, **kw)
  return _abstract_init(qwen2.Qwen2ForCausalLM(cfg), (jnp.zeros((1, 8), jnp.int32),))


def _higgs(fixtures_dir, which):
  d = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())
  cfg = HiggsTokenizerConfig.from_hf_config(d["tiny_config"]) if which == "tiny" else HiggsTokenizerConfig()
  return _abstract_init(HiggsAudioV2Tokenizer(cfg), (jnp.zeros((1, 24000)),))


OTHER = {  # eval_shape only: no weights are made
    "qwen2": lambda fx: _lm(False),
    "qwen2_scan_fused": lambda fx: _lm(True, **qwen2.CPU_FAST_OPTIONS),
    "foley_features": lambda fx: {"params": foley_params.abstract_params(foley.FoleyConfig())},
    "foley_frames": lambda fx: {"params": foley_params.abstract_params(foley.FoleyConfig(
        vision_mode="frames", synchformer=_tiny_vision()[0], eva=_tiny_vision()[1], sync_dim=16, clip_dim=8))},
    "eva_clip_scan": lambda fx: _abstract_init(eva_clip.EvaVisionTower(eva_clip.PRESETS["tiny"].replace(
        scan_layers=True)), (jnp.zeros((1, 224, 224, 3)),)),
    "synchformer_scan": lambda fx: _abstract_init(synchformer.Synchformer(synchformer.from_preset(
        "tiny", scan_layers=True, image_size=64)), (jnp.zeros((1, 1, 16, 64, 64, 3)),)),
    "higgs_tokenizer_tiny": lambda fx: _higgs(fx, "tiny"),
    "higgs_tokenizer_real": lambda fx: _higgs(fx, "real"),
}


@pytest.mark.parametrize("name", sorted(OTHER))
def test_other_modules_logical_axes_unique_and_known(name, fixtures_dir):
  abstract = OTHER[name](fixtures_dir)
  assert len(jax.tree.leaves(abstract["params"])) > 5
  assert axis_problems(abstract) == []


S = jax.ShapeDtypeStruct
FULL_SIZE = {  # the real configs, abstract only (eval_shape): the shapes users shard
    "panns": lambda: (panns.Cnn14(panns.Cnn14Config()), (S((1, 64, 64), np.float32),)),
    "vggish": lambda: (vggish.VGGish(vggish.VGGishConfig()), (S((1, 96, 64), np.float32),)),
    "passt": lambda: (passt.Passt(passt.PasstConfig()), (S((1, 128, 1000), np.float32),)),
    "clap": lambda: (clap.Clap(clap.ClapConfig()), (S((1, 480000), np.float32), S((1, 77), np.int32),
                                                     S((1, 77), np.int32))),
    "imagebind": lambda: (imagebind.ImageBind(imagebind.ImageBindConfig()),
                          (S((1, 1, 2, 224, 224, 3), np.float32), S((1, 1, 128, 204), np.float32))),
    "sync_audio": lambda: (sync_audio.SyncAudioEncoder(sync_audio.SyncAudioConfig()),
                           (S((1, 1, 66, 128), np.float32),)),
    "sync_head": lambda: (sync_head.SyncHead(sync_head.SyncHeadConfig()),
                          (S((1, 14, 8, 768), np.float32), S((1, 14, 6, 768), np.float32))),
    "synchformer": lambda: (synchformer.Synchformer(synchformer.PRESETS["synchformer"]),
                            (S((1, 1, 16, 224, 224, 3), np.float32),)),
}


def test_full_size_embedders_shard_evenly_on_the_test_mesh():
  """Real configs: names unique/known, and every param divides on (data 2, fsdp 2, tensor 2): init_sharded's
  out_shardings would fail otherwise (it did for PANNs' 527 and DeSync's 21 classes on `tensor`)."""
  mesh = sharding.make_mesh(MESH_SPEC)
  for name, build in FULL_SIZE.items():
    model, args = build()
    abstract = _abstract_init(model, args)
    assert axis_problems(abstract) == [], name
    leaves = jax.tree.leaves(nn.unbox(abstract))
    shardings = jax.tree.leaves(sharding.shardings_for(abstract, mesh))
    assert len(leaves) == len(shardings) > 10, name
    for a, s in zip(leaves, shardings):
      s.shard_shape(a.shape)  # raises IndivisibleError naming the shape and spec
