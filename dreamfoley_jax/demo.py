"""Web demo (Gradio) over a `generate.Generator`: a video (or none, for text-to-audio), caption, negative prompt,
CFG scale, seed, duration in; the audio, the video with the new soundtrack and the spectrogram out.

  python tools/demo.py                        # serves runs/synthetic/model (the main job's) on 127.0.0.1:7860
  python tools/demo.py --model DIR --port 8080

`request` checks the inputs and raises `DemoInputError` with a message for a person (shown on the page);
`build` lays out the page; sampling reports its progress to the page through the generator's tqdm bar.
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile
import threading
from typing import Optional, Sequence

from dreamfoley_jax import generate as G

TITLE = "DreamFoley: sound for a silent video"


class DemoInputError(ValueError):
  """An input the demo cannot use, with a message meant for the page."""


@dataclasses.dataclass(frozen=True)
class Request:
  item: G.Item
  cfg_scale: float
  seed: int
  notes: tuple[str, ...] = ()


def request(video: Optional[str], caption: str, negative: str, cfg_scale, seed, duration, *,
            max_seconds: float, tokenize=None, max_text_len: int = 0) -> Request:
  """A validated generation request from the page's inputs."""
  caption, negative = (caption or "").strip(), (negative or "").strip()
  notes = []
  try:
    seed = int(seed if seed not in (None, "") else 0)
    cfg_scale = float(cfg_scale)
    duration = float(duration) if duration not in (None, "") else 0.0
  except (TypeError, ValueError) as e:
    raise DemoInputError(f"seed, CFG scale and duration must be numbers ({e})") from e
  if seed < 0:
    raise DemoInputError(f"seed must be >= 0, got {seed}")
  if not 1.0 <= cfg_scale <= 10.0:
    raise DemoInputError(f"CFG scale must be between 1 and 10, got {cfg_scale:g}")
  if duration < 0:
    raise DemoInputError(f"duration must be positive, got {duration:g} s")
  if video:
    name = pathlib.Path(video).name
    try:
      length = G.probe_duration(video)
    except (G.GenerateError, FileNotFoundError) as e:
      why = getattr(e.__cause__, "strerror", None) or str(e).rsplit(": ", 1)[-1]   # without the server's temp path
      why = why[:-1] if why.count(")") > why.count("(") else why   # "... open (InvalidDataError: why)"
      raise DemoInputError(f"{name}: not a video this demo can read ({why}); upload an mp4, webm, mov, mkv or "
                           "avi file") from e
    if length <= 0.05:
      raise DemoInputError(f"{name}: the video has no frames")
    if duration > length + 1e-3:
      raise DemoInputError(f"duration {duration:g} s is longer than the video ({length:.2f} s); leave it at 0 "
                           "to use the whole video")
    duration = duration or length
    if duration > max_seconds:
      raise DemoInputError(f"{name}: {duration:.1f} s is longer than this demo's limit of {max_seconds:g} s; set a "
                           "shorter duration (the first seconds are used)")
  else:
    if not duration:
      raise DemoInputError("without a video (text-to-audio) set a duration in seconds")
    if not caption:
      raise DemoInputError("without a video (text-to-audio) the caption says what to generate: write one")
    if duration > max_seconds:
      raise DemoInputError(f"duration {duration:g} s is longer than this demo's limit of {max_seconds:g} s")
  if tokenize is not None and max_text_len:
    for what, text in (("caption", caption), ("negative prompt", negative)):
      n = len(list(tokenize(text))) if text else 0
      if n > max_text_len:
        notes.append(f"the {what} is {n} tokens; the model reads the first {max_text_len}")
  item = G.Item(video=video or None, caption=caption, negative=negative, duration=duration, name="dreamfoley")
  return Request(item, cfg_scale, seed, tuple(notes))


class Demo:
  """Runs requests on one Generator, one at a time (the page's queue also serialises them)."""

  def __init__(self, gen: G.Generator, *, max_seconds: float = 20.0, out_root: Optional[str] = None):
    self.gen = gen
    self.max_seconds = float(max_seconds)
    self.out_root = pathlib.Path(out_root or tempfile.mkdtemp(prefix="dreamfoley_demo_"))
    self.lock = threading.Lock()
    self.count = 0

  def run(self, req: Request) -> dict:
    """{"wav", "mp4" (video inputs), "png"} paths of one generation."""
    with self.lock:
      self.count += 1
      out = self.out_root / f"{self.count:05d}"
      base, base_text = self.gen.sample_cfg, self.gen.text_only_cfg
      self.gen.sample_cfg, self.gen.seed = base.replace(cfg_scale=req.cfg_scale), req.seed
      if base_text is not None:   # text-to-audio items sample with these (experiments/synthetic.py)
        self.gen.text_only_cfg = base_text.replace(cfg_scale=req.cfg_scale)
      try:
        r = self.gen.run([req.item], out)[0]
      finally:
        self.gen.sample_cfg, self.gen.text_only_cfg = base, base_text
      if "error" in r:   # Generator.run reports a bad item instead of raising
        raise DemoInputError(r["error"])
      return r

  def handle(self, video, caption, negative, cfg_scale, seed, duration, progress=None):
    """The page's callback: (audio path, video path or None, spectrogram path, status markdown)."""
    import gradio as gr

    try:
      req = request(video, caption, negative, cfg_scale, seed, duration, max_seconds=self.max_seconds,
                    tokenize=self.gen.tokenize, max_text_len=self.gen.max_text_len)
    except DemoInputError as e:
      raise gr.Error(str(e), title="Cannot generate") from e
    for n in req.notes:
      gr.Warning(n)
    if progress is not None:
      progress(0.0, desc="preparing (the first run of a length / CFG scale compiles the sampler)")
    try:
      r = self.run(req)
    except DemoInputError as e:
      raise gr.Error(str(e), title="Cannot generate") from e
    secs = r["frames"] / G.AUDIO_FRAME_RATE
    status = (f"**{secs:.2f} s** generated ({'video + ' if req.item.video else 'text-to-audio, '}caption "
              f"{req.item.caption!r}, CFG {req.cfg_scale:g}, seed {req.seed})")
    return str(r["wav"]), (str(r["mp4"]) if "mp4" in r else None), str(r["png"]), status


def build(demo: Demo, *, examples: Sequence[Sequence] = (), description: str = ""):
  """The Gradio page (gr.Blocks) for `demo`."""
  import gradio as gr

  sc = demo.gen.sample_cfg
  with gr.Blocks(title=TITLE) as page:
    gr.Markdown(f"# {TITLE}\n{description}")
    with gr.Row():
      with gr.Column():
        video = gr.Video(label="video (optional: none = text-to-audio)", sources=["upload"], elem_id="in_video",
                         height=280)
        caption = gr.Textbox(label="caption", placeholder="a metal ball bounces on a wooden floor",
                             elem_id="caption")
        negative = gr.Textbox(label="negative prompt (optional)", placeholder="what the sound should not be",
                              elem_id="negative")
        with gr.Row():
          cfg = gr.Slider(1.0, 10.0, value=float(sc.cfg_scale or 1.0), step=0.25, label="CFG scale",
                          elem_id="cfg_scale")
          seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="seed")
          duration = gr.Number(value=0, minimum=0, label=f"duration (s; 0 = the video's; max {demo.max_seconds:g})",
                               elem_id="duration")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
      with gr.Column():
        audio = gr.Audio(label="generated audio", type="filepath", interactive=False, elem_id="out_audio")
        out_video = gr.Video(label="video with the generated sound", interactive=False, elem_id="out_video",
                             height=280)
        spec = gr.Image(label="spectrogram", type="filepath", interactive=False, elem_id="out_spec")
        status = gr.Markdown(elem_id="status")
    if examples:
      gr.Examples(list(map(list, examples)), inputs=[video, caption], label="clips from the main job")

    def fn(v, c, n, g, s, d, progress=gr.Progress(track_tqdm=True)):
      return demo.handle(v, c, n, g, s, d, progress)

    button.click(fn, [video, caption, negative, cfg, seed, duration], [audio, out_video, spec, status],
                 concurrency_limit=1)
  return page


def main_job_examples(model: str | pathlib.Path, n: int = 3) -> list[tuple[str, str]]:
  """(video, caption) of the first held-out clips when `model` is a main job's model directory."""
  import json

  wd = pathlib.Path(model).parent
  mf = wd / "metrics.json"
  if not mf.exists():
    return []
  out = []
  for c in json.loads(mf.read_text()).get("per_clip", [])[:n]:
    v = wd / "samples" / f"{c['clip_id']}.mp4"
    if v.exists():
      out.append((str(v), c["caption"]))
  return out
