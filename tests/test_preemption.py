"""tools/train.py as a subprocess: SIGKILL at arbitrary moments (incl. during an async save) and SIGTERM.

Slow (several trainer processes); run with `python -m pytest -q -m slow tests/test_preemption.py`.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import train_helpers as th

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def launch(cfg, workdir, cache):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.Popen([sys.executable, str(ROOT / "tools/train.py"), f"--config={cfg}", f"--workdir={workdir}"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def finish(p, timeout=600):
  out, _ = p.communicate(timeout=timeout)
  return p.returncode, out


def steps_logged(workdir):
  f = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l)["step"] for l in open(f)] if f.exists() else []


def wait_for(cond, timeout=600, poll=0.005):
  t = time.time()
  while time.time() - t < timeout:
    if cond():
      return True
    time.sleep(poll)
  return False


def by_step(workdir):
  out = {}
  for l in open(pathlib.Path(workdir) / "metrics.jsonl"):
    r = json.loads(l)
    out[r["step"]] = r["loss"]
  return out


def final_params(cfg_path, workdir):
  from dreamfoley_jax import train

  import importlib.util
  spec = importlib.util.spec_from_file_location("cfgmod", cfg_path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  import jax
  return jax.device_get(train.load_checkpoint(mod.get_config(), str(workdir)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("preempt")
  pattern, _ = th.write_dataset(root / "data", n=24)
  cfg = th.config_file(root / "cfg.py", pattern, **{"train.steps": 12, "train.ckpt_every": 3})
  cache = root / "cache"
  rc, out = finish(launch(cfg, root / "ref", cache))
  assert rc == 0, out[-3000:]
  return root, cfg, cache


def test_sigkill_anywhere_then_resume_is_bitwise_identical(setup):
  root, cfg, cache = setup
  work = root / "killed"
  ck = work / "checkpoints"
  # 1) Kill while an async save is in flight: orbax writes <step>.orbax-checkpoint-tmp-* first.
  p = launch(cfg, work, cache)
  saw_tmp = wait_for(lambda: p.poll() is not None or (ck.exists() and any("tmp" in x.name for x in ck.iterdir())),
                     timeout=600, poll=0.001)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert saw_tmp and p.returncode == -signal.SIGKILL, "the run ended before an async save could be interrupted"
  # 2) Resume, then kill at an arbitrary moment between steps.
  target = int(np.random.default_rng().integers(4, 11))
  p = launch(cfg, work, cache)
  wait_for(lambda: p.poll() is not None or max(steps_logged(work), default=0) >= target, timeout=600, poll=0.01)
  p.send_signal(signal.SIGKILL)
  p.wait()
  # 3) Resume to the end.
  rc, out = finish(launch(cfg, work, cache))
  assert rc == 0, out[-3000:]
  assert "resuming from" in out
  a, b = by_step(root / "ref"), by_step(work)
  assert sorted(a) == sorted(b) == list(range(1, 13))
  assert [a[s] for s in a] == [b[s] for s in a]
  pa, pb = final_params(cfg, root / "ref"), final_params(cfg, work)
  import jax
  jax.tree.map(np.testing.assert_array_equal, pa.params, pb.params)
  jax.tree.map(np.testing.assert_array_equal, pa.opt_state, pb.opt_state)


def test_sigterm_writes_checkpoint_at_current_step_and_exits_cleanly(setup):
  root, cfg, cache = setup
  work = root / "term"
  p = launch(cfg, work, cache)
  assert wait_for(lambda: max(steps_logged(work), default=0) >= 4, timeout=600, poll=0.01)
  p.send_signal(signal.SIGTERM)
  rc, out = finish(p)
  assert rc == 0, out[-3000:]
  assert "preempted: checkpoint written at step" in out
  last = max(steps_logged(work))
  steps = sorted(int(x.name) for x in (work / "checkpoints").iterdir() if x.name.isdigit())
  assert steps[-1] == last and last < 12
  # The run continues from there to the same end point as the uninterrupted one.
  rc, out = finish(launch(cfg, work, cache))
  assert rc == 0, out[-3000:]
  a, b = by_step(root / "ref"), by_step(work)
  assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(a)]
