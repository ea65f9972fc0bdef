"""Write a few synthetic clips for a person to look at and listen to (original and codec round trip).

  python tools/synth_preview.py --out=/tmp/synth_preview --num_clips=4 [--codec=/path/codec.npz]

Per clip: <id>.mp4 (video upscaled 8x, original sound muxed in), <id>.wav, <id>.codec.wav and
<id>.codec.mp4 (the audio after encode -> decode), and captions/event times in index.json. Without
--codec, a codec is fitted on 300 fresh clips first (a few seconds) and saved to <out>/codec.npz.
"""
import json
import os

from absl import app, flags

from dreamfoley_jax.synthetic import codec as sc
from dreamfoley_jax.synthetic import world as synthetic

flags.DEFINE_string("out", "/tmp/synth_preview", "output directory")
flags.DEFINE_integer("num_clips", 4, "clips to write")
flags.DEFINE_integer("seed", 1000, "seed of the previewed clips")
flags.DEFINE_string("codec", "", "a saved SyntheticCodec .npz (default: fit one)")
F = flags.FLAGS


def main(_):
  os.makedirs(F.out, exist_ok=True)
  if F.codec:
    codec = sc.SyntheticCodec.load(F.codec)
  else:
    print("fitting a codec on 300 clips ...", flush=True)
    codec = sc.SyntheticCodec.fit((c["audio"] for c in synthetic.iter_dataset(300, seed=0)), verbose=True)
    codec.save(os.path.join(F.out, "codec.npz"))
  index = []
  for clip in synthetic.iter_dataset(F.num_clips, seed=F.seed):
    name = clip["clip_id"]
    synthetic.write_clip(F.out, clip, name=name)
    y = codec.decode(codec.encode(clip["audio"]))
    synthetic.write_clip(F.out, clip, audio=y, name=name + ".codec")
    index.append({"clip_id": name, "caption": clip["caption"], "material": clip["material"],
                  "floor": clip["floor"], "duration": float(clip["duration"]),
                  "event_times": [float(t) for t in clip["event_times"]]})
    print(f"{name}: {clip['caption']}  events at {index[-1]['event_times']}", flush=True)
  with open(os.path.join(F.out, "index.json"), "w") as f:
    json.dump(index, f, indent=1)
  print(f"wrote {len(index)} clips to {F.out}")


if __name__ == "__main__":
  app.run(main)
