"""The web demo in a real browser: tools/demo.py serves a tiny model directory, headless Debian chromium (selenium)
uploads a generated clip, presses Generate and checks that the audio and the video that come back play; bad
inputs show a message on the page. Screenshots go to $DREAMFOLEY_SCREENSHOTS when set (docs/usage.md's)."""
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

import model_helpers as mh
from dreamfoley_jax import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_demo_run_applies_cfg_to_text_only_and_reports_a_failed_item(tmp_path):
  """The page's CFG scale reaches text-to-audio items too (they sample with sample.text_only, issue 19), and an
  item Generator.run reports as failed (it does not raise) becomes the page's message."""
  from dreamfoley_jax import generate as G
  from dreamfoley_jax import sampling as S

  class Stub:
    sample_cfg, text_only_cfg, seed = S.SampleConfig(cfg_scale=1.5), S.SampleConfig(temperature=1.0, cfg_scale=3.0), 0

    def run(self, items, out):
      self.seen = (self.sample_cfg.cfg_scale, self.text_only_cfg, self.seed)
      return [{"name": "dreamfoley", "error": "sampling failed: out of memory"}]

  stub = Stub()
  d = demo.Demo(stub, out_root=str(tmp_path))
  with pytest.raises(demo.DemoInputError, match="sampling failed: out of memory"):
    d.run(demo.Request(G.Item(video=None, caption="rain", duration=1.0), 2.0, 7))
  assert stub.seen == (2.0, S.SampleConfig(temperature=1.0, cfg_scale=2.0), 7)
  assert (stub.sample_cfg.cfg_scale, stub.text_only_cfg.cfg_scale) == (1.5, 3.0)     # restored after the request


def test_request_validation(tmp_path):
  clip = mh.write_clip(tmp_path / "clip.mp4", 2.0)
  (tmp_path / "fake.mp4").write_text("this is text")
  r = demo.request(str(clip), " a metal ball ", "", 2.5, 7, 0, max_seconds=5)
  assert (r.item.video, r.item.caption, r.item.duration, r.cfg_scale, r.seed) == (str(clip), "a metal ball", 2.0, 2.5, 7)
  assert demo.request(str(clip), "", "", 2, 0, 1.5, max_seconds=5).item.duration == 1.5
  assert demo.request(None, "rain", "", 2, 0, 3, max_seconds=5).item.video is None
  bad = [((str(tmp_path / "fake.mp4"), "", "", 2, 0, 0), r"^fake.mp4: not a video this demo can read \(Invalid data "
           r"found when processing input\); upload an mp4"),
         ((str(clip), "", "", 2, 0, 3), r"duration 3 s is longer than the video \(2.00 s\)"),
         ((str(clip), "", "", 2, 0, 0), None),
         ((None, "rain", "", 2, 0, 0), r"without a video \(text-to-audio\) set a duration"),
         ((None, "", "", 2, 0, 2), r"without a video \(text-to-audio\) the caption says what to generate"),
         ((None, "rain", "", 2, 0, 30), r"longer than this demo's limit of 5 s"),
         ((None, "rain", "", 0.5, 0, 2), r"CFG scale must be between 1 and 10"),
         ((None, "rain", "", 2, -1, 2), r"seed must be >= 0")]
  for args, msg in bad:
    if msg is None:
      demo.request(*args, max_seconds=5)
      continue
    with pytest.raises(demo.DemoInputError, match=msg):
      demo.request(*args, max_seconds=5)
  long = demo.request(None, "x " * 40, "", 2, 0, 1, max_seconds=5, tokenize=lambda s: s.split(), max_text_len=16)
  assert long.notes == ("the caption is 40 tokens; the model reads the first 16",)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  # DREAMFOLEY_DEMO_MODEL=runs/synthetic/model serves the main job's trained model (docs/usage.md's screenshots).
  d = os.environ.get("DREAMFOLEY_DEMO_MODEL") or mh.make_model_dir(root)
  port = _free_port()
  log = open(root / "demo.log", "w")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "demo.py"), f"--model={d}", f"--port={port}",
                           "--max_seconds=5", f"--out_dir={root / 'out'}"], stdout=log, stderr=subprocess.STDOUT, env=env)
  url = f"http://127.0.0.1:{port}/"
  try:
    for _ in range(240):
      if proc.poll() is not None:
        raise RuntimeError(f"tools/demo.py exited: {(root / 'demo.log').read_text()[-3000:]}")
      try:
        urllib.request.urlopen(url, timeout=2)
        break
      except OSError:
        time.sleep(0.5)
    else:
      raise RuntimeError("tools/demo.py did not start serving in 120 s")
    yield url, root
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()


@pytest.fixture()
def browser(tmp_path):
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("needs Debian's chromium + chromium-driver (apt-get install chromium chromium-driver)")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  o = webdriver.ChromeOptions()
  o.binary_location = CHROMIUM
  for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,900", f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
    o.add_argument(a)
  drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
  drv.set_script_timeout(60)
  yield drv
  drv.quit()


def _wait(fn, timeout, what, poll=0.5):
  t0 = time.time()
  while time.time() - t0 < timeout:
    v = fn()
    if v:
      return v
    time.sleep(poll)
  raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _shot(drv, name, full=True):
  """A screenshot of the whole page into $DREAMFOLEY_SCREENSHOTS (if set)."""
  out = os.environ.get("DREAMFOLEY_SCREENSHOTS")
  if not out:
    return
  pathlib.Path(out).mkdir(parents=True, exist_ok=True)
  if full:     # Gradio scrolls an inner element: size the window to the tallest one
    h = drv.execute_script("return Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    drv.set_window_size(1280, min(int(h) + 140, 2400))
    time.sleep(0.5)
  from PIL import Image

  f = pathlib.Path(out) / f"{name}.png"
  drv.save_screenshot(str(f))
  Image.open(f).convert("RGB").quantize(128).save(f, optimize=True)      # small PNGs for docs/


def _open(drv, url):
  from selenium.webdriver.common.by import By

  drv.get(url)
  _wait(lambda: drv.find_elements(By.CSS_SELECTOR, "#generate"), 60, "the page")
  return _wait(lambda: drv.find_elements(By.CSS_SELECTOR, "#in_video input[type=file]"), 30, "the video upload")[0]


def _toasts(drv):
  from selenium.webdriver.common.by import By

  return " | ".join(e.text.replace("\n", " ") for e in drv.find_elements(By.CSS_SELECTOR, ".toast-body"))


AUDIO_JS = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => new OfflineAudioContext(1, 1, 24000).decodeAudioData(b)).then(buf => {
  const x = buf.getChannelData(0); let peak = 0; for (const v of x) peak = Math.max(peak, Math.abs(v));
  done([buf.duration, buf.sampleRate, peak]);
}).catch(e => done(String(e)));
"""

VIDEO_JS = """
const done = arguments[arguments.length - 1];
const v = document.querySelector('#out_video video');
v.muted = true;
v.play().then(() => setTimeout(() => { v.pause(); done([v.duration, v.videoWidth, v.videoHeight,
    v.webkitVideoDecodedByteCount, v.webkitAudioDecodedByteCount, v.error && v.error.message]); }, 1200))
  .catch(e => done(String(e)));
"""


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium + chromedriver")
def test_generate_in_the_browser(server, browser, tmp_path):
  from selenium.webdriver.common.by import By

  url, root = server
  clip = mh.write_clip(tmp_path / "bouncing_ball.mp4", 2.0)
  drv = browser
  _open(drv, url).send_keys(str(clip))
  _wait(lambda: drv.find_elements(By.CSS_SELECTOR, "#in_video video"), 30, "the uploaded clip's preview")
  drv.find_element(By.CSS_SELECTOR, "#caption textarea").send_keys("a metal ball bounces on a wooden floor")
  drv.find_element(By.CSS_SELECTOR, "#generate").click()
  # Progress while it samples: Gradio shows the generator's tqdm bar ("n/50 frame").
  seen = _wait(lambda: [e.text for e in drv.find_elements(By.CSS_SELECTOR, ".progress-text, .progress-level")
                        if "frame" in e.text or "generate" in e.text], 120, "the sampling progress", poll=0.2)
  assert any("/50 frame" in t for t in seen), seen
  _shot(drv, "demo_progress", full=False)
  link = _wait(lambda: [a.get_attribute("href") for a in drv.find_elements(By.CSS_SELECTOR, "#out_audio a[download]")
                        if a.get_attribute("href")], 300, "the generated audio")[0]
  _wait(lambda: drv.find_elements(By.CSS_SELECTOR, "#out_video video[src]"), 30, "the generated video")
  _wait(lambda: drv.find_elements(By.CSS_SELECTOR, "#out_spec img[src]"), 30, "the spectrogram")
  # Playable: chromium's own decoders read the audio (2 s at 24 kHz, not silent) and play the video with its
  # new sound track (both tracks decode).
  dur, sr, peak = drv.execute_async_script(AUDIO_JS, link)
  assert abs(dur - 2.0) < 0.01 and sr == 24000 and peak > 0.01, (dur, sr, peak)
  vd, w, h, vbytes, abytes, err = drv.execute_async_script(VIDEO_JS)
  assert err is None and abs(vd - 2.0) < 0.1 and (w, h) == (256, 256), (vd, w, h, err)
  assert vbytes > 0 and abytes > 0, (vbytes, abytes)          # chromium decoded both tracks
  status = drv.find_element(By.CSS_SELECTOR, "#status").text
  assert "2.00 s generated" in status and "CFG 1.5" in status and "seed 0" in status
  assert (root / "out" / "00001" / "dreamfoley.mp4").exists()
  drv.execute_script("window.scrollTo(0, 0)")
  _shot(drv, "demo_result")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium + chromedriver")
def test_bad_uploads_show_a_message(server, browser, tmp_path):
  from selenium.webdriver.common.by import By

  url, _ = server
  drv = browser
  (tmp_path / "notes.txt").write_text("shopping list: eggs, milk\n")
  _open(drv, url).send_keys(str(tmp_path / "notes.txt"))
  msg = _wait(lambda: _toasts(drv), 30, "a message about the text file")
  assert "Invalid file type: notes.txt" in msg and "video" in msg, msg       # Gradio's own check of the type
  # A text file named like a video passes the type check and reaches the demo's own validation.
  (tmp_path / "holiday.mp4").write_text("this is not really a video\n")
  _open(drv, url).send_keys(str(tmp_path / "holiday.mp4"))
  _wait(lambda: drv.find_elements(By.CSS_SELECTOR, "#in_video video") or "not playable" in _toasts(drv), 30,
        "the upload to finish")                        # the browser's preview cannot play it either
  drv.find_element(By.CSS_SELECTOR, "#generate").click()
  msg = _wait(lambda: "not a video" in _toasts(drv) and _toasts(drv), 60, "the demo's error message")
  assert "holiday.mp4: not a video this demo can read (Invalid data found when processing input); upload an mp4" in msg, msg
  assert not drv.find_elements(By.CSS_SELECTOR, "#out_audio a[download]")
  _shot(drv, "demo_error", full=False)


def test_demo_cli_names_a_missing_model(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py")], capture_output=True, text=True, cwd=tmp_path,
                     env=env, timeout=120)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1] == (
      "error: --model runs/synthetic/model: no such model directory (the main job writes runs/synthetic/model; "
      "tools/export_model.py makes one from a training workdir)")
