"""Time the synthetic world + codec pipeline and print the codec's reconstruction quality.

  python benchmarks/bench_synthetic.py --num_clips=1500 --num_eval=40

Prints: data generation time, feature + k-means fit time, encode/decode time per clip, and on held-out
clips (seed differs from the fit set) onset F1 (+-40 ms) / mean |offset| of the original and decoded
audio, the spectral centroid per material (original vs decoded) and the log-mel reconstruction error.
"""
import collections
import time

from absl import app, flags
import numpy as np

from dreamfoley_jax.synthetic import codec as sc
from dreamfoley_jax.synthetic import onsets as sync
from dreamfoley_jax.synthetic import world as synthetic

flags.DEFINE_integer("num_clips", 1500, "clips to generate and fit the codec on")
flags.DEFINE_integer("num_eval", 40, "held-out clips to encode/decode and score")
flags.DEFINE_integer("codebook_size", 128, "entries per codebook")
flags.DEFINE_integer("griffin_lim_iters", 32, "Griffin-Lim iterations in decode")
flags.DEFINE_integer("frame_size", 32, "video frame size")
F = flags.FLAGS


def main(_):
  cfg = sc.CodecConfig(codebook_size=F.codebook_size, griffin_lim_iters=F.griffin_lim_iters)
  world = synthetic.SynthConfig(frame_size=F.frame_size)
  c0 = time.process_time()
  t0 = time.perf_counter()
  feats, secs = [], 0.0
  t_feat = 0.0
  analysis = sc.mel_matrices(cfg)[0]
  for clip in synthetic.iter_dataset(F.num_clips, seed=0, cfg=world):
    secs += float(clip["duration"])
    t = time.perf_counter()
    feats.append(sc.log_mel_frames(clip["audio"], cfg, analysis))
    t_feat += time.perf_counter() - t
  t_gen = time.perf_counter() - t0 - t_feat
  print(f"generate: {F.num_clips} clips ({secs / 3600:.2f} h of audio/video) in {t_gen:.1f}s "
        f"({1e3 * t_gen / F.num_clips:.1f} ms/clip)")
  print(f"features: {t_feat:.1f}s ({1e3 * t_feat / F.num_clips:.1f} ms/clip)")
  t = time.perf_counter()
  codec = sc.SyntheticCodec.fit_features(feats, cfg)
  t_fit = time.perf_counter() - t
  print(f"k-means fit: {t_fit:.1f}s  ({cfg.num_codebooks}x{cfg.codebook_size}, {cfg.max_fit_frames} "
        f"frames, {cfg.kmeans_iters} iters)")
  t = time.perf_counter()
  for f in feats:
    codec.encode_features(f)
  t_q = time.perf_counter() - t
  print(f"quantize all: {t_q:.1f}s  ->  generate + features + fit + quantize = "
        f"{t_gen + t_feat + t_fit + t_q:.1f}s wall, {time.process_time() - c0:.1f}s CPU "
        f"(CPU time is what an idle machine's wall time would be, up to 2 cores' overlap)")

  ev = synthetic.make_dataset(F.num_eval, seed=12345, cfg=world)
  t = time.perf_counter()
  codes = [codec.encode(c["audio"]) for c in ev]
  t_enc = time.perf_counter() - t
  t = time.perf_counter()
  dec = [codec.decode(c) for c in codes]
  t_dec = time.perf_counter() - t
  secs = sum(float(c["duration"]) for c in ev)
  print(f"encode {1e3 * t_enc / secs:.1f} ms per s of audio, decode {1e3 * t_dec / secs:.1f} ms per s "
        f"of audio (Griffin-Lim {cfg.griffin_lim_iters} iters)")
  m_orig, m_dec, m_shift = [], [], []
  cents = collections.defaultdict(list)
  err = []
  shift = int(0.12 * synthetic.SAMPLE_RATE)
  for c, y, k in zip(ev, dec, codes):
    ref = c["event_times"]
    m_orig.append(sync.onset_metrics(sync.detect_onsets(c["audio"]), ref))
    m_dec.append(sync.onset_metrics(sync.detect_onsets(y), ref))
    m_shift.append(sync.onset_metrics(sync.detect_onsets(np.pad(y, (shift, 0))[:len(y)]), ref))
    cents[c["material"]].append((sync.spectral_centroid(c["audio"]), sync.spectral_centroid(y)))
    f = codec.features(c["audio"])
    err.append(np.abs(codec.dequantize(k) - f).mean())
  for name, ms in (("original", m_orig), ("decoded", m_dec), ("decoded+120ms", m_shift)):
    a = sync.aggregate_onset_metrics(ms)
    print(f"onsets {name:>14}: F1 {a['f1']:.3f} (P {a['precision']:.3f} R {a['recall']:.3f}, "
          f"{a['n_ref']} events)  mean |offset| {1e3 * a['mean_abs_offset']:.1f} ms")
  for mat in synthetic.MATERIALS:
    if cents[mat]:
      v = np.asarray(cents[mat])
      print(f"centroid {mat:>6}: original {v[:, 0].mean():7.0f} Hz  decoded {v[:, 1].mean():7.0f} Hz  "
            f"mean |rel err| {100 * np.abs(v[:, 1] / v[:, 0] - 1).mean():.1f}%  ({len(v)} clips)")
  print(f"log-mel reconstruction: mean |error| {np.mean(err):.3f} nats ({20 / np.log(10) * np.mean(err):.2f} dB)")


if __name__ == "__main__":
  app.run(main)
