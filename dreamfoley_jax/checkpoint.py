"""Checkpoints: orbax CheckpointManager (async) holding the train state and the grain iterator together.

  workdir/checkpoints/<step>/{state, data}   one directory per saved step (orbax writes it under a
                                             temporary name and renames it when complete, so a killed
                                             job never leaves a half-written step that looks finished)

Also: SIGTERM handling (TPU preemption notice) and initial weights from converted orbax checkpoints.
"""
from __future__ import annotations

import pathlib
import re
import signal
import threading
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dreamfoley_jax.convert import common


class Checkpointer:
  """Saves/restores {'state': train state pytree, 'data': grain iterator} every `every` steps."""

  def __init__(self, workdir: str, *, every: int = 1000, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.every = max(int(every), 1)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    if not force and not self.should_save(step):
      return False
    if step in self.manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      import grain

      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state, data_iter=None, step: int | None = None):
    """State restored into `abstract_state`'s shardings (any mesh); `data_iter` is advanced in place."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      import grain

      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return out["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a saved step (a numbered directory under checkpoints/), without orbax."""
  d = pathlib.Path(workdir) / "checkpoints"
  return d.is_dir() and any(p.is_dir() and p.name.isdigit() for p in d.iterdir())


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (the restore target for any mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --------------------------------------------------------------------------------------------------
# Preemption
# --------------------------------------------------------------------------------------------------

class PreemptionGuard:
  """Turns SIGTERM (TPU maintenance / preemption notice) into a flag the train loop polls per step.

  Multi-host: `jax.experimental.multihost_utils.reached_preemption_sync_point` makes all hosts agree
  on the step (needs jax.distributed, whose coordination service catches the signal itself).
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._old = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._old[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    logging.warning("received signal %d: finishing the current step, then checkpointing and exiting", signum)
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      try:
        return bool(multihost_utils.reached_preemption_sync_point(step)) or self._flag.is_set()
      except Exception:  # coordination service without preemption notifier
        pass
    return self._flag.is_set()

  def restore(self):
    for s, h in self._old.items():
      signal.signal(s, h)


# --------------------------------------------------------------------------------------------------
# Initial weights from converted checkpoints
# --------------------------------------------------------------------------------------------------

def parse_init_from(entries: Sequence[Any]) -> list[tuple[str, str, str]]:
  """Entries 'TARGET=PATH' or 'TARGET=PATH::SOURCE' (or (target, path, source) tuples) -> triples.

  TARGET / SOURCE are '/'-joined subtree paths ('' = root) of our params / the checkpoint's params,
  e.g. 'decoder=/ckpts/qwen2.5-7b::model' maps a converted Qwen2ForCausalLM's 'model' into 'decoder'.
  """
  out = []
  for e in entries or ():
    if isinstance(e, str):
      if "=" not in e:
        raise ValueError(f"train.init_from entry {e!r}: expected 'TARGET=PATH' or 'TARGET=PATH::SOURCE'")
      target, rest = e.split("=", 1)
      path, _, source = rest.partition("::")
      out.append((target.strip("/"), path, source.strip("/")))
    else:
      t, p, s = (tuple(e) + ("",))[:3]
      out.append((str(t).strip("/"), str(p), str(s).strip("/")))
  return out


def _subtree(tree, path: str, what: str):
  node = tree
  for part in [x for x in path.split("/") if x]:
    if not isinstance(node, dict) or part not in node:
      keys = sorted(node) if isinstance(node, dict) else type(node).__name__
      raise KeyError(f"{what}: no subtree {path!r} (stopped at {part!r}; available: {keys})")
    node = node[part]
  return node


PRETRAINED_HELP = ("tools/convert_checkpoint.py --family qwen2 --input /ckpt/Qwen2.5-7B --output /ckpt/qwen7b_jax "
                   "converts one")


def initial_weight_entries(t) -> list[tuple[str, str, str]]:
  """The `train` section's initial weights as (target, path, source) triples: `init_from` entries plus
  `pretrained_decoder` (a converted Qwen2.5 checkpoint -> params['decoder']). A config that sets
  `from_scratch=False` (experiments/paper_7b.py) must name the checkpoint; one-line errors otherwise."""
  triples = parse_init_from(list(t.get("init_from") or ()))
  path = str(t.get("pretrained_decoder") or "")
  if path:
    triples.append(("decoder", path, "model" if _has_subtree(path, "model") else ""))
  elif "from_scratch" in t and not t.from_scratch:
    raise ValueError("train.pretrained_decoder is not set: this config starts from a converted Qwen2.5 "
                     f"checkpoint ({PRETRAINED_HELP}); pass --config.train.pretrained_decoder=DIR, or "
                     "--config.train.from_scratch=True to train the decoder from random init")
  for target, p, _ in triples:
    if "://" not in p and not (pathlib.Path(p) / "params").is_dir():
      key = "train.pretrained_decoder" if (target, p) == ("decoder", path) else "train.init_from"
      what = "no such directory" if not pathlib.Path(p).exists() else "not a converted checkpoint (no params/)"
      raise FileNotFoundError(f"{key}={p}: {what}; {PRETRAINED_HELP}")
  return triples


def _has_subtree(path: str, name: str) -> bool:
  try:
    return name in _checkpoint_tree(path)
  except Exception:   # reported by initial_weight_entries' existence check / the restore
    return False


def _checkpoint_tree(path: str) -> dict:
  """Nested dict of ArrayMetadata (shape, dtype) of a `convert.common.save_params` checkpoint."""
  import orbax.checkpoint as ocp

  meta = ocp.StandardCheckpointer().metadata(pathlib.Path(path).absolute() / "params")
  meta = getattr(meta, "item_metadata", meta)
  return dict(getattr(meta, "tree", meta))


_UNROLLED = re.compile(r"(^|/)layers_(\d+)/")
_SCANNED = "layers/layer/"


def _as_layout(src: dict[str, tuple], scanned: bool) -> tuple[dict[str, tuple], dict]:
  """Source {key: shape} re-expressed in the target's decoder layout, plus, per re-laid-out target key, the
  source keys it is built from (`stack`: layers_0..L-1 -> layers/layer; `unstack`: one slice of a stack)."""
  out, plan = {}, {}
  if scanned:
    groups: dict[str, dict[int, str]] = {}
    for k, shp in src.items():
      m = _UNROLLED.search(k)
      if m is None:
        out[k] = shp
        continue
      dk = k[:m.start()] + m.group(1) + _SCANNED + k[m.end():]
      groups.setdefault(dk, {})[int(m.group(2))] = k
    for dk, by_i in groups.items():
      shapes = {tuple(src[k]) for k in by_i.values()}
      if len(shapes) != 1:       # layers disagree: keep their own keys, so check_keys names each of them
        out.update({k: tuple(src[k]) for k in by_i.values()})
        continue
      keys = [by_i[i] for i in sorted(by_i)]
      # a missing layer shows as a stack of the wrong depth (L-1 for L)
      out[dk] = (len(keys) if sorted(by_i) == list(range(len(keys))) else -1,) + shapes.pop()
      plan[dk] = ("stack", keys)
  else:
    for k, shp in src.items():
      if _SCANNED not in k:
        out[k] = shp
        continue
      for i in range(shp[0]):
        dk = k.replace(_SCANNED, f"layers_{i}/", 1)
        out[dk] = tuple(shp[1:])
        plan[dk] = ("unstack", (k, i))
  return out, plan


def _is_scanned_tree(flat: Mapping[str, Any]) -> bool | None:
  if any(_SCANNED in k for k in flat):
    return True
  if any(_UNROLLED.search(k) for k in flat):
    return False
  return None


def load_initial_weights(params, param_shardings, entries: Sequence[Any]):
  """Returns `params` with subtrees replaced by converted checkpoints, restored straight onto
  `param_shardings` (orbax gets sharded targets: no host copy, no full copy on one device).

  Each checkpoint's decoder layout (scanned `layers/layer` or unrolled `layers_i`) may differ from the
  model's: layers are restored sharded one by one and stacked on device (or a stack restored and
  sliced). Keys and shapes are checked first: one ConversionError lists every missing / unexpected /
  mis-shaped key. Values are cast to the params' dtype (e.g. bf16 HF weights -> fp32 masters)."""
  import orbax.checkpoint as ocp
  from jax.sharding import NamedSharding, PartitionSpec

  triples = parse_init_from(entries)
  if not triples:
    return params
  params = jax.tree.map(lambda x: x, params)   # shallow copy of the containers
  for target, path, source in triples:
    logging.info("initialising params[%r] from %s [%r] onto the training shardings", target or "/", path,
                 source or "/")
    tree = _checkpoint_tree(path)
    src_meta = common.flatten(_subtree(tree, source, f"{path}"))
    dst = common.flatten(_subtree(params, target, "model params"))
    dst_sh = common.flatten(_subtree(param_shardings, target, "model shardings"))
    want = {k: tuple(v.shape) for k, v in dst.items()}
    scanned = _is_scanned_tree(dst)
    got, plan = ((_as_layout({k: tuple(m.shape) for k, m in src_meta.items()}, scanned))
                 if scanned is not None and _is_scanned_tree(src_meta) not in (None, scanned)
                 else ({k: tuple(m.shape) for k, m in src_meta.items()}, {}))
    common.check_keys(want, got, source=f"{path} [{source or '/'}] -> params[{target or '/'}]")

    def sds(shape, k, spec=None):
      sh = dst_sh[k] if spec is None else NamedSharding(dst_sh[k].mesh, PartitionSpec(*spec))
      return jax.ShapeDtypeStruct(shape, dst[k].dtype, sharding=sh)

    def spec_of(k):
      sp = tuple(dst_sh[k].spec)
      return sp + (None,) * (len(want[k]) - len(sp))

    item = {}
    for k in want:
      if k not in plan:
        item[k] = sds(want[k], k)
      elif plan[k][0] == "stack":          # each layer sharded as one slice of the stack
        for sk in plan[k][1]:
          item[sk] = sds(want[k][1:], k, spec_of(k)[1:])
      else:                                # the whole stack, sharded like each of its slices
        sk, _ = plan[k][1]
        item.setdefault(sk, sds(tuple(src_meta[sk].shape), k, (None,) + spec_of(k)))
    prefix = [x for x in source.split("/") if x]
    nested = common.unflatten({"/".join(prefix + [k]): v for k, v in item.items()})
    restored = ocp.PyTreeCheckpointer().restore(
        pathlib.Path(path).absolute() / "params",
        args=ocp.args.PyTreeRestore(item=nested, restore_args=ocp.checkpoint_utils.construct_restore_args(nested),
                                    partial_restore=True))
    flat = common.flatten(_subtree(restored, source, path))
    new = {}
    for k in want:
      if k not in plan:
        new[k] = flat[k]
      elif plan[k][0] == "stack":
        new[k] = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=dst_sh[k])(*[flat[sk] for sk in plan[k][1]])
      else:
        sk, i = plan[k][1]
        new[k] = jax.jit(lambda x, i=i: x[i], out_shardings=dst_sh[k])(flat[sk])
    del restored, flat
    new_tree = common.unflatten(new)
    if target:
      parent = params
      parts = target.split("/")
      for part in parts[:-1]:
        parent[part] = dict(parent[part])
        parent = parent[part]
      parent[parts[-1]] = new_tree
    else:
      params = new_tree
  return params
