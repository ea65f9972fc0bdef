r"""Cost per clip of the caption stage's local pieces (docs/data.md "Model stages", caption row).

  python benchmarks/bench_caption_llm.py --out /tmp/bench_caption_llm.json
  python benchmarks/bench_caption_llm.py --preset tiny --new_tokens 8      # smoke run

* The integration LLM on the project's Flax Qwen2 (captions.JaxChat: KV-cache prefill + greedy decode) at a
  real geometry (--preset, default Qwen2.5-0.5B-Instruct's) with random weights, and transformers'
  Qwen2ForCausalLM.generate(do_sample=False) (the `transformers` backend) on the same geometry. Random weights
  never emit the stop token, so each call runs all --new_tokens steps: an upper bound for a merge reply
  (integrate@1 asks for <= 30 words, about 40 tokens) and far above a yes/no verdict (2 tokens).
* The Qwen2.5-VL video input of a 10 s clip: 20 frames (2 fps) at 360 x 640 through the image processor and
  packed into video patches (captions.video_inputs), without the vision tower.
One process, after a warm-up call (compiles); wall seconds per call, median of --reps.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def cpu_model() -> str:
  for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
      return line.split(":", 1)[1].strip()
  return "unknown CPU"


def timed(fn, reps):
  fn()   # warm-up (compiles)
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="qwen2.5-0.5b", help="models/qwen2.py PRESETS name")
  ap.add_argument("--prompt_tokens", type=int, default=120, help="a merge prompt with two ~20-word captions")
  ap.add_argument("--new_tokens", type=int, default=96, help="the stage's max_new_tokens")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--skip", default="", help="comma list of jax,torch,video to leave out")
  ap.add_argument("--out", default="")
  a = ap.parse_args()
  skip = set(filter(None, a.skip.split(",")))

  import jax
  import jax.numpy as jnp

  from dreamfoley_jax.convert import qwen2 as convert_qwen2
  from dreamfoley_jax.data.build import captions
  from dreamfoley_jax.models import qwen2

  cfg = qwen2.from_preset(a.preset)
  rng = np.random.default_rng(0)
  prompt = rng.integers(0, cfg.vocab_size, a.prompt_tokens).tolist()
  res = {"cpu": cpu_model(), "devices": [str(d) for d in jax.devices()], "preset": a.preset,
         "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens}
  params = jax.jit(qwen2.Qwen2ForCausalLM(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(np.asarray, params)
  if "jax" not in skip:
    chat = captions.JaxChat.from_params(params, cfg, captions.CaptionConfig(), a.preset)
    n = len(chat.generate_ids(prompt, a.new_tokens))
    assert n == a.new_tokens, n
    res["jax_s_per_call"] = timed(lambda: chat.generate_ids(prompt, a.new_tokens), a.reps)
    del chat
  if "torch" not in skip:
    import torch
    import transformers

    sd = convert_qwen2.params_to_state_dict(params, cfg)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**qwen2.to_hf_config(cfg))).eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)   # tied: no lm_head
    ids = torch.tensor([prompt])

    def gen():
      with torch.no_grad():
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                    min_new_tokens=a.new_tokens, do_sample=False)
    res["torch_s_per_call"] = timed(gen, a.reps)
    res["torch_threads"] = torch.get_num_threads()
  del params
  if "video" not in skip:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil()
    frames = rng.integers(0, 256, (20, 360, 640, 3), dtype=np.uint8)
    vid = captions.video_inputs(ip, frames, captions.VIDEO_FPS)
    res["video_grid_thw"] = vid["video_grid_thw"].tolist()
    res["video_tokens"] = int(np.prod(vid["video_grid_thw"])) // ip.merge_size ** 2
    res["video_inputs_s"] = timed(lambda: captions.video_inputs(ip, frames, captions.VIDEO_FPS), a.reps)
  print(json.dumps(res, indent=1))
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
  main()
