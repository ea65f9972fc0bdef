"""The awkward-input corpus (issue 19): ordinary, odd and broken media made with PyAV in the test, each with
the outcome generate, extract_features and evaluate must give it. docs/reliability.md holds the same table
(tests/test_reliability.py checks the two agree).

Outcome strings: "ok" (processed; a note may follow after ": "), or "fail: <text the reason contains>".
"-" where a tool does not take that kind of input.
"""
from __future__ import annotations

import dataclasses
import pathlib
from fractions import Fraction

import av
import numpy as np

from video_synth import index_frame

W, H = 64, 48   # stored frame size (portrait cases swap them)


@dataclasses.dataclass(frozen=True)
class Case:
  name: str          # file name in the corpus folder (its stem is the output name)
  what: str          # one-line description (the docs table)
  generate: str
  extract: str
  evaluate: str      # as a reference video (its audio track is the ground truth) or as a generated wav
  role: str = "video"  # "video": a video input; "gen": a generated-audio file for evaluate


def write_video(path, n=50, *, fps=25, codec="libx264", size=(W, H), opts=None, times=None, rotation=None,
                audio_layout=None, audio_seconds=None, pix_fmt="yuv420p", audio_codec="aac"):
  """Frames whose colour encodes their index mod 625 (video_synth.index_frame); optional AAC audio of `audio_layout`."""
  path = pathlib.Path(path)
  out = av.open(str(path), "w")
  rate = Fraction(fps).limit_denominator(1001)
  s = out.add_stream(codec, rate=rate)
  s.width, s.height, s.pix_fmt = size[0], size[1], pix_fmt
  tb = Fraction(1, 1000) if times is not None else 1 / rate
  s.time_base = tb
  s.codec_context.time_base = tb
  s.options = dict(opts if opts is not None else ({"preset": "ultrafast", "crf": "10"} if codec == "libx264" else {}))
  if rotation is not None:
    s.set_display_rotation(rotation)
  a = None
  sr = 48000 if audio_codec == "libopus" else 16000
  if audio_layout is not None:
    a = out.add_stream(audio_codec, rate=sr, layout=audio_layout)
  times = times if times is not None else [k / rate for k in range(n)]
  for k, t in enumerate(times):
    f = av.VideoFrame.from_ndarray(index_frame(k % 625, size[1], size[0]), format="rgb24")
    f.pts = int(round(Fraction(t) / tb))
    f.time_base = tb
    for p in s.encode(f):
      out.mux(p)
  for p in s.encode():
    out.mux(p)
  if a is not None:
    secs = audio_seconds if audio_seconds is not None else float(times[-1]) + float(1 / rate)
    ch = a.codec_context.layout.nb_channels
    sig = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(sr * secs)) / sr)).astype(np.float32)
    n = a.codec_context.frame_size or 1024
    for st in range(0, len(sig), n):
      chunk = sig[None, st:st + n]
      if chunk.shape[1] < n:
        chunk = np.pad(chunk, ((0, 0), (0, n - chunk.shape[1])))
      fr = av.AudioFrame.from_ndarray(np.repeat(chunk, ch, 0), format="fltp", layout=audio_layout)
      fr.sample_rate, fr.pts = sr, st
      for p in a.encode(fr):
        out.mux(p)
    for p in a.encode():
      out.mux(p)
  out.close()
  return path


def write_audio_only(path, seconds=2.0):
  out = av.open(str(path), "w")
  a = out.add_stream("aac", rate=16000, layout="mono")
  sig = (0.2 * np.sin(np.arange(int(16000 * seconds)) * 0.1)).astype(np.float32)
  for st in range(0, len(sig), 1024):
    fr = av.AudioFrame.from_ndarray(sig[None, st:st + 1024], format="fltp", layout="mono")
    fr.sample_rate, fr.pts = 16000, st
    for p in a.encode(fr):
      out.mux(p)
  for p in a.encode():
    out.mux(p)
  out.close()


ONE_WINDOW = "fewer than one Synchformer window"
NO_AUDIO = "no audio stream"

# Every video case carries a mono AAC track unless said otherwise, so evaluate can use it as ground truth.
CASES = [
    Case("ok.mp4", "H.264 mp4, 25 fps, 2 s, mono AAC", "ok: copied", "ok", "ok"),
    Case("empty.mp4", "0 bytes", "fail: empty file", "fail: empty file", "fail: cannot decode audio"),
    Case("garbage.mp4", "4 KB of random bytes", "fail: not a video PyAV can open",
         "fail: not a video PyAV can open", "fail: cannot decode audio"),
    Case("text_renamed.mp4", "a text file renamed .mp4", "fail: not a video PyAV can open",
         "fail: not a video PyAV can open", "fail: cannot decode audio"),
    Case("truncated.mp4", "the first 60% of an mp4 whose index (moov) is at the end",
         "fail: not a video PyAV can open", "fail: not a video PyAV can open", "fail: cannot decode audio"),
    Case("truncated_stream.mkv", "the first 60% of a 2 s mkv (streamable: what arrived decodes)",
         "ok: copied, 1.12 s (the decoded part)", "ok", "ok"),
    Case("audio_only.mp4", "AAC only, no video stream", "fail: no video stream", "fail: no video stream", "ok"),
    Case("short_0.3s.mp4", "0.3 s (7 frames)", f"fail: {ONE_WINDOW}", f"fail: {ONE_WINDOW}", "ok"),
    Case("one_frame.mp4", "a single frame (and 0.064 s of audio)", f"fail: {ONE_WINDOW}", f"fail: {ONE_WINDOW}",
         "fail: panns cannot score its 0.064 s of audio"),
    Case("long_45s.mp4", "45 s (windowed sampling)", "ok: copied", "ok", "ok"),
    Case("surround_5.1.mp4", "video + 5.1 (6-channel) AAC", "ok: copied", "ok", "ok: 6 channels"),
    Case("no_audio.mp4", "video without any audio track", "ok: copied", "ok", f"fail: {NO_AUDIO}"),
    Case("fps30.mp4", "30 fps", "ok: copied", "ok", "ok"),
    Case("fps24.mp4", "24 fps", "ok: copied", "ok", "ok"),
    Case("fps59.94.mp4", "60000/1001 fps", "ok: copied", "ok", "ok"),
    Case("vfr.mkv", "variable frame rate (gaps of 20-80 ms)", "ok: copied", "ok", "ok"),
    Case("rotated90.mp4", "display matrix 90 degrees (as phones write it)", "ok: copied, rotation kept", "ok",
         "ok"),
    Case("portrait.mp4", "48x64 portrait frames", "ok: copied", "ok", "ok"),
    Case("bframes.mkv", "H.264 with B-frames in Matroska (no dts on the first packets)",
         "ok: copied, dts rebuilt", "ok", "ok"),
    Case("vp9.webm", "VP9 + Opus WebM", "ok: copied", "ok", "ok"),
    Case("vp8.webm", "VP8 + Opus WebM (mp4 cannot hold VP8)", "ok: re-encoded", "ok", "ok"),
    Case("h264.mov", "H.264 QuickTime", "ok: copied", "ok", "ok"),
    Case("mpeg4_bframes.avi", "MPEG-4 part 2 with B-frames in AVI", "ok: copied", "ok", "ok"),
    Case("mjpeg.avi", "Motion JPEG AVI (timestamps 0, 3, 4, ...: a 2.08 s clip)", "ok: copied", "ok", "ok"),
    Case("odd_size_ffv1.mkv", "FFV1 63x47 (odd size, lossless)", "ok: re-encoded (64x48: 4:2:0 H.264 needs even "
         "sizes)", "ok", "ok"),
    Case("dir.mp4", "a directory named like a video", "fail: is a directory", "fail: is a directory",
         "skip: not a file, not listed"),
    # generated-audio files for evaluate (their name pairs them with ok.mp4 etc.)
    Case("fps30.wav", "a good 16-bit wav", "-", "-", "ok", role="gen"),
    Case("fps24.wav", "a wav of 0 samples", "-", "-", "fail: no audio samples", role="gen"),
    Case("portrait.wav", "random bytes named .wav", "-", "-", "fail: cannot read audio", role="gen"),
    Case("h264.wav", "float wav holding NaN", "-", "-", "fail: NaN", role="gen"),
    Case("vp9.flac", "stereo 44.1 kHz FLAC", "-", "-", "ok", role="gen"),
    # text inputs: CSVs, captions (tests/test_reliability.py::test_text_inputs)
    Case("latin1.csv", "CSV saved as Latin-1 (a caption with an e-acute)", "fail: :3: not valid UTF-8",
         "fail: :3: not valid UTF-8", "fail: :3: not valid UTF-8", role="text"),
    Case("bom.csv", "UTF-8 CSV with a byte-order mark (as Excel saves it)", "ok", "ok", "ok", role="text"),
    Case("latin1_caption.txt", "a sidecar caption file in Latin-1", "-", "fail: not valid UTF-8", "-",
         role="text"),
    Case("--caption $'\\xe9t\\xe9'", "a caption argument that is not UTF-8", "fail: --caption: not valid UTF-8",
         "-", "-", role="text"),
    Case("rows.csv", "CSV rows with duration nan / abc / 0 / -1, a name with '/', 20 s on a 2 s video, a "
         "3600 s text-to-audio row under --max_memory_gb 0.5, one good row", "ok: 1 row, 7 failed naming their "
         "line", "-", "-", role="text"),
    Case("unknown_column.csv", "CSV with a misspelt column ('captoin')", "fail: unknown column", "ok: extra "
         "columns ignored", "ok: extra columns ignored", role="text"),
]


def build(root) -> dict[str, pathlib.Path]:
  """Writes every case under `root`; returns {case name: path}."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  p = {c.name: root / c.name for c in CASES}
  mono = dict(audio_layout="mono")
  write_video(p["ok.mp4"], 50, **mono)
  p["empty.mp4"].write_bytes(b"")
  p["garbage.mp4"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  p["text_renamed.mp4"].write_text("this is a text file, not a video\n" * 20)
  full = write_video(root / "_full.mp4", 50, **mono).read_bytes()
  p["truncated.mp4"].write_bytes(full[:int(0.6 * len(full))])
  full = write_video(root / "_full.mkv", 50, opts={"preset": "ultrafast", "crf": "10", "g": "5"}, **mono).read_bytes()
  p["truncated_stream.mkv"].write_bytes(full[:int(0.6 * len(full))])
  (root / "_full.mp4").unlink()
  (root / "_full.mkv").unlink()
  write_audio_only(p["audio_only.mp4"])
  write_video(p["short_0.3s.mp4"], 7, **mono)
  write_video(p["one_frame.mp4"], 1, **mono)
  write_video(p["long_45s.mp4"], 45 * 25, size=(32, 24), **mono)
  write_video(p["surround_5.1.mp4"], 50, audio_layout="5.1")
  write_video(p["no_audio.mp4"], 50)
  write_video(p["fps30.mp4"], 60, fps=30, **mono)
  write_video(p["fps24.mp4"], 48, fps=24, **mono)
  write_video(p["fps59.94.mp4"], 120, fps=Fraction(60000, 1001), **mono)
  gaps = np.random.default_rng(1).choice([0.02, 0.04, 0.08], size=60)
  write_video(p["vfr.mkv"], times=[Fraction(float(t)).limit_denominator(1000) for t in np.r_[0, np.cumsum(gaps)[:-1]]],
              **mono)
  write_video(p["rotated90.mp4"], 50, rotation=90, **mono)
  write_video(p["portrait.mp4"], 50, size=(H, W), **mono)
  write_video(p["bframes.mkv"], 50, opts={"preset": "medium", "bf": "3"}, **mono)
  opus = dict(audio_layout="mono", audio_codec="libopus")
  write_video(p["vp9.webm"], 50, codec="libvpx-vp9", opts={"crf": "10", "b": "0"}, **opus)
  write_video(p["vp8.webm"], 50, codec="libvpx", opts={"crf": "4", "b": "2M"}, **opus)
  write_video(p["h264.mov"], 50, **mono)
  write_video(p["mpeg4_bframes.avi"], 50, codec="mpeg4", opts={"bf": "2", "qmin": "1", "qmax": "3"}, **mono)
  write_video(p["mjpeg.avi"], 50, codec="mjpeg", pix_fmt="yuvj420p", opts={"qmin": "1", "qmax": "3"}, **mono)
  write_video(p["odd_size_ffv1.mkv"], 50, codec="ffv1", size=(63, 47), pix_fmt="yuv420p", **mono)
  p["dir.mp4"].mkdir()
  import soundfile as sf

  sf.write(p["fps30.wav"], 0.1 * np.sin(np.arange(32000) * 0.05), 16000, subtype="PCM_16")
  sf.write(p["fps24.wav"], np.zeros(0), 16000)
  p["portrait.wav"].write_bytes(np.random.default_rng(2).integers(0, 256, 2048, dtype=np.uint8).tobytes())
  bad = 0.1 * np.sin(np.arange(32000) * 0.05)
  bad[1000] = np.nan
  sf.write(p["h264.wav"], bad, 16000, subtype="FLOAT")
  sf.write(p["vp9.flac"], 0.1 * np.random.default_rng(3).normal(size=(88200, 2)), 44100)
  # text inputs; one header serves all three tools (generate: video/name/caption; extract_features: a
  # manifest of video/caption; evaluate: name/caption)
  p["latin1.csv"].write_bytes("video,name,caption\nok.mp4,ok,a dog barks\nfps30.mp4,fps30,un caf\u00e9\n"
                              .encode("latin-1"))
  p["bom.csv"].write_bytes("video,name,caption\nok.mp4,ok,a dog barks\nfps30.mp4,fps30,rain\n".encode("utf-8-sig"))
  p["latin1_caption.txt"].write_bytes("un caf\u00e9 bruyant".encode("latin-1"))
  p["rows.csv"].write_text("video,caption,duration,name\nok.mp4,,nan,\nok.mp4,,abc,\nok.mp4,,0,\nok.mp4,,-1,\n"
                           "ok.mp4,,,../x\nok.mp4,,20,\n,rain,3600,\nfps30.mp4,a dog,1.5,\n")
  p["unknown_column.csv"].write_text("video,name,caption,captoin\nok.mp4,ok,a dog,a dog\n")
  del p["--caption $'\\xe9t\\xe9'"]
  return p


def videos():
  return [c for c in CASES if c.role == "video"]


def case(name: str) -> Case:
  return next(c for c in CASES if c.name == name)


def table() -> str:
  """The docs/reliability.md table of every case and its outcome per tool."""
  rows = ["| input | what it is | generate | extract_features | evaluate |", "|---|---|---|---|---|"]
  for c in CASES:
    rows.append(f"| `{c.name}` | {c.what} | {c.generate} | {c.extract} | {c.evaluate} |")
  return "\n".join(rows)
