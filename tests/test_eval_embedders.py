"""Flax PANNs Cnn14 / VGGish vs PyTorch transcriptions of the references, converters, registry errors."""
import numpy as np
import pytest

from dreamfoley_jax.convert.common import ConversionError
from dreamfoley_jax.eval import frontends
from dreamfoley_jax.eval.embedders import base, panns, vggish

torch = pytest.importorskip("torch")
tnn, tF = torch.nn, torch.nn.functional


class _TorchConvBlock(tnn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, cout, 3, padding=1, bias=False)
    self.conv2 = tnn.Conv2d(cout, cout, 3, padding=1, bias=False)
    self.bn1, self.bn2 = tnn.BatchNorm2d(cout), tnn.BatchNorm2d(cout)

  def forward(self, x, pool):
    x = tF.relu(self.bn2(self.conv2(tF.relu(self.bn1(self.conv1(x))))))
    return tF.avg_pool2d(x, pool)


class _TorchCnn14(tnn.Module):
  """av-benchmark Cnn14.forward after the log-mel extractor, eval mode; same state-dict keys."""

  def __init__(self, c):
    super().__init__()
    self.bn0 = tnn.BatchNorm2d(c.mel_bins)
    cin = 1
    for i, w in enumerate(c.widths):
      setattr(self, f"conv_block{i + 1}", _TorchConvBlock(cin, w))
      cin = w
    self.n = len(c.widths)
    self.fc1 = tnn.Linear(cin, c.embed_dim)
    self.fc_audioset = tnn.Linear(c.embed_dim, c.num_classes)

  def forward(self, logmel_BxTxM):
    x = logmel_BxTxM[:, None]
    x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
    for i in range(self.n):
      x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < self.n - 1 else (1, 1))
    x = torch.mean(x, dim=3)
    x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
    x = self.fc1(x)
    return tF.relu(x), self.fc_audioset(tF.relu(x))


def _randomise(module, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * 0.3)
  return module.eval()


def test_cnn14_matches_torch_transcription_after_conversion():
  c = panns.Cnn14Config.tiny()
  ref = _randomise(_TorchCnn14(c), 0)
  sd = {k: v for k, v in ref.state_dict().items()}
  sd["logmel_extractor.melW"] = torch.tensor(frontends.mel_filterbank(16000, 512, 64, 50, 8000, htk=False, slaney_norm=True))
  emb = panns.PannsEmbedder(config=c, variables=panns.convert_cnn14(sd, c))
  wav = np.random.default_rng(0).normal(size=16000 * 2) * 0.1
  logmel = frontends.panns_logmel(wav)[None].astype(np.float32)
  with torch.no_grad():
    want_e, want_l = ref(torch.tensor(logmel))
  got = emb.audio_features(wav[None], 16000, None, "x")
  # audio_features removes DC first; compare through the same input.
  got_direct = emb._apply(emb.variables, logmel)
  np.testing.assert_allclose(np.asarray(got_direct["2048"]), want_e.numpy(), rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(got_direct["logits"]), want_l.numpy(), rtol=2e-4, atol=2e-4)
  assert got["panns_2048"].shape == (16,) and got["panns_logits"].shape == (527,)


def test_cnn14_converter_reports_every_bad_key_and_wrong_melw():
  c = panns.Cnn14Config.tiny()
  sd = _TorchCnn14(c).state_dict()
  del sd["fc1.bias"]
  sd["extra.weight"] = torch.zeros(2)
  sd["conv_block2.conv1.weight"] = torch.zeros(1, 1, 3, 3)
  with pytest.raises(ConversionError) as e:
    panns.convert_cnn14(sd, c)
  msg = str(e.value)
  assert "fc1.bias" in msg and "extra.weight" in msg and "conv_block2.conv1.weight" in msg
  sd = dict(_TorchCnn14(c).state_dict())
  sd["logmel_extractor.melW"] = torch.tensor(frontends.mel_filterbank(32000, 1024, 64, 50, 14000, htk=False, slaney_norm=True))
  with pytest.raises(ConversionError, match="16 kHz"):
    panns.convert_cnn14(sd, c)


def test_real_cnn14_shapes_match_published_parameter_count():
  # Cnn14 has 80,753,615 learned parameters (PANNs paper, Table 1 / its model summary): 79.7M + heads.
  n = sum(int(np.prod(s)) for k, s in panns.torch_shapes(panns.Cnn14Config()).items()
          if not k.endswith(("running_mean", "running_var")))
  assert n == 80_753_615


class _TorchVGG(tnn.Module):
  """torchvggish VGG (av-benchmark: last ReLU removed), same Sequential indices."""

  def __init__(self, c):
    super().__init__()
    layers, cin = [], 1
    for i, w in enumerate(c.widths):
      layers += [tnn.Conv2d(cin, w, 3, padding=1), tnn.ReLU()]
      if i in (0, 1, 3, 5):
        layers.append(tnn.MaxPool2d(2, 2))
      cin = w
    self.features = tnn.Sequential(*layers)
    self.embeddings = tnn.Sequential(tnn.Linear(cin * 24, c.hidden), tnn.ReLU(), tnn.Linear(c.hidden, c.hidden),
                                     tnn.ReLU(), tnn.Linear(c.hidden, c.embed_dim))

  def forward(self, x):
    x = self.features(x)
    x = torch.transpose(x, 1, 3)
    x = torch.transpose(x, 1, 2).contiguous()
    return self.embeddings(x.view(x.size(0), -1))


def test_vggish_matches_torch_transcription_after_conversion():
  c = vggish.VGGishConfig.tiny()
  ref = _randomise(_TorchVGG(c), 1)
  sd = dict(ref.state_dict())
  assert set(sd) == set(vggish.torch_shapes(c))  # the index table matches the Sequential layout
  sd["pproc._pca_matrix"] = torch.zeros(3)  # ignored
  emb = vggish.VGGishEmbedder(config=c, variables=vggish.convert_vggish(sd, c))
  wav = np.random.default_rng(1).normal(size=16000 * 3) * 0.1
  got = emb.audio_features(wav[None], 16000, None, "x")["vggish"]
  ex = frontends.vggish_examples(wav - wav.mean()).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.tensor(ex)[:, None]).numpy()
  assert got.shape == (3, 8)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_real_vggish_shapes():
  s = vggish.torch_shapes(vggish.VGGishConfig())
  assert s["embeddings.0.weight"] == (4096, 12288) and s["embeddings.4.weight"] == (128, 4096)
  # torchvggish: 72,141,184 parameters.
  assert sum(int(np.prod(v)) for v in s.values()) == 72_141_184


def test_random_weight_embedders_are_deterministic():
  wav = np.random.default_rng(2).normal(size=(2, 16000 * 2)) * 0.1
  a = panns.PannsEmbedder(config=panns.Cnn14Config.tiny(), seed=0).audio_features(wav, 16000, 1.5, "x")
  b = panns.PannsEmbedder(config=panns.Cnn14Config.tiny(), seed=0).audio_features(wav, 16000, 1.5, "x")
  np.testing.assert_array_equal(a["panns_logits"], b["panns_logits"])
  v = vggish.VGGishEmbedder(config=vggish.VGGishConfig.tiny(), seed=0).audio_features(wav, 16000, 1.5, "x")
  assert v["vggish"].shape == (1, 8)


def test_missing_checkpoint_errors_list_expected_files(tmp_path):
  with pytest.raises(base.MissingWeightsError, match="Cnn14_16k_mAP=0.438.pth"):
    panns.PannsEmbedder(tmp_path)
  with pytest.raises(base.MissingWeightsError, match="vggish-10086976.pth"):
    vggish.VGGishEmbedder(tmp_path / "nope.pth")
  with pytest.raises(base.MissingWeightsError, match="no checkpoint path"):
    vggish.VGGishEmbedder(None)
