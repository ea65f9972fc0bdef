"""Flax Synchformer offset classifier vs a PyTorch transcription of av-benchmark's compare_v_a."""
import math

import numpy as np
import pytest

from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.eval import metrics
from dreamfoley_jax.eval.embedders import base, sync_head

torch = pytest.importorskip("torch")
tnn = torch.nn


class _Attn(tnn.Module):
  def __init__(self, d, h):
    super().__init__()
    self.key, self.query, self.value, self.proj = (tnn.Linear(d, d) for _ in range(4))
    self.h = h

  def forward(self, x):
    b, t, c = x.shape
    k = self.key(x).view(b, t, self.h, c // self.h).transpose(1, 2)
    q = self.query(x).view(b, t, self.h, c // self.h).transpose(1, 2)
    v = self.value(x).view(b, t, self.h, c // self.h).transpose(1, 2)
    att = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1)), dim=-1)
    return self.proj((att @ v).transpose(1, 2).contiguous().view(b, t, c))


class _Block(tnn.Module):
  def __init__(self, d, h):
    super().__init__()
    self.ln1, self.ln2, self.attn = tnn.LayerNorm(d), tnn.LayerNorm(d), _Attn(d, h)
    self.mlp = tnn.Sequential(tnn.Linear(d, 4 * d), tnn.GELU(), tnn.Linear(4 * d, d), tnn.Dropout(0.1))

  def forward(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.mlp(self.ln2(x))


class _PosEmb(tnn.Module):
  def __init__(self, l, d):
    super().__init__()
    self.pos_emb = tnn.Parameter(torch.randn(1, l, d))


class _Global(tnn.Module):
  def __init__(self, c):
    super().__init__()
    d = c.width
    self.vis_in_lnorm, self.aud_in_lnorm, self.ln_f = tnn.LayerNorm(d), tnn.LayerNorm(d), tnn.LayerNorm(d)
    self.OFF_tok, self.MOD_tok = tnn.Parameter(torch.randn(1, 1, d)), tnn.Parameter(torch.randn(1, 1, d))
    self.pos_emb_cfg = _PosEmb(c.seq_len, d)
    self.blocks = tnn.Sequential(*[_Block(d, c.num_heads) for _ in range(c.num_layers)])
    self.off_head = tnn.Linear(d, c.num_classes)

  def forward(self, v, a):
    b = v.shape[0]
    x = torch.cat([self.OFF_tok.expand(b, 1, -1), self.vis_in_lnorm(v), self.MOD_tok.expand(b, 1, -1),
                   self.aud_in_lnorm(a)], 1)
    x = self.ln_f(self.blocks(x + self.pos_emb_cfg.pos_emb))
    return self.off_head(x[:, 0])


class _Sync(tnn.Module):
  def __init__(self, c):
    super().__init__()
    self.vproj, self.aproj, self.transformer = tnn.Linear(c.width, c.width), tnn.Linear(c.width, c.width), _Global(c)

  def compare_v_a(self, vis, aud):
    b, s, tv, d = vis.shape
    return self.transformer(self.vproj(vis).view(b, -1, d), self.aproj(aud).view(b, -1, d))


def test_sync_head_matches_torch_transcription():
  c = sync_head.SyncHeadConfig.tiny()
  torch.manual_seed(0)
  ref = _Sync(c).eval()
  sd = dict(ref.state_dict())
  sd["afeat_extractor.some.weight"] = torch.zeros(3)  # feature extractors are ignored
  assert set(ref.state_dict()) == set(sync_head.torch_shapes(c))
  v = sync_head.convert_sync_head(sd, c)
  r = np.random.default_rng(0)
  vis, aud = r.normal(size=(2, 3, 2, 16)).astype(np.float32), r.normal(size=(2, 3, 1, 16)).astype(np.float32)
  got, _ = sync_head.SyncHead(c).apply(v, vis, aud)
  with torch.no_grad():
    want = ref.compare_v_a(torch.tensor(vis), torch.tensor(aud)).numpy()
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_real_sync_head_shapes():
  c = sync_head.SyncHeadConfig()
  s = sync_head.torch_shapes(c)
  # 1 + 14 segments * 8 video tokens + 1 + 14 * 6 audio tokens
  assert c.seq_len == 1 + metrics.DESYNC_WINDOW_SEGMENTS * 8 + 1 + metrics.DESYNC_WINDOW_SEGMENTS * 6
  assert s["transformer.off_head.weight"] == (len(metrics.DESYNC_GRID_S), 768)
  with pytest.raises(ConversionError, match="transformer.ln_f.bias"):
    sd = base.random_state_dict(s, 0)
    del sd["transformer.ln_f.bias"]
    sync_head.convert_sync_head(sd, c)
