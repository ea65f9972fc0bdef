"""Many hosts: generate --csv and evaluate split their items over jax.process_count() processes and merge the
outputs; two processes on 127.0.0.1 (jax.distributed with an explicit coordinator) give what one gives."""
import csv
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

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
  (root / "clips.csv").write_text("\n".join(rows) + "\n")
  (root / "captions.csv").write_text("name,caption\n" + "".join(f"clip{i},ball {i}\n" for i in range(4)))
  return root, model


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_hosts_give_what_one_gives(inputs, tmp_path):
  root, model = inputs
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}

  def launch(n, i, out, port):
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "hosts_worker.py"), str(port), str(i), str(n),
                             str(model), str(root / "clips.csv"), str(out), str(root / "videos"),
                             str(root / "captions.csv"), str(tmp_path / f"{n}host{i}.json")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  one, two = tmp_path / "one" / "gen", tmp_path / "two" / "gen"   # same folder name: the stand-ins key on it
  for n, out in ((1, one), (2, two)):
    port = _port()
    procs = [launch(n, i, out, port) for i in range(n)]
    for p in procs:
      o = p.communicate(timeout=500)[0]
      assert p.returncode == 0, o[-3000:]
  ref = json.loads((tmp_path / "1host0.json").read_text())
  got = [json.loads((tmp_path / f"2host{i}.json").read_text()) for i in range(2)]

  # generate: every host returns the merged list; each generated only its rows (0, 2, 4 and 1, 3).
  names = [f"clip{i}" for i in range(5)]
  for g in got:
    assert [r["name"] for r in g["generated"]] == names
    assert [r["host"] for r in g["generated"]] == [0, 1, 0, 1, 0]
  assert got[0]["codes"] == ["clip0", "clip2", "clip4"] and got[1]["codes"] == ["clip1", "clip3"]
  with open(two / "generated.csv") as f:
    index = list(csv.DictReader(f))
  assert [(r["name"], r["host"], r["seconds"]) for r in index] == [(n, str(i % 2), "1.0") for i, n in enumerate(names)]
  # ... and the same sound as one process (per-clip seeds fixed over the whole list).
  for n in names:
    a, _ = sf.read(one / f"{n}.wav")
    b, _ = sf.read(two / f"{n}.wav")
    assert len(a) == 24000 and np.array_equal(a, b), n
  assert (two / "clip1.mp4").exists() and not (two / "clip4.mp4").exists()

  # evaluate: both hosts hold the one-process metrics; each embedded only its share of the clips.
  assert set(ref["eval"]["metrics"]) >= {"FD-PANN", "KL-PANNS-softmax", "KL-PASST-softmax", "KL", "DeSync",
                                         "LAION-CLAP-Score"}
  for g in got:
    assert g["eval"]["metrics"] == ref["eval"]["metrics"]
    assert g["eval"]["counts"] == ref["eval"]["counts"] and g["eval"]["pairing"] == ref["eval"]["pairing"]
  per_host = got[0]["eval"]["cache"]["hosts"]
  assert [h["misses"] for h in per_host] == [x["eval"]["cache"]["misses"] for x in got]
  assert sum(h["misses"] for h in per_host) == ref["eval"]["cache"]["misses"]
  assert min(h["misses"] for h in per_host) > 0
