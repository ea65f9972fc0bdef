"""DreamFoley model: assembly, causality, weighted loss, CFG nulls, configs and parameter counts."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import configs
from dreamfoley_jax.audio import delay
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import loss as foley_loss
from dreamfoley_jax.models import params as foley_params

CFG = foley.FoleyConfig(
    decoder=qwen2.PRESETS["tiny"].replace(vocab_size=100, hidden_size=32, intermediate_size=48,
                                          num_attention_heads=4, num_key_value_heads=2),
    num_codebooks=4, codebook_size=16, loss_weights=(0.4, 0.3, 0.2, 0.1), sync_dim=12, clip_dim=8,
    null_text_len=2, null_video_len=3)


def make_batch(cfg=CFG, B=2, Lt=5, Tv=25, T=(6, 4), seed=0):
  rng = np.random.default_rng(seed)
  K = cfg.num_codebooks
  codes = [rng.integers(0, cfg.codebook_size, (K, t)) for t in T]
  ids, amask = delay.batch_delayed(codes, bos=cfg.bos_id, eos=cfg.eos_id)
  La = ids.shape[1]
  vac = np.zeros((B, La, K), bool)
  for i, t in enumerate(T):
    vac[i, :t + 2 + K - 1] = delay.vacant_mask(K, t).T
  text_mask = np.ones((B, Lt), bool)
  text_mask[1, 3:] = False
  video_mask = np.ones((B, Tv), bool)
  video_mask[1, 20:] = False
  return {
      "text_ids": jnp.asarray(rng.integers(0, 100, (B, Lt)), jnp.int32),
      "text_mask": jnp.asarray(text_mask),
      "sync_feats": jnp.asarray(rng.normal(size=(B, Tv, cfg.sync_dim)), jnp.float32),
      "clip_feats": jnp.asarray(rng.normal(size=(B, 4, cfg.clip_dim)), jnp.float32),
      "video_mask": jnp.asarray(video_mask),
      "audio_ids": jnp.asarray(ids, jnp.int32),
      "audio_mask": jnp.asarray(amask),
      "audio_vacant": jnp.asarray(vac),
  }


@pytest.fixture(scope="module")
def model_and_params():
  model = foley.DreamFoley(CFG)
  params = model.init(jax.random.key(0), make_batch())["params"]
  return model, jax.tree.map(lambda x: x, __import__("flax").linen.unbox(params))


def test_forward_shapes_and_composition(model_and_params):
  model, params = model_and_params
  b = make_batch()
  logits, aux = model.apply({"params": params}, b)
  assert logits.shape == (2, b["audio_ids"].shape[1], CFG.num_codebooks, CFG.vocab_per_codebook)
  # __call__ == the pieces the sampler uses, composed by hand.
  def manual(m):
    x, pm = m.embed_prompt(b)
    xa = m.embed_audio(b["audio_ids"], b["audio_vacant"])
    mask = jnp.concatenate([pm, b["audio_mask"]], 1)
    pos = foley.sequence_positions(m.config, pm, b["text_ids"].shape[1], xa.shape[1])
    h, _ = m.decode(jnp.concatenate([x, xa], 1), mask, pos)
    return m.predict(h[:, x.shape[1]:])
  np.testing.assert_allclose(model.apply({"params": params}, method=manual), logits, atol=1e-6)


def test_gradient_causality_over_all_modalities(model_and_params):
  """d logits[position p] / d input embedding[q] is zero for q > p and for padded q; nonzero otherwise."""
  model, params = model_and_params
  b = make_batch()

  def embeds(m):
    x, pm = m.embed_prompt(b)
    xa = m.embed_audio(b["audio_ids"], b["audio_vacant"])
    return jnp.concatenate([x, xa], 1), jnp.concatenate([pm, b["audio_mask"]], 1), x.shape[1]

  x, mask, P = model.apply({"params": params}, method=embeds)
  pos = foley.sequence_positions(CFG, mask[:, :P], b["text_ids"].shape[1], x.shape[1] - P)

  def out_at(xx, p):
    h, _ = model.apply({"params": params}, xx, mask, pos, method=lambda m, *a: m.decode(*a))
    return model.apply({"params": params}, h[:, p:p + 1], method=lambda m, hh: m.predict(hh)).sum()

  for p in (P, P + 3, P + 7):   # first audio position, and later ones
    g = np.abs(np.asarray(jax.grad(out_at)(x, p))).sum(-1)   # (B, S)
    for i in range(2):
      m = np.asarray(mask[i])
      assert np.all(g[i, p + 1:] == 0), "future positions must not influence the logits"
      assert np.all(g[i, :p + 1][~m[:p + 1]] == 0), "padded positions must not influence the logits"
      assert np.all(g[i, :p + 1][m[:p + 1]] > 0), "every earlier real token (text, video, audio) matters"


def test_delay_pattern_causality_with_ids(model_and_params):
  """Changing delayed column c changes the predictions at positions >= c only."""
  model, params = model_and_params
  b = make_batch()
  base, _ = model.apply({"params": params}, b)
  c = 5
  ids = np.asarray(b["audio_ids"]).copy()
  ids[:, c, :] = (ids[:, c, :] + 1) % CFG.codebook_size
  b2 = dict(b, audio_ids=jnp.asarray(ids), audio_vacant=jnp.zeros_like(b["audio_vacant"]))
  b1 = dict(b, audio_vacant=jnp.zeros_like(b["audio_vacant"]))
  l1, _ = model.apply({"params": params}, b1)
  l2, _ = model.apply({"params": params}, b2)
  np.testing.assert_array_equal(np.asarray(l1[:, :c]), np.asarray(l2[:, :c]))
  assert np.abs(np.asarray(l1[:, c:]) - np.asarray(l2[:, c:])).max() > 1e-4


def test_weighted_loss_matches_hand_computation():
  rng = np.random.default_rng(1)
  K, V = CFG.num_codebooks, CFG.vocab_per_codebook
  b = make_batch()
  La = b["audio_ids"].shape[1]
  logits = jnp.asarray(rng.normal(size=(2, La, K, V)), jnp.float32)
  loss, aux = foley_loss.weighted_loss(CFG, logits, b)
  ids = np.asarray(b["audio_ids"])
  lg = np.asarray(logits, np.float64)
  total = 0.0
  for k in range(K):
    nll, n = 0.0, 0
    for i in range(2):
      for j in range(La - 1):
        t = ids[i, j + 1, k]
        if not b["audio_mask"][i, j + 1] or b["audio_vacant"][i, j + 1, k] or t == CFG.bos_id:
          continue
        z = lg[i, j, k]
        nll += np.log(np.exp(z - z.max()).sum()) + z.max() - z[t]
        n += 1
    # Trained cells of codebook k: T_i codes + 1 EOS per item.
    assert n == (6 + 1) + (4 + 1)
    np.testing.assert_allclose(aux["ce_per_codebook"][k], nll / n, rtol=1e-5)
    total += CFG.loss_weights[k] * nll / n
  np.testing.assert_allclose(loss, total, rtol=1e-5)


def test_loss_weights_are_the_papers():
  c = configs.load_config("experiments/paper_7b.py")
  assert tuple(c.model.loss_weights) == (0.240, 0.192, 0.154, 0.123, 0.099, 0.079, 0.063, 0.050)
  assert configs.model_config(c.model).loss_weights == foley.PAPER_LOSS_WEIGHTS


def test_cfg_drop_all_removes_condition(model_and_params):
  model, params = model_and_params
  b = make_batch()
  B = 2
  ones = jnp.ones((B,), bool)
  other = make_batch(seed=7)
  b2 = dict(b, text_ids=other["text_ids"], sync_feats=other["sync_feats"], clip_feats=other["clip_feats"])
  l1, _ = model.apply({"params": params}, b, ones, ones)
  l2, _ = model.apply({"params": params}, b2, ones, ones)
  np.testing.assert_array_equal(np.asarray(l1), np.asarray(l2))
  l3, _ = model.apply({"params": params}, b2)
  assert np.abs(np.asarray(l1) - np.asarray(l3)).max() > 1e-4
  # With drop 1.0 the sampled drop masks are all True; with 0.0 all False; and they are deterministic.
  dt, dv = foley_loss.cfg_drop(jax.random.key(3), 1000, 1.0, 0.0)
  assert bool(dt.all()) and not bool(dv.any())
  dt1, dv1 = foley_loss.cfg_drop(jax.random.key(3), 1000, 0.1, 0.1)
  dt2, dv2 = foley_loss.cfg_drop(jax.random.key(3), 1000, 0.1, 0.1)
  np.testing.assert_array_equal(dt1, dt2)
  assert 50 < int(dt1.sum()) < 150 and 50 < int(dv1.sum()) < 150
  assert not np.array_equal(np.asarray(dt1), np.asarray(dv1)), "text and video drops are independent"


def test_null_embeddings_are_trained_params(model_and_params):
  model, params = model_and_params
  b = make_batch()
  ones = jnp.ones((2,), bool)

  def loss(p):
    logits, _ = model.apply({"params": p}, b, ones, ones)
    return foley_loss.weighted_loss(CFG, logits, b)[0]

  g = jax.grad(loss)(params)
  assert float(jnp.abs(g["null_text"]).sum()) > 0 and float(jnp.abs(g["null_video"]).sum()) > 0
  assert float(jnp.abs(g["audio_pad"]).sum()) > 0


def test_learnable_pad_replaces_vacant_cells(model_and_params):
  model, params = model_and_params
  b = make_batch()
  e_pad = model.apply({"params": params}, b["audio_ids"], b["audio_vacant"], method=lambda m, i, v: m.embed_audio(i, v))
  e_raw = model.apply({"params": params}, b["audio_ids"], None, method=lambda m, i, v: m.embed_audio(i, v))
  vac_any = np.asarray(b["audio_vacant"]).any(-1)
  assert np.abs(np.asarray(e_pad - e_raw))[~vac_any].max() == 0
  assert np.abs(np.asarray(e_pad - e_raw))[vac_any].min() > 0


@pytest.mark.parametrize("scheme", ["sequential", "time_aligned"])
def test_positions(scheme):
  cfg = CFG.replace(position_scheme=scheme)
  b = make_batch()
  pm = jnp.concatenate([b["text_mask"], b["video_mask"]], 1)
  pos = np.asarray(foley.sequence_positions(cfg, pm, 5, 4))
  n_t = np.asarray(b["text_mask"]).sum(1)
  n_v = np.asarray(b["video_mask"]).sum(1)
  for i in range(2):
    np.testing.assert_array_equal(pos[i, :n_t[i]], np.arange(n_t[i]))
    np.testing.assert_array_equal(pos[i, 5:5 + n_v[i]], n_t[i] + np.arange(n_v[i]))
    a0 = n_t[i] + (n_v[i] if scheme == "sequential" else 0)
    np.testing.assert_array_equal(pos[i, -4:], a0 + np.arange(4))
    assert int(foley.audio_position_offset(cfg, pm, 5)[i]) == a0
  if scheme == "sequential":   # == plain cumsum over real tokens
    full = jnp.concatenate([pm, jnp.ones((2, 4), bool)], 1)
    valid = np.asarray(full)
    np.testing.assert_array_equal(pos[valid], np.asarray(foley.positions_from_mask(full))[valid])


def test_time_aligned_model_is_causal_and_differs():
  cfg = CFG.replace(position_scheme="time_aligned")
  model = foley.DreamFoley(cfg)
  b = make_batch()
  params = model.init(jax.random.key(0), b)["params"]
  l1, _ = model.apply({"params": params}, b)
  l0, _ = foley.DreamFoley(CFG).apply({"params": params}, b)
  assert np.abs(np.asarray(l1 - l0)).max() > 1e-6   # positions differ -> outputs differ
  ids = np.asarray(b["audio_ids"]).copy()
  ids[:, 6] = (ids[:, 6] + 1) % 16
  l2, _ = model.apply({"params": params}, dict(b, audio_ids=jnp.asarray(ids)))
  np.testing.assert_array_equal(np.asarray(l1[:, :6]), np.asarray(l2[:, :6]))


def test_fusion_nearest_upsampling_timing():
  # clip frame i covers [i/4, (i+1)/4) s; at 25 Hz frame f (t = f/25) must pick floor(t*4).
  idx = foley.upsample_index(50, 25.0, 4.0, 8)
  assert idx[0] == 0 and idx[6] == 0 and idx[7] == 1 and idx[12] == 1 and idx[13] == 2 and idx[49] == 7
  np.testing.assert_array_equal(idx, np.clip(np.floor(np.arange(50) * 4 / 25 + 1e-6), 0, 7))


def test_7b_parameter_count():
  """Every component of the 7B preset, counted with jax.eval_shape, against the closed form."""
  c = configs.model_config(configs.load_config("experiments/paper_7b.py").model)
  rows = dict(foley_params.param_table(foley_params.abstract_params(c)))
  D, F, L, V, H, KV, E = 3584, 18944, 28, 152064, 28, 4, 128
  layer = 2 * D + (D * H * E + H * E) + 2 * (D * KV * E + KV * E) + H * E * D + 3 * D * F
  assert rows["decoder/layers"] == L * layer == 6_525_618_176
  assert rows["decoder/embed_tokens"] == V * D
  K, Vc = 8, 1026
  assert rows["heads"] == K * (D * D + D + D * Vc + Vc)
  assert rows["audio_embed"] == K * Vc * D
  assert rows["projector"] == 1792 * D + D + D * D + D
  total = sum(rows.values())
  # Qwen2.5-7B without its LM head (7,615,616,512 - 152064*3584) + DreamFoley's own parts.
  assert total == 7_615_616_512 - V * D + K * (D * D + D + D * Vc + Vc) + K * Vc * D + K * D \
      + (1792 * D + D + D * D + D) + 2 * 8 * D
  assert total == 7_251_612_176


@pytest.mark.parametrize("path", ["experiments/paper_7b.py", "experiments/qwen05.py", "experiments/tiny.py",
                                  "experiments/ablation_vision.py:sync", "experiments/ablation_vision.py:clip",
                                  "experiments/ablation_rvq.py:1", "experiments/ablation_rvq.py:4",
                                  "experiments/ablation_cfg.py:1", "experiments/ablation_cfg.py:4"])
def test_experiment_configs_build(path):
  c = configs.load_config(path)
  fc = configs.model_config(c.model)
  assert fc.num_codebooks == len(fc.loss_weights[:fc.num_codebooks])
  if "paper_7b" in path:
    assert (c.optim.lr, c.train.global_batch, c.train.steps) == (1e-4, 1024, 40_000)
    assert (c.sample.temperature, c.sample.top_p, c.sample.top_k, c.sample.cfg_scale) == (1.0, 0.9, 25, 3.0)
    assert (c.data.crop_min_s, c.data.crop_max_s) == (2.0, 10.0)
    assert (fc.cfg_drop_text, fc.cfg_drop_video, fc.sync_rate, fc.clip_rate) == (0.1, 0.1, 25.0, 4.0)
    assert (fc.synchformer.window, fc.synchformer.stride) == (16, 8)


def test_summary_cli():
  r = subprocess.run([sys.executable, "tools/model_summary.py", "--config", "experiments/paper_7b.py"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "7,251,612,176" in r.stdout and "decoder/layers" in r.stdout


def test_config_errors():
  with pytest.raises(ValueError, match="unknown fields"):
    configs.model_config({"decoder": {"preset": "tiny"}, "num_codebook": 8})
  with pytest.raises(ValueError, match="loss_weights"):
    foley.FoleyConfig(num_codebooks=8, loss_weights=(1.0,))
  with pytest.raises(ValueError, match="ablation_rvq"):
    configs.load_config("experiments/ablation_rvq.py:3")


def test_frames_mode_runs_encoders_and_masks_partial_windows():
  from dreamfoley_jax.models import eva_clip, synchformer
  sc = synchformer.from_preset("tiny", image_size=32, patch_size=8, width=16, num_heads=2, depth=1)
  ec = eva_clip.from_preset("tiny", image_size=32, patch_size=8, width=16, num_heads=2, depth=1, mlp_dim=32,
                            embed_dim=8)
  cfg = CFG.replace(vision_mode="frames", synchformer=sc, eva=ec, sync_dim=16, clip_dim=8)
  rng = np.random.default_rng(0)
  B, Tf, Tc = 2, 40, 7
  fmask = np.ones((B, Tf), bool)
  fmask[1, 30:] = False
  b = make_batch()
  for k in ("sync_feats", "clip_feats", "video_mask"):
    del b[k]
  b.update(frames_sync=jnp.asarray(rng.integers(0, 256, (B, Tf, 32, 32, 3)), jnp.uint8),
           frames_sync_mask=jnp.asarray(fmask),
           frames_clip=jnp.asarray(rng.integers(0, 256, (B, Tc, 32, 32, 3)), jnp.uint8))
  model = foley.DreamFoley(cfg)
  params = model.init(jax.random.key(0), b)["params"]
  assert "synchformer" in params and "eva_clip" in params
  logits, aux = model.apply({"params": params}, b)
  # The length rule: 40 frames -> ceil(40 / 8) = 5 windows, one token per frame (40); item 1 has 30 real
  # frames -> its first 30 tokens are real, its windows repeat frame 29 past the end.
  assert aux["prompt_len"] == b["text_ids"].shape[1] + 40
  _, pm = model.apply({"params": params}, b, method=lambda m, bb: m.embed_prompt(bb))
  np.testing.assert_array_equal(np.asarray(pm[1, 5:]), np.r_[np.ones(30, bool), np.zeros(10, bool)])
  # The video changes the output; frames beyond the mask of item 1 do not.
  fr = np.asarray(b["frames_sync"]).copy()
  fr[1, 30:] = 0
  l2, _ = model.apply({"params": params}, dict(b, frames_sync=jnp.asarray(fr)))
  np.testing.assert_allclose(np.asarray(l2[1]), np.asarray(logits[1]), atol=1e-6)
  fr[0, :8] = 255 - fr[0, :8]
  l3, _ = model.apply({"params": params}, dict(b, frames_sync=jnp.asarray(fr)))
  assert np.abs(np.asarray(l3[0] - logits[0])).max() > 1e-6
