"""Writes tests/fixtures/htdemucs_shapes.json: every state-dict key/shape of the published htdemucs model.

The kwargs are those of the htdemucs model file (955717e8-8726e21a.th, demucs 4.0.1's remote/htdemucs.yaml
bag of one): demucs conf/config.yaml's `htdemucs` section with grids/mmi.py's dconv_mode 3 and
bottom_channels 512, the four MUSDB stems, 44.1 kHz stereo and a 39/5 s (7.8 s) segment; independent ports of
that file list the same layout (channel_upsampler (512, 384, 1), 5 cross-transformer layers per branch).

  pip install demucs==4.0.1 julius==0.2.8 --no-deps
  python tools/goldens/make_htdemucs_manifest.py
"""
import json
import pathlib
import sys
from fractions import Fraction

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

KWARGS = dict(
    sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100, segment=[39, 5],
    channels=48, channels_time=None, growth=2, nfft=4096, wiener_iters=0, end_iters=0, wiener_residual=False,
    cac=True, depth=4, rewrite=True, multi_freqs=[], multi_freqs_depth=3, freq_emb=0.2, emb_scale=10,
    emb_smooth=True, kernel_size=8, stride=4, time_stride=2, context=1, context_enc=0, norm_starts=4,
    norm_groups=4, dconv_mode=3, dconv_depth=2, dconv_comp=8, dconv_init=1e-3, bottom_channels=512,
    t_layers=5, t_hidden_scale=4.0, t_heads=8, t_dropout=0.02, t_layer_scale=True, t_gelu=True, t_emb="sin",
    t_max_positions=10000, t_max_period=10000.0, t_weight_pos_embed=1.0, t_cape_mean_normalize=True,
    t_cape_augment=True, t_cape_glob_loc_scale=[5000.0, 1.0, 1.4], t_sin_random_shift=0, t_norm_in=True,
    t_norm_in_group=False, t_group_norm=False, t_norm_first=True, t_norm_out=True, t_weight_decay=0.0,
    t_lr=None, t_sparse_self_attn=False, t_sparse_cross_attn=False, t_mask_type="diag", t_mask_random_seed=42,
    t_sparse_attn_window=400, t_global_window=100, t_sparsity=0.95, t_auto_sparsity=False,
    t_cross_first=False, rescale=0.1)


def build(kwargs):
  import torch

  from dreamfoley_jax.data.build import separation

  HTDemucs, _ = separation.import_demucs()
  kw = dict(kwargs, segment=Fraction(*kwargs["segment"]))
  with torch.device("meta"):
    return HTDemucs(**kw)


def main():
  m = build(KWARGS)
  sd = m.state_dict()
  out = {"source": "demucs 4.0.1 HTDemucs(**kwargs): the htdemucs model file's kwargs (see the generator)",
         "kwargs": KWARGS, "num_params": int(sum(p.numel() for p in m.parameters())),
         "shapes": {k: list(v.shape) for k, v in sd.items()}}
  p = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "htdemucs_shapes.json"
  p.write_text(json.dumps(out, indent=0) + "\n")
  print(p, len(sd), "keys", out["num_params"], "params")


if __name__ == "__main__":
  main()
