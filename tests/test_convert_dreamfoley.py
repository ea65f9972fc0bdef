"""The whole DreamFoley model to and from PyTorch (convert/dreamfoley + hf_template/modeling_dreamfoley.py):
parity of logits / loss / greedy and same-noise sampling with the JAX model (fp32, CPU), JAX -> HF -> JAX
bitwise in both layer layouts, the decoder as a plain Qwen2, bad directories, the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import sampling as S
from dreamfoley_jax.audio import delay
from dreamfoley_jax.convert import common
from dreamfoley_jax.convert import dreamfoley as cd
from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import loss as foley_loss
from dreamfoley_jax.models import params as foley_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY = foley.FoleyConfig(
    decoder=qwen2.PRESETS["tiny"].replace(vocab_size=100, hidden_size=32, intermediate_size=48,
                                          num_attention_heads=4, num_key_value_heads=2),
    num_codebooks=4, codebook_size=16, loss_weights=(0.4, 0.3, 0.2, 0.1), sync_dim=12, clip_dim=8,
    null_text_len=2, null_video_len=3)
# 8 codebooks, 4 layers, 4:1 GQA, a head width other than D, time-aligned positions, linear CLIP upsampling.
SMALL = foley.FoleyConfig(
    decoder=qwen2.Qwen2Config(vocab_size=200, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                              num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                              max_position_embeddings=4096, rope_theta=10000.0),
    num_codebooks=8, codebook_size=64, sync_dim=24, clip_dim=16, head_hidden=96, null_text_len=3,
    null_video_len=4, position_scheme="time_aligned", upsample="linear")
CONFIGS = {"tiny": TINY, "small": SMALL}


sys.path.insert(0, str(REPO / "benchmarks"))
import bench_common  # noqa: E402  (random_params: one definition for the tests and benchmarks/torch_parity.py)

random_params = bench_common.random_params


def make_batch(cfg, lengths=(6, 4, 5), Lt=6, Tv=25, seed=0):
  """Items: full caption; caption padded mid-region + video padded; empty caption. Delayed audio of `lengths`."""
  rng = np.random.default_rng(seed)
  B, K = len(lengths), cfg.num_codebooks
  codes = [rng.integers(0, cfg.codebook_size, (K, t)) for t in lengths]
  ids, amask = delay.batch_delayed(codes, bos=cfg.bos_id, eos=cfg.eos_id)
  vac = np.zeros(ids.shape, bool)
  for i, t in enumerate(lengths):
    vac[i, :t + K + 1] = delay.vacant_mask(K, t).T
  text_mask = np.ones((B, Lt), bool)
  text_mask[1, 3:] = False
  text_mask[2] = False
  video_mask = np.ones((B, Tv), bool)
  video_mask[1, 18:] = False
  return {"text_ids": rng.integers(0, cfg.decoder.vocab_size, (B, Lt)).astype(np.int32), "text_mask": text_mask,
          "sync_feats": rng.normal(size=(B, Tv, cfg.sync_dim)).astype(np.float32),
          "clip_feats": rng.normal(size=(B, 5, cfg.clip_dim)).astype(np.float32), "video_mask": video_mask,
          "audio_ids": ids.astype(np.int32), "audio_mask": amask, "audio_vacant": vac}


PROMPT = ("text_ids", "text_mask", "sync_feats", "clip_feats", "video_mask")


def to_torch(b: dict) -> dict:
  out = {}
  for k, v in b.items():
    v = np.asarray(v)
    out[k] = torch.from_numpy(v.astype(np.int64) if v.dtype.kind in "iu" else v)
  return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """{name: (cfg, params, torch model)} with the torch model loaded from the exported directory."""
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for name, cfg in CONFIGS.items():
    params = random_params(cfg)
    cd.save_hf(params, cfg, root / name)
    model = transformers.AutoModel.from_pretrained(root / name, trust_remote_code=True, use_safetensors=True)
    out[name] = (cfg, params, model.eval(), root / name)
  return out


# --------------------------------------------------------------------------------------------------
# Parity (fp32, CPU)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "small"])
def test_logits_and_loss_equal(exported, name):
  cfg, params, model, _ = exported[name]
  b = make_batch(cfg)
  drop_t, drop_v = np.array([False, True, False]), np.array([True, False, False])   # nulls on two items
  lj, _ = foley.DreamFoley(cfg).apply({"params": params}, jax.tree.map(jnp.asarray, b), jnp.asarray(drop_t),
                                      jnp.asarray(drop_v))
  loss_j, aux = foley_loss.weighted_loss(cfg, lj, b)
  with torch.no_grad():
    out = model(**to_torch(b), drop_text=torch.from_numpy(drop_t), drop_video=torch.from_numpy(drop_v))
  lj, lt = np.asarray(lj), out.logits.numpy()
  valid = b["audio_mask"]
  diff = np.abs(lt - lj)[valid].max()
  print(f"{name}: max |logit diff| {diff:.2e} (max |logit| {np.abs(lj[valid]).max():.2f}); loss jax "
        f"{float(loss_j):.7f} torch {float(out.loss):.7f}")
  assert np.abs(lj[valid]).max() > 5.0          # logits up to ~7: 1e-5 is ~1e-6 of them, a real bound
  assert diff <= 1e-5
  assert abs(float(out.loss) - float(loss_j)) <= 1e-6 * float(loss_j)
  np.testing.assert_allclose(out.ce_per_codebook.numpy(), np.asarray(aux["ce_per_codebook"]), rtol=1e-6)
  np.testing.assert_array_equal(out.acc_per_codebook.numpy(), np.asarray(aux["acc_per_codebook"]))
  # the nulls change the dropped items and nothing else
  with torch.no_grad():
    plain = model(**to_torch(b)).logits.numpy()
  assert np.abs(plain[:2] - lt[:2]).max() > 1e-2 and np.array_equal(plain[2], lt[2])


def _greedy_pair(cfg, params, model, b, lengths, sc, impl="static", **kw):
  rj = S.sample(cfg, params, {k: b[k] for k in PROMPT}, lengths, sample_cfg=sc, return_logits=True, **kw)
  tkw = {k: torch.from_numpy(np.asarray(v)) for k, v in kw.items()}
  rt = model.generate(**{k: v for k, v in to_torch(b).items() if k in PROMPT}, lengths=lengths,
                      sampling={"temperature": sc.temperature, "top_k": sc.top_k, "top_p": sc.top_p,
                                "cfg_scale": sc.cfg_scale}, cache_implementation=impl, return_logits=True, **tkw)
  return rj, rt


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_greedy_codes_identical(exported, name):
  cfg, params, model, _ = exported[name]
  b = make_batch(cfg, lengths=(9, 5, 7))
  lengths = [9, 5, 7]
  for cfg_scale in (3.0, None):
    sc = S.SampleConfig(temperature=0.0, cfg_scale=cfg_scale)
    for impl in ("static", "dynamic") if cfg_scale else ("static",):
      rj, rt = _greedy_pair(cfg, params, model, b, lengths, sc, impl)
      np.testing.assert_array_equal(rt.delayed.numpy(), rj["delayed"])
      np.testing.assert_array_equal(rt.codes.numpy(), rj["codes"])
      # guided logits u + s (c - u): the 1e-5 of each pass grows to (1 + 2 s) 1e-5
      lj, tol = rj["logits"][:, :-1], 1e-5 * (1 + 2 * (cfg_scale or 0))
      assert np.abs(rt.logits.numpy()[:, :-1] - lj).max() <= tol
      if name == "small":
        break


def test_greedy_prefix_and_negative_prompt_identical(exported):
  cfg, params, model, _ = exported["tiny"]
  b = make_batch(cfg, lengths=(9, 5, 7))
  rng = np.random.default_rng(3)
  sc = S.SampleConfig(temperature=0.0)
  prefix = rng.integers(0, cfg.codebook_size, (3, cfg.num_codebooks, 4)).astype(np.int32)
  rj, rt = _greedy_pair(cfg, params, model, b, [9, 5, 7], sc, prefix_codes=prefix)
  np.testing.assert_array_equal(rt.delayed.numpy(), rj["delayed"])
  assert (rj["codes"][:, :, :4] == prefix).all()
  neg = rng.integers(0, cfg.decoder.vocab_size, (3, 8)).astype(np.int32)
  rj, rt = _greedy_pair(cfg, params, model, b, [9, 5, 7], sc, negative_text_ids=neg,
                        negative=np.array([True, False, True]), drop_text=np.array([False, False, True]))
  np.testing.assert_array_equal(rt.delayed.numpy(), rj["delayed"])
  plain, _ = _greedy_pair(cfg, params, model, b, [9, 5, 7], sc)
  assert not np.array_equal(plain["delayed"], rj["delayed"])     # the negative prompt changed something


def jax_uniforms(seed, B, La, K, V):
  """(La, B, K, V) uniforms behind sampling.sample's Gumbel draws: column j of item i uses
  fold_in(fold_in(key(seed), i), j) (jax.random.gumbel = -log(-log(uniform(minval=tiny))))."""
  base = jax.random.key(seed)
  keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(B, dtype=jnp.uint32))
  tiny = float(jnp.finfo(jnp.float32).tiny)
  u = jax.vmap(lambda j: jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, j), (K, V), jnp.float32,
                                                               tiny, 1.0))(keys))(jnp.arange(La))
  g = S.gumbel_noise(keys, (K, V), jnp.arange(La))
  np.testing.assert_array_equal(np.asarray(-jnp.log(-jnp.log(u))), np.asarray(g))   # the same noise JAX draws
  return torch.from_numpy(np.array(u))


@pytest.mark.parametrize("name,top_k,top_p", [("tiny", 5, 0.8), ("small", 25, 0.9)])
def test_same_noise_sampling_identical(exported, name, top_k, top_p):
  cfg, params, model, _ = exported[name]
  lengths = [12, 9, 10]
  b = make_batch(cfg, lengths=lengths)
  La = S.num_columns(12, cfg.num_codebooks)
  total = mismatched = 0
  for seed in range(2 if name == "tiny" else 1):
    sc = S.SampleConfig(temperature=0.9, top_k=top_k, top_p=top_p, cfg_scale=2.5)
    rj = S.sample(cfg, params, {k: b[k] for k in PROMPT}, lengths, sample_cfg=sc, seed=seed)
    u = jax_uniforms(seed, 3, La, cfg.num_codebooks, cfg.vocab_per_codebook)
    rt = model.generate(**{k: v for k, v in to_torch(b).items() if k in PROMPT}, lengths=lengths,
                        sampling={"temperature": 0.9, "top_k": top_k, "top_p": top_p, "cfg_scale": 2.5},
                        uniform_noise=u)
    total += rj["codes"].size
    mismatched += int((rt.codes.numpy() != rj["codes"]).sum())
  print(f"{name}: {mismatched} of {total} sampled codes differ")
  assert mismatched == 0
  # and a different noise gives different codes (the noise is what decides)
  rt2 = model.generate(**{k: v for k, v in to_torch(b).items() if k in PROMPT}, lengths=lengths,
                       generator=torch.Generator().manual_seed(0))
  assert not np.array_equal(rt2.codes.numpy(), rj["codes"])


def test_filter_logits_matches_jax_and_transformers_warpers(exported):
  from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

  _, _, model, _ = exported["tiny"]
  mod = sys.modules[type(model).__module__]
  x = np.random.default_rng(0).normal(size=(64, 1026)).astype(np.float32) * 3
  for k, p in ((25, 0.9), (0, 0.9), (25, 1.0), (5, 0.5)):
    got = mod.filter_logits(torch.from_numpy(x), k, p).numpy()
    np.testing.assert_array_equal(got, np.asarray(S.filter_logits(jnp.asarray(x), k, p)))
    ref = torch.from_numpy(x)
    for w in ([TopKLogitsWarper(k)] if k else []) + ([TopPLogitsWarper(p)] if p < 1 else []):
      ref = w(None, ref)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref.numpy()))


def test_torch_train_step_and_random_init(exported):
  """The PyTorch model trains (every parameter gets a gradient, bf16 autocast keeps fp32 logits) and builds
  from its config alone (randomly initialised, as a benchmark at 7B size would)."""
  cfg, _, model, _ = exported["tiny"]
  b = to_torch(make_batch(cfg))
  model.train()
  try:
    with torch.autocast("cpu", dtype=torch.bfloat16):
      out = model(**b, drop_text=torch.tensor([False, True, False]), drop_video=torch.tensor([True, False, False]))
    assert out.logits.dtype == torch.float32
    out.loss.backward()
    for n, p in model.named_parameters():
      assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
  finally:
    model.zero_grad(set_to_none=True)
    model.eval()
  fresh = bench_common.torch_dreamfoley(cfg)
  assert sorted(fresh.state_dict()) == sorted(model.state_dict())
  for n, p in fresh.named_parameters():
    assert torch.isfinite(p).all() and (p.std() > 0 or "bias" in n or "norm" in n), n
  assert 0.01 < float(fresh.audio_embed.std()) < 0.03          # initializer_range 0.02


# --------------------------------------------------------------------------------------------------
# The directory: layouts, dtypes, Qwen2 keys, bad input
# --------------------------------------------------------------------------------------------------

def _bitwise(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    x, y = np.asarray(a[k]), np.asarray(b[k])
    assert x.dtype == y.dtype and x.shape == y.shape, k
    assert x.tobytes() == y.tobytes(), k


def _tensors(d):
  src = common.TensorSource(d)
  return {k: src.get(k) for k in src.keys()}


@pytest.mark.parametrize("scan", [False, True])
def test_jax_hf_jax_bitwise(tmp_path, scan):
  cfg = SMALL.replace(decoder=SMALL.decoder.replace(scan_layers=scan))
  params = random_params(cfg, seed=4)
  assert qwen2.is_scanned(params["decoder"]) == scan
  cd.save_hf(params, cfg, tmp_path / "hf", max_shard_size="200KB")
  files = sorted(p.name for p in (tmp_path / "hf").iterdir())
  assert "model.safetensors.index.json" in files and "modeling_dreamfoley.py" in files
  assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["auto_map"]["AutoModel"] == "modeling_dreamfoley.DreamFoleyModel" and hf["model_type"] == "dreamfoley"
  back, cfg2 = cd.load_hf(tmp_path / "hf", scan_layers=scan)
  _bitwise(common.flatten(params), common.flatten(back))
  assert cfg2 == cfg
  # the other layout reads the same tensors; both layouts export the same bytes
  other, _ = cd.load_hf(tmp_path / "hf", scan_layers=not scan)
  assert qwen2.is_scanned(other["decoder"]) == (not scan)
  cd.save_hf(other, cfg, tmp_path / "hf2")
  _bitwise(_tensors(tmp_path / "hf"), _tensors(tmp_path / "hf2"))
  # orbax in the loop (what tools/convert_checkpoint.py writes), then out again from its own metadata
  cd.convert_to_orbax(tmp_path / "hf", tmp_path / "ckpt", scan_layers=scan)
  restored, cfg3 = cd.load_orbax(tmp_path / "ckpt")
  _bitwise(common.flatten(params), common.flatten(restored))
  assert cfg3 == cfg
  cd.export_from_orbax(tmp_path / "ckpt", tmp_path / "hf3")
  _bitwise(_tensors(tmp_path / "hf"), _tensors(tmp_path / "hf3"))


def test_bf16_export_round_trip_and_loads_in_torch(tmp_path):
  cfg = TINY
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), random_params(cfg))
  cd.save_hf(params, cfg, tmp_path / "hf")
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  back, cfg2 = cd.load_hf(tmp_path / "hf")
  _bitwise(common.flatten(jax.tree.map(np.asarray, params)), common.flatten(back))
  assert cfg2.decoder.param_dtype == "bfloat16"
  m = transformers.AutoModel.from_pretrained(tmp_path / "hf", trust_remote_code=True, dtype=torch.bfloat16)
  # as foley_params.inference_layout keeps them: the last head projection and the audio tables in fp32
  assert m.heads.fc1.weight.dtype == m.model.norm.weight.dtype == torch.bfloat16
  assert m.heads.fc2.weight.dtype == m.audio_embed.dtype == m.audio_pad.dtype == torch.float32
  w = m.heads.fc2.weight.detach().numpy()
  np.testing.assert_array_equal(w, np.swapaxes(np.asarray(params["heads"]["fc2_kernel"], np.float32), -1, -2))
  with torch.no_grad():
    out = m(**to_torch(make_batch(cfg)))
  assert out.logits.dtype == torch.float32 and torch.isfinite(out.loss)   # fp32 logits from bf16 weights


def test_torch_save_pretrained_comes_back_bitwise(exported, tmp_path):
  """A model PyTorch users fine-tune and save with save_pretrained (its own config.json: rope_parameters,
  dtype, generation_config.json) converts back to the same JAX params."""
  cfg, params, model, _ = exported["tiny"]
  model.save_pretrained(tmp_path / "resaved")
  assert {"modeling_dreamfoley.py", "configuration_dreamfoley.py"} <= {p.name for p in (tmp_path / "resaved").iterdir()}
  back, cfg2 = cd.load_hf(tmp_path / "resaved")
  _bitwise(common.flatten(params), common.flatten(back))
  assert cfg2 == cfg


def test_decoder_loads_as_plain_qwen2(exported):
  cfg, params, model, d = exported["small"]
  plain = transformers.Qwen2Model.from_pretrained(d).eval()
  ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.decoder.vocab_size, (2, 9)))
  with torch.no_grad():
    a = plain(input_ids=ids).last_hidden_state.numpy()
    b = model.model(input_ids=ids).last_hidden_state.numpy()
  np.testing.assert_array_equal(a, b)
  h, _ = qwen2.Qwen2Model(cfg.decoder).apply({"params": params["decoder"]}, jnp.asarray(ids.numpy()))
  assert np.abs(np.asarray(h) - a).max() <= 1e-5


def test_bad_directory_lists_every_problem(exported, tmp_path):
  from safetensors.numpy import save_file

  cfg, _, _, d = exported["tiny"]
  sd = _tensors(d)
  del sd["null_video"], sd["model.layers.1.mlp.up_proj.weight"]
  sd["heads.fc2.weight"] = sd["heads.fc2.weight"][:, :, :7]
  sd["audio_embed"] = sd["audio_embed"][:3]
  sd["extra.weight"] = np.zeros(2, np.float32)
  bad = tmp_path / "bad"
  bad.mkdir()
  for n in ("config.json",) + cd.CODE_FILES:
    (bad / n).write_text((d / n).read_text())
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(bad / "model.safetensors"))
  with pytest.raises(ConversionError) as e:
    cd.convert_to_orbax(bad, tmp_path / "out")
  msg = str(e.value)
  print(msg)
  K, V, D = cfg.num_codebooks, cfg.vocab_per_codebook, cfg.decoder.hidden_size
  assert "missing keys (2)" in msg and f"null_video  expected shape ({cfg.null_video_len}, {D})" in msg
  assert "model.layers.1.mlp.up_proj.weight" in msg
  assert "unexpected keys (1)" in msg and "extra.weight  shape (2,)" in msg
  assert "mis-shaped keys (2)" in msg and f"audio_embed  expected ({K}, {V}, {D}), found (3, {V}, {D})" in msg
  assert f"heads.fc2.weight  expected ({K}, {V}, {D}), found ({K}, {V}, 7)" in msg
  assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
  # pickles are never read
  pkl = tmp_path / "pkl"
  pkl.mkdir()
  (pkl / "config.json").write_text((d / "config.json").read_text())
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in _tensors(d).items()}, pkl / "pytorch_model.bin")
  with pytest.raises(ConversionError, match=r"only through safetensors, never a pickle"):
    cd.load_hf(pkl)
  # params that do not match the config: one error with every problem, nothing written
  params = random_params(cfg)
  del params["null_text"]
  params["heads"]["fc1_bias"] = params["heads"]["fc1_bias"][:, :5]
  with pytest.raises(ConversionError) as e:
    cd.save_hf(params, cfg, tmp_path / "never")
  assert "null_text" in str(e.value) and "heads/fc1_bias" in str(e.value)
  assert not (tmp_path / "never").exists()


def test_frames_mode_is_refused_clearly():
  from dreamfoley_jax import configs

  cfg = configs.model_config(configs.load_config(str(REPO / "experiments/synthetic.py")).model)
  with pytest.raises(ConversionError, match="vision_mode='frames'.*takes encoder features"):
    cd.save_hf({"decoder": {}}, cfg, "/nonexistent/never")


def test_variants_logits_equal(tmp_path):
  """One stream only, nearest_exact, no learnable pad, depth-1 heads and projector: the same logits."""
  for i, kw in enumerate([dict(use_clip=False, learnable_pad=False, head_depth=1),
                          dict(use_sync=False, upsample="nearest_exact", projector_depth=1)]):
    cfg = TINY.replace(**kw)
    params = random_params(cfg, seed=i)
    cd.save_hf(params, cfg, tmp_path / str(i))
    model = transformers.AutoModel.from_pretrained(tmp_path / str(i), trust_remote_code=True).eval()
    b = make_batch(cfg)
    lj, _ = foley.DreamFoley(cfg).apply({"params": params}, jax.tree.map(jnp.asarray, b))
    with torch.no_grad():
      lt = model(**to_torch(b)).logits.numpy()
    assert np.abs(lt - np.asarray(lj))[b["audio_mask"]].max() <= 1e-5, kw


# --------------------------------------------------------------------------------------------------
# The CLI, from a training run's checkpoint
# --------------------------------------------------------------------------------------------------

def test_cli_trained_checkpoint_to_hf_and_back(tmp_path):
  from dreamfoley_jax import checkpoint as ckptlib
  from dreamfoley_jax import configs, train

  cfg = configs.model_config(configs.load_config(str(REPO / "experiments/tiny.py")).model)
  params = random_params(cfg)
  state = train.TrainState(step=jnp.asarray(7, jnp.int32), params=params,
                           opt_state={"mu": jax.tree.map(jnp.zeros_like, params)}, rng=jnp.zeros((2,), jnp.uint32))
  ck = ckptlib.Checkpointer(str(tmp_path / "run"), async_save=False)
  ck.save(7, state, force=True)
  ck.close()
  tool = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "--family", "dreamfoley"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(tool + ["--direction", "to_hf", "--input", str(tmp_path / "run"), "--output",
                             str(tmp_path / "hf"), "--model_config", "experiments/tiny.py"],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "dreamfoley jax->hf" in r.stderr
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf["sampling"] == {"temperature": 1.0, "top_k": 25, "top_p": 0.9, "cfg_scale": 3.0}   # paper_7b's
  r = subprocess.run(tool + ["--input", str(tmp_path / "hf"), "--output", str(tmp_path / "jax"), "--scan_layers"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  back, cfg2 = cd.load_orbax(tmp_path / "jax")
  # the same model (features mode: the config's unused encoder presets are not carried over)
  assert cfg2.decoder.scan_layers and cfg2.replace(decoder=cfg.decoder) == cfg.replace(synchformer=None, eva=None)
  _, unscanned = foley_params.inference_layout(cfg2, back, cast=False)
  _bitwise(common.flatten(params), common.flatten(unscanned))
  # a params checkpoint with no config anywhere: one line naming the flag
  common.save_params(params, tmp_path / "bare")
  with pytest.raises(ConversionError, match=r"bare: no model config .*pass --model_config experiments/<name>.py"):
    cd.export_from_orbax(tmp_path / "bare", tmp_path / "x")
  assert not (tmp_path / "x").exists()
  # ...and with the experiment named: the same tensors as from the training run
  cd.export_from_orbax(tmp_path / "bare", tmp_path / "x", config=str(REPO / "experiments/tiny.py"))
  _bitwise(_tensors(tmp_path / "hf"), _tensors(tmp_path / "x"))


# --------------------------------------------------------------------------------------------------
# docs/convert.md's PyTorch example, as written
# --------------------------------------------------------------------------------------------------

def test_docs_generate_example(tmp_path, monkeypatch, fixtures_dir):
  import re

  from transformers import PreTrainedTokenizerFast

  from dreamfoley_jax.synthetic import bpe

  section = (REPO / "docs/convert.md").read_text().split("## Generating a clip in PyTorch", 1)[1].split("\n## ")[0]
  generate_block, decode_block = re.findall(r"```python\n(.*?)```", section, re.S)
  cfg = TINY.replace(num_codebooks=8, loss_weights=foley.PAPER_LOSS_WEIGHTS,
                     decoder=TINY.decoder.replace(vocab_size=320))
  cd.save_hf(random_params(cfg), cfg, tmp_path / "model")
  tok = bpe.train_bpe(["a dog barks twice, then a car passes by", "a metal ball bounces", "rain on a roof"], 300)
  PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path / "tokenizer")
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "clip.npz", sync_feats=rng.normal(size=(50, cfg.sync_dim)).astype(np.float32),
           clip_feats=rng.normal(size=(8, cfg.clip_dim)).astype(np.float32))
  code = generate_block
  for literal, path in (('"/ckpt/dreamfoley_hf"', "model"), ('"/ckpt/Qwen2.5-7B"', "tokenizer"),
                        ('"clip.npz"', "clip.npz")):
    assert literal in code
    code = code.replace(literal, repr(str(tmp_path / path)))
  monkeypatch.chdir(tmp_path)
  ns: dict = {}
  exec(compile(code, "docs/convert.md", "exec"), ns)
  codes = ns["codes"].numpy()
  assert codes.shape == (1, 8, 50) and codes.min() >= 0 and codes.max() < cfg.codebook_size
  np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), codes)
  assert len(set(codes.ravel().tolist())) > 8                  # sampled, not a constant
  try:
    import torchaudio  # noqa: F401  (transformers' higgs tokenizer needs it; no build exists for torch 2.13)
  except Exception:
    print("decode block not run: torchaudio does not import here")
    return
  from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

  kw = json.loads((fixtures_dir / "higgs_audio_v2_tokenizer_config.json").read_text())["tiny_config"]
  HiggsAudioV2TokenizerModel(HiggsAudioV2TokenizerConfig(**kw["constructor_kwargs"])).save_pretrained(
      tmp_path / "codec")
  code = decode_block.replace('"/ckpt/higgs-audio-v2-tokenizer"', repr(str(tmp_path / "codec")))
  exec(compile(code, "docs/convert.md", "exec"), ns)
  import soundfile as sf

  assert sf.info(str(tmp_path / "clip.wav")).frames == 50 * 960
