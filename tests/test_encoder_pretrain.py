"""The self-supervised audio-visual pretext for the video towers (main job stage 4)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamfoley_jax import configs
from dreamfoley_jax.models import foley
from dreamfoley_jax.models import params as foley_params
from dreamfoley_jax.synthetic import pretext as ep
from dreamfoley_jax.synthetic import world as synthetic


@pytest.fixture(scope="module")
def world():
  cfg = synthetic.SynthConfig(max_duration=3.0, max_events=8, min_gap=0.2)
  return synthetic.make_dataset(10, seed=5, cfg=cfg)


@pytest.fixture(scope="module")
def fcfg():
  return configs.model_config(configs.load_config("experiments/synthetic.py").model)


def test_frame_targets_mark_the_impacts(world):
  """Onset strength (from the audio alone) peaks on the frames where the video shows a contact."""
  at, off = [], []
  for c in world:
    t = ep.audio_frame_targets(c["audio"], c["frames_sync"].shape[0])
    assert t.shape == (c["frames_sync"].shape[0], 1 + 8) and np.isfinite(t).all()
    on = t[:, 0]
    ev = np.zeros(len(on), bool)
    ev[np.asarray(c["event_frames"])] = True
    at += list(on[ev])
    off += list(on[~ev])
    for e in c["event_frames"]:                     # every impact frame is a local onset maximum
      assert on[e] >= on[max(e - 2, 0):e + 3].max() - 1e-6
  assert np.min(at) > 10 * np.mean(off)


def test_timbre_target_separates_materials(world):
  """A metal ball's sound has more high-band energy than a rubber ball's (the pretext's EVA target)."""
  by = {}
  for c in synthetic.make_dataset(24, seed=9, cfg=synthetic.SynthConfig(max_duration=3.0)):
    t = ep.timbre_target(ep.audio_frame_targets(c["audio"], c["frames_sync"].shape[0]))
    by.setdefault(c["material"], []).append(t)
  hi = {m: np.mean([x[-3:].mean() - x[:3].mean() for x in v]) for m, v in by.items()}
  assert hi["metal"] > hi["rubber"] + 1.0 and hi["glass"] > hi["rubber"] + 1.0


def test_pretrained_towers_drop_into_dreamfoley(world, fcfg):
  """The towers' params have DreamFoley's layout, and the pretext sees exactly what DreamFoley's
  encode_frames computes (same windowing and normalisation) once they are in the model."""
  towers, rep = ep.pretrain(fcfg.synchformer, fcfg.eva, world,
                            ep.PretextConfig(steps=3, batch=4, frames=24, towers="synchformer,eva_clip"),
                            held=world[:2], log=lambda m: None)
  assert rep["steps"] == 3 and np.isfinite(rep["frame_loss"]) and 0.0 <= rep["impact_peak_rate"] <= 1.0
  abstract = nn.unbox(foley_params.abstract_params(fcfg))
  for name in ("synchformer", "eva_clip"):
    want = jax.tree_util.tree_map(lambda x: tuple(x.shape), abstract[name])
    got = jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), towers[name])
    assert want == got, name

  clip = world[0]
  T = 24
  fs = clip["frames_sync"][None, :T]
  Tc = int(np.ceil(T * 4 / 25))
  fc = clip["frames_clip"][None, :Tc]
  pm = ep.PretextModel(fcfg.synchformer, fcfg.eva, 8)
  pvars = {"params": dict(towers, sync_head={"kernel": jnp.zeros((32, 9)), "bias": jnp.zeros(9)},
                          clip_head={"kernel": jnp.zeros((16, 8)), "bias": jnp.zeros(8)})}
  s_pre = pm.apply(pvars, fs, method=ep.PretextModel.sync_features)
  c_pre = pm.apply(pvars, fc, method=ep.PretextModel.clip_features)
  model = foley.DreamFoley(fcfg)
  batch = {"frames_sync": fs, "frames_sync_mask": np.ones((1, T), bool), "frames_clip": fc,
           "frames_clip_mask": np.ones((1, Tc), bool)}
  full = dict(jax.tree_util.tree_map(np.zeros_like, jax.tree_util.tree_map(
      lambda x: np.zeros(x.shape, x.dtype), abstract)), **towers)
  s_df, c_df, _ = model.apply({"params": full}, batch, method=foley.DreamFoley.encode_frames)
  np.testing.assert_allclose(np.asarray(s_df), np.asarray(s_pre), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(c_df), np.asarray(c_pre), rtol=1e-5, atol=1e-6)


def test_synchformer_only_pretext(world, fcfg):
  """The main job's setting: only the Synchformer tower is pretrained (EVA trains end to end)."""
  towers, rep = ep.pretrain(fcfg.synchformer, fcfg.eva, world, ep.PretextConfig(steps=2, batch=4, frames=24),
                            log=lambda m: None)
  assert set(towers) == {"synchformer"} and rep["timbre_loss"] == 0.0
  with pytest.raises(ValueError, match="PretextConfig.towers='eva_clip'"):
    ep.pretrain(fcfg.synchformer, fcfg.eva, world, ep.PretextConfig(steps=1, frames=24, towers="eva_clip"),
                log=lambda m: None)


def test_bad_crop_length_is_a_clear_error(world, fcfg):
  with pytest.raises(ValueError, match="PretextConfig.frames=20 must be a multiple"):
    ep.pretrain(fcfg.synchformer, fcfg.eva, world, ep.PretextConfig(steps=1, frames=20), log=lambda m: None)
