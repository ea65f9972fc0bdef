"""Optimizer: AdamW with warmup + schedule, global-norm clipping, regex-frozen parameter groups.

Gradient accumulation is not an optax wrapper here: `train.make_train_step` scans over microbatches
inside the one jitted step (see its docstring for why), so the optimizer always sees one global batch.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

TRAIN, FROZEN = "train", "frozen"


def path_str(path) -> str:
  """'/'-joined key path of a pytree leaf, e.g. 'decoder/layers_0/self_attn/q_proj/kernel'."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _unbox(tree):
  """nn.unbox without sharding constraints (works on abstract trees, inside or outside a mesh)."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.meta.AxisMetadata) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def param_labels(params, frozen_regex: str | None) -> Any:
  """TRAIN / FROZEN label per leaf; FROZEN where `frozen_regex` matches (re.search) the leaf's path."""
  pat = re.compile(frozen_regex) if frozen_regex else None
  return jax.tree_util.tree_map_with_path(
      lambda p, _: FROZEN if pat is not None and pat.search(path_str(p)) else TRAIN, _unbox(params))


def make_schedule(c: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine / linear decay to `final_lr_frac * lr`, or constant."""
  lr, warm = float(c["lr"]), int(c.get("warmup_steps", 0))
  kind = c.get("schedule", "cosine")
  final = lr * float(c.get("final_lr_frac", 0.0))
  decay_steps = max(int(total_steps) - warm, 1)
  if kind == "cosine":
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=final / lr if lr else 0.0)
  elif kind == "linear":
    after = optax.linear_schedule(lr, final, decay_steps)
  elif kind == "constant":
    after = optax.constant_schedule(lr)
  else:
    raise ValueError(f"optim.schedule must be cosine | linear | constant, got {kind!r}")
  if warm <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


# Weight decay by a leaf's role (its name), never by its rank: in the scanned layout every norm scale and
# bias gains a leading layer axis, and the K heads stack their biases, so `ndim >= 2` would decay them.
DECAY_SUFFIXES = ("kernel",)                        # Linear / conv / head matrices (kernel, fc1_kernel, ...)
DECAY_NAMES = ("embedding", "audio_embed", "audio_pad", "null_text", "null_video",   # embedding tables
               "pos_embed", "temp_embed", "cls_token")                            # encoders' learned tokens
NO_DECAY_SUFFIXES = ("bias", "weight", "scale")     # biases, RMSNorm weights, LayerNorm scales (our choice)


def decays(path: str) -> bool:
  """Whether the leaf at '/'-joined `path` is weight-decayed; an unknown role is an error, not a guess."""
  name = path.rsplit("/", 1)[-1]
  if name in DECAY_NAMES or name.endswith(DECAY_SUFFIXES):
    return True
  if name.endswith(NO_DECAY_SUFFIXES):
    return False
  raise ValueError(f"optim.decay_mask: parameter {path!r} has no weight-decay role; add its name to "
                   f"optim.DECAY_NAMES (matrices, embeddings) or NO_DECAY_SUFFIXES (biases, norm scales)")


def decay_mask(params) -> Any:
  """True where AdamW decays: matrices and embeddings; never biases or norm scales (by name, any layout)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: decays(path_str(p)), _unbox(params))


def make_optimizer(c: Mapping[str, Any], total_steps: int, params, frozen_regex: str | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, schedule). Frozen leaves get `set_to_zero` and no Adam moments (multi_transform masks them out)."""
  if c.get("name", "adamw") != "adamw":
    raise ValueError(f"optim.name: only 'adamw' is implemented, got {c.get('name')!r}")
  sched = make_schedule(c, total_steps)
  chain = []
  if c.get("clip_norm"):
    chain.append(optax.clip_by_global_norm(float(c["clip_norm"])))
  chain.append(optax.adamw(sched, b1=float(c.get("b1", 0.9)), b2=float(c.get("b2", 0.999)),
                           eps=float(c.get("eps", 1e-8)), weight_decay=float(c.get("weight_decay", 0.0)),
                           mask=decay_mask))
  train_tx = optax.chain(*chain)
  labels = param_labels(params, frozen_regex)
  if FROZEN not in jax.tree.leaves(labels):
    return train_tx, sched
  if TRAIN not in jax.tree.leaves(labels):
    raise ValueError(f"train.frozen_regex={frozen_regex!r} freezes every parameter")
  return optax.multi_transform({TRAIN: train_tx, FROZEN: optax.set_to_zero()}, labels), sched


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
