"""tools/convert_checkpoint.py across families: a real run, and clear failures."""
import os
import pathlib
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file

from dreamfoley_jax.convert import common
from dreamfoley_jax.models import synchformer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), *args],
                        capture_output=True, text=True, env=env, timeout=300)


def test_synchformer_family_via_cli(tmp_path, fixtures_dir):
  f = np.load(fixtures_dir / "synchformer_tiny.npz")
  sd = {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}
  save_file(sd, str(tmp_path / "sync.safetensors"))
  r = _run("--family", "synchformer", "--input", str(tmp_path / "sync.safetensors"),
           "--output", str(tmp_path / "out"), "--model_config", "tiny")
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"wrote {tmp_path / 'out'}" in r.stdout
  params = common.load_params(tmp_path / "out")
  w = sd["vfeat_extractor.patch_embed_3d.proj.weight"]        # torch (O, I, t, h, w)
  assert params["patch_embed_3d"]["proj"]["kernel"].size == w.size
  # host=True: the same values as numpy in host memory (any writer's mesh; re-laid out by the caller)
  on_host = common.load_params(tmp_path / "out", host=True)
  flat_dev, flat_host = common.flatten(params), common.flatten(on_host)
  assert flat_dev.keys() == flat_host.keys()
  for k, v in flat_host.items():
    assert type(v) is np.ndarray, k
    np.testing.assert_array_equal(v, np.asarray(flat_dev[k]))
  # A checkpoint with a missing key: one clear error, nothing written.
  del sd["vfeat_extractor.norm.weight"]
  save_file(sd, str(tmp_path / "bad.safetensors"))
  r = _run("--family", "synchformer", "--input", str(tmp_path / "bad.safetensors"),
           "--output", str(tmp_path / "out2"), "--model_config", "tiny")
  assert r.returncode != 0 and "norm.weight" in r.stderr
  assert not (tmp_path / "out2").exists()
  assert synchformer.PRESETS["tiny"].width == 64


def test_unknown_family(tmp_path):
  r = _run("--family", "nope", "--input", str(tmp_path), "--output", str(tmp_path / "o"))
  assert r.returncode != 0 and "unknown checkpoint family" in r.stderr
