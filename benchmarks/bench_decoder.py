r"""Qwen2 decoder train step (fwd + bwd + AdamW) throughput: dreamfoley_jax vs PyTorch/transformers.

Same config, same CPU threads, one process; JAX and torch steps alternate so that machine load affects
both alike; medians are reported. Config from issue 2: hidden 512, 4 layers, 8 heads, 2 kv heads,
MLP 1408, sequence 1024, batch 4, output vocab 8208 (8 codebooks x 1026).

  python benchmarks/bench_decoder.py                       # optimised JAX path (default flags below)
  python benchmarks/bench_decoder.py --jax_preset=plain    # the plain jitted decoder, for comparison
"""
from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without install

# XLA flags must be set before jax is imported.
_FAST_FLAGS = "--xla_cpu_enable_fast_math=true"
if "--no_xla_flags" not in sys.argv:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_FLAGS).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

_THREADS = flags.DEFINE_integer("threads", 2, "torch intra-op threads (XLA:CPU uses all cores: keep equal)")
_REPS = flags.DEFINE_integer("reps", 5, "timed steps per framework (after warmup)")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps per framework")
_BATCH = flags.DEFINE_integer("batch", 4, "batch size")
_SEQ = flags.DEFINE_integer("seq", 1024, "sequence length")
_LAYERS = flags.DEFINE_integer("layers", 4, "decoder layers")
_PRESET = flags.DEFINE_enum("jax_preset", "fast", ["fast", "plain"],
                            "fast: blocked causal attention + fused projections + silu vjp; plain: HF-exact path")
_OPTIONS = flags.DEFINE_list("jax_options", [], "extra Qwen2Config overrides, e.g. attention_block=128,swiglu_vjp=false")
_ONLY = flags.DEFINE_enum("only", "both", ["both", "jax", "torch"], "run one side only (profiling)")
flags.DEFINE_bool("no_xla_flags", False, "do not set --xla_cpu_enable_fast_math")

HIDDEN, HEADS, KV_HEADS, MLP, VOCAB = 512, 8, 2, 1408, 8208


def jax_step_fn(cfg, lr=1e-4):
  import jax
  import jax.numpy as jnp
  import optax

  from dreamfoley_jax.models import qwen2

  model = qwen2.Qwen2ForCausalLM(cfg)
  tx = optax.adamw(lr, weight_decay=0.01)

  def loss_fn(params, ids):
    logits, _ = model.apply({"params": params}, ids)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

  def step(params, opt_state, ids):
    loss, grads = jax.value_and_grad(loss_fn)(params, ids)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def init(ids):
    params = model.init(jax.random.key(0), ids[:, :8])["params"]
    return params, tx.init(params)

  import flax.linen as nn
  return jax.jit(step, donate_argnums=(0, 1)), (lambda ids: jax.tree.map(lambda x: x, nn.unbox(init(ids))))


def torch_step_fn(layers, lr=1e-4):
  import torch
  import transformers

  cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                                 num_hidden_layers=layers, num_attention_heads=HEADS,
                                 num_key_value_heads=KV_HEADS, tie_word_embeddings=False,
                                 max_position_embeddings=4096, attn_implementation="sdpa")
  model = transformers.Qwen2ForCausalLM(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

  def step(ids):
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return loss.item()

  return step


def main(argv):
  del argv
  import jax
  import numpy as np
  import torch

  from dreamfoley_jax.models import qwen2

  torch.set_num_threads(_THREADS.value)
  B, T = _BATCH.value, _SEQ.value
  cfg = qwen2.Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP,
                          num_hidden_layers=_LAYERS.value, num_attention_heads=HEADS,
                          num_key_value_heads=KV_HEADS, tie_word_embeddings=False, max_position_embeddings=4096)
  if _PRESET.value == "fast":
    cfg = cfg.replace(**qwen2.CPU_FAST_OPTIONS)
  for kv in _OPTIONS.value:
    k, v = kv.split("=")
    cur = getattr(cfg, k)
    v = (v.lower() in ("1", "true")) if isinstance(cur, bool) else type(cur)(v)
    cfg = cfg.replace(**{k: v})
  ids_np = np.random.RandomState(0).randint(0, VOCAB, (B, T)).astype(np.int32)
  print(f"config: {cfg}")
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} torch threads={torch.get_num_threads()} "
        f"jax devices={jax.devices()} batch={B} seq={T}")

  sides = {}
  if _ONLY.value in ("both", "jax"):
    jstep, jinit = jax_step_fn(cfg)
    ids_j = jax.numpy.asarray(ids_np)
    state = list(jinit(ids_j))
    t0 = time.perf_counter()
    state[0], state[1], loss = jstep(state[0], state[1], ids_j)
    loss.block_until_ready()
    print(f"jax compile + first step {time.perf_counter() - t0:.1f}s, loss {float(loss):.4f}")

    def run_jax():
      state[0], state[1], loss = jstep(state[0], state[1], ids_j)
      return float(loss)

    sides["jax"] = run_jax
  if _ONLY.value in ("both", "torch"):
    tstep = torch_step_fn(_LAYERS.value)
    ids_t = torch.as_tensor(ids_np).long()
    sides["torch"] = lambda: tstep(ids_t)

  for _ in range(_WARMUP.value):
    for f in sides.values():
      f()
  times = {k: [] for k in sides}
  cpu = {k: [] for k in sides}
  for r in range(_REPS.value):
    for k, f in sides.items():  # interleaved: load on the machine hits both sides alike
      t0, c0 = time.perf_counter(), time.process_time()
      f()
      times[k].append(time.perf_counter() - t0)
      cpu[k].append(time.process_time() - c0)
  tokens = B * T
  print(f"{'':8s} {'median s/step':>14s} {'tokens/s':>10s} {'cpu s/step':>11s}   all steps (s)")
  med = {}
  for k, ts in times.items():
    med[k] = statistics.median(ts)
    print(f"{k:8s} {med[k]:14.3f} {tokens / med[k]:10.0f} {statistics.median(cpu[k]):11.2f}   "
          f"{' '.join(f'{t:.2f}' for t in ts)}")
  if len(med) == 2:
    print(f"jax/torch throughput ratio (median wall time): {med['torch'] / med['jax']:.2f}x; "
          f"cpu-time ratio: {statistics.median(cpu['torch']) / statistics.median(cpu['jax']):.2f}x")


if __name__ == "__main__":
  app.run(main)
