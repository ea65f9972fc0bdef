"""Shared helpers for the Qwen2 tests: random transformers reference models and comparisons."""
from __future__ import annotations

import numpy as np

from dreamfoley_jax.models import qwen2

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6)
# 7:1 query:kv head ratio, as Qwen2.5-7B (28/4) and 0.5B (14/2).
GQA7 = dict(vocab_size=384, hidden_size=112, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=14, num_key_value_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6)


def hf_model(seed: int = 0, tie: bool = False, **kw):
  """A randomly initialised fp32 transformers Qwen2ForCausalLM; every tensor (biases, norms) random."""
  import torch
  import transformers

  cfg = transformers.Qwen2Config(**{**TINY, **kw}, tie_word_embeddings=tie, max_position_embeddings=4096,
                                 attn_implementation="eager", torch_dtype="float32")
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(cfg).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.05 * torch.randn(p.shape, generator=gen))
  return model


def hf_forward(model, ids, mask=None):
  """(logits, final hidden states) as numpy fp32."""
  import torch

  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(np.asarray(ids)),
                attention_mask=None if mask is None else torch.as_tensor(np.asarray(mask)).long(),
                output_hidden_states=True)
  return out.logits.numpy(), out.hidden_states[-1].numpy()


def rel_err(got, ref, where=None) -> float:
  """max |got - ref| / max |ref| over positions selected by `where` (B,T); prints both."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  if where is not None:
    got, ref = got[np.asarray(where, bool)], ref[np.asarray(where, bool)]
  diff = float(np.max(np.abs(got - ref)))
  rel = diff / float(np.max(np.abs(ref)))
  print(f"max abs diff {diff:.3e}  (max |ref| {np.max(np.abs(ref)):.3e}, relative {rel:.3e})")
  return rel


def jax_model(cfg: qwen2.Qwen2Config):
  return qwen2.Qwen2ForCausalLM(cfg)
