"""Several trainer processes on 127.0.0.1 (jax.distributed over gloo, 2 CPU devices each).

Default suite: one 2-process job (launched by flags and by JAX_* variables) that resumes a 1-process
checkpoint, matches the 1-process loss curve, is stopped by SIGTERM to ONE process and resumes on
one process; SLURM auto-detection; grain workers of a SIGKILLed reader exit. Slow (`-m slow`): bitwise
restart after SIGTERM and after kill -9 of either process, 4 processes, 2 processes from scratch,
grain workers of a SIGKILLed trainer.
"""
import os
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest

import launch_helpers as lh
import train_helpers as th
from dreamfoley_jax import checkpoint as ckptlib
from dreamfoley_jax import sharding, train

STEPS = 16
OV = {"train.steps": STEPS, "train.ckpt_every": 4, "train.keep_ckpts": 100, "train.log_every": 1}


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  # The in-process runs compile the same 4-device programs: the persistent cache skips the repeats.
  old = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old)


def mesh4():
  return sharding.make_mesh({"data": 4}, devices=jax.devices()[:4])


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """The 1-process run (4 devices, like 2 processes x 2): losses of steps 1..16, checkpoints 4, 8, ..."""
  root = tmp_path_factory.mktemp("multihost")
  pattern, _ = th.write_dataset(root / "data", n=24)
  cfg = th.config_file(root / "cfg.py", pattern, **OV)
  res = train.train(th.tiny_config(pattern, **OV), str(root / "ref"), mesh=mesh4())
  assert res.step == STEPS
  return dict(root=root, pattern=pattern, cfg=cfg, cache=root / "cache", m=lh.metrics(root / "ref"),
              state=jax.device_get(res.state))


def assert_same_curve(got, want, steps):
  """Same global batches (num_targets exact), same losses to fp32 reduction-order tolerance."""
  steps = list(steps)
  rel = max(abs(got[s]["loss"] - want[s]["loss"]) / abs(want[s]["loss"]) for s in steps)
  print(f"steps {steps[0]}-{steps[-1]}: max relative loss difference {rel:.2e}, "
        f"{sum(got[s]['loss'] == want[s]['loss'] for s in steps)} of {len(steps)} bit-equal")
  for s in steps:
    assert got[s]["num_targets"] == want[s]["num_targets"], s
    np.testing.assert_allclose(got[s]["loss"], want[s]["loss"], rtol=2e-5, err_msg=f"step {s}")
    np.testing.assert_allclose(got[s]["grad_norm"], want[s]["grad_norm"], rtol=2e-4, err_msg=f"step {s}")


def preempted_step(log: str) -> int:
  m = re.findall(r"preempted: checkpoint written at step (\d+)", log)
  assert len(m) == 1, log[-3000:]
  return int(m[0])


@pytest.fixture(scope="module")
def two(ref):
  """2 processes (process 0 by flags, process 1 by JAX_* variables) resume the 1-process checkpoint of
  step 4; SIGTERM to process 1 alone once step 5 is logged."""
  work = ref["root"] / "two"
  shutil.copytree(ref["root"] / "ref" / "checkpoints" / "4", work / "checkpoints" / "4")
  job = lh.launch(ref["cfg"], work, processes=2, devices=2, cache=ref["cache"], env_launch=(1,),
                  extra=["--config.data.num_workers=1"])
  children = set()

  def progressed():
    for p in job.procs:
      children.update(lh.descendants(p.pid))
    return any(p.poll() is not None for p in job.procs) or max(lh.metrics(work), default=0) >= 5

  try:
    assert lh.wait_for(progressed, timeout=900), "no progress"
    job.procs[1].send_signal(signal.SIGTERM)
    t = time.time()
    rcs = job.wait(timeout=600)
    stop_s = time.time() - t
  finally:
    job.kill()
  return dict(work=work, job=job, rcs=rcs, stop_s=stop_s, children=children)


def test_sigterm_to_one_process_stops_both_at_the_same_step(ref, two):
  job, work = two["job"], two["work"]
  assert two["rcs"] == [0, 0], (job.log(0)[-3000:], job.log(1)[-3000:])
  assert "process 0 of 2 (flags/environment)" in job.log(0) and "process 1 of 2" in job.log(1)
  assert "resuming from" in job.log(0) and "resuming from" in job.log(1)
  s0, s1 = preempted_step(job.log(0)), preempted_step(job.log(1))
  assert s0 == s1 and 5 <= s0 < STEPS
  assert max(ckptlib.Checkpointer(str(work)).all_steps()) == s0
  assert max(lh.metrics(work)) == s0
  # Both processes' grain workers (num_workers=1) are gone with them.
  assert two["children"] and not lh.alive(two["children"]), two["children"]


def test_two_processes_train_on_the_global_batches_of_one(ref, two):
  """A checkpoint of 1 process resumed by 2 (1 -> 2) continues the 1-process loss curve."""
  m = lh.metrics(two["work"])
  s = max(m)
  assert sorted(m) == list(range(5, s + 1))
  assert_same_curve(m, ref["m"], range(5, s + 1))


def test_two_process_checkpoint_resumes_on_one_process(ref, two):
  """2 -> 1: the checkpoint written by 2 processes, data position included, continues on 1 process."""
  work = ref["root"] / "two_then_one"
  shutil.copytree(two["work"], work)
  s = max(lh.metrics(work))
  res = train.train(th.tiny_config(ref["pattern"], **OV), str(work), mesh=mesh4())
  assert res.step == STEPS
  assert_same_curve(lh.metrics(work), ref["m"], range(s + 1, STEPS + 1))
  st = jax.device_get(res.state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), st.params, ref["state"].params)


READER = """
import sys
from absl import app
sys.path.insert(0, {root!r})
from dreamfoley_jax.data import pipeline

def main(_):
  p = pipeline.PipelineConfig(batch_size=4, num_codebooks=8, codebook_size=64, sync_dim=32, clip_dim=16, max_text_len=4,
                              null_text_len=2, null_video_len=2, crop_min_s=1.0, crop_max_s=2.0,
                              bucket_seconds=(1.5, 2.0))
  for i, _ in enumerate(pipeline.make_dataset(p, {pattern!r}, num_workers=2)):
    print("BATCH", i, flush=True)

if __name__ == "__main__":
  app.run(main)
"""


def _kill_and_watch_children(proc, ready, timeout=900):
  kids = set()

  def up():
    kids.update(lh.descendants(proc.pid))
    return proc.poll() is not None or (len(lh.alive(kids)) >= 2 and ready())

  assert lh.wait_for(up, timeout=timeout) and proc.poll() is None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  t = time.time()
  assert lh.wait_for(lambda: not lh.alive(kids), timeout=10, poll=0.05), lh.alive(kids)
  return kids, time.time() - t


def test_grain_workers_exit_with_a_sigkilled_reader(tmp_path):
  """The trainer's pipeline (2 grain workers) in a process that is SIGKILLed: its children exit."""
  import subprocess
  import sys

  pattern, _ = th.write_dataset(tmp_path / "data", n=8)
  script = tmp_path / "reader.py"
  script.write_text(READER.format(root=str(lh.ROOT), pattern=pattern))
  log = tmp_path / "reader.log"
  proc = subprocess.Popen([sys.executable, "-u", str(script)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
  try:
    kids, took = _kill_and_watch_children(proc, lambda: "BATCH 3" in log.read_text())
  finally:
    if proc.poll() is None:
      proc.kill()
  print(f"{len(kids)} children of the reader gone {took:.2f} s after SIGKILL")


@pytest.mark.slow
def test_grain_workers_exit_with_a_sigkilled_trainer(ref, tmp_path):
  job = lh.launch(ref["cfg"], tmp_path / "w", processes=1, devices=1, cache=ref["cache"],
                  extra=["--config.data.num_workers=2"])
  try:
    kids, took = _kill_and_watch_children(job.procs[0], lambda: bool(lh.metrics(tmp_path / "w")))
  finally:
    job.kill()
  print(f"{len(kids)} children of the trainer gone {took:.2f} s after SIGKILL")


SLURM_PROBE = """
import numpy as np
from jax.experimental import multihost_utils
from dreamfoley_jax import train
print(train.init_distributed(heartbeat_timeout_s=10))
print("ids", multihost_utils.process_allgather(np.int32(__import__("jax").process_index())).tolist())
"""


def test_slurm_environment_is_auto_detected(tmp_path):
  """Under srun (faked: the SLURM_* variables srun sets) no flag is needed: jax.distributed finds the job."""
  import subprocess
  import sys

  port = lh.free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2", SLURM_PROCID=str(i),
               SLURM_LOCALID="0", JAX_COORDINATOR_PORT=str(port),
               PYTHONPATH=os.pathsep.join([str(lh.ROOT), os.environ.get("PYTHONPATH", "")]))
    procs.append(subprocess.Popen([sys.executable, "-c", SLURM_PROBE], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, cwd=lh.ROOT))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for i, out in enumerate(outs):
    assert procs[i].returncode == 0, out[-3000:]
    assert f"jax.distributed: process {i} of 2 (auto-detected SlurmCluster)" in out, out[-3000:]
    assert "ids [0, 1]" in out


# --------------------------------------------------------------------------------------------------
# Slow: bitwise restarts, kill -9, 4 processes
# --------------------------------------------------------------------------------------------------

def _final(cfg_pattern, work):
  return jax.device_get(train.load_checkpoint(th.tiny_config(cfg_pattern, **OV), str(work), mesh=mesh4()))


@pytest.fixture(scope="module")
def ref2(ref):
  """An uninterrupted 2-process run from scratch."""
  work = ref["root"] / "ref2"
  job = lh.launch(ref["cfg"], work, processes=2, devices=2, cache=ref["cache"])
  try:
    assert job.wait(timeout=1200) == [0, 0], job.log(0)[-3000:]
  finally:
    job.kill()
  return dict(work=work, m=lh.metrics(work), state=_final(ref["pattern"], work))


@pytest.mark.slow
def test_two_processes_from_scratch_match_one(ref, ref2):
  assert_same_curve(ref2["m"], ref["m"], range(1, STEPS + 1))


def _bitwise(a, b):
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)


@pytest.mark.slow
def test_restart_after_sigterm_to_one_process_is_bitwise(ref, ref2):
  work = ref["root"] / "term2"
  job = lh.launch(ref["cfg"], work, processes=2, devices=2, cache=ref["cache"])
  try:
    assert lh.wait_for(lambda: max(lh.metrics(work), default=0) >= 3, timeout=900)
    job.procs[0].send_signal(signal.SIGTERM)      # the coordinator's host this time
    assert job.wait(timeout=600) == [0, 0]
    s = preempted_step(job.log(1))
    assert s == preempted_step(job.log(0)) < STEPS
    job = lh.launch(ref["cfg"], work, processes=2, devices=2, cache=ref["cache"])
    assert job.wait(timeout=1200) == [0, 0], job.log(0)[-3000:]
  finally:
    job.kill()
  m = lh.metrics(work)
  assert [m[s]["loss"] for s in range(1, STEPS + 1)] == [ref2["m"][s]["loss"] for s in range(1, STEPS + 1)]
  _bitwise(_final(ref["pattern"], work), ref2["state"])


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_kill_9_of_one_process_ends_the_other_then_restart_is_bitwise(ref, ref2, victim):
  """kill -9 of process `victim`: the survivor exits within the heartbeat timeout (10 s) plus a margin,
  with an error naming the cause; a restart resumes to the uninterrupted final state, bit for bit."""
  work = ref["root"] / f"kill{victim}"
  job = lh.launch(ref["cfg"], work, processes=2, devices=2, cache=ref["cache"], heartbeat_s=10)
  try:
    assert lh.wait_for(lambda: max(lh.metrics(work), default=0) >= 5, timeout=900)
    job.procs[victim].send_signal(signal.SIGKILL)
    t = time.time()
    survivor = job.procs[1 - victim]
    survivor.wait(timeout=120)
    took = time.time() - t
    log = job.log(1 - victim)
    assert survivor.returncode != 0 and took < 60, (took, log[-3000:])
    assert re.search(r"another task died|lost contact with another process|unhealthy", log), log[-3000:]
    print(f"survivor (process {1 - victim}) exited {took:.1f} s after kill -9, status {survivor.returncode}")
    job = lh.launch(ref["cfg"], work, processes=2, devices=2, cache=ref["cache"])
    assert job.wait(timeout=1200) == [0, 0], job.log(0)[-3000:]
  finally:
    job.kill()
  m = lh.metrics(work)
  assert [m[s]["loss"] for s in range(1, STEPS + 1)] == [ref2["m"][s]["loss"] for s in range(1, STEPS + 1)]
  _bitwise(_final(ref["pattern"], work), ref2["state"])


@pytest.mark.slow
def test_four_processes_match_one(ref):
  work = ref["root"] / "four"
  job = lh.launch(ref["cfg"], work, processes=4, devices=1, cache=ref["cache"])
  try:
    assert job.wait(timeout=1800) == [0, 0, 0, 0], job.log(0)[-3000:]
  finally:
    job.kill()
  assert_same_curve(lh.metrics(work), ref["m"], range(1, STEPS + 1))
