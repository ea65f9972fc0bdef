"""Checkpoints: bitwise resume, restore onto another mesh, non-finite loss guard, initial weights."""
import json
import shutil

import jax
import numpy as np
import pytest

import train_helpers as th
from dreamfoley_jax import checkpoint as ckptlib
from dreamfoley_jax import sharding, train
from dreamfoley_jax.convert import common


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  # Every train() call re-traces the same program; the persistent cache skips the repeated compiles.
  old = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old)


def losses_by_step(workdir):
  out = {}
  for line in open(workdir / "metrics.jsonl"):
    r = json.loads(line)
    out[r["step"]] = r["loss"]        # a re-run step after a crash overwrites the earlier entry
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  pattern, _ = th.write_dataset(root / "data", n=24)
  c = th.tiny_config(pattern)
  full = train.train(c, str(root / "full"))                     # uninterrupted: 8 steps, ckpts 4, 8
  first = train.train(c, str(root / "resumed"), max_steps_this_run=6)   # "crashes" after step 6
  second = train.train(c, str(root / "resumed"))                # resumes from step 4
  return dict(root=root, c=c, pattern=pattern, full=full, first=first, second=second)


def test_resume_is_bitwise_identical(runs):
  root, full, first, second = runs["root"], runs["full"], runs["first"], runs["second"]
  assert (full.step, full.status, full.last_checkpoint) == (8, "finished", 8)
  assert first.step == 6 and first.last_checkpoint == 4
  assert second.step == 8
  a, b = losses_by_step(root / "full"), losses_by_step(root / "resumed")
  assert sorted(a) == sorted(b) == list(range(1, 9))
  assert [a[s] for s in a] == [b[s] for s in a]           # exact float equality, step by step
  pa, pb = jax.device_get(full.state), jax.device_get(second.state)
  jax.tree.map(np.testing.assert_array_equal, pa.params, pb.params)
  jax.tree.map(np.testing.assert_array_equal, pa.opt_state, pb.opt_state)
  assert sorted(ckptlib.Checkpointer(str(root / "resumed")).all_steps()) == [4, 8]


def test_restore_into_a_different_mesh(runs):
  c = runs["c"]
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  st = train.load_checkpoint(c, str(runs["root"] / "full"), mesh=mesh)
  assert int(st.step) == 8
  w = st.params["decoder"]["layers_0"]["mlp"]["gate_proj"]["kernel"]
  assert w.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  assert w.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  ref = jax.device_get(runs["full"].state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(st.params), ref.params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(st.opt_state), ref.opt_state)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(runs, tmp_path):
  # Continue the finished run for 4 more steps on records whose features are NaN.
  work = tmp_path / "w"
  shutil.copytree(runs["root"] / "full", work)
  nan_pattern, _ = th.write_dataset(tmp_path / "nan", n=24, nan=True)
  c = th.tiny_config(nan_pattern, **{"train.steps": 12})
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite loss=nan .* at step 9.*last good checkpoint is step 8"):
    train.train(c, str(work))
  assert sorted(ckptlib.Checkpointer(str(work)).all_steps()) == [4, 8]
  st = jax.device_get(train.load_checkpoint(c, str(work)))
  assert int(st.step) == 8 and all(np.isfinite(x).all() for x in jax.tree.leaves(st.params))


def test_initial_weights_from_converted_checkpoint(runs, tmp_path):
  """A converted Qwen2ForCausalLM tree {'model': ..., 'lm_head': ...} initialises params['decoder']."""
  ref = jax.device_get(runs["full"].state.params)
  qwen = {"model": ref["decoder"], "lm_head": {"kernel": np.ones((32, 64), np.float32)}}
  common.save_params(qwen, tmp_path / "qwen")
  c2 = th.tiny_config(runs["pattern"], **{"train.init_from": (f"decoder={tmp_path / 'qwen'}::model",),
                                          "train.steps": 1})
  res = train.train(c2, str(tmp_path / "w"), max_steps_this_run=0)
  got = jax.device_get(res.state.params)
  jax.tree.map(np.testing.assert_array_equal, got["decoder"], ref["decoder"])
  assert not np.array_equal(got["heads"]["fc1_kernel"], ref["heads"]["fc1_kernel"])   # the rest: fresh init
  bad = th.tiny_config(runs["pattern"], **{"train.init_from": (f"decoder={tmp_path / 'qwen'}",), "train.steps": 1})
  with pytest.raises(common.ConversionError, match="missing keys"):
    train.train(bad, str(tmp_path / "w2"), max_steps_this_run=0)
  assert ckptlib.parse_init_from(["a/b=gs://x/y::model", ("decoder", "/p")]) == [
      ("a/b", "gs://x/y", "model"), ("decoder", "/p", "")]
