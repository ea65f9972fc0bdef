"""Music-speech separation stage (paper 4.1): demucs' HTDemucs as the reference, loaded by path."""
import dataclasses
import json
import pickle
from fractions import Fraction

import numpy as np
import pytest

import media_synth as ms
from dreamfoley_jax.data.build import separation as sep
from dreamfoley_jax.data.build.clip import Clip, Rejection

pytest.importorskip("demucs", reason=f"demucs not installed ({sep.INSTALL})")
torch = pytest.importorskip("torch")

RATE = 44100
STEMS = ["drums", "bass", "other", "vocals"]
# the real geometry (nfft 4096, depth 4, 7.8 s segments, cross-transformer) at tiny width: ~2 s per 2 s clip
TINY = dict(sources=STEMS, audio_channels=2, channels=4, depth=4, nfft=4096, t_layers=2, t_heads=2,
            bottom_channels=16, dconv_mode=3, dconv_comp=2, segment=Fraction(39, 5), samplerate=RATE,
            t_hidden_scale=1.0)


def _clip(audio, rate=RATE):
  audio = np.asarray(audio, np.float32)
  audio = audio[None] if audio.ndim == 1 else audio
  return Clip("c-000", "k", "src.mp4", 0, 0.0, audio.shape[1] / rate, "", b"", audio, rate, 25)


@pytest.fixture(scope="module")
def tiny_htdemucs(tmp_path_factory):
  HTDemucs, _ = sep.import_demucs()
  torch.manual_seed(0)
  model = HTDemucs(**TINY).eval()
  with torch.no_grad():   # every tensor random (LayerScale/GroupNorm inits would hide mapping bugs)
    for p in model.parameters():
      p.copy_(0.3 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("htdemucs") / "tiny.th"
  # the layout demucs.states.serialize_model writes (state in float16 as published)
  torch.save({"klass": HTDemucs, "args": (), "kwargs": TINY, "training_args": {"seed": 42},
              "state": {k: v.half() for k, v in model.state_dict().items()}}, path)
  with torch.no_grad():   # the reference runs the same float16-rounded weights
    for p in model.state_dict().values():
      p.copy_(p.half().float())
  return model, str(path)


def test_tiny_htdemucs_stage_matches_demucs_reference(tiny_htdemucs):
  torch.set_num_threads(1)
  model, path = tiny_htdemucs
  _, apply_model = sep.import_demucs()
  x = ms.tone(2.0, freq=220, amp=0.3) + ms.noise(2.0, amp=0.05, seed=3)     # (1, N) mono
  stage = sep.SeparationStage(sep.SeparationConfig(model=path))
  out = stage(_clip(x))
  # the reference, as demucs.separate does it: stereo from mono, mix-normalised, apply_model, de-normalised
  wav = torch.from_numpy(np.repeat(x, 2, 0))
  ref = wav.mean(0)
  with torch.no_grad():
    stems = apply_model(model, ((wav - ref.mean()) / ref.std())[None], shifts=0, split=True, overlap=0.25)[0]
  voc = (stems[STEMS.index("vocals")] * ref.std() + ref.mean()).numpy().mean(0, keepdims=True)
  assert isinstance(out, Clip) and out.audio.shape == x.shape
  np.testing.assert_allclose(out.audio, x - voc, atol=2e-5)
  assert out.scores["vocals_ratio"] == pytest.approx(np.sum(voc.astype(np.float64) ** 2) / np.sum(x.astype(np.float64) ** 2), rel=1e-4)
  assert out.scores["vocals_ratio"] > 1e-3   # the random model does move energy into the stem
  assert out.scores["vocals_dbfs"] == pytest.approx(10 * np.log10(np.mean(voc.astype(np.float64) ** 2)), abs=1e-3)
  assert stage.identity()["model"]
  # stereo clips keep their two channels
  st2 = stage(_clip(np.concatenate([x, 0.5 * x])))
  assert st2.audio.shape == (2, x.shape[1])


class HighPassSeparator(torch.nn.Module):
  """A stand-in separator with HTDemucs' interface whose 'vocals' are the mix above 1 kHz (FFT mask): the
  synthetic mix's noise burst lands there, its 220 Hz tone does not, so the plumbing can be checked."""
  sources, samplerate, audio_channels, segment = STEMS, RATE, 2, Fraction(39, 5)

  def forward(self, mix_BxCxT):
    f = torch.fft.rfftfreq(mix_BxCxT.shape[-1], 1 / RATE)
    spec = torch.fft.rfft(mix_BxCxT)
    hi = torch.fft.irfft(spec * (f > 1000), n=mix_BxCxT.shape[-1])
    z = torch.zeros_like(mix_BxCxT)
    return torch.stack([mix_BxCxT - hi, z, z, hi], dim=1)


def test_synthetic_mix_burst_removed_where_it_is():
  stage = sep.SeparationStage(sep.SeparationConfig(model="<stand-in>"))
  stage.separator, stage._loaded = HighPassSeparator(), True
  n = 10 * RATE
  tone = ms.tone(10.0, freq=220, amp=0.3)[0]
  burst = np.zeros(n, np.float32)
  a, b = int(4.0 * RATE), int(4.5 * RATE)
  burst[a:b] = np.random.default_rng(0).normal(0, 0.2, b - a)
  out = stage(_clip(tone + burst))
  removed = (tone + burst) - out.audio[0]
  e = removed.astype(np.float64) ** 2
  assert e[a - RATE // 50:b + RATE // 50].sum() / e.sum() > 0.99     # the burst's place, to 20 ms
  # what stays is the tone (and the burst's share below 1 kHz: ~1000/22050 of white noise)
  hi_burst = np.fft.irfft(np.fft.rfft(burst) * (np.fft.rfftfreq(n, 1 / RATE) > 1000), n)
  ratio = np.sum(hi_burst ** 2) / np.sum((tone + burst).astype(np.float64) ** 2)
  assert out.scores["vocals_ratio"] == pytest.approx(ratio, rel=0.02)
  before = slice(0, a - RATE // 10)   # away from the burst only the stand-in's chunk-edge leakage goes
  assert np.sum((out.audio[0, before] - tone[before]) ** 2) / np.sum(tone[before] ** 2) < 1e-4
  # a threshold turns it into a rejection carrying the value
  strict = sep.SeparationStage(sep.SeparationConfig(model="<stand-in>", max_vocals_ratio=ratio / 2))
  strict.separator, strict._loaded = HighPassSeparator(), True
  rej = strict(_clip(tone + burst))
  assert isinstance(rej, Rejection) and rej.reason == "vocals_ratio" and rej.value == pytest.approx(ratio, rel=0.02)
  silent = stage(_clip(np.zeros(RATE, np.float32)))                 # digital silence: nothing to remove
  assert silent.scores["vocals_ratio"] == 0.0 and not silent.audio.any()


def test_loader_refuses_what_it_cannot_trust(tmp_path, tiny_htdemucs):
  class Evil:
    def __reduce__(self):
      return (print, ("code ran",))

  p = tmp_path / "evil.th"
  with open(p, "wb") as f:
    pickle.dump({"klass": Evil(), "kwargs": {}, "state": {}}, f)
  with pytest.raises(ValueError, match="weights_only"):
    sep.load_htdemucs(str(p))
  _, good = tiny_htdemucs
  pkg = torch.load(good, weights_only=False)
  pkg["state"].pop("encoder.0.conv.weight")
  torch.save(pkg, tmp_path / "missing.th")
  with pytest.raises(ValueError, match=r"1 missing \(e.g. encoder.0.conv.weight\)"):
    sep.load_htdemucs(str(tmp_path / "missing.th"))
  with pytest.raises(ValueError, match="needs --separation_model"):
    sep.SeparationStage(sep.SeparationConfig())(_clip(np.zeros(100)))


def test_real_htdemucs_layout(fixtures_dir):
  """The loader's expectation (HTDemucs built from the file's kwargs) against the published layout."""
  man = json.loads((fixtures_dir / "htdemucs_shapes.json").read_text())
  HTDemucs, _ = sep.import_demucs()
  kw = dict(man["kwargs"], segment=Fraction(*man["kwargs"]["segment"]))
  with torch.device("meta"):
    model = HTDemucs(**kw)
  sep.check_state(model.state_dict(), {k: torch.empty(v, device="meta") for k, v in man["shapes"].items()},
                  "htdemucs_shapes.json")
  assert sum(p.numel() for p in model.parameters()) == man["num_params"] == 41_984_456
  # facts independent ports of 955717e8-8726e21a.th list: 384 -> 512 around the cross-transformer,
  # 5 layers per branch alternating self / cross attention, 8 heads of 64
  s = man["shapes"]
  assert s["channel_upsampler.weight"] == [512, 384, 1] and s["channel_downsampler_t.weight"] == [384, 512, 1]
  assert s["crosstransformer.layers.4.self_attn.in_proj_weight"] == [1536, 512]
  assert s["crosstransformer.layers_t.3.cross_attn.in_proj_weight"] == [1536, 512]
  assert s["crosstransformer.layers.0.linear1.weight"] == [2048, 512] and len(s) == 533
  bad = dict(man["shapes"], **{"channel_upsampler.weight": [256, 384, 1]})
  with pytest.raises(ValueError, match="mis-shaped"):
    sep.check_state(model.state_dict(), {k: torch.empty(v, device="meta") for k, v in bad.items()}, "x")
