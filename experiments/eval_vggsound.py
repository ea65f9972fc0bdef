"""Table 1 protocol: VGGSound-Test, 8 s clips, the seven metrics of av-benchmark + the paper's KL.

  python tools/evaluate.py --config experiments/eval_vggsound.py \
      --config.gen_dir /data/dreamfoley_out/vggsound_test \
      --config.video_dir /data/vggsound/test_videos \
      --config.captions_csv /data/vggsound/vggsound_test_captions.csv \
      --config.weights_dir /data/metric_weights \
      --config.out /data/dreamfoley_out/vggsound_test_metrics.json

Only some weights? `--config.metrics=panns,vggish` computes just FD_PANNs, KL_PANNs, IS and FD_VGG.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.gen_dir = ""              # generated audio: <name>.wav / .flac (name = video stem, or stem-<k>)
  c.video_dir = ""            # VGGSound-Test videos (<name>.mp4); their audio tracks are the ground truth
  c.captions_csv = ""         # name,caption (the paper released captions for VGGSound-Test)
  c.gt_audio_dir = ""         # optional: ground-truth audio files instead of the videos' audio tracks
  c.duration_s = 8.0          # MMAudio / av-benchmark protocol: 8 s clips
  c.metrics = "panns,vggish,passt,clap,imagebind,synchformer"
  c.weights_dir = ""          # directory holding every checkpoint under its published file name
  c.weights = ml_collections.ConfigDict(dict(panns="", vggish="", passt="", clap="", imagebind="", synchformer=""))
  c.fd_method = "sqrtm"       # av-benchmark's scipy sqrtm; "eig" is exact for rank-deficient covariances
  c.device = "cpu"            # torch device for the delegated (PyTorch) embedders, e.g. cuda
  c.clap_seed = 0             # seeds laion_clap's random 10 s crop of longer audio (unseeded upstream)
  c.clap_tokenizer = ""       # roberta-base tokenizer.json or vocab.json+merges.txt; default WEIGHTS/roberta-base
  c.cache_dir = ""            # default <gen_dir>/eval_cache
  c.ref_cache_dir = ""        # ground truth / video / caption features; share it across models
  c.out = ""                  # default <gen_dir>/eval_metrics.json (+ .md table)
  c.row_name = "DreamFoley"
  c.ib_scale = 100.0          # the table prints IB-score x100 as the paper does; the JSON keeps the raw cosine
  c.pairing = "av-benchmark"  # generated stem -> video as av-benchmark pairs them; "stem": exact or NAME-<k>
                              # (docs/evaluation.md "Pairing and clip sets")
  return c
