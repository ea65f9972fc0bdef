"""Flax Synchformer audio extractor vs Hugging Face's ASTModel + torch's TransformerEncoderLayer.

The reference is assembled the way av-benchmark's AST wrapper does it (position embeddings for
max_spec_t frames, patch tokens regrouped per time column, a cls-token frequency aggregator).
transformers 5.x renamed the AST keys; they are mapped back to the names in synchformer_state_dict.pth.
"""
import re

import numpy as np
import pytest

from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.eval import frontends, metrics
from dreamfoley_jax.eval.embedders import sync_audio

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_RENAME = [(r"^layers\.(\d+)\.attention\.q_proj", r"encoder.layer.\1.attention.attention.query"),
           (r"^layers\.(\d+)\.attention\.k_proj", r"encoder.layer.\1.attention.attention.key"),
           (r"^layers\.(\d+)\.attention\.v_proj", r"encoder.layer.\1.attention.attention.value"),
           (r"^layers\.(\d+)\.attention\.o_proj", r"encoder.layer.\1.attention.output.dense"),
           (r"^layers\.(\d+)\.mlp\.fc1", r"encoder.layer.\1.intermediate.dense"),
           (r"^layers\.(\d+)\.mlp\.fc2", r"encoder.layer.\1.output.dense"),
           (r"^layers\.", "encoder.layer.")]


def _legacy(k):
  for pat, rep in _RENAME:
    k2 = re.sub(pat, rep, k)
    if k2 != k:
      return k2
  return k


def _reference(c, seed=0):
  torch.manual_seed(seed)
  cfg = transformers.ASTConfig(hidden_size=c.width, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                               intermediate_size=c.mlp_dim, num_mel_bins=c.num_mel_bins, max_length=c.max_frames,
                               hidden_act="gelu", layer_norm_eps=c.ast_eps)
  ast = transformers.ASTModel(cfg).eval()
  agg = torch.nn.TransformerEncoderLayer(d_model=c.width, nhead=c.num_heads, dim_feedforward=c.mlp_dim,
                                         activation=torch.nn.GELU(), batch_first=True, dropout=0.0,
                                         layer_norm_eps=c.agg_eps, norm_first=True).eval()
  cls = torch.randn(1, 1, c.width) * 0.5
  with torch.no_grad():  # random (non-zero) tokens, embeddings and norms
    for p in list(ast.parameters()) + list(agg.parameters()):
      p.copy_(torch.randn_like(p) * 0.3)

  def forward(spec_BxSxTxF):
    b, s, t_in, f_in = spec_BxSxTxF.shape
    f, t = c.grid
    x = ast(input_values=spec_BxSxTxF.reshape(b * s, t_in, f_in)).last_hidden_state  # (BS, 2+f*t, D)
    x = x[:, 2:].permute(0, 2, 1).reshape(b * s, c.width, f, t)  # restore_freq_temp_dims
    x = x.permute(0, 3, 2, 1).reshape(b * s * t, f, c.width)  # FrequencyTransformerEncoderLayer
    x = agg(torch.cat([cls.expand(b * s * t, -1, -1), x], 1))[:, 0]
    return x.reshape(b, s, t, c.width)

  sd = {f"afeat_extractor.ast.{_legacy(k)}": v for k, v in ast.state_dict().items()}
  sd.update({f"afeat_extractor.freq_attn_agg.{k}": v for k, v in agg.state_dict().items()})
  sd["afeat_extractor.freq_attn_agg.cls_token"] = cls
  return forward, sd


def test_sync_audio_matches_hf_ast_reference():
  c = sync_audio.SyncAudioConfig.tiny()
  forward, sd = _reference(c)
  sd["vfeat_extractor.anything"] = torch.zeros(2)  # other towers are ignored
  v = sync_audio.convert_sync_audio(sd, c)
  spec = np.random.default_rng(0).normal(size=(2, 3, c.max_frames, c.num_mel_bins)).astype(np.float32)
  got, _ = sync_audio.SyncAudioEncoder(c).apply(v, spec)
  with torch.no_grad():
    want = forward(torch.tensor(spec)).numpy()
  assert got.shape == (2, 3, 2, 16)
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


def test_real_config_grid_and_keys():
  c = sync_audio.SyncAudioConfig()
  assert c.grid == (12, 6)  # 6 feature columns per 0.64 s segment: Ta of the sync head
  s = sync_audio.torch_shapes(c)
  assert s["afeat_extractor.ast.embeddings.position_embeddings"] == (1, 74, 768)
  # The front end produces exactly the (66, 128) spectrogram segments the encoder takes.
  assert frontends.synchformer_audio_segments(np.zeros(16000 * 8)).shape[1:] == (c.max_frames, c.num_mel_bins)
  assert metrics.sync_audio_segments(8.0) == 24
  sd = {k: np.zeros(v, np.float32) for k, v in s.items()}
  del sd["afeat_extractor.freq_attn_agg.norm2.bias"]
  with pytest.raises(ConversionError, match="freq_attn_agg.norm2.bias"):
    sync_audio.convert_sync_audio(sd, c)
