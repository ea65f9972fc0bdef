"""Tiny converted checkpoints (from tests/fixtures goldens, through the real converters) and media for the
data-pipeline tests."""
from __future__ import annotations

import json
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _state_dict(name):
  with np.load(FIXTURES / name) as f:
    return {k[len("param/"):]: f[k] for k in f.files if k.startswith("param/")}


def make_tiny_checkpoints(root: pathlib.Path) -> dict[str, str]:
  """{eva_ckpt, sync_ckpt, codec_ckpt}: orbax dirs written by the project's converters."""
  from safetensors.numpy import save_file

  from dreamfoley_jax.convert import eva_clip, higgs, synchformer

  root.mkdir(parents=True, exist_ok=True)
  out = {}
  for key, npz, mod, kw in (("eva_ckpt", "eva_clip_g14_tiny.npz", eva_clip, {"config": "tiny"}),
                            ("sync_ckpt", "synchformer_tiny.npz", synchformer, {"config": "tiny"})):
    st = root / f"{key}.safetensors"
    save_file(_state_dict(npz), str(st))
    mod.convert_to_orbax(st, root / key, **kw)
    out[key] = str(root / key)
  st = root / "higgs.safetensors"
  save_file(_state_dict("higgs_audio_v2_tokenizer_tiny.npz"), str(st))
  tiny = json.loads((FIXTURES / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  higgs.convert_to_orbax(st, root / "codec", config=tiny)
  out["codec_ckpt"] = str(root / "codec")
  return out


def shared_assets(tmp_path_factory) -> dict[str, str]:
  """Tiny checkpoints + a word-level tokenizer.json at one path per test session, so every test module's
  encode stage has the same config and the process compiles the tiny encoders once."""
  root = tmp_path_factory.getbasetemp() / "dreamfoley_build_assets"
  if not (root / "done").exists():
    from tokenizers import Tokenizer, models, pre_tokenizers

    out = make_tiny_checkpoints(root)
    vocab = {w: i for i, w in enumerate(["[UNK]", "rain", "on", "a", "roof"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(root / "tokenizer.json"))
    out["text_tokenizer"] = str(root / "tokenizer.json")
    (root / "assets.json").write_text(json.dumps(out))
    (root / "done").write_text("")
  return json.loads((root / "assets.json").read_text())


def fake_object_store():
  """Registers a Beam FileSystem for 'fakegs://' backed by $FAKEGS_ROOT: a stand-in for gs:// that, like
  an object store, ArrayRecord cannot open directly (the path is not a local file name)."""
  if _KEEP:
    return _KEEP[0]
  import os

  from apache_beam.io.filesystem import FileMetadata, MatchResult
  from apache_beam.io.localfilesystem import LocalFileSystem

  class FakeObjectStore(LocalFileSystem):
    @classmethod
    def scheme(cls):
      return "fakegs"

    def _p(self, url):
      return os.path.join(os.environ["FAKEGS_ROOT"], url[len("fakegs://"):])

    def _u(self, path):
      return "fakegs://" + os.path.relpath(path, os.environ["FAKEGS_ROOT"])

    def join(self, basepath, *paths):
      return "/".join([basepath.rstrip("/"), *paths])

    def split(self, path):
      head, _, tail = path.rpartition("/")
      return head, tail

    def match(self, patterns, limits=None):
      res = LocalFileSystem(None).match([self._p(p) for p in patterns], limits)
      return [MatchResult(p, [FileMetadata(self._u(m.path), m.size_in_bytes, m.last_updated_in_seconds)
                              for m in r.metadata_list]) for p, r in zip(patterns, res)]

    def create(self, path, *a, **k):
      return super().create(self._p(path), *a, **k)

    def open(self, path, *a, **k):
      return super().open(self._p(path), *a, **k)

    def rename(self, src, dst):
      return super().rename([self._p(s) for s in src], [self._p(d) for d in dst])

    def copy(self, src, dst):
      return super().copy([self._p(s) for s in src], [self._p(d) for d in dst])

    def exists(self, path):
      return super().exists(self._p(path))

    def delete(self, paths):
      return super().delete([self._p(p) for p in paths])

  _KEEP.append(FakeObjectStore)   # Beam finds filesystems among live subclasses
  return FakeObjectStore


_KEEP: list = []
