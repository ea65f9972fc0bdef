"""Feature extraction end to end with tiny random Flax encoders: records, batching, resume, failures,
manifest + tokenizer, ArrayRecord shards, and the CLI body."""
import csv
import pathlib
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import sharding
from dreamfoley_jax.data import extract, records
from dreamfoley_jax.video import preprocess as vpre
from video_synth import write_video

import importlib.util
import sys

_spec = importlib.util.spec_from_file_location(
    "extract_features_tool", pathlib.Path(__file__).parents[1] / "tools" / "extract_features.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


class TinyClip(nn.Module):
  """(B, 224, 224, 3) -> (normalised (B, 16), aux): 32-px average pooling + a linear layer."""

  @nn.compact
  def __call__(self, x_BxHxWx3):
    b = x_BxHxWx3.shape[0]
    x = x_BxHxWx3.reshape(b, 7, 32, 7, 32, 3).mean((2, 4)).reshape(b, -1)
    w = self.param("proj", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("embed", "mlp")),
                   (x.shape[-1], 16))
    e = x @ w
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True), {}


class TinySync(nn.Module):
  """(B, S, 16, 224, 224, 3) -> ((B, S, 8, 12), aux): frame pairs pooled, then a linear layer."""

  @nn.compact
  def __call__(self, x):
    b, s = x.shape[:2]
    x = x.reshape(b, s, 8, 2, 7, 32, 7, 32, 3).mean((3, 5, 7)).reshape(b, s, 8, -1)
    w = self.param("proj", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("embed", "mlp")),
                   (x.shape[-1], 12))
    return jnp.einsum("bstc,cd->bstd", x, w), {}


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh({"data": -1})


@pytest.fixture(scope="module")
def tiny(mesh):
  clip_m, sync_m = TinyClip(), TinySync()
  rng = jax.random.key(0)
  clip_p, _ = sharding.init_sharded(clip_m, mesh, rng, jnp.zeros((1, 224, 224, 3)))
  raw = nn.unbox(sync_m.init(jax.random.key(1), jnp.zeros((1, 1, 16, 224, 224, 3))))
  sync_p = extract.place_params(sync_m, raw, mesh, jnp.zeros((1, 1, 16, 224, 224, 3)))
  assert sync_p["params"]["proj"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")

  def build(clip_batch=8, sync_batch=8):
    return extract.Encoders(
        clip=extract.make_jax_encoder(lambda p, x: clip_m.apply(p, x)[0], clip_p, mesh,
                                      batch=clip_batch, kind="clip"),
        sync=extract.make_jax_encoder(lambda p, x: sync_m.apply(p, x[:, None])[0][:, 0], sync_p, mesh,
                                      batch=sync_batch, kind="sync"))

  def reference(path, max_duration=None):
    fr = vpre.load_video_frames(path, max_duration_sec=max_duration)
    c = np.asarray(clip_m.apply(jax.device_get(clip_p), jnp.asarray(fr.clip_pixels()))[0])
    s = np.asarray(sync_m.apply(jax.device_get(sync_p), jnp.asarray(fr.sync_pixels())[None])[0][0])
    return c, s.reshape(-1, s.shape[-1])[:fr.sync_u8.shape[0]]     # one token per frame (the length rule)

  return types.SimpleNamespace(build=build, reference=reference)


def _videos(folder, durations):
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for n, d in enumerate(durations):
    k = int(round(d * 25))
    p = write_video(folder / f"clip{n}.mp4", [i / 25 for i in range(k)], size=(40, 56))
    (folder / f"clip{n}.txt").write_text(f"caption {n}")
    paths.append(p)
  return paths


def test_folder_extraction_matches_direct_apply_and_resumes(tmp_path, tiny):
  vids = _videos(tmp_path / "in", [1.0, 1.32, 0.8])
  (tmp_path / "in" / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3 not really a video" * 50)
  items = extract.collect_items(tmp_path / "in")
  assert [it.clip_id for it in items] == ["broken", "clip0", "clip1", "clip2"]
  out = tmp_path / "out"
  stats = extract.extract_features(items, out, tiny.build(8, 8), progress=False)
  assert stats["written"] == 3 and stats["skipped"] == 0
  assert len(stats["failed"]) == 1 and "broken.mkv" in stats["failed"][0][1]
  assert "broken.mkv" in (out / "_failed.tsv").read_text()
  for n, (v, d) in enumerate(zip(vids, [1.0, 1.32, 0.8])):
    ex = records.decode_example((out / f"clip{n}.msgpack").read_bytes())
    c_ref, s_ref = tiny.reference(v)
    tf = int(round(d * 25))
    assert ex["sync_feats"].dtype == np.float16 and ex["clip_feats"].dtype == np.float16
    assert ex["sync_feats"].shape == (tf, 12)       # one token per 25 fps frame, none dropped (length rule)
    assert ex["clip_feats"].shape == (int(d * 4 + 1e-9), 16)
    np.testing.assert_allclose(ex["clip_feats"].astype(np.float32), c_ref, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(ex["sync_feats"].astype(np.float32), s_ref, rtol=2e-3, atol=2e-3)
    assert ex["caption"] == f"caption {n}" and ex["clip_id"] == f"clip{n}"
    assert float(ex["duration"]) == pytest.approx(d)
  # rerun: everything done is skipped; a deleted record is redone; a stale temp file is ignored
  (out / "clip1.msgpack").unlink()
  (out / ".tmp-999-clip1.msgpack").write_bytes(b"partial")
  stats2 = extract.extract_features(items, out, tiny.build(8, 8), progress=False)
  assert stats2["written"] == 1 and stats2["skipped"] == 2 and len(stats2["failed"]) == 1
  assert [r["clip_id"] for r in extract.iter_records(out)] == ["clip0", "clip1", "clip2"]
  # ArrayRecord shards read back whole
  from array_record.python.array_record_module import ArrayRecordReader
  shards = extract.write_array_record_shards(out, tmp_path / "shards" / "train", num_shards=2)
  got = []
  for s in shards:
    r = ArrayRecordReader(str(s))
    got += [records.decode_example(b)["clip_id"] for b in r.read_all()]
    r.close()
  assert sorted(got) == ["clip0", "clip1", "clip2"]
  assert not list((tmp_path / "shards").glob(".tmp-*"))


def test_batch_size_does_not_change_features(tmp_path, tiny):
  _videos(tmp_path / "in", [1.0, 0.72])
  items = extract.collect_items(tmp_path / "in")
  a = extract.extract_features(items, tmp_path / "a", tiny.build(8, 8), progress=False)
  b = extract.extract_features(items, tmp_path / "b", tiny.build(24, 16), progress=False)
  assert a["written"] == b["written"] == 2
  for ra, rb in zip(extract.iter_records(tmp_path / "a"), extract.iter_records(tmp_path / "b")):
    np.testing.assert_allclose(ra["sync_feats"].astype(np.float32), rb["sync_feats"].astype(np.float32),
                               atol=1e-3)
    np.testing.assert_allclose(ra["clip_feats"].astype(np.float32), rb["clip_feats"].astype(np.float32),
                               atol=1e-3)


def test_manifest_tokenizer_audio_codes_and_cli(tmp_path, tiny):
  vids = _videos(tmp_path / "media", [0.96, 1.2])
  man = tmp_path / "list.csv"
  with open(man, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["video", "caption", "clip_id"])
    w.writerow(["media/clip0.mp4", "dog barks loudly", "a/b:0"])
    w.writerow([str(vids[1]), "rain on a roof", ""])
  items = extract.collect_items(man)
  assert [it.clip_id for it in items] == ["a_b_0", "media_clip1"]
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(["[UNK]", "dog", "barks", "loudly", "rain", "on", "a", "roof"])}
  tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  tk.save(str(tmp_path / "tokenizer.json"))
  codes = lambda path, dur: np.full((8, int(dur * 25)), 7)  # noqa: E731
  stats = extract.extract_features(items, tmp_path / "o", tiny.build(), tokenizer=tmp_path / "tokenizer.json",
                                   audio_tokenizer=codes, cfg=extract.ExtractConfig(max_duration_sec=0.8),
                                   progress=False)
  assert stats["written"] == 2
  r0, r1 = extract.iter_records(tmp_path / "o")
  np.testing.assert_array_equal(r0["text_ids"], [1, 2, 3])
  np.testing.assert_array_equal(r1["text_ids"], [4, 5, 6, 7])
  assert r0["audio_codes"].dtype == np.int16 and r0["audio_codes"].shape == (8, 20)
  assert r0["sync_feats"].shape == (20, 12)     # 0.8 s cap: 20 frames -> 20 tokens (3 windows, last padded)
  # the CLI body, end to end, with the tiny encoders injected
  flags = types.SimpleNamespace(input=str(man), output_dir=str(tmp_path / "cli"), eva_ckpt=None,
                                sync_ckpt=None, tokenizer=str(tmp_path / "tokenizer.json"),
                                clip_batch=8, sync_batch=8, max_duration=None, rule="nearest",
                                num_workers=2, store_frames=True, mesh="data=-1", num_shards=1,
                                shard_prefix=None)
  st = tool.run(flags, encoders=tiny.build())
  assert st["written"] == 2
  assert len(list((tmp_path / "cli" / "shards").glob("data-00000-of-00001.array_record"))) == 1
  rec = next(iter(extract.iter_records(tmp_path / "cli")))
  assert rec["frames_sync"].shape == (24, 224, 224, 3) and rec["frames_sync"].dtype == np.uint8
  assert tool.run(flags, encoders=tiny.build())["written"] == 0  # resumed: nothing left


def test_real_encoder_path_errors(tmp_path, mesh):
  try:
    import dreamfoley_jax.models.eva_clip  # noqa: F401
    import dreamfoley_jax.models.synchformer  # noqa: F401
    have = True
  except ImportError:
    have = False
  if not have:
    with pytest.raises(ImportError, match="eva_clip"):
      extract.build_real_encoders(str(tmp_path), str(tmp_path), mesh, extract.ExtractConfig())
  else:
    with pytest.raises(FileNotFoundError, match="nope"):
      extract.build_real_encoders(str(tmp_path / "nope"), str(tmp_path), mesh, extract.ExtractConfig())
  (tmp_path / "f" / "sub").mkdir(parents=True)
  for name in ("a.mp4", "a.mkv", "sub/b c.webm", "notes.txt"):
    (tmp_path / "f" / name).write_bytes(b"")
  assert [it.clip_id for it in extract.scan_folder(tmp_path / "f")] == ["a.mkv", "a.mp4", "sub_b_c"]
  with pytest.raises(ValueError, match="caption"):
    bad = tmp_path / "bad.csv"
    bad.write_text("video,text\nx.mp4,hi\n")
    extract.read_manifest(bad)


import dataclasses  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _FakeCfg:
  width: int = 16


class _FakeEva(nn.Module):
  """Stands in for eva_clip.EvaVisionTower(cfg): (B, 224, 224, 3) -> (normalised (B, E), aux)."""
  config: _FakeCfg

  @nn.compact
  def __call__(self, x):
    b = x.shape[0]
    x = x.reshape(b, 7, 32, 7, 32, 3).mean((2, 4)).reshape(b, -1)
    w = self.param("head", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("embed", "mlp")),
                   (x.shape[-1], self.config.width))
    e = x @ w
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True), {}


class _FakeSync(nn.Module):
  """Stands in for synchformer.Synchformer(cfg): (B, S, 16, 224, 224, 3) -> ((B, S, 8, D), aux)."""
  config: _FakeCfg

  @nn.compact
  def __call__(self, x):
    b, s = x.shape[:2]
    x = x.reshape(b, s, 8, 2, 7, 32, 7, 32, 3).mean((3, 5, 7)).reshape(b, s, 8, -1)
    w = self.param("proj", nn.with_logical_partitioning(nn.initializers.normal(0.1), ("embed", "mlp")),
                   (x.shape[-1], self.config.width))
    return jnp.einsum("bstc,cd->bstd", x, w), {}


def test_build_real_encoders_from_orbax_checkpoints(tmp_path, mesh, monkeypatch):
  """The --eva_ckpt/--sync_ckpt path: config from checkpoint metadata, params restored into shardings."""
  from dreamfoley_jax.convert import common
  eva_mod, syn_mod = types.ModuleType("eva_clip"), types.ModuleType("synchformer")
  eva_mod.EvaVisionTower, syn_mod.Synchformer = _FakeEva, _FakeSync
  import dreamfoley_jax.models as models_pkg
  monkeypatch.setitem(sys.modules, "dreamfoley_jax.models.eva_clip", eva_mod)
  monkeypatch.setitem(sys.modules, "dreamfoley_jax.models.synchformer", syn_mod)
  monkeypatch.setattr(models_pkg, "eva_clip", eva_mod, raising=False)
  monkeypatch.setattr(models_pkg, "synchformer", syn_mod, raising=False)
  eva, syn = _FakeEva(_FakeCfg(24)), _FakeSync(_FakeCfg(20))
  eva_p = nn.unbox(eva.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  syn_p = nn.unbox(syn.init(jax.random.key(1), jnp.zeros((1, 1, 16, 224, 224, 3))))
  common.save_params(eva_p, tmp_path / "eva", metadata={"config": {"width": 24}})
  common.save_params(syn_p["params"], tmp_path / "syn", metadata={"config": {"width": 20}})  # bare params
  enc = extract.build_real_encoders(str(tmp_path / "eva"), str(tmp_path / "syn"), mesh,
                                    extract.ExtractConfig(clip_batch=8, sync_batch=8))
  placed = enc.clip.params["params"]["head"]
  assert placed.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert isinstance(placed.sharding, jax.sharding.NamedSharding) and placed.sharding.mesh == mesh
  rng = np.random.default_rng(0)
  u8 = (rng.random((3, 224, 224, 3)) * 255).astype(np.uint8)
  got = enc.clip(u8)
  ref = np.asarray(eva.apply(eva_p, jnp.asarray(vpre.clip_normalize(u8)))[0])
  assert got.shape == (3, 24)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  win = (rng.random((2, 16, 224, 224, 3)) * 255).astype(np.uint8)
  got_s = enc.sync(win)
  ref_s = np.asarray(syn.apply(syn_p, jnp.asarray(vpre.sync_normalize(win))[:, None])[0][:, 0])
  assert got_s.shape == (2, 8, 20)
  np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unknown config fields"):
    common.save_params(eva_p, tmp_path / "eva_bad", metadata={"config": {"depth": 3}})
    extract.build_real_encoders(str(tmp_path / "eva_bad"), str(tmp_path / "syn"), mesh,
                                extract.ExtractConfig())
