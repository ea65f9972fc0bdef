"""The synthetic demo in one place: the world, its codec, the encoder pretext, the caption BPE, the onset
metrics and the main job that ties them together (tools/main_job.py runs it).

  world.py    procedural clips: a bouncing object, its impact sounds, captions, true event times
  codec.py    the weights-free RVQ codec (K = 8, 25 Hz), fitted on the training audio
  bpe.py      a byte-level BPE fitted on the captions
  pretext.py  self-supervised audio-visual pretraining of the video towers (job stage 4)
  onsets.py   onset detection, onset F1 against the true events, spectral centroids (job stage 8)
  job.py      data -> codec -> records -> train -> CFG sampling -> metrics
"""
