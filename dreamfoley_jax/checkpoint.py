"""Checkpoints: orbax CheckpointManager (async) holding the train state and the grain iterator together.

  workdir/checkpoints/<step>/{state, data}   one directory per saved step (orbax writes it under a
                                             temporary name and renames it when complete, so a killed
                                             job never leaves a half-written step that looks finished)

Also: SIGTERM handling (TPU preemption notice) and initial weights from converted orbax checkpoints.
"""
from __future__ import annotations

import pathlib
import signal
import threading
from typing import Any, Sequence

import jax
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


def load_initial_weights(params, param_shardings, entries: Sequence[Any]):
  """Returns `params` with subtrees replaced by converted checkpoints (checked key-by-key, sharded)."""
  triples = parse_init_from(entries)
  if not triples:
    return params
  params = jax.tree.map(lambda x: x, params)   # shallow copy of the containers
  for target, path, source in triples:
    logging.info("initialising params[%r] from %s [%r]", target or "/", path, source or "/")
    loaded = common.load_params(path)
    src = _subtree(loaded, source, f"{path}")
    dst = _subtree(params, target, "model params")
    dst_sh = _subtree(param_shardings, target, "model shardings")
    want = {k: tuple(v.shape) for k, v in common.flatten(dst).items()}
    got = {k: tuple(np.shape(v)) for k, v in common.flatten(src).items()}
    common.check_keys(want, got, source=f"{path} [{source or '/'}] -> params[{target or '/'}]")
    flat_sh = common.flatten(dst_sh)
    flat_dst = common.flatten(dst)
    new = {k: jax.device_put(np.asarray(v).astype(flat_dst[k].dtype), flat_sh[k])
           for k, v in common.flatten(src).items()}
    del loaded, src
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
