"""tools/train.py as 1..N subprocesses on 127.0.0.1 (jax.distributed, gloo): launch, watch, signal."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Job:
  """N trainer processes of one job; logs in <logdir>/p<i>.log."""

  def __init__(self, procs, logs):
    self.procs, self.logs = procs, logs

  def wait(self, timeout=900):
    t = time.time()
    for p in self.procs:
      p.wait(timeout=max(1, timeout - (time.time() - t)))
    return [p.returncode for p in self.procs]

  def log(self, i=0) -> str:
    return pathlib.Path(self.logs[i]).read_text(errors="replace")

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def launch(cfg, workdir, *, processes=1, devices=2, cache=None, logdir=None, env_launch=(), heartbeat_s=30,
           extra=()):
  """Starts `processes` trainers with `devices` CPU devices each. Process ids in `env_launch` get the
  coordinator / count / id from JAX_* environment variables instead of flags."""
  logdir = pathlib.Path(logdir or pathlib.Path(workdir).with_name(pathlib.Path(workdir).name + "_logs"))
  logdir.mkdir(parents=True, exist_ok=True)
  port = free_port()
  procs, logs = [], []
  for i in range(processes):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
      env.pop(k, None)
    if cache:
      env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    args = [sys.executable, "-u", str(ROOT / "tools/train.py"), f"--config={cfg}", f"--workdir={workdir}",
            f"--heartbeat_timeout_s={heartbeat_s}", *extra]
    if processes > 1:
      if i in env_launch:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(i))
      else:
        args += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
    log = logdir / f"p{i}.log"
    logs.append(log)
    procs.append(subprocess.Popen(args, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT))
  return Job(procs, logs)


def metrics(workdir) -> dict[int, dict]:
  f = pathlib.Path(workdir) / "metrics.jsonl"
  out = {}
  if f.exists():
    for line in f.read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        out[r["step"]] = r         # a re-run step after a crash overwrites the earlier entry
  return out


def wait_for(cond, timeout=900, poll=0.05) -> bool:
  t = time.time()
  while time.time() - t < timeout:
    if cond():
      return True
    time.sleep(poll)
  return False


def _ppids():
  out = {}
  for d in os.listdir("/proc"):
    if d.isdigit():
      try:
        stat = pathlib.Path(f"/proc/{d}/stat").read_text()
      except OSError:
        continue
      fields = stat[stat.rindex(")") + 2:].split()
      out[int(d)] = (int(fields[1]), fields[0])      # (ppid, state)
  return out


def descendants(pid: int) -> set[int]:
  """Live (non-zombie) descendant process ids of `pid` (Linux /proc)."""
  table = _ppids()
  out, frontier = set(), {pid}
  while frontier:
    frontier = {p for p, (pp, st) in table.items() if pp in frontier and st != "Z"} - out
    out |= frontier
  return out


def alive(pids) -> set[int]:
  table = _ppids()
  return {p for p in pids if p in table and table[p][1] != "Z"}
