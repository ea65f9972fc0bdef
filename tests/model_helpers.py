"""A tiny model directory for the model-dir / demo / many-host tests: the main job's architecture (frames mode,
Synchformer + EVA towers, synthetic codec, BPE captions) at the smallest size, random weights, built in seconds."""
import pathlib

import numpy as np

from dreamfoley_jax import configs, model_dir
from dreamfoley_jax.models import params as foley_params
from dreamfoley_jax.synthetic import bpe
from dreamfoley_jax.synthetic import codec as synthetic_codec
from dreamfoley_jax.synthetic import world as synthetic
from dreamfoley_jax.video import io as vio

CODEBOOK = 16


def tiny_experiment(hidden: int = 32):
  c = configs.load_config(str(pathlib.Path(__file__).resolve().parents[1] / "experiments" / "synthetic.py"))
  c.model.decoder.update(dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, vocab_size=320))
  c.model.codebook_size = CODEBOOK
  c.main.codec_size = CODEBOOK
  c.sample.window_s = 2.0
  c.sample.context_s = 1.0
  return c


def clips(n: int = 3, seed: int = 0, max_duration: float = 2.5):
  return synthetic.make_dataset(n, seed=seed, cfg=synthetic.SynthConfig(max_duration=max_duration))


def make_parts(root, *, hidden: int = 32, vocab: int = 300, codebook: int = CODEBOOK, seed: int = 0):
  """(experiment, params, codec path, tokenizer path) in `root`."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  exp = tiny_experiment(hidden)
  cs = clips(3, seed)
  codec = synthetic_codec.SyntheticCodec.fit([c["audio"] for c in cs], synthetic_codec.CodecConfig(
      codebook_size=codebook, kmeans_iters=2, seed=seed), verbose=False)
  codec.save(str(root / "codec.npz"))
  tok = bpe.train_bpe([c["caption"] for c in cs] + ["a metal ball bounces on a wooden floor"], vocab)
  tok.save(str(root / "tokenizer.json"))
  return exp, random_params(exp, seed), root / "codec.npz", root / "tokenizer.json"


def random_params(exp, seed: int = 0, scale: float = 0.1):
  """Normal(0, scale) weights of the model's shapes straight from numpy (foley_params.init_params compiles the whole
  init, ~17 s here for this config; the tests need a random model, not its initialiser)."""
  import flax.linen as nn
  import jax

  rng = np.random.default_rng(seed)
  abstract = nn.unbox(foley_params.abstract_params(configs.model_config(exp.model)))
  return jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(s.dtype), abstract)


def make_model_dir(root, name: str = "model", **kw) -> pathlib.Path:
  exp, params, codec, tok = make_parts(root, **kw)
  return model_dir.write(pathlib.Path(root) / name, exp, params=params, codec=codec, tokenizer=tok,
                         source={"what": "tests/model_helpers.py, random weights"})


def write_clip(path, seconds: float = 2.0, seed: int = 1) -> pathlib.Path:
  """A synthetic clip (H.264 + AAC) as the main job writes them: what a user would upload."""
  c = synthetic.make_dataset(1, seed=seed, cfg=synthetic.SynthConfig(min_duration=seconds, max_duration=seconds))[0]
  vio.write_mp4(path, c["frames_sync"], c["audio"], scale=synthetic.PREVIEW_SCALE)
  return pathlib.Path(path)


