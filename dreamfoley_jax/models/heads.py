"""The K codebook heads: one MLP per codebook over the decoder's hidden states, logits in fp32.

Legend (dreamfoley_jax.models): B batch, La audio columns, K codebooks, D decoder width, F head hidden width,
V per-codebook vocab, R = B * La flattened rows.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class CodebookHeads(nn.Module):
  """K independent MLP heads (stacked params, one einsum): (B,La,D) -> (B,La,K,V)."""
  num_codebooks: int
  vocab: int
  hidden: int
  depth: int = 2
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, h_BxLaxD):
    K, D = self.num_codebooks, h_BxLaxD.shape[-1]
    pd, cd = jnp.dtype(self.param_dtype), jnp.dtype(self.dtype)
    init = nn.initializers.normal(0.02)
    B, La = h_BxLaxD.shape[:2]
    x_RxD = h_BxLaxD.reshape(B * La, D).astype(cd)
    if self.depth == 1:
      w = self.param("kernel", nn.with_logical_partitioning(init, ("codebooks", "embed", "codebook_vocab")),
                     (K, D, self.vocab), pd)
      b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("codebooks", "codebook_vocab")),
                     (K, self.vocab), pd)
      return logits_fp32("rd,kdv->rkv", x_RxD, w, b).reshape(B, La, K, self.vocab)
    w1 = self.param("fc1_kernel", nn.with_logical_partitioning(init, ("codebooks", "embed", "mlp")),
                    (K, D, self.hidden), pd)
    b1 = self.param("fc1_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("codebooks", "mlp")),
                    (K, self.hidden), pd)
    # split over fsdp x tensor: 7B K=8 x 3584 x 1026 fp32 is 112 MB (+ Adam), replicated before
    w2 = self.param("fc2_kernel", nn.with_logical_partitioning(init, ("codebooks", "head_mlp", "codebook_vocab")),
                    (K, self.hidden, self.vocab), pd)
    b2 = self.param("fc2_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("codebooks", "codebook_vocab")),
                    (K, self.vocab), pd)
    z_RxKxF = nn.gelu(jnp.einsum("rd,kdf->rkf", x_RxD, w1.astype(cd)) + b1.astype(cd), approximate=False)
    return logits_fp32("rkf,kfv->rkv", z_RxKxF, w2, b2).reshape(B, La, K, self.vocab)


def logits_fp32(spec: str, x, w, b) -> Array:
  """The heads' last projection in fp32 whatever the compute dtype: bf16 logits would be off by up to a
  bf16 ulp (0.06 at |logit| 8; ~0.016 nats/token of CE, x3 after CFG guidance). HIGHEST keeps TPUs (bf16
  passes by default) and GPUs (TF32) from rounding the fp32 operands. ~0.4% of the 7B step's FLOPs."""
  f32 = jnp.float32
  y = jnp.einsum(spec, x.astype(f32), w.astype(f32), precision=jax.lax.Precision.HIGHEST)
  return y + b.astype(f32)
