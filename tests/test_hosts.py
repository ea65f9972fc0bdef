"""Many hosts: generate --csv and evaluate split their items over jax.process_count() processes and merge the
outputs; two processes on 127.0.0.1 (jax.distributed with an explicit coordinator) give what one gives."""
import csv
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import hosts_worker
import model_helpers as mh
from dreamfoley_jax import hosts

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_share_and_gather_on_one_host():
  assert [hosts.share(range(7), i, 3) for i in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
  assert hosts.share(range(3), 0, 1) == [0, 1, 2]
  assert hosts.allgather_bytes(b"abc") == [b"abc"]
  got = hosts.map_features(["b", "a"], lambda n: {"x": np.full(2, ord(n))})
  assert list(got) == ["b", "a"] and got["a"]["x"].tolist() == [97, 97]
  with pytest.raises(ValueError, match="pass all of --coordinator_address, --num_processes and --process_id"):
    hosts.initialize("127.0.0.1:1234", None, 0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hosts")
  model = mh.make_model_dir(root)
  vids = root / "videos"
  vids.mkdir()
  rows = ["video,caption,duration"]
  for i in range(4):
    mh.write_clip(vids / f"clip{i}.mp4", 1.0, seed=10 + i)
    rows.append(f"videos/clip{i}.mp4,a ball bounces,")     # one caption length, clip length: one compile
  rows.append(",a ball bounces,1.0")                         # text-to-audio row: named clip4
  # Bad rows (issue 19): one the CSV reader rejects (every host), a missing video (row 5: host 1's share),
  # a file that is not a video (row 6: host 0's); each host reports its own, process 0 writes them all.
  (vids / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
  rows += ["videos/clip0.mp4,a ball bounces,abc", "videos/missing.mp4,a ball bounces,",
           "videos/garbage.mp4,a ball bounces,"]
  (root / "clips.csv").write_text("\n".join(rows) + "\n")
  (root / "captions.csv").write_text("name,caption\n" + "".join(f"clip{i},ball {i}\n" for i in range(4)))
  return root, model


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(cmds, env, rc=0):
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
  outs = [p.communicate(timeout=500)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == rc, o[-3000:]
  return outs


def test_two_hosts_give_what_one_gives(inputs, tmp_path):
  root, model = inputs
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  one, two = tmp_path / "one" / "gen", tmp_path / "two" / "gen"   # same folder name: the stand-ins key on it
  gen = [sys.executable, str(ROOT / "tools" / "generate.py"), f"--model={model}", f"--csv={root / 'clips.csv'}",
         "--batch_size=1", "--nopng"]
  _run([gen + [f"--out_dir={one}"]], env, rc=1)        # 1: some rows failed
  port = _port()
  multi = lambda i: [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]  # noqa: E731
  outs = _run([gen + [f"--out_dir={two}"] + multi(i) for i in range(2)], env, rc=1)
  # A generated clip no reader can decode, and one the panns stand-in cannot score, in both folders.
  for d in (one, two):
    (d / "junk.wav").write_bytes(b"not audio" * 100)
    shutil.copy(one / "clip0.wav", d / "fragile.wav")
  # Evaluation: here on one process, then on two (tests/hosts_worker.py: the harness tools/evaluate.py runs).
  ref = json.loads(json.dumps(hosts_worker.evaluate(one, root / "videos", root / "captions.csv")))
  port = _port()
  _run([[sys.executable, str(ROOT / "tests" / "hosts_worker.py"), str(port), str(i), "2", str(two), str(root / "videos"),
         str(root / "captions.csv"), str(tmp_path / f"eval{i}.json")] for i in range(2)], env)
  got = [json.loads((tmp_path / f"eval{i}.json").read_text()) for i in range(2)]

  # generate: each host generated its rows (0, 2, 4 and 1, 3); process 0 wrote the merged index.
  names = [f"clip{i}" for i in range(5)]
  printed = [sorted(l.split(":")[0] for l in o.splitlines() if l.startswith("clip") and " s -> " in l) for o in outs]
  assert printed == [names, names]                      # every host prints the merged list
  with open(two / "generated.csv") as f:
    index = list(csv.DictReader(f))
  assert [(r["name"], r["host"], r["seconds"]) for r in index] == [(n, str(i % 2), "1.0") for i, n in enumerate(names)]
  with open(one / "generated.csv") as f:
    assert [r["host"] for r in csv.DictReader(f)] == ["0"] * 5
  # ... and the same sound as one process (per-clip seeds fixed over the whole list).
  for n in names:
    a, _ = sf.read(one / f"{n}.wav")
    b, _ = sf.read(two / f"{n}.wav")
    assert len(a) == 24000 and np.array_equal(a, b), n
  assert (two / "clip1.mp4").exists() and not (two / "clip4.mp4").exists()
  # failures.json: every host's failed rows in row order, the same as one process writes; nothing else left.
  csv_path = root / "clips.csv"
  want = [(f"{csv_path}:7", "duration: 'abc' is not a number"), (f"{csv_path}:8", "no such video"),
          (f"{csv_path}:9", "not a video PyAV can open")]
  for d in (one, two):
    fails = json.loads((d / "failures.json").read_text())
    assert [f["item"] for f in fails] == [w[0] for w in want], fails
    assert all(w[1] in f["reason"] for f, w in zip(fails, want)), fails
  assert json.loads((one / "failures.json").read_text()) == json.loads((two / "failures.json").read_text())
  for o in outs:      # each host: the FAILED line of its own share as it happens; both: the whole count
    assert "generated 5 of 8 items, 3 failed" in o, o[-2000:]
  assert ("missing.mp4" in outs[1]) and ("missing.mp4" not in outs[0].split("generated 5 of")[0])
  assert not list(two.glob("*missing*")) and not list(two.glob("garbage*")) and not list(two.glob(".tmp-*"))

  # evaluate: both hosts hold the one-process metrics; each embedded only its share of the clips.
  assert set(ref["metrics"]) >= {"FD-PANN", "KL-PANNS-softmax", "KL-PASST-softmax", "KL", "DeSync", "LAION-CLAP-Score"}
  for g in got:
    assert g["metrics"] == ref["metrics"]
    assert g["counts"] == ref["counts"] and g["pairing"] == ref["pairing"]
  # ... and every host holds every host's failures: junk.wav and the reference garbage.mp4 (screening: its audio
  # and its video) and fragile.wav (panns only), in the one-process order.
  strip = lambda fs: [(pathlib.Path(f["item"]).name, f["role"], f.get("embedder"),  # noqa: E731
                       f["reason"].replace(str(one), "GEN").replace(str(two), "GEN")) for f in fs]
  assert [f[:3] for f in strip(ref["failures"])] == [
      ("junk.wav", "generated", None), ("garbage.mp4", "reference audio", None), ("garbage.mp4", "video", None),
      ("fragile.wav", "generated", "panns")]
  for g in got:
    assert strip(g["failures"]) == strip(ref["failures"])
  assert ref["counts"]["failed"] == 4
  per_host = got[0]["cache"]["hosts"]
  assert [h["misses"] for h in per_host] == [x["cache"]["misses"] for x in got]
  assert sum(h["misses"] for h in per_host) == ref["cache"]["misses"] and min(h["misses"] for h in per_host) > 0


def test_an_unexpected_error_on_one_host_stops_every_host(tmp_path):
  """Review finding: a host whose Generator raised (not a --strict input failure) used to leave the other
  hosts waiting at the gather until the distributed timeout. Now every host stops at once, host 0 naming
  host 1's error, and process 0 writes no index of a half-done run."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  port = _port()
  cmds = [[sys.executable, str(ROOT / "tests" / "hosts_worker.py"), "generate_crash", str(port), str(i), "2",
           str(tmp_path)] for i in range(2)]
  outs = _run(cmds, env, rc=3)
  assert "ERROR RuntimeError: device lost mid-batch" in outs[1]
  assert "ERROR RuntimeError: host 1 failed (RuntimeError: device lost mid-batch); host 0 stops too" in outs[0]
  assert not (tmp_path / "generated.csv").exists()

