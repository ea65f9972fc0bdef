"""Part 2's model stages (paper 4.2-4.3) as pipeline stages: PAM, AST labels, ImageBind alignment, captions
(a fake OpenAI-compatible endpoint on 127.0.0.1: timeouts, malformed replies, retries, rejections), the
join by clip id, the stage switches and the scores in the record."""
import base64
import dataclasses
import http.server
import json
import pathlib
import sys
import threading
import time

import numpy as np
import pytest

import media_synth as ms
from dreamfoley_jax.data.build import alignment, captions, pam, stages, tags
from dreamfoley_jax.data.build import standardise as st
from dreamfoley_jax.data.build.clip import Clip, Rejection

FIX = pathlib.Path(__file__).parent / "fixtures"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "make"))


def _clip(audio, rate=44100, mp4=b"", duration=None, cid="c-000", caption=""):
  audio = np.asarray(audio, np.float32)
  audio = audio[None] if audio.ndim == 1 else audio
  return Clip(cid, "k", "src.mp4", 0, 0.0, duration or audio.shape[1] / rate, caption, mp4, audio, rate, 25)


# ------------------------------------------------------------------------------------------------ PAM

@pytest.fixture(scope="module")
def pam_assets(tmp_path_factory):
  from safetensors.numpy import save_file

  from test_msclap_pam import _tiny_gpt2_tokenizer

  d = tmp_path_factory.mktemp("pam")
  with np.load(FIX / "msclap_tiny.npz") as f:
    # contiguous: safetensors writes a Fortran-ordered array (the npz keeps melW transposed) as raw memory
    save_file({k[len("param/"):]: np.array(f[k], np.float32, order="C") for k in f.files if k.startswith("param/")},
              str(d / "clap_tiny.safetensors"))
  _tiny_gpt2_tokenizer(d / "tokenizer.json")
  return str(d / "clap_tiny.safetensors"), str(d)


def test_pam_stage_is_pam_on_the_reference(pam_assets, fixtures_dir):
  """The stage (checkpoint file + GPT-2 tokenizer files by path, PAM's prompts, 7 s windows, mean) gives
  the file score msclap's classes gave for the golden signal (tests/fixtures/make/make_pam_golden.py)."""
  from make_pam_golden import signal

  model, tok = pam_assets
  with np.load(pathlib.Path(fixtures_dir) / "msclap_tiny.npz") as f:
    want_windows, want = f["output/pam"], float(f["output/file_score"])
  stage = pam.PamStage(pam.PamConfig(model=model, tokenizer=tok, min_score=0.0, geometry="tiny"))
  clip = _clip(signal())
  np.testing.assert_allclose(stage.window_scores(clip), want_windows, atol=1e-6)   # [0, 7) s and [3, 10) s
  out = stage(clip)
  assert out.scores["pam"] == pytest.approx(want, abs=1e-6)
  assert stage.identity()["model"] and stage.identity()["tokenizer"]
  # the threshold: a score below min_score is a rejection carrying the value
  strict = pam.PamStage(pam.PamConfig(model=model, tokenizer=tok, min_score=want + 1e-3, geometry="tiny"))
  strict.__dict__.update({k: v for k, v in vars(stage).items() if k.startswith("pam_")}, _loaded=True)
  rej = strict(clip)
  assert isinstance(rej, Rejection) and rej.reason == "pam" and rej.value == pytest.approx(want, abs=1e-6)
  with pytest.raises(ValueError, match="needs --pam_model"):
    pam.PamStage(pam.PamConfig())(clip)
  assert pam.PamConfig().min_score == 0.3


# ------------------------------------------------------------------------------------------------ AST

@pytest.fixture(scope="module")
def tiny_ast(tmp_path_factory):
  torch = pytest.importorskip("torch")
  from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

  d = tmp_path_factory.mktemp("ast")
  torch.manual_seed(0)
  # the published geometry (128 mels x 1024 frames, 16x16 patches, stride 10, 527 AudioSet classes) at tiny width
  cfg = ASTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  num_labels=527, id2label={i: f"class_{i}" for i in range(527)},
                  label2id={f"class_{i}": i for i in range(527)})
  m = ASTForAudioClassification(cfg).eval()
  with torch.no_grad():
    m.classifier.dense.weight.normal_(0, 1.0)   # spread the random logits so the top class is well defined
  m.save_pretrained(d)
  ASTFeatureExtractor().save_pretrained(d)
  return str(d), m


def test_ast_stage_matches_transformers_and_records_labels(tiny_ast):
  import torch
  from transformers import ASTFeatureExtractor

  from dreamfoley_jax.audio.resample import resample_np

  path, ref = tiny_ast
  stage = tags.TagsStage(tags.TagsConfig(model=path), batch_size=2)
  a = ms.tone(3.0, rate=48000, freq=500)[0] + ms.noise(3.0, rate=48000, amp=0.2, seed=2)[0]
  b = ms.noise(10.0, amp=0.3, seed=5)[0]
  out = stage.process_batch([_clip(a, rate=48000, cid="a-000"), _clip(b, cid="b-000")])
  fe = ASTFeatureExtractor()
  for clip, wav, rate in ((out[0], a, 48000), (out[1], b, 44100)):
    x = fe(resample_np(wav, rate, 16000), sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
      p = torch.sigmoid(ref(x).logits)[0].numpy()
    assert int(clip.fields["ast_class"]) == int(np.argmax(p))
    assert clip.fields["ast_label"] == f"class_{int(np.argmax(p))}"
    np.testing.assert_array_equal(clip.fields["ast_top"], np.argsort(-p, kind="stable")[:5])
    assert clip.scores["ast_prob"] == pytest.approx(float(p.max()), abs=1e-5)
  assert out[0].fields["ast_class"] != out[1].fields["ast_class"] or out[0].scores != out[1].scores
  rec = out[0].to_record()
  assert rec["ast_class"].dtype == np.int16 and "score_ast_prob" in rec


# ------------------------------------------------------------------------------------------ ImageBind

@pytest.fixture(scope="module")
def tiny_imagebind(tmp_path_factory):
  torch = pytest.importorskip("torch")
  from dreamfoley_jax.eval.embedders import imagebind as ib
  from dreamfoley_jax.eval.embedders.base import random_state_dict

  sd = random_state_dict(ib.torch_shapes(ib.ImageBindConfig.tiny()), seed=3)
  sd["modality_postprocessors.audio.1.log_logit_scale"] = np.asarray(np.log(20.0), np.float32)
  path = tmp_path_factory.mktemp("ib") / "imagebind_huge.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, path)
  return str(path)


def test_imagebind_stage_is_the_ib_score_with_a_threshold(tmp_path, tiny_imagebind):
  from dreamfoley_jax.eval import media, metrics

  p = ms.write_media(tmp_path / "v.mp4", seconds=5.0, audio=ms.tone(5.0, freq=300) + ms.noise(5.0, seed=1),
                     shift_px=1.0, size=(240, 320))
  clips, _, _ = st.standardise(st.InputItem(str(p), "", "v"), "k", st.StandardiseConfig(short_side=240))
  clip = clips[0]
  stage = alignment.AlignmentStage(alignment.AlignmentConfig(model=tiny_imagebind, min_score=-1.0, geometry="tiny"))
  out = stage(clip)
  # by hand: the harness' IB-score inputs from the standardised clip
  with st.MediaFile(clip.video_mp4) as f:
    crops = media.imagebind_video_input(f, clip.duration_sec)
  assert crops.shape[:2] == (3, 2)
  v = stage.ib.video_features({"ib_crops": crops}, "v")["ib_video"]
  a = stage.ib.audio_features(clip.audio, clip.audio_rate, clip.duration_sec, "v")["ib_audio"]
  want = metrics.mean_cosine(v[None], a[None])
  assert out.scores["imagebind"] == pytest.approx(want, abs=1e-6) and -1 <= want <= 1
  strict = alignment.AlignmentStage(alignment.AlignmentConfig(model=tiny_imagebind, min_score=want + 1e-3,
                                                              geometry="tiny"))
  strict.ib, strict._loaded = stage.ib, True
  rej = strict(clip)
  assert isinstance(rej, Rejection) and rej.reason == "imagebind" and rej.value == pytest.approx(want, abs=1e-6)
  # a 2 s tail (one 0.5 fps frame) is scored too: the frame paired with itself
  short = dataclasses.replace(clip, duration_sec=2.0, audio=clip.audio[:, :2 * 44100])
  assert "imagebind" in stage(short).scores


# ------------------------------------------------------------------------------------------- captions

class FakeEndpoint:
  """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 whose replies follow a script keyed by the
  media it receives (a clip is recognised by its audio bytes' digest)."""

  def __init__(self):
    self.calls, self.script, self.lock = [], {}, threading.Lock()
    outer = self

    class H(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        text = next(c["text"] for c in content if c["type"] == "text")
        kinds = [c["type"] for c in content if c["type"] != "text"]
        key = ""
        for c in content:
          if c["type"] in ("audio_url", "video_url"):
            key = str(len(base64.b64decode(c[c["type"]]["url"].split(",", 1)[1])))
        with outer.lock:
          outer.calls.append((kinds, text, key, body["model"]))
          n = sum(1 for k in outer.calls if k[:3] == (kinds, text, key))
        action = outer.script.get((tuple(kinds), key, n)) or outer.script.get((tuple(kinds), "*", n))
        if action == "sleep":
          time.sleep(1.5)
          reply = {"choices": [{"message": {"content": "too late"}}]}
        elif action == "garbage":
          self.send_response(200)
          self.end_headers()
          self.wfile.write(b"<html>not json")
          return
        elif action == "nochoices":
          reply = {"error": "overloaded"}
        elif action == "http500":
          self.send_response(500)
          self.end_headers()
          return
        elif kinds == ["audio_url"]:
          reply = {"choices": [{"message": {"content": f"rain falls on a tin roof ({key})"}}]}
        elif kinds == ["video_url"]:
          reply = {"choices": [{"message": {"content": "a tin roof in the rain"}}]}
        elif "yes or no" in text:
          verdict = action if action in ("No.", "maybe") else "Yes."
          reply = {"choices": [{"message": {"content": verdict}}]}
        else:
          reply = {"choices": [{"message": {"content": "Rain drums on a tin roof."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def close(self):
    self.server.shutdown()


@pytest.fixture
def endpoint():
  e = FakeEndpoint()
  yield e
  e.close()


def _caption_stage(url, **kw):
  cfg = captions.CaptionConfig(audio_endpoint=url, audio_model="qwen2-audio", video_endpoint=url,
                               video_model="qwen2.5-vl", llm_endpoint=url, llm_model="qwen2.5-7b-instruct",
                               timeout_s=0.5, retries=2, backoff_s=0.01, **kw)
  return captions.CaptionStage(cfg, batch_size=4)


def _wav_len(clip):
  return str(len(captions.wav_bytes(captions.resample_np(clip.mono(), clip.audio_rate, 16000), 16000)))


def test_captions_over_http_retry_reject_and_keep_provenance(endpoint):
  clips = [_clip(ms.noise(1.0 + 0.25 * i, seed=i)[0], mp4=b"\0" * (100 + i), cid=f"c-{i:03d}",
                 caption="user caption" if i == 0 else "") for i in range(5)]
  k = [_wav_len(c) for c in clips]
  endpoint.script = {
      (("audio_url",), k[1], 1): "sleep",        # a timeout, then a good reply
      (("audio_url",), k[2], 1): "garbage", (("audio_url",), k[2], 2): "nochoices",   # two bad replies, then good
      (("audio_url",), k[3], 1): "http500", (("audio_url",), k[3], 2): "garbage", (("audio_url",), k[3], 3): "sleep",
  }
  stage = _caption_stage(endpoint.url)
  out = stage.process_batch(clips)
  assert [getattr(o, "clip_id") for o in out] == [c.clip_id for c in clips]   # joined by id, in the clips' order
  ok = [o for o in out if isinstance(o, Clip)]
  assert [o.clip_id for o in ok] == ["c-000", "c-001", "c-002", "c-004"]
  for o in ok:
    prov = json.loads(o.fields["captions_json"])
    roles = [p["role"] for p in prov]
    assert roles[-4:] == ["audio", "video", "consistency", "integrated"]
    assert o.caption == "Rain drums on a tin roof." == prov[-1]["text"]
    a = prov[roles.index("audio")]
    assert a["model"] == f"qwen2-audio@{endpoint.url}" and a["prompt"] == "audio_caption@1"
    assert a["text"] == f"rain falls on a tin roof ({_wav_len(o)})"           # this clip's own audio caption
    assert prov[roles.index("integrated")]["model"].startswith("qwen2.5-7b-instruct@")
  assert json.loads(ok[0].fields["captions_json"])[0] == {"role": "input", "model": "", "prompt": "",
                                                           "text": "user caption"}
  rej = out[3]
  assert isinstance(rej, Rejection) and rej.reason == "caption_failed" and rej.clip_id == "c-003"
  assert "after 3 attempts" in rej.detail and ("timed out" in rej.detail or "Timeout" in rej.detail)
  audio_calls = [c for c in endpoint.calls if c[0] == ["audio_url"]]
  assert sum(1 for c in audio_calls if c[2] == k[3]) == 3 and sum(1 for c in audio_calls if c[2] == k[2]) == 3


def test_caption_consistency_rejects_and_malformed_verdict_is_retried(endpoint):
  clips = [_clip(ms.noise(1.0 + 0.25 * i, seed=i)[0], mp4=b"\0" * 10, cid=f"c-{i:03d}") for i in range(2)]
  endpoint.script = {((), "*", 1): "maybe", ((), "*", 2): "No."}   # both clips: 'maybe' (retried), then 'No.'
  out = _caption_stage(endpoint.url).process_batch(clips)
  assert all(isinstance(o, Rejection) and o.reason == "caption_inconsistent" for o in out)
  assert [o.clip_id for o in out] == ["c-000", "c-001"]
  # switched off: kept, and the audio caption is the caption when integration is off too
  endpoint.script = {((), "*", n): "No." for n in range(1, 9)}
  out = _caption_stage(endpoint.url, check_consistency=False, integrate=False).process_batch(clips)
  assert all(isinstance(o, Clip) and o.caption.startswith("rain falls on a tin roof") for o in out)


def test_join_by_id_checks_count_and_ids():
  clips = [_clip(np.zeros(10), cid=i) for i in ("b", "a", "c")]
  assert captions.join_by_id(clips, {"a": 1, "c": 3, "b": 2}) == [2, 1, 3]
  with pytest.raises(ValueError, match=r"2 results for 3 clips; missing \['c'\]"):
    captions.join_by_id(clips, {"a": 1, "b": 2})
  with pytest.raises(ValueError, match=r"unexpected \['d'\]"):
    captions.join_by_id(clips, {"a": 1, "b": 2, "d": 4})
  with pytest.raises(ValueError, match="duplicate"):
    captions.join_by_id(clips + clips[:1], {"a": 1, "b": 2, "c": 3})


def test_verdict_parsing():
  assert captions.verdict("Yes.") and captions.verdict("yes, both describe rain")
  assert not captions.verdict("**No**")
  for bad in ("", "maybe", "Both describe rain."):
    with pytest.raises(captions.ReplyError):
      captions.verdict(bad)


# ------------------------------------------------------------------------------------ switches + records

def test_part2_stages_are_off_by_default_and_switchable():
  assert not {"separation", "pam", "ast", "imagebind", "caption"} & set(stages.DEFAULT_STAGES)
  on = stages.parse_stages("+separation,+pam,+ast,+imagebind,+caption")
  assert on == ("silence", "clipping", "static", "speech", "separation", "pam", "ast", "imagebind", "caption",
                "encode")
  assert "pam" not in stages.parse_stages("+separation,+pam,-pam")
  ident = stages.identity(stages.BuildConfig(stages=("pam",), stage_configs=(("pam", pam.PamConfig(min_score=0.5)),)))
  assert ident["stages"][0]["config"]["min_score"] == 0.5
  h1 = stages.config_hash(ident)
  h2 = stages.config_hash(stages.identity(stages.BuildConfig(stages=("pam",))))
  assert h1 != h2                                    # a changed threshold is a new config
  # how a stage runs (endpoint address, timeouts, device) is not part of the hash: a rerun may change it
  cap = lambda **kw: stages.config_hash(stages.identity(stages.BuildConfig(stages=("caption",), stage_configs=(  # noqa: E731
      ("caption", captions.CaptionConfig(audio_model="a", video_model="v", llm_model="l", audio_endpoint="http://x",
                                         video_endpoint="http://x", llm_endpoint="http://x", **kw)),))))
  assert cap(timeout_s=5.0, retries=9) == cap() != cap(integrate=False)
  # the report draws each threshold on its rejected and kept histograms
  from dreamfoley_jax.data.build import report

  rep = {"config": stages.identity(stages.BuildConfig(stages=("pam", "imagebind"), stage_configs=(
      ("imagebind", alignment.AlignmentConfig(min_score=0.25)),)))}
  assert report.threshold_of(rep, "imagebind/imagebind") == report.threshold_of(rep, "imagebind") == 0.25
  assert report.threshold_of(rep, "pam/pam") == 0.3
  rec = _clip(np.zeros(10)).with_scores(speech_ratio=0.1, pam=0.6, ast_prob=0.9, imagebind=0.3).to_record()
  assert {"score_speech_ratio", "score_pam", "score_ast_prob", "score_imagebind"} <= set(rec)


def test_beam_build_with_labels_and_captions(tmp_path, tiny_ast, endpoint):
  """The Beam pipeline with the ast and caption stages: scores and provenance in the records, every
  rejection (reason, value, detail) in the report, the bad clip's neighbours kept."""
  from dreamfoley_jax.data import records
  from dreamfoley_jax.data.build import run, shards

  d = tmp_path / "in"
  d.mkdir()
  for i, s in enumerate((0.7, 0.8, 0.9)):
    ms.write_media(d / f"v{i}.mp4", seconds=s, size=(48, 64), audio=ms.noise(s, amp=0.2, seed=i), shift_px=0.4)
  small = st.StandardiseConfig(clip_seconds=1.0, min_clip_seconds=0.64, short_side=64)
  bad = str(len(captions.wav_bytes(np.zeros(int(round(0.8 * 16000)), np.float32), 16000)))
  endpoint.script = {(("audio_url",), bad, n): "http500" for n in (1, 2, 3)}    # v1's audio captions always fail
  cap = _caption_stage(endpoint.url).cfg
  cfg = stages.BuildConfig(standardise=small, stages=("silence", "ast", "caption"),
                           stage_configs=(("ast", tags.TagsConfig(model=tiny_ast[0])), ("caption", cap)))
  rep = run.build_dataset(str(d / "*.mp4"), str(tmp_path / "out"), cfg,
                          beam_options=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
                          show_progress=False)
  rows = {r["stage"]: r for r in rep["stages"]}
  assert (rows["ast"]["in"], rows["ast"]["kept"]) == (3, 3)
  assert (rows["caption"]["in"], rows["caption"]["kept"], rows["caption"]["rejected"]) == (3, 2, 1)
  r = rep["rejections"]["caption/caption_failed"]
  assert r["count"] == 1
  pf = {pathlib.Path(p["source"]).name: p for p in rep["per_file"]}
  assert pf["v1.mp4"]["status"] == "all_clips_rejected" and pf["v1.mp4"]["clips_rejected"] == {
      "caption/caption_failed": 1}
  idx = shards.read_indexes(str(tmp_path / "out"), "train")
  rej = [x for i in idx for x in i["rejections"]]
  assert len(rej) == 1 and "HTTP 500" in rej[0]["detail"] and "after 3 attempts" in rej[0]["detail"]
  assert "ast_prob" in rep["scores"] and rep["scores"]["ast_prob"]["n"] == 2
  from array_record.python.array_record_module import ArrayRecordReader

  recs = []
  for p in shards.shard_paths(str(tmp_path / "out"), "train"):
    rd = ArrayRecordReader(p)
    recs += [records.decode_example(b) for b in rd.read_all()]
    rd.close()
  assert sorted(x["clip_id"] for x in recs) == ["v0-000", "v2-000"]
  for x in recs:
    assert x["caption"] == "Rain drums on a tin roof." and "score_ast_prob" in x and "score_silence_ratio" in x
    assert int(x["ast_class"]) == int(x["ast_top"][0])
    prov = json.loads(x["captions_json"])
    assert [p["role"] for p in prov] == ["audio", "video", "consistency", "integrated"]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
  """A tiny random Qwen2 causal LM + a word-level tokenizer with a Qwen-style chat template, saved as a
  local transformers directory."""
  return _save_tiny_llm(tmp_path_factory.mktemp("llm"))


def _save_tiny_llm(d, hidden_size=16, initializer_range=0.02):
  """A byte-level BPE (the Qwen2 tokenizer's kind: transformers 5 loads a Qwen2 directory's tokenizer.json
  as a Qwen2Tokenizer, which rebuilds a BPE from it) fitted on the caption prompts, <|im_start|> /
  <|im_end|> specials and a Qwen-style chat template."""
  torch = pytest.importorskip("torch")
  from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

  from dreamfoley_jax.synthetic import bpe as bpe_lib

  corpus = list(captions.caption_prompts.PROMPTS.values()) + ["rain falls on a tin roof", "yes", "no",
                                                              "a tin roof in the rain", "Rain drums on a tin roof."]
  bpe = bpe_lib.train_bpe(corpus, vocab_size=360)
  bpe.add_special_tokens(["<|im_start|>", "<|im_end|>"])
  tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
  tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  tok.save_pretrained(d)
  ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
  torch.manual_seed(0)
  cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                    num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                    eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                    bos_token_id=ids["<|im_start|>"], tie_word_embeddings=False, initializer_range=initializer_range)
  Qwen2ForCausalLM(cfg).eval().save_pretrained(d)
  back = AutoTokenizer.from_pretrained(d)
  assert back("rain falls on a tin roof").input_ids == tok("rain falls on a tin roof").input_ids
  assert len(set(back("rain falls on a tin roof").input_ids)) > 3
  return str(d)


def test_local_llm_backend_is_transformers_generate(tiny_llm):
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  cfg = captions.CaptionConfig(max_new_tokens=6, retries=1, backoff_s=0.0)
  chat = captions.make_backend("", tiny_llm, "text", cfg)
  assert isinstance(chat, captions.LocalChat)
  text = "the sound rain on a tin roof"
  got = chat(text)
  tok, m = AutoTokenizer.from_pretrained(tiny_llm), AutoModelForCausalLM.from_pretrained(tiny_llm).eval()
  ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                return_tensors="pt", return_dict=True)
  with torch.no_grad():
    out = m.generate(**ids, max_new_tokens=6, do_sample=False)
  assert got == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() and got
  # a random model is no yes/no discriminator: its verdict is a malformed reply, retried, then an error
  if got.split()[0] not in ("yes", "no"):
    with pytest.raises(captions.ReplyError, match="neither yes nor no.*after 2 attempts"):
      captions.ask(chat, cfg, text, captions.verdict)


@pytest.fixture(scope="module")
def tiny_qwen2_audio(tmp_path_factory):
  """A tiny random Qwen2-Audio (Whisper-style encoder + Qwen2 decoder) with its processor (128-mel Whisper
  features, the processor's own chat template, <|AUDIO|> expansion), saved as a local directory."""
  torch = pytest.importorskip("torch")
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                            Qwen2AudioProcessor, WhisperFeatureExtractor)

  d = tmp_path_factory.mktemp("qwen2_audio")
  sp = ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
  words = ["<unk>"] + sp + ["user", "assistant", "system", "\n", "rain", "roof"] + [f"w{i}" for i in range(50)]
  tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<unk>",
                                additional_special_tokens=sp)
  Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok).save_pretrained(d)
  torch.manual_seed(0)
  cfg = Qwen2AudioConfig(
      audio_config={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                    "num_mel_bins": 128},
      text_config={"model_type": "qwen2", "vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "eos_token_id": 2,
                   "pad_token_id": 0},
      audio_token_index=words.index("<|AUDIO|>"))
  Qwen2AudioForConditionalGeneration(cfg).eval().save_pretrained(d)
  return str(d)


def test_local_audio_captioner_in_the_stage(tiny_qwen2_audio, endpoint):
  """Audio captions from a local Qwen2-Audio directory (video and LLM from the endpoint): the caption is
  what transformers' processor + generate give for the clip's 16 kHz audio, with its provenance."""
  import torch
  from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

  from dreamfoley_jax.audio.resample import resample_np

  cfg = dataclasses.replace(_caption_stage(endpoint.url).cfg, audio_endpoint="", audio_model=tiny_qwen2_audio,
                            max_new_tokens=5, integrate=False, check_consistency=False)
  x = ms.noise(1.5, amp=0.2, seed=4)[0]
  out = captions.CaptionStage(cfg)(_clip(x, mp4=b"\0" * 8))
  prov = json.loads(out.fields["captions_json"])
  assert prov[0]["role"] == "audio" and prov[0]["model"] == f"{tiny_qwen2_audio} (transformers)"
  proc = AutoProcessor.from_pretrained(tiny_qwen2_audio)
  m = Qwen2AudioForConditionalGeneration.from_pretrained(tiny_qwen2_audio).eval()
  msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": captions.caption_prompts.get(
      "audio_caption@1")}]}]
  inputs = proc(text=proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                audio=[resample_np(x, 44100, 16000)], sampling_rate=16000, return_tensors="pt")
  assert int((inputs["input_ids"] == m.config.audio_token_index).sum()) > 10   # the audio went in as tokens
  with torch.no_grad():
    ids = m.generate(**inputs, max_new_tokens=5, do_sample=False)
  want = proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
  assert out.caption == prov[0]["text"] == want and want
  assert prov[1]["role"] == "video" and prov[1]["model"].startswith("qwen2.5-vl@")


def test_ast_default_config_is_the_published_audioset_geometry():
  """ASTConfig() (what a saved MIT/ast-finetuned-audioset-10-10-0.4593 config.json holds, besides its
  labels) at real size on the meta device: 12 x 768, 16x16 patches at stride 10 over 128 x 1024 ->
  12 x 101 patches + cls + distillation tokens, 527 outputs."""
  torch = pytest.importorskip("torch")
  from transformers import ASTConfig, ASTForAudioClassification

  with torch.device("meta"):
    m = ASTForAudioClassification(ASTConfig(num_labels=527))
  sd = m.state_dict()
  assert tuple(sd["audio_spectrogram_transformer.embeddings.position_embeddings"].shape) == (1, 1214, 768)
  assert tuple(sd["audio_spectrogram_transformer.embeddings.patch_embeddings.projection.weight"].shape) == (768, 1, 16, 16)
  assert tuple(sd["classifier.dense.weight"].shape) == (527, 768)
  assert sum(1 for k in sd if k.endswith("attention.q_proj.weight")) == 12
  assert 86e6 < sum(p.numel() for p in m.parameters()) < 88e6


# transformers 4.x names (the published AST checkpoints' keys) of this transformers' AST keys
_AST_OLD = ((r"\.layers\.(\d+)\.", r".encoder.layer.\1."), (r"attention\.q_proj", "attention.attention.query"),
            (r"attention\.k_proj", "attention.attention.key"), (r"attention\.v_proj", "attention.attention.value"),
            (r"attention\.o_proj", "attention.output.dense"), (r"mlp\.fc1", "intermediate.dense"),
            (r"mlp\.fc2", "output.dense"))


def test_ast_stage_loads_the_published_key_layout(tmp_path, tiny_ast):
  """A checkpoint saved with the published (transformers 4.x) key names loads into the stage's model with
  every weight (the same logits as the original), not silently re-initialised."""
  import re
  import shutil

  import torch
  from safetensors.torch import save_file

  path, ref = tiny_ast
  old = {}
  for k, v in ref.state_dict().items():
    for a, b in _AST_OLD:
      k = re.sub(a, b, k)
    old[k] = v.contiguous()
  assert "audio_spectrogram_transformer.encoder.layer.1.attention.attention.query.weight" in old
  d = tmp_path / "ast_v4"
  d.mkdir()
  for f in ("config.json", "preprocessor_config.json"):
    shutil.copy(pathlib.Path(path) / f, d / f)
  save_file(old, str(d / "model.safetensors"), metadata={"format": "pt"})
  stage = tags.TagsStage(tags.TagsConfig(model=str(d)))
  clip = _clip(ms.noise(2.0, amp=0.2, seed=7)[0])
  got = stage(clip)
  want = tags.TagsStage(tags.TagsConfig(model=path))(clip)
  assert got.scores["ast_prob"] == pytest.approx(want.scores["ast_prob"], abs=1e-6)
  np.testing.assert_array_equal(got.fields["ast_top"], want.fields["ast_top"])
  for (k, v), (k2, v2) in zip(sorted(stage.tagger.state_dict().items()), sorted(ref.state_dict().items())):
    assert k == k2 and torch.equal(v, v2), k


def test_local_video_captioner_frames(tmp_path):
  """The frames a local Qwen2.5-VL gets: 2 fps from the standardised clip, an even count (its temporal
  patch is 2 frames)."""
  p = ms.write_media(tmp_path / "v.mp4", seconds=3.0, size=(48, 64), audio=ms.noise(3.0), shift_px=1.0)
  clip = st.standardise(st.InputItem(str(p), "", "v"), "k", st.StandardiseConfig(short_side=48))[0][0]
  with st.MediaFile(clip.video_mp4) as f:
    fr = captions._frames_2fps(f)
  assert fr.shape == (6, 48, 64, 3) and fr.dtype == np.uint8
  short = st.standardise(st.InputItem(str(p), "", "v"), "k", st.StandardiseConfig(short_side=48,
                                                                                 clip_seconds=2.48))[0][0]
  with st.MediaFile(short.video_mp4) as f:
    assert captions._frames_2fps(f).shape[0] == 4   # 2.48 s: 4 frames at 2 fps (4.96 -> 4, even)


@pytest.fixture(scope="module")
def tiny_qwen25_vl(tmp_path_factory):
  """A tiny random Qwen2.5-VL (windowed ViT + mrope Qwen2 decoder) with its image processor config and a
  Qwen-style chat template (video as <|vision_start|><|video_pad|><|vision_end|>) in chat_template.jinja,
  saved as a local directory."""
  torch = pytest.importorskip("torch")
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import AutoImageProcessor, PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  d = tmp_path_factory.mktemp("qwen25_vl")
  sp = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
  words = ["<unk>"] + sp + ["user", "assistant", "system", "\n"] + [f"w{i}" for i in range(50)]
  tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<unk>",
                          additional_special_tokens=sp).save_pretrained(d)
  (d / "chat_template.jinja").write_text(
      "{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}{% if c['type'] == 'video' %}"
      "<|vision_start|><|video_pad|><|vision_end|> {% elif c['type'] == 'text' %}{{ c['text'] }} {% endif %}"
      "{% endfor %}<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
  # the published Qwen2.5-VL preprocessor_config.json's processor type and normalisation
  (d / "preprocessor_config.json").write_text(json.dumps({
      "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True, "do_normalize": True,
      "do_convert_rgb": True, "rescale_factor": 1 / 255, "resample": 3, "patch_size": 14, "temporal_patch_size": 2,
      "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056,
      "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
  assert AutoImageProcessor.from_pretrained(d).size["longest_edge"] == 12845056
  # frames of at least 56 x 56 px kept as they are (the default video minimum, 128 x 28 x 28, would upscale them)
  (d / "video_preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 3136,
                                                                         "longest_edge": 602112}}))
  torch.manual_seed(0)
  cfg = Qwen2_5_VLConfig(
      vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 16,
                     "fullatt_block_indexes": [1], "window_size": 56},
      text_config={"vocab_size": len(words), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "num_key_value_heads": 1, "eos_token_id": 2, "pad_token_id": 0,
                   "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}},
      image_token_id=words.index("<|image_pad|>"), video_token_id=words.index("<|video_pad|>"),
      vision_start_token_id=words.index("<|vision_start|>"))
  Qwen2_5_VLForConditionalGeneration(cfg).eval().save_pretrained(d)
  return str(d)


def _video_patches_reference(frames_TxHxWx3, patch=14, merge=2, tp=2):
  """Qwen2-VL's video layout written out from its definition (frames already on the 28-px grid): CLIP
  normalisation, then (T/tp, tp, C, h/m, m, P, w/m, m, P) -> rows (t, h/m, w/m, m, m), columns (C, tp, P, P)."""
  mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
  std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
  x = ((frames_TxHxWx3.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)   # T C H W
  T, C, H, W = x.shape
  gh, gw = H // patch, W // patch
  x = x.reshape(T // tp, tp, C, gh // merge, merge, patch, gw // merge, merge, patch)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(T // tp * gh * gw, C * tp * patch * patch), (T // tp, gh, gw)


def test_local_video_captioner_in_the_stage(tmp_path, tiny_qwen25_vl, endpoint):
  """Video captions from a local Qwen2.5-VL directory, no torchvision: the clip's 2 fps frames become the
  video tensors of Qwen2-VL's layout (checked against the layout written out independently), and the
  caption is transformers' generate on exactly those inputs, with its provenance."""
  import torch
  from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

  p = ms.write_media(tmp_path / "v.mp4", seconds=2.0, size=(56, 112), audio=ms.noise(2.0), shift_px=3.0)
  clip = st.standardise(st.InputItem(str(p), "", "v"), "k", st.StandardiseConfig(short_side=56, clip_seconds=2.0))[0][0]
  cfg = dataclasses.replace(_caption_stage(endpoint.url).cfg, video_endpoint="", video_model=tiny_qwen25_vl,
                            max_new_tokens=5, integrate=False, check_consistency=False)
  stage = captions.CaptionStage(cfg)
  out = stage(clip)
  prov = json.loads(out.fields["captions_json"])
  assert prov[1] == {"role": "video", "model": f"{tiny_qwen25_vl} (transformers)", "prompt": "video_caption@1",
                     "text": prov[1]["text"]} and prov[1]["text"]

  with st.MediaFile(clip.video_mp4) as f:
    frames = captions._frames_2fps(f)
  assert frames.shape == (4, 56, 112, 3)
  want_pv, want_grid = _video_patches_reference(frames)
  chat = stage.video_cap
  assert chat.video_size == {"shortest_edge": 3136, "longest_edge": 602112}
  inputs = chat.video_prompt_inputs(captions.caption_prompts.get("video_caption@1"), frames, 2.0)
  np.testing.assert_allclose(inputs["pixel_values_videos"].numpy(), want_pv, atol=1e-5)
  assert inputs["video_grid_thw"].tolist() == [list(want_grid)] == [[2, 4, 8]]
  assert inputs["second_per_grid_ts"].tolist() == [1.0]
  m = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen25_vl).eval()
  ids = inputs["input_ids"]
  assert int((ids == m.config.video_token_id).sum()) == 2 * 4 * 8 // 4 == int(inputs["mm_token_type_ids"].sum()) // 2
  with torch.no_grad():
    gen = m.generate(**inputs, max_new_tokens=5, do_sample=False)
    # the video reaches the decoder: other frames give other first-token logits
    a = m(**inputs).logits[0, -1]
    b = m(**{**inputs, "pixel_values_videos": inputs["pixel_values_videos"].flip(0)}).logits[0, -1]
  assert not torch.allclose(a, b)
  want = AutoTokenizer.from_pretrained(tiny_qwen25_vl).decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
  assert prov[1]["text"] == want and want
  assert prov[0]["role"] == "audio" and out.caption == prov[0]["text"]   # integration off: the audio caption


@pytest.fixture(scope="module")
def tiny_llm_hf(tmp_path_factory):
  """Like tiny_llm, with weights large enough (std 0.3) that its greedy continuations depend on the whole
  context (at std 0.02 they settle into a 2-token loop that would hide a position or cache error)."""
  return _save_tiny_llm(tmp_path_factory.mktemp("llm_hf"), hidden_size=32, initializer_range=0.3)


@pytest.fixture(scope="module")
def tiny_llm_jax(tiny_llm_hf, tmp_path_factory):
  """tiny_llm_hf converted to the project's Flax Qwen2 checkpoint (orbax), as tools/convert_checkpoint.py does."""
  from dreamfoley_jax.convert import qwen2 as convert_qwen2

  out = tmp_path_factory.mktemp("llm_jax") / "ckpt"
  convert_qwen2.convert_to_orbax(tiny_llm_hf, out)
  return str(out)


def _merge_prompt(audio, video):
  return captions.caption_prompts.get("integrate@1").format(audio=audio, video=video)


def test_jax_llm_backend_greedy_is_transformers_generate(tiny_llm_hf, tiny_llm_jax):
  """The converted checkpoint on the Flax Qwen2 (KV-cache prefill + decode), greedy with the checkpoint's
  chat template, gives the same tokens as transformers' generate(do_sample=False) on the HF original, for
  merge prompts padded into two different prompt buckets."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  cfg = captions.CaptionConfig(llm_backend="jax", max_new_tokens=12)
  chat = captions.make_backend("", tiny_llm_jax, "text", cfg)
  assert isinstance(chat, captions.JaxChat) and chat.stop_ids == {chat.tok.convert_tokens_to_ids("<|im_end|>")}
  tok, m = AutoTokenizer.from_pretrained(tiny_llm_hf), AutoModelForCausalLM.from_pretrained(tiny_llm_hf).eval()
  lengths = []
  for audio, video in (("rain falls on a tin roof", "a tin roof"),
                       ("the sound w3 w5 rain " * 4, "w7 w9 w11 on the roof " * 3)):
    text = _merge_prompt(audio, video)
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert chat.prompt_ids(text) == ids["input_ids"][0].tolist()
    lengths.append(ids["input_ids"].shape[1])
    with torch.no_grad():
      want = m.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    got = chat.generate_ids(chat.prompt_ids(text), 12)
    assert got == want and len(set(got)) >= 6, (got, want)
    assert chat(text) == tok.decode(want, skip_special_tokens=True).strip()
  B = captions.JaxChat.PROMPT_BUCKET   # padded prompts (the padding slots masked), two bucket shapes
  assert all(n % B for n in lengths) and len({-(-n // B) for n in lengths}) == 2, lengths


def test_jax_llm_backend_errors(tmp_path, tiny_llm_hf, tiny_llm_jax):
  import shutil

  cfg = captions.CaptionConfig(llm_backend="jax")
  with pytest.raises(Exception, match="not a qwen2 checkpoint|no such file|not a dreamfoley_jax params"):
    captions.make_backend("", tiny_llm_hf, "text", cfg)           # an HF directory, not converted
  moved = tmp_path / "ckpt"
  shutil.copytree(tiny_llm_jax, moved)
  meta = json.loads((moved / "dreamfoley_meta.json").read_text())
  (moved / "dreamfoley_meta.json").write_text(json.dumps({**meta, "source": str(tmp_path / "gone")}))
  with pytest.raises(ValueError, match="no tokenizer.json.*--caption_llm_tokenizer"):
    captions.make_backend("", str(moved), "text", cfg)
  assert captions.make_backend("", str(moved), "text", dataclasses.replace(cfg, llm_tokenizer=tiny_llm_hf)).stop_ids
  with pytest.raises(ValueError, match="drop --caption_llm_endpoint"):
    dataclasses.replace(cfg, llm_endpoint="http://127.0.0.1:1/v1")
  with pytest.raises(ValueError, match="--caption_llm_backend 'vllm': choose from transformers, jax"):
    captions.CaptionStage(dataclasses.replace(cfg, llm_backend="vllm", audio_model="a", video_model="v",
                                              llm_model="l")).load()


def test_caption_stage_with_the_jax_llm(tiny_llm_hf, tiny_llm_jax, endpoint):
  """The stage end to end on 3 clips with the Flax LLM as consistency discriminator and integrator
  (captioners from the endpoint): the same kept captions, rejections and provenance texts as with the
  transformers LLM on the HF original."""
  clips = [_clip(ms.noise(0.5 + 0.25 * i, amp=0.2, seed=i)[0], mp4=b"\0" * 8, cid=f"c-{i:03d}") for i in range(3)]
  base = dataclasses.replace(_caption_stage(endpoint.url).cfg, max_new_tokens=8, retries=0, backoff_s=0.0)
  for consistency in (False, True):
    outs = {}
    for backend, model in (("jax", tiny_llm_jax), ("transformers", tiny_llm_hf)):
      cfg = dataclasses.replace(base, llm_endpoint="", llm_model=model, llm_backend=backend,
                                check_consistency=consistency)
      outs[backend] = captions.CaptionStage(cfg).process_batch(clips)
    got, want = outs["jax"], outs["transformers"]
    assert [o.clip_id for o in got] == [c.clip_id for c in clips]
    for g, w in zip(got, want):
      assert type(g) is type(w)
      if isinstance(g, Rejection):
        want_detail = w.detail.replace(f"{tiny_llm_hf} (transformers)", f"{tiny_llm_jax} (jax)")
        assert (g.reason, g.detail) == (w.reason, want_detail)
        continue
      pg, pw = json.loads(g.fields["captions_json"]), json.loads(w.fields["captions_json"])
      assert [(p["role"], p["prompt"], p["text"]) for p in pg] == [(p["role"], p["prompt"], p["text"]) for p in pw]
      assert g.caption == w.caption == pg[-1]["text"] and pg[-1]["role"] == "integrated"
      assert pg[-1]["model"] == f"{tiny_llm_jax} (jax)"
    if consistency:   # a random discriminator: its verdict is no yes/no, a recorded caption_failed per clip
      assert all(isinstance(g, Rejection) and "neither yes nor no" in g.detail for g in got)
    else:
      assert all(isinstance(g, Clip) for g in got)
      assert len({g.caption for g in got}) == 3   # each clip's own audio caption went into its merge prompt


def test_video_inputs_default_pixel_range_and_errors(tmp_path):
  """A 360p frame keeps its size on the 28-px grid (364 x 644: 26 x 46 patches) within the default video
  pixel range; an odd frame count cannot fill the 2-frame temporal patches."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  assert captions.video_size(tmp_path) == captions.VIDEO_SIZE == {"shortest_edge": 100352, "longest_edge": 602112}
  ip = Qwen2VLImageProcessorPil()
  frames = np.random.default_rng(0).integers(0, 256, (4, 360, 640, 3), dtype=np.uint8)
  v = captions.video_inputs(ip, frames, 2.0)
  assert v["video_grid_thw"].tolist() == [[2, 26, 46]]
  assert v["pixel_values_videos"].shape == (2 * 26 * 46, 3 * 2 * 14 * 14)
  assert v["second_per_grid_ts"].tolist() == [1.0]
  with pytest.raises(ValueError, match="3 frames; need a positive multiple of temporal_patch_size=2"):
    captions.video_inputs(ip, frames[:3], 2.0)
