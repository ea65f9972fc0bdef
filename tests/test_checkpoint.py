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


# --------------------------------------------------------------------------------------------------
# Integrity: checksums verified at restore, a damaged latest step is reported and the previous used
# --------------------------------------------------------------------------------------------------

def _copy(runs, tmp_path, name="w"):
  work = tmp_path / name
  shutil.copytree(runs["root"] / "full", work)
  return work


def _value_files(step_dir):
  """The step's files holding array data (zstd frames), in a stable order (orbax names them at random).

  Some of them are left-overs the restore never reads (OCDBT merges the per-process databases)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and b"\x28\xb5\x2f\xfd" in p.read_bytes()
           and p.name != "manifest.ocdbt"]
  return sorted(files, key=lambda p: (p.stat().st_size, p.read_bytes()[:64]))


def _target(c):
  mesh = sharding.make_mesh(dict(c.mesh))
  return mesh, train.abstract_state(c, mesh)[0]


def _restore(c, work, step):
  mesh, target = _target(c)
  ck = ckptlib.Checkpointer(str(work), async_save=False)
  try:
    with sharding.use_mesh(mesh):
      return jax.device_get(ck.restore(target, step)[0])
  finally:
    ck.close()


def test_single_bit_flips_never_load_silently(runs, tmp_path):
  """12 single-bit flips in the array files of step 8, one per copy: 4 in the root database file (its
  B-tree nodes and data: always detected), 8 in the per-process data files. Each flip is detected, or
  (a flip in bytes the restore never reads: OCDBT leaves superseded files behind) the restored state is
  bit-identical to what was saved. Never changed values."""
  c, ref = runs["c"], jax.device_get(runs["full"].state)
  rng = np.random.default_rng(0)
  outcome = []
  for trial in range(12):
    work = tmp_path / f"t{trial}"
    shutil.copytree(runs["root"] / "full" / "checkpoints" / "8", work / "checkpoints" / "8")
    step = work / "checkpoints" / "8"
    root_files = sorted((step / "state" / "d").iterdir())
    files = root_files if trial < 4 else [f for f in _value_files(step) if f not in root_files]
    f = files[int(rng.integers(len(files)))]
    b = bytearray(f.read_bytes())
    b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
    f.write_bytes(bytes(b))
    try:
      st = _restore(c, work, 8)
    except ckptlib.CorruptCheckpointError as e:
      outcome.append("checksum" if str(e).startswith("checksum") else "read error")
      continue
    jax.tree.map(np.testing.assert_array_equal, st.params, ref.params)
    jax.tree.map(np.testing.assert_array_equal, st.opt_state, ref.opt_state)
    outcome.append("unread")
  print("single-bit flips:", outcome)
  assert "unread" not in outcome[:4], outcome


def _flip_every_kb(step):
  for f in _value_files(step):
    b = bytearray(f.read_bytes())
    for pos in range(500, len(b), 1000):
      b[pos] ^= 0x10
    f.write_bytes(bytes(b))


def _truncate(step):
  for f in _value_files(step):     # as an interrupted copy leaves them
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _nan_in_nu(step):
  """The issue's case: bytes of one Adam moment replaced (here: rewritten through orbax, so every
  file is well formed and only the checksums can tell)."""
  import orbax.checkpoint as ocp

  tree = ocp.StandardCheckpointer().restore(step / "state")
  tree["opt_state"][1][0]["nu"]["audio_embed"] = np.full_like(tree["opt_state"][1][0]["nu"]["audio_embed"], 2.8e38)
  shutil.rmtree(step / "state")
  ck = ocp.StandardCheckpointer()
  ck.save(step / "state", tree)
  ck.wait_until_finished()


DAMAGE = {
    "bit flips in every data file": _flip_every_kb,
    "truncated data file": _truncate,
    "rewritten moment": _nan_in_nu,
    "empty step directory": lambda step: (shutil.rmtree(step), step.mkdir()),
    "missing state/_METADATA": lambda step: (step / "state" / "_METADATA").unlink(),
    "missing state/manifest.ocdbt": lambda step: (step / "state" / "manifest.ocdbt").unlink(),
    "missing checksums": lambda step: shutil.rmtree(step / "checksums"),
    "missing data position": lambda step: shutil.rmtree(step / "data"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_checkpoint_is_reported_and_the_previous_used(runs, tmp_path, damage, caplog):
  c = runs["c"]
  work = _copy(runs, tmp_path)
  DAMAGE[damage](work / "checkpoints" / "8")
  mesh, target = _target(c)
  ck = ckptlib.Checkpointer(str(work), async_save=False)
  with caplog.at_level("WARNING"), sharding.use_mesh(mesh):
    state, data, step = ck.restore_intact(target)
  ck.close()
  assert step == 4 and int(state.step) == 4 and data["next_batch"] == 4
  log = caplog.text
  assert "checkpoint step 8" in log and "previous intact step 4" in log, log
  assert sorted(ckptlib.Checkpointer(str(work)).all_steps()) == [4]
  assert [p.name.split("-")[:2] for p in (work / "rejected_checkpoints").iterdir()] == [["8", "corrupt"]]


def test_resume_after_a_corrupt_latest_checkpoint_reaches_the_same_state(runs, tmp_path):
  """train() skips the truncated step 8, resumes at 4 and ends bitwise where the intact run ended."""
  work = _copy(runs, tmp_path)
  _truncate(work / "checkpoints" / "8")
  res = train.train(runs["c"], str(work))
  assert res.step == 8 and res.last_checkpoint == 8
  a, b = jax.device_get(runs["full"].state), jax.device_get(res.state)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)


def test_no_intact_checkpoint_is_an_error_naming_each(runs, tmp_path):
  work = _copy(runs, tmp_path)
  _truncate(work / "checkpoints" / "8")
  (work / "checkpoints" / "4" / "state" / "_METADATA").unlink()
  with pytest.raises(ckptlib.CheckpointError, match=r"no intact checkpoint in .*step 8: .*step 4: "):
    train.load_checkpoint(runs["c"], str(work))
  with pytest.raises(ckptlib.CheckpointError, match=r"no intact checkpoint"):   # a restart fails again:
    train.train(runs["c"], str(work))                                              # nothing starts afresh
  assert sorted(ckptlib.Checkpointer(str(work)).all_steps()) == [4, 8] and not (work / "rejected_checkpoints").exists()


def test_a_checkpoint_of_another_config_is_named_not_called_damaged(tmp_path):
  """Restoring into a state of other names or shapes (a changed model / optimizer config) is one line naming
  the arrays, raised before orbax reads anything, and moves nothing; the same state restores; a damaged
  shape table is damage (the previous step is used)."""
  import jax.numpy as jnp

  state = {"params": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}, "opt_state": {"mu": jnp.zeros((3, 4))}}
  ck = ckptlib.Checkpointer(str(tmp_path), every=1, async_save=False)
  for step in (1, 2):
    ck.save(step, state, {"next_batch": step})
  ck.wait()
  sds = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)        # noqa: E731
  other = {"params": {"w": sds((5, 4)), "b": sds((4,)), "extra": sds((2,))}, "opt_state": {"mu": sds((5, 4))}}
  with pytest.raises(ckptlib.CheckpointMismatchError) as e:
    ck.restore_intact(other)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"checkpoint step 2 in {tmp_path / 'checkpoints'} was written with "
                                           "another model or optimizer config: 3 array(s) differ (")
  assert ("params/extra not in the checkpoint; opt_state/mu stored (3, 4) float32, this config (5, 4) float32; "
          "params/w stored (3, 4) float32, this config (5, 4) float32); resume with the config it was written "
          "with") in msg, msg
  fewer = {"params": {"w": sds((3, 4))}, "opt_state": {"mu": sds((3, 4))}}
  with pytest.raises(ckptlib.CheckpointMismatchError, match=r"1 array\(s\) differ \(params/b only in the checkpoint\)"):
    ck.restore(fewer, 1)
  bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), state)
  with pytest.raises(ckptlib.CheckpointMismatchError, match=r"3 array\(s\) differ \(opt_state/mu stored \(3, 4\) "
                     r"float32, this config \(3, 4\) bfloat16;"):
    ck.restore(bf16, 1)
  assert ck.all_steps() == [1, 2] and not (tmp_path / "rejected_checkpoints").exists()
  got, data, step = ck.restore_intact(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
  assert step == 2 and data == {"next_batch": 2}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), jax.device_get(state))
  # a shape table edited in place (parseable, wrong): damage, so step 1 is used and step 2 set aside
  (f,) = [p for p in (tmp_path / "checkpoints" / "2" / "checksums").rglob("*") if p.is_file()
          and b'"shapes_sha256"' in p.read_bytes()]
  table = f.read_bytes()
  assert table.count(b'"params/w": [[3, 4], "float32"]') == 1, table[:400]
  f.write_bytes(table.replace(b'"params/w": [[3, 4], "float32"]', b'"params/w": [[5, 4], "float32"]'))
  got, data, step = ck.restore_intact(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
  assert step == 1 and ck.all_steps() == [1]
  ck.close()


def test_resuming_with_another_model_width_is_one_line(runs, tmp_path):
  """The user's case: the same workdir, a changed config. tools/train.py prints this one line (exit 2)."""
  work = _copy(runs, tmp_path)
  c = th.tiny_config(runs["pattern"], **{"model.decoder.intermediate_size": 96})
  with pytest.raises(ckptlib.CheckpointMismatchError, match=r"checkpoint step 8 in .* was written with another "
                     r"model or optimizer config: \d+ array\(s\) differ \(.*stored \(32, 64\) float32, this "
                     r"config \(32, 96\) float32") as e:
    train.train(c, str(work))
  assert "\n" not in str(e.value)
  assert sorted(ckptlib.Checkpointer(str(work)).all_steps()) == [4, 8] and not (work / "rejected_checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# Last good means good
# --------------------------------------------------------------------------------------------------

def test_after_divergence_the_kept_checkpoint_is_good_and_trains_on(runs, tmp_path):
  """lr 1e30 from step 8: step 9's loss is finite (params of step 8) but its params blow up; the
  checkpoint written at 9 is discarded when step 10 diverges, the error names 8, and 8 trains on."""
  work = _copy(runs, tmp_path)
  c = th.tiny_config(runs["pattern"], **{"train.steps": 12, "train.ckpt_every": 1, "optim.lr": 1e30,
                                         "optim.warmup_steps": 0})
  with pytest.raises(train.NonFiniteLossError,
                     match=r"at step 10; checkpoint step 9 .* discarded .* last good checkpoint is step 8 "):
    train.train(c, str(work))
  rows = [json.loads(l) for l in open(work / "metrics.jsonl")]
  assert [r["step"] for r in rows][-1] == 9 and np.isfinite(rows[-1]["loss"])        # step 9 looked fine
  assert sorted(ckptlib.Checkpointer(str(work)).all_steps()) == [4, 8]
  rejected = list((work / "rejected_checkpoints").iterdir())
  assert [p.name.split("-")[:2] for p in rejected] == [["9", "diverged"]]
  shutil.copytree(rejected[0], tmp_path / "rej" / "checkpoints" / "9")     # kept for inspection: blown up
  blown = _restore(c, tmp_path / "rej", 9)
  assert max(np.abs(x).max() for x in jax.tree.leaves(blown.params)) > 1e20
  st = jax.device_get(train.load_checkpoint(c, str(work)))
  assert int(st.step) == 8 and all(np.isfinite(x).all() and np.abs(x).max() < 1e3 for x in jax.tree.leaves(st.params))
  # Resuming as the message advises (a sane lr) trains on with finite losses.
  sane = th.tiny_config(runs["pattern"], **{"train.steps": 11})
  res = train.train(sane, str(work))
  assert res.step == 11 and res.status == "finished"
  assert all(np.isfinite(losses_by_step(work)[s]) for s in (9, 10, 11))


def _rewrite_param(step):
  """One weight matrix rewritten through orbax: the files are well formed, only the checksums can tell."""
  import orbax.checkpoint as ocp

  tree = ocp.StandardCheckpointer().restore(step / "state")
  tree["params"]["audio_embed"] = tree["params"]["audio_embed"] * 1.5
  shutil.rmtree(step / "state")
  ck = ocp.StandardCheckpointer()
  ck.save(step / "state", tree)
  ck.wait_until_finished()


def test_exported_params_are_verified(runs, tmp_path, caplog):
  """model_dir.train_params (tools/export_model.py) checks the params against the trainer's checksums:
  a rewritten newest step falls back to the previous intact one; asking for it by number is an error."""
  from dreamfoley_jax import model_dir

  work = _copy(runs, tmp_path)
  step, params = model_dir.train_params(work)
  assert step == 8
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(runs["full"].state.params))
  _rewrite_param(work / "checkpoints" / "8")
  with caplog.at_level("WARNING"):
    step, _ = model_dir.train_params(work)
  assert step == 4 and "step 8: CorruptCheckpointError: checksum mismatch in 1 of" in caplog.text, caplog.text
  assert "previous intact checkpoint step 4" in caplog.text
  with pytest.raises(model_dir.ModelDirError, match=r"no intact checkpoint \(step 8: .*checksum mismatch.*audio_embed"):
    model_dir.train_params(work, 8)


def test_remote_paths_keep_their_scheme(tmp_path, monkeypatch):
  """gs:// workdirs and pretrained checkpoints reach orbax as remote paths (not ./gs:/...); the metrics log,
  which is appended to, goes to a named local directory on process 0."""
  assert str(ckptlib.as_path("gs://bucket/qwen7b_jax") / "params") == "gs://bucket/qwen7b_jax/params"
  assert str(ckptlib.as_path("rel/dir")) == str(tmp_path.cwd() / "rel/dir")
  monkeypatch.chdir(tmp_path)
  w = train.MetricWriter("gs://bucket/run7b", total_steps=3)
  w.write(1, {"loss": 2.0})
  w.close()
  rows = (tmp_path / "metrics/gs/bucket/run7b/metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["loss"] for r in rows] == [2.0] and not (tmp_path / "gs:").exists()
