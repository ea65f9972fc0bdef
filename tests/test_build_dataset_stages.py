"""The data pipeline's stages one by one (no Beam): standardisation on generated media of every awkward
kind, the quality filters at their boundaries, Silero VAD against its reference, the Whisper hook, and
the encode stage against the project's encoders applied directly."""
import dataclasses
import pathlib

import numpy as np
import pytest

import media_synth as ms
from dreamfoley_jax.data.build import encode, quality, speech, stages, standardise as st
from dreamfoley_jax.data.build.clip import Clip, Rejection
from dreamfoley_jax.video import io as vio

def index_frame(k, h, w):
  """A flat grey frame whose level encodes k (5 grey levels apart: survives two lossy encodes)."""
  return np.full((h, w, 3), 10 + 5 * k, np.uint8)


def decode_index(img):
  return int(round((img[img.shape[0] // 4:-img.shape[0] // 4].astype(np.float64).mean() - 10) / 5))


SMALL = st.StandardiseConfig(clip_seconds=1.0, min_clip_seconds=0.64, short_side=64)


def _std(path, cfg=SMALL, caption=""):
  return st.standardise(st.InputItem(str(path), caption, pathlib.Path(path).stem), "key0", cfg)


def _clip(audio, rate=44100, mp4=b"", duration=None):
  audio = np.asarray(audio, np.float32)
  audio = audio[None] if audio.ndim == 1 else audio
  return Clip("c-000", "k", "src.mp4", 0, 0.0, duration or audio.shape[1] / rate, "", mp4, audio, rate, 25)


# ------------------------------------------------------------------------------------- standardisation

def test_sample_frames_sink_sees_exactly_the_collected_frames(tmp_path):
  times = np.cumsum(np.r_[0, np.random.default_rng(3).uniform(0.015, 0.09, 30)])
  p = ms.write_media(tmp_path / "vfr.mp4", times=list(times), frames=lambda k: index_frame(k, 48, 64))
  (ref4, ref25), _ = vio.sample_frames(p, [4, 25])
  got = []
  (n4, n25), _ = vio.sample_frames(p, [4, 25], sinks=[None, got.append])
  assert n25 == len(got) == ref25.shape[0] > 0
  np.testing.assert_array_equal(np.stack(got), ref25)
  np.testing.assert_array_equal(n4, ref4)


def test_standardise_is_bit_identical_run_to_run(tmp_path):
  # 84 px wide: a width where x264's default lookahead gave a different stream on 3 of 8 runs
  p = ms.write_media(tmp_path / "a.mp4", seconds=1.0, audio=ms.noise(1.0), shift_px=0.4)
  outs = {(c.video_mp4, c.audio.tobytes()) for _ in range(6) for c in _std(p)[0]}
  assert len(outs) == 1


def test_downmix_matrix():
  g = 1 / np.sqrt(2)
  m = st.downmix_matrix(["FL", "FR", "FC", "LFE", "BL", "BR"], 1)
  np.testing.assert_allclose(m, [[0.5 / (1 + 2 * g), 0.5 / (1 + 2 * g), g / (1 + 2 * g), 0,
                                  0.5 * g / (1 + 2 * g), 0.5 * g / (1 + 2 * g)]])
  s = st.downmix_matrix(["FL", "FR", "FC", "LFE", "SL", "SR"], 2)
  assert s.shape == (2, 6) and np.allclose(s.sum(1), 1) and s[0, 1] == 0 and s[1, 0] == 0 and s[0, 3] == 0
  np.testing.assert_array_equal(st.downmix_matrix(["FL", "FR"], 2), np.eye(2))
  np.testing.assert_array_equal(st.downmix_matrix(["FC"], 2), [[1], [1]])
  np.testing.assert_allclose(st.downmix_matrix(["c0", "c1", "c2"], 1), [[1 / 3] * 3])


def test_standardise_vfr_webm_keeps_exact_timestamp_sampling(tmp_path):
  times = list(np.cumsum(np.r_[0, np.random.default_rng(0).uniform(0.02, 0.09, 45)]))
  p = ms.write_media(tmp_path / "vfr.webm", times=times, frames=lambda k: index_frame(k, 48, 64),
                     audio=ms.tone(times[-1] + 0.1, 48000), audio_rate=48000)
  clips, rej, summ = _std(p)
  (ref,), meta = vio.sample_frames(p, [25])                       # the sampler on the source itself
  got = np.concatenate([st.decode_mp4_frames(c.video_mp4) for c in clips])
  assert got.shape[1:] == (64, 84, 3) and all(c.fps == 25 for c in clips)
  assert [decode_index(f) for f in got] == [decode_index(f) for f in ref[:len(got)]]
  assert len({decode_index(f) for f in got}) < len(got)          # frames repeated where the source is sparse
  assert any("variable frame rate" in n for n in summ.notes) and any("48000 Hz -> 44100" in n for n in summ.notes)
  assert all(c.audio.shape == (1, 44100) for c in clips if c.duration_sec == 1.0)


@pytest.mark.parametrize("fps", [12.5, 29.97])
def test_standardise_odd_fps_resampled_to_25(tmp_path, fps):
  p = ms.write_media(tmp_path / "odd.mp4", seconds=1.4, fps=fps, frames=lambda k: index_frame(k, 48, 64),
                     audio=ms.tone(1.4))
  clips, rej, summ = _std(p)
  assert [c.duration_sec for c in clips] == [1.0] and rej[0].reason == "short_tail"
  idx = [decode_index(f) for f in st.decode_mp4_frames(clips[0].video_mp4)]
  # nearest rule: output frame j at t = j / 25 shows the last source frame before t + 0.02
  assert idx == [int(np.floor((j / 25 + 0.02) * fps - 1e-9)) for j in range(25)]
  assert any(f"{fps:g}"[:4] in n and "fps -> 25 fps" in n for n in summ.notes)


def test_standardise_rotation_applied(tmp_path):
  frame = np.zeros((48, 80, 3), np.uint8)
  frame[:12, :20] = 255                                            # a white block in the stored top-left
  p = ms.write_media(tmp_path / "rot.mp4", seconds=1.0, size=(48, 80), frames=lambda k: frame, rotation=90,
                     audio=ms.tone(1.0))
  clips, _, summ = _std(p)
  img = st.decode_mp4_frames(clips[0].video_mp4)[0]
  assert img.shape == (106, 64, 3)                                # displayed portrait, short side 64
  (disp,), meta = vio.sample_frames(p, [25])
  assert meta.rotation != 0 and "rotation" in " ".join(summ.notes)
  ys, xs = np.nonzero(img[..., 0] > 128)
  dys, dxs = np.nonzero(disp[0][..., 0] > 128)                   # where video/io's display transform put it
  assert abs(ys.mean() / img.shape[0] - dys.mean() / disp[0].shape[0]) < 0.05
  assert abs(xs.mean() / img.shape[1] - dxs.mean() / disp[0].shape[1]) < 0.05


def test_standardise_51_flac_downmix_level(tmp_path):
  sig = np.zeros((6, 48000), np.float32)
  sig[2] = 0.5 * np.sin(2 * np.pi * 300 * np.arange(48000) / 48000)   # centre channel only
  p = ms.write_media(tmp_path / "s51.mkv", seconds=1.0, audio=sig, audio_rate=48000, layout="5.1")
  clips, _, summ = _std(p)
  a = clips[0].audio[0, 2000:-2000]
  g = 1 / np.sqrt(2)
  assert np.sqrt(2) * a.std() == pytest.approx(0.5 * g / (1 + 2 * g), rel=0.01)
  assert any("6 ch (5.1) -> 1 ch" in n for n in summ.notes)
  stereo = dataclasses.replace(SMALL, audio_channels=2)
  c2, _, _ = _std(p, stereo)
  assert c2[0].audio.shape == (2, 44100)


def test_standardise_45s_chunks_tail_and_alignment(tmp_path):
  rate = 44100
  audio = 0.05 * ms.noise(45.0, rate, amp=1.0)
  click = int(23.5 * rate)
  audio[0, click:click + 50] = 0.9
  p = ms.write_media(tmp_path / "long.mkv", seconds=45.0, size=(32, 48), audio=audio, shift_px=0.5)
  cfg = dataclasses.replace(SMALL, clip_seconds=10.0, min_clip_seconds=2.0)
  clips, rej, summ = _std(p, cfg, caption="rain")
  assert [c.duration_sec for c in clips] == [10.0, 10.0, 10.0, 10.0, 5.0] and not rej
  assert [c.start_sec for c in clips] == [0.0, 10.0, 20.0, 30.0, 40.0]
  assert [c.clip_id for c in clips] == [f"long-{k:03d}" for k in range(5)]
  assert all(c.caption == "rain" for c in clips) and clips[4].audio.shape == (1, 5 * rate)
  peak = int(np.argmax(clips[2].audio[0]))
  assert abs(peak - int(3.5 * rate)) <= 2                          # the click at 23.5 s: 3.5 s into clip 2
  assert summ.clips == 5 and summ.duration_sec == 45.0
  assert len(st.decode_mp4_frames(clips[4].video_mp4)) == 125


def test_standardise_bad_inputs(tmp_path):
  cases = {
      "short.mp4": (ms.write_media, dict(seconds=0.3, audio=ms.tone(0.3)), "too_short"),
      "silent_film.mp4": (ms.write_media, dict(seconds=1.0), "no_audio"),
      "podcast.mkv": (ms.write_media, dict(video=False, audio=ms.tone(1.0)), "no_video"),
  }
  got = {}
  for name, (fn, kw, _) in cases.items():
    clips, rej, _ = _std(fn(tmp_path / name, **kw))
    assert not clips
    got[name] = (rej[0].reason, rej[0].value)
  assert {k: v[0] for k, v in got.items()} == {k: c[2] for k, c in cases.items()}
  assert got["short.mp4"][1] < 0.64
  (tmp_path / "zero.mp4").write_bytes(b"")
  (tmp_path / "garbage.mp4").write_bytes(b"\x00\x01not a video" * 100)
  full = ms.write_media(tmp_path / "full.mp4", seconds=2.0, audio=ms.tone(2.0)).read_bytes()
  (tmp_path / "trunc.mp4").write_bytes(full[:len(full) // 2])      # moov atom lost: unreadable
  mkv = ms.write_media(tmp_path / "full.mkv", seconds=3.0, audio=ms.tone(3.0)).read_bytes()
  (tmp_path / "trunc.mkv").write_bytes(mkv[:len(mkv) // 2])        # a playable prefix
  for name, reason in (("zero.mp4", "unreadable"), ("garbage.mp4", "unreadable"), ("trunc.mp4", "unreadable")):
    clips, rej, _ = _std(tmp_path / name)
    assert not clips and rej[0].reason == reason and rej[0].clip_id is None and rej[0].detail, name
  clips, rej, summ = _std(tmp_path / "trunc.mkv")                # the playable prefix, with a note
  assert 0 < sum(c.duration_sec for c in clips) < 3.0 and any("truncated?" in n for n in summ.notes)


def test_list_inputs_csv_and_glob(tmp_path):
  (tmp_path / "v" / "sub").mkdir(parents=True)
  for n in ("a.mp4", "sub/b.mp4"):
    (tmp_path / "v" / n).write_bytes(b"x")
  (tmp_path / "v" / "a.txt").write_text("a dog barks\n")
  items = st.list_inputs(str(tmp_path / "v" / "**" / "*.mp4"))
  assert [(i.source_id, i.caption) for i in items] == [("a", "a dog barks"), ("sub_b", "")]
  (tmp_path / "l.csv").write_text("v/a.mp4,rain on a roof,clipA\nv/sub/b.mp4\n")
  items = st.list_inputs(str(tmp_path / "l.csv"))
  assert [(pathlib.Path(i.path).name, i.caption, i.source_id) for i in items] == [
      ("a.mp4", "rain on a roof", "clipA"), ("b.mp4", "", "b")]
  (tmp_path / "h.csv").write_text("caption,path\nx,v/a.mp4\n")
  assert st.list_inputs(str(tmp_path / "h.csv"))[0].caption == "x"
  (tmp_path / "d.csv").write_text("v/a.mp4,,same\nv/sub/b.mp4,,same\n")
  with pytest.raises(ValueError, match="duplicate ids 'same'"):
    st.list_inputs(str(tmp_path / "d.csv"))
  with pytest.raises(FileNotFoundError, match="matches no files"):
    st.list_inputs(str(tmp_path / "nothing*.mp4"))


# -------------------------------------------------------------------------------------- quality stages

def test_silence_ratio_at_the_boundary():
  rate, w = 44100, 2205                                            # 50 ms windows: 200 in 10 s
  x = np.full((1, 200 * w), 0.1, np.float32)                      # -20 dBFS
  x[:, :160 * w] = 0.0009                                         # -60.9 dBFS: silent
  stage = quality.SilenceStage()
  out = stage(_clip(x))
  assert isinstance(out, Clip) and out.scores["silence_ratio"] == pytest.approx(0.8)
  x[:, 160 * w:161 * w] = 0.0009                                  # one more silent window: 80.5%
  rej = stage(_clip(x))
  assert isinstance(rej, Rejection) and rej.reason == "silence_ratio" and rej.value == pytest.approx(0.805)
  x[:, 160 * w:161 * w] = 0.00101                                 # -59.9 dBFS: not silent
  assert isinstance(stage(_clip(x)), Clip)
  assert quality.silence_ratio(np.zeros((2, 1000)), rate) == 1.0
  # a short last window counts by its length
  assert quality.silence_ratio(np.r_[np.full(2205, 0.5), np.zeros(1000)][None], rate) == pytest.approx(1000 / 3205)


def test_clipping_ratio_at_the_boundary():
  n = 100000
  x = np.full((1, n), 0.5, np.float32)
  x[0, :n // 10] = 1.0                                            # exactly 10%
  x[0, 0] = -1.0
  stage = quality.ClippingStage()
  assert stage(_clip(x)).scores["clipping_ratio"] == pytest.approx(0.1)
  x[0, n // 10] = 0.98856                                         # >= -0.1 dBFS (0.98855): clipped
  rej = stage(_clip(x))
  assert isinstance(rej, Rejection) and rej.reason == "clipping_ratio" and rej.value == pytest.approx(0.10001)
  x[0, n // 10] = 0.9885                                          # just below
  assert isinstance(stage(_clip(x)), Clip)


def test_clipping_ratio_survives_resampling_48k_to_44k1():
  from dreamfoley_jax.audio.resample import resample_np

  t = np.arange(96000) / 48000
  for gain in (1.2, 2.0, 4.0):
    x = np.clip(gain * np.sin(2 * np.pi * 220 * t), -1, 1).astype(np.float32)[None]
    y = resample_np(x, 48000, 44100)
    assert abs(quality.clipping_ratio(x) - quality.clipping_ratio(y)) < 0.003


def test_static_shot_detection(tmp_path):
  a = ms.gradient_frame(0, 48, 64)
  b = 255 - ms.gradient_frame(5, 48, 64)
  cases = {
      "static": (lambda k: a, "static", 0),
      "pan": (lambda k: ms.gradient_frame(k, 48, 64, shift_px=0.2), None, 0),
      "stills_cut": (lambda k: a if k < 25 else b, "static", 1),
      "pans_cut": (lambda k: ms.gradient_frame(k, 48, 64, 0.2) if k < 25 else
                   255 - ms.gradient_frame(k, 48, 64, 0.2), None, 1),
  }
  stage = quality.StaticStage()
  two = dataclasses.replace(SMALL, clip_seconds=2.0)
  for name, (frames, reason, cuts) in cases.items():   # 2 s clips: 8 frames at 4 fps, 7 differences
    p = ms.write_media(tmp_path / f"{name}.mp4", seconds=2.0, frames=frames, audio=ms.tone(2.0))
    clips, _, _ = _std(p, two)
    out = stage(clips[0])
    if reason:
      assert isinstance(out, Rejection) and out.reason == "static" and out.value < 2.0, name
      assert f"{cuts} cut" in out.detail, name
    else:
      assert isinstance(out, Clip) and out.scores["motion"] > 4.0 and out.scores["cuts"] == cuts, name


# ------------------------------------------------------------------------------------------ speech

@pytest.fixture(scope="module")
def speech_audio(tmp_path_factory):
  from dreamfoley_jax.audio.resample import resample_np

  d = tmp_path_factory.mktemp("speech")
  sp = ms.espeak("The quick brown fox jumps over the lazy dog. Every morning I read the news.", d / "s.wav")
  return resample_np(sp, 22050, 44100)


def _reference_probs(model, x16):
  import torch

  model.reset_states()
  xp = np.pad(x16, (0, -x16.size % 512))
  with torch.no_grad():
    return np.array([float(model(torch.from_numpy(xp[i:i + 512].copy())[None], 16000))
                     for i in range(0, xp.size, 512)])


def test_silero_port_matches_reference_on_speech_and_noise(speech_audio):
  import torch
  from safetensors.numpy import load_file

  from dreamfoley_jax.audio import vad
  from dreamfoley_jax.audio.resample import resample_np

  torch.set_num_threads(1)
  x16 = resample_np(speech_audio, 44100, 16000)
  noise = resample_np(ms.noise(4.0, amp=0.2, seed=1)[0], 44100, 16000)
  det = vad.SpeechDetector()
  ref = torch.jit.load(str(vad.default_weights_path().parent / "silero_vad.jit")).eval()
  bundled = {"speech": _reference_probs(ref, x16), "noise": _reference_probs(ref, noise)}
  # the reference graph with the safetensors weights (the JIT file bundles another training run's weights)
  sd = load_file(str(vad.default_weights_path()))
  names = {"stft_conv.weight": "stft.forward_basis_buffer", "final_conv.weight": "decoder.decoder.2.weight",
           "final_conv.bias": "decoder.decoder.2.bias"}
  names.update({f"conv{i + 1}.{s}": f"encoder.{i}.reparam_conv.{s}" for i in range(4) for s in ("weight", "bias")})
  names.update({f"lstm_cell.{s}": f"decoder.rnn.{s}" for s in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
  tsd = dict(ref._model.state_dict())
  with torch.no_grad():
    for k, tk in names.items():
      tsd[tk].copy_(torch.from_numpy(sd[k]))
  for name, x in (("speech", x16), ("noise", noise)):
    ours = det.probs(x)
    np.testing.assert_allclose(ours, _reference_probs(ref, x), atol=1e-4)
    # speech ratio (p >= 0.5) agrees with the wheel's default model too
    assert abs(np.mean(ours >= 0.5) - np.mean(bundled[name] >= 0.5)) < 0.05, name
  assert np.mean(det.probs(x16) >= 0.5) > 0.6 and np.mean(det.probs(noise) >= 0.5) < 0.05


def test_speech_stage_rejects_speech_keeps_noise(speech_audio):
  stage = speech.SpeechStage(speech.SpeechConfig())
  out = stage(_clip(speech_audio[None]))
  assert isinstance(out, Rejection) and out.reason == "speech_ratio" and out.value > 0.6
  kept = stage(_clip(ms.noise(3.0, amp=0.2)))
  assert isinstance(kept, Clip) and kept.scores["speech_ratio"] < 0.05
  loose = speech.SpeechStage(speech.SpeechConfig(max_ratio=0.99))
  assert isinstance(loose(_clip(speech_audio[None])), Clip)


def _tiny_whisper(path):
  import torch
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                            WhisperProcessor, WhisperTokenizerFast)


  # byte-level BPE as Whisper's own tokenizer: "Ġ" marks a leading space
  words = ["Ġdog", "Ġcat", "Ġrain", "Ġthe", "Ġis", "Ġa", "Ġon", "Ġroof", "<|endoftext|>"]
  tok = Tokenizer(models.BPE({w: i for i, w in enumerate(words)}, []))
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
  fast = WhisperTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                              unk_token="<|endoftext|>", pad_token="<|endoftext|>")
  fast.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                         "<|notimestamps|>"]})
  cfg = WhisperConfig(vocab_size=len(fast), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=32,
                      decoder_start_token_id=fast.convert_tokens_to_ids("<|startoftranscript|>"),
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=fast.eos_token_id)
  torch.manual_seed(0)
  model = WhisperForConditionalGeneration(cfg).eval()
  # only words: no end-of-text or other special token, so every clip gets max_new_tokens words
  specials = sorted(set(fast.all_special_ids))
  model.generation_config.suppress_tokens = specials
  model.generation_config.begin_suppress_tokens = specials
  model.save_pretrained(path)
  WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=fast).save_pretrained(path)
  return model, fast


def test_asr_hook_tiny_random_whisper(tmp_path, speech_audio):
  import torch
  from transformers import WhisperForConditionalGeneration, WhisperProcessor

  _tiny_whisper(tmp_path / "whisper")
  clip = _clip(speech_audio[None])
  # the reference: transformers used directly on the saved directory
  proc = WhisperProcessor.from_pretrained(tmp_path / "whisper")
  model = WhisperForConditionalGeneration.from_pretrained(tmp_path / "whisper").eval()
  feats = proc(speech.to_16k(clip), sampling_rate=16000, return_tensors="pt").input_features
  with torch.no_grad():
    ref = proc.batch_decode(model.generate(feats, max_new_tokens=5, do_sample=False), skip_special_tokens=True)[0]
  assert len(ref.split()) == 5
  stage = speech.AsrStage(speech.AsrConfig(model=str(tmp_path / "whisper"), max_new_tokens=5, max_words=5))
  kept = stage(clip)
  assert kept.fields["transcript"] == ref.strip() and kept.scores["asr_words"] == 5
  strict = speech.AsrStage(speech.AsrConfig(model=str(tmp_path / "whisper"), max_new_tokens=5, max_words=4))
  rej = strict(clip)
  assert isinstance(rej, Rejection) and rej.reason == "asr_words" and rej.value == 5.0
  assert stage.identity()["model"] and stages.parse_stages("+asr")[-2] == "asr"


# ----------------------------------------------------------------------------------------- encode

@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
  import build_helpers

  return build_helpers.shared_assets(tmp_path_factory)


def test_encode_stage_matches_direct_encoders_and_is_batch_invariant(tmp_path, tiny_ckpts):
  import jax

  from dreamfoley_jax.audio.resample import resample_np
  from dreamfoley_jax.audio.tokenizer import AudioTokenizer
  from dreamfoley_jax.convert import eva_clip as conv_eva, higgs as conv_higgs, synchformer as conv_sync
  from dreamfoley_jax.models import eva_clip, synchformer
  from dreamfoley_jax.video import preprocess as vpre

  p = ms.write_media(tmp_path / "a.mp4", seconds=1.8, audio=ms.noise(1.8, amp=0.2), shift_px=1.0)
  clips, rej, _ = _std(p)
  p2 = ms.write_media(tmp_path / "b.mp4", seconds=1.0, audio=ms.tone(1.0), shift_px=1.0)
  clips += _std(p2)[0]
  assert [c.duration_sec for c in clips] == [1.0, 0.8, 1.0]        # a shorter tail padded into the same shapes
  stage = encode.EncodeStage(encode.EncodeConfig(clip_seconds=1.0, mesh="data=1", **tiny_ckpts))
  outs = stage.process_batch(clips)
  singles = [stage(c) for c in clips[::-1]][::-1]                  # other batches, other order
  for a, b in zip(outs, singles):                                  # bit-identical whatever the batch
    for k in ("clip_feats", "sync_feats", "audio_codes"):
      np.testing.assert_array_equal(a.fields[k], b.fields[k])
  ecfg, eparams = conv_eva.load_orbax(tiny_ckpts["eva_ckpt"])
  scfg, sparams = conv_sync.load_orbax(tiny_ckpts["sync_ckpt"])
  hcfg, hparams = conv_higgs.load_orbax(tiny_ckpts["codec_ckpt"])
  for o, c in zip(outs, clips):
    assert list(o.fields["text_ids"]) == [0] * len(c.caption.split())   # no caption words in the vocab
  eva = jax.jit(lambda x: eva_clip.EvaVisionTower(ecfg).apply({"params": eparams}, x)[0])
  syn = jax.jit(lambda x: synchformer.Synchformer(scfg).apply({"params": sparams}, x)[0])
  tok = AudioTokenizer(jax.device_get(hparams), hcfg, buckets_s=(2.0,), batch_size=2)
  for c, o in zip(clips, outs):
    with st.MediaFile(c.video_mp4) as path:
      fr = vpre.load_video_frames(path, max_duration_sec=c.duration_sec)
    assert o.fields["sync_feats"].shape == (fr.sync_u8.shape[0], 64)   # one token per 25 fps frame
    if c is clips[0]:   # one shape for the reference (each shape is a compile)
      np.testing.assert_allclose(o.fields["clip_feats"].astype(np.float32), np.asarray(eva(fr.clip_pixels())),
                                 atol=2e-3, rtol=2e-3)
      se = np.asarray(syn(fr.sync_pixels()[None]))[0]
      np.testing.assert_allclose(o.fields["sync_feats"].astype(np.float32),
                                 se.reshape(-1, se.shape[-1])[:fr.sync_u8.shape[0]], atol=2e-3, rtol=2e-3)
    codes = tok.encode([resample_np(c.mono(), 44100, 24000)])[0]
    np.testing.assert_array_equal(o.fields["audio_codes"], codes)
    assert o.fields["audio_codes"].shape == (8, int(round(c.duration_sec * 25)))
    assert o.fields["clip_feats"].shape[0] == int(c.duration_sec * 4)


def test_stage_selection_and_config_hash(tiny_ckpts):
  assert stages.parse_stages("") == stages.DEFAULT_STAGES
  assert stages.parse_stages("-static,+asr") == ("silence", "clipping", "speech", "asr", "encode")
  assert stages.parse_stages("encode,silence") == ("silence", "encode")
  with pytest.raises(ValueError, match="unknown stage 'pam'"):
    stages.parse_stages("+pam")
  with pytest.raises(ValueError, match="either a list"):
    stages.parse_stages("silence,+asr")
  enc = ("encode", encode.EncodeConfig(**tiny_ckpts))
  base = stages.BuildConfig(standardise=SMALL, stage_configs=(enc,))
  h = stages.config_hash(stages.identity(base))
  assert h == stages.config_hash(stages.identity(stages.BuildConfig(standardise=SMALL, stage_configs=(enc,))))
  other = stages.BuildConfig(standardise=SMALL, stage_configs=(enc, ("silence", quality.SilenceConfig(max_ratio=0.7))))
  assert stages.config_hash(stages.identity(other)) != h
  fewer = stages.BuildConfig(standardise=SMALL, stages=("silence", "encode"), stage_configs=(enc,))
  assert stages.config_hash(stages.identity(fewer)) != h
  chain = stages.build_stages(stages.BuildConfig(standardise=SMALL, stages=("silence", "clipping")))
  out = stages.run_chain(_clip(np.zeros((1, 44100))), chain)
  assert isinstance(out, Rejection) and out.stage == "silence"
