"""Train step on the 8-device simulated CPU mesh: sharding, grad accumulation, frozen groups, learning,
impossible values."""
import json
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from dreamfoley_jax import optim, sharding, train
from dreamfoley_jax.data import pipeline, records
from dreamfoley_jax.models import foley
from dreamfoley_jax.models import loss as foley_loss
from dreamfoley_jax.models import params as foley_params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("records")
  pattern, _ = th.write_dataset(d, n=24)
  return pattern


def _batch(c, fcfg, index=0, n=8):
  p = train.pipeline_config(c, fcfg, batch_size=n)
  raw = [records.encode_example(e) for e in th.make_examples(n, seed=index)]
  return pipeline.BatchTransform(p)(index, raw)


def _setup(c, mesh, grad_accum=1):
  fcfg = train.model_config(c)
  model = foley.DreamFoley(fcfg)
  ap = foley_params.abstract_params(fcfg)
  regex = c.train.get("frozen_regex") or None
  tx, sched = optim.make_optimizer(c.optim, int(c.train.steps), ap, regex)
  labels = optim.param_labels(ap, regex)
  with sharding.use_mesh(mesh):
    init = train.make_init_fn(model, tx, fcfg, 0)
    abstract = jax.eval_shape(init)
    sh = train.state_shardings(abstract, mesh)
    state = nn.unbox(jax.jit(init, out_shardings=sh)())
    step = jax.jit(train.make_train_step(model, fcfg, tx, sched, labels, grad_accum), out_shardings=(sh, None))
  return fcfg, state, step, sh


def _run(c, mesh, batches, grad_accum=1):
  fcfg, state, step, sh = _setup(c, mesh, grad_accum)
  ms = []
  with sharding.use_mesh(mesh):
    for b in batches:
      gb = {k: jax.device_put(v, sharding.data_sharding(mesh, v.ndim)) for k, v in b.items()}
      state, m = step(state, gb)
      ms.append(jax.device_get(m))
  return jax.device_get(state), ms


def test_sharded_step_equals_single_device_step(data_dir):
  c = th.tiny_config(data_dir)
  fcfg = train.model_config(c)
  batches = [_batch(c, fcfg, i) for i in range(2)]
  s8, m8 = _run(c, sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}), batches)
  s1, m1 = _run(c, sharding.make_mesh({"data": 1}, devices=jax.devices()[:1]), batches)
  for a, b in zip(m8, m1):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-5)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), s8.params, s1.params)
  assert int(s8.step) == 2


@pytest.mark.slow   # ~50 s; the default suite has it at the paper's flags (test_paper_recipe, grad_accum 2 vs 1)
def test_grad_accumulation_equals_big_batch(data_dir):
  c = th.tiny_config(data_dir)
  fcfg = train.model_config(c)
  b = _batch(c, fcfg, 0)
  # Uneven target counts between microbatches: cut some examples short, so a per-microbatch mean
  # would differ from the global mean.
  b["audio_mask"][1, 30:] = False
  b["audio_mask"][6, 20:] = False
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
  s1, m1 = _run(c, mesh, [b], grad_accum=1)
  s4, m4 = _run(c, mesh, [b], grad_accum=4)
  np.testing.assert_allclose(m4[0]["loss"], m1[0]["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4[0]["ce_per_codebook"], m1[0]["ce_per_codebook"], rtol=1e-6)
  np.testing.assert_allclose(m4[0]["grad_norm"], m1[0]["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), s4.params, s1.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-4), s4.opt_state, s1.opt_state)
  # The metric equals the model's own weighted loss on the whole batch (CFG drops switched off).
  c0 = th.tiny_config(data_dir, **{"model.cfg_drop_text": 0.0, "model.cfg_drop_video": 0.0})
  fcfg0, state0, step0, _ = _setup(c0, mesh, 4)
  with sharding.use_mesh(mesh):
    logits, _ = foley.DreamFoley(fcfg0).apply({"params": state0.params}, jax.tree.map(jnp.asarray, b))
    ref, _ = foley_loss.weighted_loss(fcfg0, logits, jax.tree.map(jnp.asarray, b))
    _, m = step0(state0, jax.tree.map(jnp.asarray, b))
  np.testing.assert_allclose(m["loss"], ref, rtol=1e-6)


def test_frozen_params_do_not_move_and_have_no_optimizer_state(data_dir):
  regex = r"^(projector|decoder/embed_tokens)/"
  c = th.tiny_config(data_dir, **{"train.frozen_regex": regex})
  fcfg = train.model_config(c)
  mesh = sharding.make_mesh({"data": 8})
  fcfg, s0, _, _ = _setup(c, mesh)
  s0 = jax.device_get(s0)
  s2, _ = _run(c, mesh, [_batch(c, fcfg, i) for i in range(2)])
  flat0 = dict(jax.tree_util.tree_flatten_with_path(s0.params)[0])
  moved, frozen = 0, 0
  for path, v in jax.tree_util.tree_flatten_with_path(s2.params)[0]:
    name = optim.path_str(path)
    if name.startswith(("projector/", "decoder/embed_tokens/")):
      frozen += 1
      np.testing.assert_array_equal(v, flat0[path], err_msg=name)
    else:
      moved += int(not np.array_equal(v, flat0[path]))
  assert frozen == 5 and moved > 10
  # Adam moments exist only for trainable leaves: mu + nu sizes = 2 x trainable size.
  n_frozen = sum(int(np.prod(x.shape)) for p, x in flat0.items()
                 if optim.path_str(p).startswith(("projector/", "decoder/embed_tokens/")))
  n_all = sum(int(np.prod(x.shape)) for x in flat0.values())
  n_opt = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s2.opt_state) if np.ndim(x) > 0)
  assert n_opt == 2 * (n_all - n_frozen)


def test_schedule_warmup_then_cosine():
  s = optim.make_schedule({"lr": 1e-3, "warmup_steps": 10, "schedule": "cosine", "final_lr_frac": 0.1}, 110)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)], [0, 5e-4, 1e-3, 5.5e-4, 1e-4], rtol=1e-5)
  s = optim.make_schedule({"lr": 1e-3, "warmup_steps": 0, "schedule": "constant"}, 10)
  assert float(s(7)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="freezes every parameter"):
    optim.make_optimizer({"lr": 1.0}, 10, {"a": jnp.zeros(2)}, ".*")


def test_loss_falls_on_learnable_data(data_dir, tmp_path):
  c = th.tiny_config(data_dir, **{"train.steps": 30, "train.ckpt_every": 100, "optim.lr": 1e-2,
                                  "optim.warmup_steps": 3, "train.log_every": 5})
  res = train.train(c, str(tmp_path / "w"))
  assert res.status == "finished" and res.step == 30
  rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  losses = [r["loss"] for r in rows]
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
  assert losses[-1] < 0.75 * losses[0], losses   # from ln(66) = 4.19 (uniform) to < 3.1
  for key in ("acc/k0", "ce/k7", "grad_norm", "lr", "tokens_per_s", "mfu", "step_time_s"):
    assert key in rows[-1] and np.isfinite(rows[-1][key])
  assert (tmp_path / "w" / "tb").is_dir() and any((tmp_path / "w" / "tb").iterdir())


BAD_VALUES = [
    ({"train.steps": -5}, r"train.steps=-5: must be an integer >= 0"),
    ({"train.ckpt_every": 0}, r"train.ckpt_every=0: must be an integer >= 1"),
    ({"train.keep_ckpts": 0}, r"train.keep_ckpts=0: must be an integer >= 1"),
    ({"train.log_every": -1}, r"train.log_every=-1: must be an integer >= 1"),
    ({"train.global_batch": 0}, r"train.global_batch=0: must be an integer >= 1"),
    ({"train.grad_accum": 3}, r"train.global_batch=8 is not divisible by train.grad_accum=3"),
    ({"train.global_batch": 6}, r"train.global_batch=6 is not divisible by the 4 batch shards of mesh"),
    ({"train.grad_accum": 4}, r"train.global_batch=8 / grad_accum=4 is not divisible by the 4 batch shards"),
    ({"data.num_workers": -2}, r"data.num_workers=-2: must be an integer >= 0"),
    ({"train.global_batch": 32}, r"data.train_records: 24 records, fewer than one global batch"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[next(iter(o)) + "=" + str(next(iter(o.values())))
                                                             for o, _ in BAD_VALUES])
def test_impossible_values_are_one_line_errors_before_any_compile(data_dir, tmp_path, override, message):
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
  c = th.tiny_config(data_dir, **override)
  with pytest.raises(train.ConfigError, match=message) as e:
    train.train(c, str(tmp_path / "w"), mesh=sharding.make_mesh({"data": 4}, devices=jax.devices()[:4]))
  assert "\n" not in str(e.value) and not compiles, compiles
  assert not (tmp_path / "w").exists()


def test_process_count_and_launch_errors():
  c = th.tiny_config("unused")
  with pytest.raises(train.ConfigError, match=r"global_batch=8 is not divisible by the 3 processes"):
    train.validate(c, process_count=3)
  with pytest.raises(train.ConfigError, match=r"--coordinator_address \(or JAX_COORDINATOR_ADDRESS\), "
                                              r"--process_id \(or JAX_PROCESS_ID\) not set"):
    train.init_distributed(num_processes=2)
  with pytest.raises(train.ConfigError, match=r"--process_id=2 with --num_processes=2"):
    train.init_distributed("127.0.0.1:1", 2, 2)
  assert train.init_distributed().startswith("single process")      # no cluster here: nothing started
  assert not jax.distributed.is_initialized()
  # One process owns every row of the global batch; the rows follow the mesh's device order.
  assert train.host_rows_of(sharding.make_mesh({"data": 8}), 16) == tuple(range(16))


def test_tool_exits_2_with_one_line(tmp_path):
  import subprocess
  import sys

  cfg = th.config_file(tmp_path / "cfg.py", "unused", **{"train.steps": -5})
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, "tools/train.py", f"--config={cfg}", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, timeout=600, cwd=root,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == "ERROR: train.steps=-5: must be an integer >= 0"
  # The paper's recipe without its pretrained decoder: exit 2, one line naming the flag and the opt-out.
  out = subprocess.run([sys.executable, "tools/train.py", "--config=experiments/paper_7b.py",
                        f"--workdir={tmp_path / 'w7'}"], capture_output=True, text=True, timeout=600, cwd=root,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("ERROR: train.pretrained_decoder is not set") and "from_scratch=True" in last, last
  assert "Traceback" not in out.stderr
