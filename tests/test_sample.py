"""Sampler: greedy == teacher-forced argmax, KV cache == full recomputation, CFG, modes, filters, delay
bookkeeping, prefixes and windowed continuation."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from dreamfoley_jax import configs
from dreamfoley_jax import sampling as S
from dreamfoley_jax.audio import delay
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import params as foley_params
from sampler_helpers import CFG, init_params, prompt_batch

GREEDY = S.SampleConfig(temperature=0.0, cfg_scale=3.0)
LENGTHS = (7, 4)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG)


@jax.jit
def _forward(params, b, dt, dv):
  return foley.DreamFoley(CFG).apply({"params": params}, b, dt, dv)[0]


def teacher_forced(params, pb, res, drop_text=None, drop_video=None):
  """Full forward (no cache) over the generated delayed sequence: logits (B, La, K, V)."""
  B = res["delayed"].shape[0]
  b = dict(pb, audio_ids=res["delayed"], audio_vacant=res["vacant"])
  b.setdefault("text_mask", np.ones(np.shape(pb["text_ids"]), bool))
  b = jax.tree.map(jnp.asarray, b)
  dt = np.zeros(B, bool) if drop_text is None else np.asarray(drop_text)
  dv = np.zeros(B, bool) if drop_video is None else np.asarray(drop_video)
  return np.asarray(_forward(params, b, jnp.asarray(dt), jnp.asarray(dv)))


def code_cells(res):
  """(B, La, K) True where the sampler drew a token (frame codes not given by a prefix)."""
  _, known, _ = S.delayed_layout(CFG, res["lengths"], res["delayed"].shape[1])
  return ~known


def test_greedy_equals_teacher_forced_argmax_and_cache_equals_full(params):
  pb = prompt_batch()
  res = S.sample(CFG, params, pb, LENGTHS, sample_cfg=GREEDY, return_logits=True)
  ones = np.ones(2, bool)
  cond = teacher_forced(params, pb, res)
  unc = teacher_forced(params, pb, res, ones, ones)
  full = unc + 3.0 * (cond - unc)
  steps = int(res["steps"])
  assert steps == max(LENGTHS) + CFG.num_codebooks
  # KV-cache decoding == full recomputation, at every decoded column.
  np.testing.assert_allclose(res["logits"][:, :steps], full[:, :steps], atol=2e-4, rtol=1e-4)
  # Greedy tokens == argmax over codes of the teacher-forced guided logits of the previous column.
  am = np.argmax(full[..., :CFG.codebook_size], axis=-1)              # (B, La, K) predicts column j+1
  cells = code_cells(res)
  assert cells.sum() == sum(LENGTHS) * CFG.num_codebooks
  tgt = res["delayed"][:, 1:]
  np.testing.assert_array_equal(tgt[cells[:, 1:]], am[:, :-1][cells[:, 1:]])
  # The condition matters: the tokens are not all the same code.
  assert len(np.unique(tgt[cells[:, 1:]])) > 3


def test_output_delay_pattern_reverts_to_requested_lengths(params):
  lengths = (9, 3, 6)
  pb = prompt_batch(B=3, seed=1)
  pb["text_mask"][2] = True
  res = S.sample(CFG, params, pb, lengths, sample_cfg=S.SampleConfig(), seed=5, max_frames=12)
  K = CFG.num_codebooks
  assert res["codes"].shape == (3, K, 12) and res["delayed"].shape == (3, 12 + K + 1, K)
  np.testing.assert_array_equal(res["lengths"], lengths)
  for i, T in enumerate(lengths):
    codes = res["codes"][i, :, :T]
    assert codes.min() >= 0 and codes.max() < CFG.codebook_size
    assert np.all(res["codes"][i, :, T:] == 0)
    # The delayed buffer is exactly the delay pattern of the frame codes (BOS staircase, EOS, EOS tail).
    d = delay.build_delay_pattern(codes, bos=CFG.bos_id, eos=CFG.eos_id)           # (K, T+K+1)
    np.testing.assert_array_equal(res["delayed"][i, :T + K + 1].T, d)
    assert np.all(res["delayed"][i, T + K + 1:] == CFG.eos_id)
    np.testing.assert_array_equal(res["vacant"][i, :T + K + 1].T, delay.vacant_mask(K, T))
    assert np.all(res["vacant"][i, T + K + 1:])
    np.testing.assert_array_equal(delay.codes_from_delayed(d, codebook_size=CFG.codebook_size), codes)


def test_cfg_scale_one_equals_conditional(params):
  pb = prompt_batch()
  sc = S.SampleConfig(temperature=1.0, top_k=5, top_p=0.95)
  r1 = S.sample(CFG, params, pb, LENGTHS, sample_cfg=sc.replace(cfg_scale=1.0), seed=3, return_logits=True)
  rc = S.sample(CFG, params, pb, LENGTHS, sample_cfg=sc.replace(cfg_scale=None), seed=3, return_logits=True)
  n = int(r1["steps"])
  np.testing.assert_allclose(r1["logits"][:, :n], rc["logits"][:, :n], atol=1e-4)
  np.testing.assert_array_equal(r1["codes"], rc["codes"])
  cond = teacher_forced(params, pb, r1)
  np.testing.assert_allclose(r1["logits"][:, :n], cond[:, :n], atol=2e-4, rtol=1e-4)
  r3 = S.sample(CFG, params, pb, LENGTHS, sample_cfg=sc.replace(cfg_scale=3.0), seed=3, return_logits=True)
  assert np.abs(r3["logits"][:, 0] - r1["logits"][:, 0]).max() > 1e-2


def _swap(pb, seed, keys):
  other = prompt_batch(seed=seed)
  return dict(pb, **{k: other[k] for k in keys})


def test_modes_video_text_video_only_text_only(params):
  pb = prompt_batch()
  ones, zeros = np.ones(2, bool), np.zeros(2, bool)
  new_text = _swap(pb, 9, ["text_ids"])
  new_video = _swap(pb, 9, ["sync_feats", "clip_feats"])

  def logits(b, dt=None, dv=None):
    return S.sample(CFG, params, b, LENGTHS, sample_cfg=GREEDY, drop_text=dt, drop_video=dv,
                    return_logits=True)["logits"][:, 0]

  both = logits(pb)
  assert np.abs(logits(new_text) - both).max() > 1e-3 and np.abs(logits(new_video) - both).max() > 1e-3
  # Video only (null text): the caption is ignored, the video is not.
  vo = logits(pb, dt=ones)
  np.testing.assert_allclose(logits(new_text, dt=ones), vo, atol=1e-5)
  assert np.abs(logits(new_video, dt=ones) - vo).max() > 1e-3
  # Text only (null video, text-to-audio): the video is ignored, the caption is not.
  to = logits(pb, dv=ones)
  np.testing.assert_allclose(logits(new_video, dv=ones), to, atol=1e-5)
  assert np.abs(logits(new_text, dv=ones) - to).max() > 1e-3
  # And each mode is exactly uncond + 3 (cond_mode - uncond), checked against the full forward.
  res = S.sample(CFG, params, pb, LENGTHS, sample_cfg=GREEDY, drop_text=ones, return_logits=True)
  c = teacher_forced(params, pb, res, ones, zeros)
  u = teacher_forced(params, pb, res, ones, ones)
  np.testing.assert_allclose(res["logits"][:, :3], (u + 3 * (c - u))[:, :3], atol=2e-4, rtol=1e-4)


def test_negative_prompt_replaces_unconditional_text(params):
  pb = prompt_batch()
  rng = np.random.default_rng(4)
  neg = rng.integers(0, 100, (2, 7)).astype(np.int32)
  neg_mask = np.ones((2, 7), bool)
  neg_mask[0, 5:] = False
  use = np.array([True, False])
  res = S.sample(CFG, params, pb, LENGTHS, sample_cfg=GREEDY, negative_text_ids=neg, negative_text_mask=neg_mask,
                 negative=use, return_logits=True)
  plain = S.sample(CFG, params, pb, LENGTHS, sample_cfg=GREEDY, return_logits=True)
  ones = np.ones(2, bool)
  c = teacher_forced(params, pb, res)
  negb = dict(pb, text_ids=neg, text_mask=neg_mask)
  u_neg = teacher_forced(params, negb, res, ~use, ones)      # item 0: negative text + null video
  want = u_neg + 3 * (c - u_neg)
  np.testing.assert_allclose(res["logits"][:, :3], want[:, :3], atol=2e-4, rtol=1e-4)
  # Item 1 has no negative prompt: identical to the plain null-uncond run; item 0 differs.
  np.testing.assert_allclose(res["logits"][1], plain["logits"][1], atol=1e-5)
  assert np.abs(res["logits"][0, 0] - plain["logits"][0, 0]).max() > 1e-3
  with pytest.raises(ValueError, match="negative prompt needs cfg_scale"):
    S.sample(CFG, params, pb, LENGTHS, sample_cfg=GREEDY.replace(cfg_scale=None), negative_text_ids=neg)


def test_seeds_reproducible_and_batch_independent(params):
  pb = prompt_batch()
  sc = S.SampleConfig(temperature=1.0, top_k=5, top_p=0.95, cfg_scale=3.0)   # shares a compile with the CFG test
  a = S.sample(CFG, params, pb, LENGTHS, sample_cfg=sc, seed=11, return_logits=True)
  b = S.sample(CFG, params, pb, LENGTHS, sample_cfg=sc, seed=11, return_logits=True)
  c = S.sample(CFG, params, pb, LENGTHS, sample_cfg=sc, seed=12, return_logits=True)
  np.testing.assert_array_equal(a["codes"], b["codes"])
  assert not np.array_equal(a["codes"], c["codes"])
  # Item 1 alone, with its item seed, gets the same tokens as inside the batch.
  one = {k: v[1:] for k, v in pb.items()}
  s1 = S.sample(CFG, params, one, LENGTHS[1:], sample_cfg=sc, seed=11, item_seeds=[1], max_frames=max(LENGTHS),
                return_logits=True)
  np.testing.assert_array_equal(s1["codes"][0], a["codes"][1])


def _transformers_mask(warpers, x):
  t = torch.from_numpy(x.copy())
  for w in warpers:
    t = w(None, t)
  return torch.isfinite(t).numpy()


@pytest.mark.parametrize("top_k,top_p", [(25, 0.9), (5, 0.5), (25, 1.0), (0, 0.9), (1, 0.9), (50, 0.3)])
def test_filters_match_transformers_warpers(top_k, top_p):
  rng = np.random.default_rng(top_k)
  x = (rng.normal(size=(64, 1026)) * rng.uniform(0.5, 4, (64, 1))).astype(np.float32)
  x[:8, 1024:] = -np.inf                                      # BOS/EOS masked out before the filters
  if top_k:
    np.testing.assert_array_equal(np.asarray(S.top_k_mask(jnp.asarray(x), top_k)),
                                  _transformers_mask([TopKLogitsWarper(top_k)], x))
  if top_p < 1.0:
    np.testing.assert_array_equal(np.asarray(S.top_p_mask(jnp.asarray(x), top_p)),
                                  _transformers_mask([TopPLogitsWarper(top_p)], x))
  warpers = ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
  got = np.isfinite(np.asarray(S.filter_logits(jnp.asarray(x), top_k, top_p)))
  np.testing.assert_array_equal(got, _transformers_mask(warpers, x))


def test_draw_helpers_equal_jax():
  """argmax_last == jnp.argmax (first index on ties) and categorical == jax.random.categorical draw for draw,
  under jit (where the decode loop runs them)."""
  rng = np.random.default_rng(3)
  x = np.round(rng.normal(size=(6, 8, 130)) * 2).astype(np.float32)   # rounded: many ties
  x[0, 0, :] = -np.inf
  x[1, :, 5] = 40.0
  x[1, :, 9] = 40.0
  xj = jnp.asarray(x)
  np.testing.assert_array_equal(np.asarray(jax.jit(S.argmax_last)(xj)), np.asarray(jnp.argmax(xj, -1)))
  f = jnp.asarray(S.filter_logits(jnp.asarray(rng.normal(size=(6, 8, 130)).astype(np.float32) * 3), 25, 0.9))
  keys = jax.random.split(jax.random.key(7), 6)
  ours = jax.jit(jax.vmap(S.categorical))(keys, f)
  ref = jax.jit(jax.vmap(lambda k, l: jax.random.categorical(k, l, axis=-1)))(keys, f)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
  # Noise drawn up front for a block of columns (the decode loop's path) gives the same tokens.
  lg = jnp.asarray(rng.normal(size=(3, 8, 130)).astype(np.float32) * 3)
  sc = S.SampleConfig(temperature=0.8, top_k=20, top_p=0.9)
  noise = S.gumbel_noise(keys[:3], (8, 130), jnp.arange(5, 9))
  for n, j in enumerate(range(5, 9)):
    kj = jax.vmap(lambda k: jax.random.fold_in(k, j))(keys[:3])
    np.testing.assert_array_equal(np.asarray(S.choose_tokens(lg, kj, sc, 128, noise[n])),
                                  np.asarray(S.choose_tokens(lg, kj, sc, 128)))


@pytest.mark.parametrize("depth", [2, 1])
def test_step_heads_equal_module_heads(params, depth):
  """The decode loop's re-laid-out heads (fused first layer) == DreamFoley.predict."""
  cfg = CFG.replace(head_depth=depth)
  p = params
  if depth == 1:
    b = dict(prompt_batch(), audio_ids=np.zeros((2, 6, 4), np.int32))
    p = nn.unbox(jax.jit(foley.DreamFoley(cfg).init)(jax.random.key(1), jax.tree.map(jnp.asarray, b))["params"])
  h = jnp.asarray(np.random.default_rng(0).normal(size=(5, CFG.decoder.hidden_size)).astype(np.float32))
  ref = foley.DreamFoley(cfg).apply({"params": p}, h[:, None], method=lambda m, x: m.predict(x))[:, 0]
  got = jax.jit(lambda p, h: S.step_heads(cfg, S.step_heads_weights(cfg, p["heads"]), h))(p, h)
  assert got.shape == (5, CFG.num_codebooks, CFG.vocab_per_codebook)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_temperature_applies_after_top_k_and_top_p():
  """A hot temperature must not widen the nucleus: draws stay inside top-p of the untempered logits."""
  V = CFG.vocab_per_codebook
  x = np.full((1, 1, V), -10.0, np.float32)
  x[0, 0, :6] = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
  x[0, 0, 16:] = 50.0                                          # BOS/EOS: never drawn
  keep = np.asarray(S.filter_logits(jnp.asarray(x[..., :16]), 25, 0.9))
  allowed = set(np.nonzero(np.isfinite(keep[0, 0]))[0])
  assert allowed == {0, 1, 2}                                 # untempered nucleus
  sc = S.SampleConfig(temperature=100.0, top_k=25, top_p=0.9)
  keys = jax.random.split(jax.random.key(0), 2000)
  xs = jnp.broadcast_to(jnp.asarray(x), (2000, 1, V))
  choose = jax.jit(S.choose_tokens, static_argnums=(2, 3))
  drawn = np.asarray(choose(xs, keys, sc, CFG.codebook_size))
  assert set(np.unique(drawn)) == allowed                     # hot: all three drawn, nothing else
  counts = np.bincount(drawn.ravel(), minlength=3)[:3] / 2000
  np.testing.assert_allclose(counts, 1 / 3, atol=0.05)        # temperature 100 flattens the kept set
  g = np.asarray(choose(xs[:1], keys[:1], sc.replace(temperature=0.0), CFG.codebook_size))
  assert g[0, 0] == 0


def test_prefix_is_carried_exactly_and_continues_like_teacher_forcing(params):
  pb = prompt_batch()
  rng = np.random.default_rng(2)
  C = 3
  prefix = rng.integers(0, CFG.codebook_size, (2, CFG.num_codebooks, C)).astype(np.int32)
  res = S.sample(CFG, params, pb, LENGTHS, sample_cfg=GREEDY, prefix_codes=prefix, return_logits=True)
  np.testing.assert_array_equal(res["codes"][:, :, :C], prefix)
  assert int(res["steps"]) == max(LENGTHS) + CFG.num_codebooks - C
  ones = np.ones(2, bool)
  c = teacher_forced(params, pb, res)
  u = teacher_forced(params, pb, res, ones, ones)
  full = u + 3 * (c - u)
  np.testing.assert_allclose(res["logits"][:, C:C + res["steps"]], full[:, C:C + res["steps"]], atol=2e-4,
                             rtol=1e-4)
  with pytest.raises(ValueError, match="cover the prefix"):
    S.sample(CFG, params, pb, (7, 2), sample_cfg=GREEDY, prefix_codes=prefix)


def test_window_plan():
  assert S.window_plan(250, 250, 75) == [0]
  assert S.window_plan(251, 250, 75) == [0, 175]
  assert S.window_plan(750, 250, 75) == [0, 175, 350, 525]
  with pytest.raises(ValueError):
    S.window_plan(100, 50, 50)


def test_30s_clip_windowed_continuation(params):
  """30 s (750 frames) from 10 s windows with 3 s of carried-over context: bookkeeping end to end."""
  B, total, W, C = 2, 750, 250, 75
  rng = np.random.default_rng(5)
  Tv = total
  pb = {"text_ids": rng.integers(0, 100, (B, 4)).astype(np.int32),
        "sync_feats": rng.normal(size=(B, Tv, CFG.sync_dim)).astype(np.float32),
        "clip_feats": rng.normal(size=(B, Tv * 4 // 25, CFG.clip_dim)).astype(np.float32)}
  lengths = np.array([total, 400])            # a 30 s clip and a 16 s clip in one batch
  fused, _ = S.fused_video(CFG, pb)
  seen = []
  real = S.sample

  def spy(cfg, p, batch, wl, **kw):
    seen.append((np.asarray(batch["video_feats"]).copy(), np.asarray(batch["video_mask"]).copy(),
                 None if kw.get("prefix_codes") is None else np.asarray(kw["prefix_codes"]).copy(), wl))
    return real(cfg, p, batch, wl, **kw)

  S.sample = spy
  try:
    out = S.sample_long(CFG, params, pb, lengths, window_frames=W, context_frames=C,
                        sample_cfg=S.SampleConfig(cfg_scale=3.0), seed=0)
  finally:
    S.sample = real
  assert out["codes"].shape == (B, CFG.num_codebooks, total)
  np.testing.assert_array_equal(out["lengths"], lengths)
  starts = [w["start"] for w in out["windows"]]
  assert starts == [0, 175, 350, 525]
  for w, (vf, vm, prefix, wl) in zip(out["windows"], seen):
    s = w["start"]
    # The video window advances with the audio: window features are the fused features at [s, s+W).
    n = min(W, total - s)
    np.testing.assert_array_equal(vf[:, :n], fused[:, s:s + n])
    assert np.all(vf[:, n:] == 0)
    for i in range(B):
      if w["active"][i]:
        assert wl[i] == min(lengths[i] - s, W)
        assert vm[i].sum() == wl[i]
    if s == 0:
      assert prefix is None
      continue
    # Context = the last C generated frames, carried over exactly, and reproduced in the window output.
    np.testing.assert_array_equal(prefix[w["active"]], out["codes"][w["active"], :, s:s + C])
    np.testing.assert_array_equal(w["codes"][w["active"], :, :C], prefix[w["active"]])
    for i in np.nonzero(w["active"])[0]:
      np.testing.assert_array_equal(out["codes"][i, :, s + C:s + wl[i]], w["codes"][i, :, C:wl[i]])
  # The 16 s clip is active in windows 0-1 only (frames [0, 250) then [175, 400)); its tail is zero.
  assert [bool(w["active"][1]) for w in out["windows"]] == [True, True, False, False]
  assert np.all(out["codes"][1, :, 400:] == 0)
  # Every frame of the clips is a code, and the windows are not copies of each other.
  assert out["codes"][0].min() >= 0 and out["codes"][0].max() < CFG.codebook_size
  assert not np.array_equal(out["codes"][0, :, 250:500], out["codes"][0, :, :250])


def test_time_aligned_positions_cache_equals_full(params):
  """With time-aligned rotary positions the sampler's KV-cache logits equal the full forward too."""
  cfg = CFG.replace(position_scheme="time_aligned")
  pb = prompt_batch()
  res = S.sample(cfg, params, pb, LENGTHS, sample_cfg=S.SampleConfig(temperature=0.0, cfg_scale=None),
                 return_logits=True)
  b = jax.tree.map(jnp.asarray, dict(pb, audio_ids=res["delayed"], audio_vacant=res["vacant"]))
  full = np.asarray(jax.jit(lambda p, bb: foley.DreamFoley(cfg).apply({"params": p}, bb)[0])(params, b))
  steps = int(res["steps"])
  np.testing.assert_allclose(res["logits"][:, :steps], full[:, :steps], atol=2e-4, rtol=1e-4)
  # ... and differ from the sequential scheme's (the positions really changed).
  seq = S.sample(CFG, params, pb, LENGTHS, sample_cfg=S.SampleConfig(temperature=0.0, cfg_scale=None),
                 return_logits=True)
  assert np.abs(seq["logits"][:, :steps] - res["logits"][:, :steps]).max() > 1e-4


def test_frames_mode_windows_slice_both_frame_rates():
  """Long clips with a frames-mode model: each window reads its own 25 fps and 4 fps frames."""
  cfg = CFG.replace(vision_mode="frames",
                    synchformer=__import__("dreamfoley_jax.models.synchformer", fromlist=["x"]).from_preset(
                        "tiny", image_size=16, patch_size=16, width=12, depth=1, num_heads=2, tubelet=1,
                        num_frames=1, window=1, stride=1),
                    eva=__import__("dreamfoley_jax.models.eva_clip", fromlist=["x"]).from_preset(
                        "tiny", image_size=16, patch_size=16, width=8, depth=1, num_heads=2, mlp_dim=8, embed_dim=8))
  T = 100                                                       # 4 s at 25 fps, 16 frames at 4 fps
  fs = np.zeros((1, T, 2, 2, 3), np.uint8)
  fs[0, :, 0, 0, 0] = np.arange(T)
  fc = np.zeros((1, 16, 2, 2, 3), np.uint8)
  fc[0, :, 0, 0, 0] = np.arange(16)
  win = S.frames_windower(cfg, {"frames_sync": fs, "frames_clip": fc}, total=125, window=50, context=25)
  b = win(25, np.array([50]))
  np.testing.assert_array_equal(b["frames_sync"][0, :, 0, 0, 0], 25 + np.arange(50))
  np.testing.assert_array_equal(b["frames_clip"][0, :, 0, 0, 0], 4 + np.arange(8))
  b = win(75, np.array([25]))                                  # the last window: 1 s of real video left
  assert b["frames_sync_mask"][0].sum() == 25 and b["frames_clip_mask"][0].sum() == 4
  with pytest.raises(ValueError, match="whole seconds"):
    S.frames_windower(cfg, {"frames_sync": fs}, total=125, window=60, context=25)


# --------------------------------------------------------------------------------------------------
# scan_layers models and foley_params.inference_layout
# --------------------------------------------------------------------------------------------------

SCAN_CFG = CFG.replace(decoder=CFG.decoder.replace(scan_layers=True))


@pytest.fixture(scope="module")
def scanned_params():
  return init_params(SCAN_CFG)


def test_scanned_decoder_samples_like_unrolled(scanned_params):
  """A scan_layers checkpoint (the paper config's training layout) samples (its stacked KV cache, the
  compacted CFG prefill concatenated along the row axis) exactly like its unrolled layout."""
  pb = prompt_batch()
  res = S.sample(SCAN_CFG, scanned_params, pb, LENGTHS, sample_cfg=GREEDY, return_logits=True)
  cfg2, p2 = foley_params.inference_layout(SCAN_CFG, scanned_params)
  assert not cfg2.decoder.scan_layers and "layers_1" in p2["decoder"] and "layers" not in p2["decoder"]
  np.testing.assert_array_equal(np.asarray(p2["decoder"]["layers_1"]["mlp"]["up_proj"]["kernel"]),
                                np.asarray(scanned_params["decoder"]["layers"]["layer"]["mlp"]["up_proj"]["kernel"][1]))
  ref = S.sample(cfg2, p2, pb, LENGTHS, sample_cfg=GREEDY, return_logits=True)
  code = code_cells(res)
  np.testing.assert_array_equal(res["delayed"], ref["delayed"])
  np.testing.assert_allclose(res["logits"][:, :-1][code[:, 1:]], ref["logits"][:, :-1][code[:, 1:]], atol=1e-5)
  # and with top-k / top-p sampling, the same seed gives the same tokens
  sc = S.SampleConfig(temperature=1.0, top_k=5, top_p=0.9)
  np.testing.assert_array_equal(S.sample(SCAN_CFG, scanned_params, pb, LENGTHS, sample_cfg=sc, seed=4)["delayed"],
                                S.sample(cfg2, p2, pb, LENGTHS, sample_cfg=sc, seed=4)["delayed"])


def test_inference_layout_follows_the_checkpoint_and_names_bad_params(params, scanned_params):
  # an unrolled checkpoint under a scan_layers config (e.g. an HF conversion with paper_7b): kept as is
  cfg2, p2 = foley_params.inference_layout(SCAN_CFG, params)
  assert not cfg2.decoder.scan_layers and sorted(p2["decoder"]) == sorted(params["decoder"])
  with pytest.raises(ValueError, match="params have no 'decoder'"):
    foley_params.inference_layout(CFG, {"heads": params["heads"]})
  bad = jax.tree.map(lambda x: x, scanned_params["decoder"])
  bad["layers"]["layer"]["mlp"]["up_proj"]["kernel"] = bad["layers"]["layer"]["mlp"]["up_proj"]["kernel"][:1]
  with pytest.raises(ValueError, match=r"params/decoder: layers/layer\['mlp'\]\['up_proj'\]\['kernel'\] has shape"):
    qwen2.unstack_layers(bad, 2, where="params/decoder")
  with pytest.raises(ValueError, match="expected scanned decoder layers"):
    qwen2.unstack_layers(params["decoder"], 2)


_EXACT_CAST_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from dreamfoley_jax import sampling as S
from dreamfoley_jax.models import foley, qwen2
from dreamfoley_jax.models import params as foley_params
cfg = foley.FoleyConfig(decoder=qwen2.PRESETS["tiny"].replace(dtype="bfloat16", scan_layers=True), codebook_size=64,
                        sync_dim=32, clip_dim=16, null_text_len=2, null_video_len=2)
ex = foley_params.dummy_batch(cfg, batch=2, text_len=6, video_frames=25, audio_cols=20)
p = nn.unbox(foley.DreamFoley(cfg).init(jax.random.key(0), ex)["params"])
rng = np.random.default_rng(0)
b = dict(ex, text_ids=jnp.asarray(rng.integers(0, 512, (2, 6)), jnp.int32),
         sync_feats=jnp.asarray(rng.normal(size=(2, 25, 32)), jnp.float32),
         clip_feats=jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32),
         audio_ids=jnp.asarray(rng.integers(0, 64, (2, 20, 8)), jnp.int32))
cfg2, p2 = foley_params.inference_layout(cfg, p)
assert cfg2.decoder.param_dtype == "bfloat16" and not cfg2.decoder.scan_layers
for k in ("decoder", "projector", "null_text", "null_video"):
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p2[k])), k
# the heads' last projection stays fp32 (fp32 logits, heads.logits_fp32); their first layer narrows
assert p2["heads"]["fc1_kernel"].dtype == jnp.bfloat16 and p2["heads"]["fc1_bias"].dtype == jnp.bfloat16
assert p2["heads"]["fc2_kernel"].dtype == jnp.float32 and p2["heads"]["fc2_bias"].dtype == jnp.float32
assert p2["audio_embed"].dtype == jnp.float32 and p2["audio_pad"].dtype == jnp.float32
n1 = sum(x.nbytes for k in ("decoder", "heads") for x in jax.tree.leaves(p[k]))
n2 = sum(x.nbytes for k in ("decoder", "heads") for x in jax.tree.leaves(p2[k]))
fc2 = sum(p["heads"][n].nbytes for n in ("fc2_kernel", "fc2_bias"))
assert n2 * 2 == n1 + fc2, (n1, n2, fc2)
l1 = np.asarray(foley.DreamFoley(cfg).apply({"params": p}, b)[0].astype(jnp.float32))
l2 = np.asarray(foley.DreamFoley(cfg2).apply({"params": p2}, b)[0].astype(jnp.float32))
print("max_abs_diff", float(np.abs(l1 - l2).max()))
sb = {k: b[k] for k in ("text_ids", "text_mask", "sync_feats", "clip_feats", "video_mask")}
t1 = S.sample(cfg, p, sb, [25, 20], seed=3)["delayed"]
t2 = S.sample(cfg2, p2, sb, [25, 20], seed=3)["delayed"]
print("token_agreement", float((t1 == t2).mean()))
"""


@pytest.mark.parametrize("excess_precision", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_inference_layout_bf16_weights_same_math(excess_precision):
  """bf16-compute config with fp32 (scanned) weights: bf16 weights + unrolled layers give bit-identical
  logits and tokens when XLA must honour every rounding; with XLA's default excess precision the fp32-weight
  run skips some roundings, and the logits differ at bf16 rounding level only (3.7e-4 here)."""
  import os
  import pathlib
  import subprocess
  import sys

  flags = "" if excess_precision else "--xla_allow_excess_precision=false"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
             PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  r = subprocess.run([sys.executable, "-c", _EXACT_CAST_SCRIPT], env=env, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  vals = dict(line.split() for line in r.stdout.splitlines() if line.startswith(("max_abs_diff", "token_")))
  diff, agree = float(vals["max_abs_diff"]), float(vals["token_agreement"])
  if excess_precision:
    # (tokens are not compared here: drawn at temperature 1 from this random model's flat distributions,
    # one flipped draw changes every later column)
    assert diff < 0.02, (diff, agree)
  else:
    assert diff == 0.0 and agree == 1.0, (diff, agree)


# --------------------------------------------------------------------------------------------------
# Sampling sharded over a device mesh
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B", [4, 1])
def test_sample_on_mesh_equals_single_device(params, B):
  """On the (data 2, fsdp 2, tensor 2) mesh of 8 simulated devices the sampler gives the single-device
  tokens and logits: B = 4 clips split over (data, fsdp) = 4; B = 1 keeps the batch replicated."""
  from dreamfoley_jax import sharding

  assert jax.device_count() == 8
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert (S.mesh_rules(mesh, B) is sharding.LOGICAL_RULES) == (B == 4)
  pb = jax.tree.map(lambda a: a[:B], prompt_batch(B=4))
  lengths = (7, 4, 6, 5)[:B]
  ref = S.sample(CFG, params, pb, lengths, sample_cfg=GREEDY, return_logits=True)
  res = S.sample(CFG, params, pb, lengths, sample_cfg=GREEDY, return_logits=True, mesh=mesh)
  np.testing.assert_array_equal(res["delayed"], ref["delayed"])
  code = code_cells(res)
  np.testing.assert_allclose(res["logits"][:, :-1][code[:, 1:]], ref["logits"][:, :-1][code[:, 1:]], atol=1e-5)
  sc = S.SampleConfig(temperature=1.0, top_k=5, top_p=0.9)
  np.testing.assert_array_equal(S.sample(CFG, params, pb, lengths, sample_cfg=sc, seed=2, mesh=mesh)["delayed"],
                                S.sample(CFG, params, pb, lengths, sample_cfg=sc, seed=2)["delayed"])
  # the params really were split: the placed MLP kernel lives on 8 devices, half of it per tensor shard
  placed = S.place_params(CFG, params, mesh, S.mesh_rules(mesh, B))
  k = placed["decoder"]["layers_0"]["mlp"]["up_proj"]["kernel"]
  assert len(k.sharding.device_set) == 8 and k.addressable_shards[0].data.shape[1] == k.shape[1] // 2


def test_place_params_names_a_mismatch(params):
  from dreamfoley_jax import sharding

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(ValueError, match="params do not match the model of this config"):
    S.place_params(SCAN_CFG, params, mesh)
  # a dimension the mesh cannot split names the param: vocab 100 over tensor 8
  with pytest.raises(ValueError, match=r"params\['decoder'\]\['embed_tokens'\]\['embedding'\] \(100, 32\) cannot "
                                       r"be laid out as .*tensor.* on mesh \{'data': 1, 'fsdp': 1, 'tensor': 8\}"):
    S.place_params(CFG, params, sharding.make_mesh({"tensor": 8}))
  other = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 4), ("dp", "mp"))
  with pytest.raises(ValueError, match=r"missing \['data', 'fsdp', 'tensor'\]"):
    S.mesh_rules(other, 2)


def test_inference_layout_never_widens(params):
  """bf16 weights under an fp32 compute dtype stay bf16 (casting is only ever narrowing)."""
  bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  cfg = CFG.replace(decoder=CFG.decoder.replace(param_dtype="bfloat16"))
  cfg2, p2 = foley_params.inference_layout(cfg, bf)
  assert cfg2.decoder.param_dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p2))


def test_sample_config_section_rejects_unknown_keys():
  """A `sample` section with a key nothing reads is refused in one line naming the key and the accepted
  ones (a typo like top_K used to be dropped silently); the windowing keys and text_only pass."""
  import ml_collections

  sec = ml_collections.ConfigDict(dict(temperature=0.5, top_k=10, top_p=0.8, cfg_scale=2.0, window_s=3.0,
                                       context_s=1.0, text_only=dict(temperature=1.0, cfg_scale=3.0)))
  assert configs.sample_config(sec) == S.SampleConfig(temperature=0.5, top_k=10, top_p=0.8, cfg_scale=2.0)
  assert configs.sample_config({}) == S.SampleConfig()
  # model directories written before the section was strict hold sample.seed (never read): they still load
  assert configs.sample_config(dict(seed=0, temperature=0.5)) == S.SampleConfig(temperature=0.5)
  with pytest.raises(ValueError, match=r"^config sample: unknown key 'top_K'; accepted: cfg_scale, context_s, "
                                       r"temperature, text_only, top_k, top_p, window_s$"):
    configs.sample_config(dict(temperature=1.0, top_K=5))
  with pytest.raises(ValueError, match=r"^config sample.text_only: unknown key 'window_s'; accepted: cfg_scale, "
                                       r"temperature, top_k, top_p$"):
    configs.sample_config(dict(text_only=dict(window_s=2.0)))
