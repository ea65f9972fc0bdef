"""Checkpoints: orbax CheckpointManager (async) holding train state, data position and checksums together.

  workdir/checkpoints/<step>/{state, data, checksums}   one directory per saved step (orbax writes it under
                                                        a temporary name and renames it when complete)
  workdir/rejected_checkpoints/<step>                   steps found corrupt, or discarded after divergence

`checksums` holds two 32-bit sums of every state array's words (plain and position-weighted, mod 2^32)
computed on the devices, each host summing the shards it holds, so they do not depend on the mesh or
the host count; restore recomputes them on the restored arrays. A step that fails to restore or to
verify is reported, moved to rejected_checkpoints/ and the previous step is tried. It also holds every
array's shape and dtype (with the table's sha256): a state of another config is refused by name
(CheckpointMismatchError) before the state is read, and nothing is moved.

Also: preemption (SIGTERM) handling and initial weights from converted orbax checkpoints.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import pathlib
import re
import shutil
import signal
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from dreamfoley_jax.convert import common


class CheckpointError(RuntimeError):
  """No checkpoint in the workdir can be trusted (each one's reason in the message)."""


class InitWeightsError(CheckpointError, ValueError):
  """train.pretrained_decoder / train.init_from cannot be used as given (tools/train.py: exit 2, one line)."""


class InitWeightsNotFoundError(InitWeightsError, FileNotFoundError):
  """The named initial-weights directory does not exist or is not a converted checkpoint."""


class CorruptCheckpointError(RuntimeError):
  pass


class CheckpointMismatchError(CheckpointError):
  """A checkpoint written with another model / optimizer config than the state restoring it: its arrays'
  names or shapes differ (said before anything is read, and nothing is moved: the checkpoint is not damaged)."""


# --------------------------------------------------------------------------------------------------
# Checksums (device-side, independent of sharding)
# --------------------------------------------------------------------------------------------------

def _words(x):
  """uint32 words of an array's bits (narrower types widened, 64-bit split into two words)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)        # (..., 2) for 64-bit types


def _leaf_sums(x):
  """(sum of words, sum of words * (2 i + 1)) mod 2^32, i the flat index: exact in any reduction order.

  The odd weights make any change of a single word change the second sum (odd numbers are invertible
  mod 2^32), and the first catches any single bit flip as well.
  """
  u = _words(x)
  idx = jnp.zeros(u.shape, jnp.uint32)
  stride = 1
  for d in range(u.ndim - 1, -1, -1):       # flat index from iotas: no reshape of a sharded array
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * np.uint32(stride % 2**32)
    stride *= u.shape[d]
  w = idx * np.uint32(2) + np.uint32(1)
  return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * w, dtype=jnp.uint32)])


def _all_finite(tree):
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


@jax.jit
def _sums_and_finite(state):
  fields = [f for f in ("params", "opt_state") if hasattr(state, f)]
  finite = {f: _all_finite(getattr(state, f)) for f in fields} if fields else {"all": _all_finite(state)}
  return jax.tree.map(_leaf_sums, state), finite


def _path(p) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in p)


def shapes(tree) -> dict[str, list]:
  """{leaf path: [shape, dtype name]} of a pytree of arrays or ShapeDtypeStructs (the names `checksums` uses)."""
  def entry(x):
    dtype = x.dtype if hasattr(x, "dtype") else jnp.result_type(x)    # a Python scalar leaf: its jit dtype
    return [[int(d) for d in np.shape(x)], str(jnp.dtype(dtype))]
  return {_path(p): entry(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def mismatch(stored: dict, want: dict) -> list[str]:
  """What differs between a checkpoint's {name: [shape, dtype]} and this state's, one phrase per array
  (names only in one side first, then the differing shapes / dtypes, each group sorted)."""
  def show(e):
    return f"{tuple(e[0])} {e[1]}"
  out = [f"{k} only in the checkpoint" for k in sorted(set(stored) - set(want))]
  out += [f"{k} not in the checkpoint" for k in sorted(set(want) - set(stored))]
  out += [f"{k} stored {show(stored[k])}, this config {show(want[k])}" for k in sorted(set(stored) & set(want))
          if list(stored[k]) != list(want[k])]
  return out


def checksums(state) -> tuple[dict[str, list[int]], dict[str, bool]]:
  """({leaf path: [sum, weighted sum]}, {'params'/'opt_state': all finite}) of a pytree of global arrays."""
  sums, finite = jax.device_get(run_aligned(_sums_and_finite, state))
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  return {_path(p): [int(v[0]), int(v[1])] for p, v in flat}, {k: bool(v) for k, v in finite.items()}


def checksums_on_host(tree) -> tuple[dict[str, list[int]], dict[str, bool]]:
  """`checksums` of a tree of host (numpy) arrays, computed on the CPU backend: a 7B read to host for
  export must not be copied onto one accelerator to be checked (same sums: the reduction is exact)."""
  if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree)):
    try:
      cpu = jax.devices("cpu")[0]
    except RuntimeError:     # JAX_PLATFORMS without cpu
      cpu = None
    if cpu is not None:
      with jax.default_device(cpu):
        return checksums(tree)
  return checksums(tree)


def _json_sha(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


_BARRIER_COUNT = itertools.count()
_ALIGNED: set = set()


def sync_processes(name: str, timeout_s: int = 900):
  """Barrier through the coordination service, not a device collective: CPU (gloo) collectives give a
  new device group only 30 s to assemble, which a slower process (compiling, loading) can exceed."""
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=f"dreamfoley_{name}_{next(_BARRIER_COUNT)}", timeout_ms=timeout_s * 1000)


def run_aligned(jitted, *args):
  """`jitted(*args)`; with several processes, each new signature is compiled first and entered together."""
  if jax.process_count() > 1:
    key = (id(jitted), jax.tree.structure(args),
           tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in jax.tree.leaves(args)))
    if key not in _ALIGNED:
      jitted.lower(*args).compile()
      sync_processes("compiled")
      _ALIGNED.add(key)
  return jitted(*args)


def _all_hosts_ok(ok: bool) -> bool:
  """True only if `ok` on every process (so all hosts take the same branch)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils

  sync_processes("agree")
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


# --------------------------------------------------------------------------------------------------
# Checkpointer
# --------------------------------------------------------------------------------------------------

class Checkpointer:
  """Saves/restores {'state', 'data' (position json), 'checksums'} every `every` steps, verified at restore.

  Keeps the newest `keep` steps (older ones are pruned by `prune`, which the trainer calls once a step
  is confirmed good); `discard` moves a step to rejected_checkpoints/.
  """

  def __init__(self, workdir: str, *, every: int = 1000, keep: int = 3, async_save: bool = True):
    if int(every) <= 0:
      raise ValueError(f"train.ckpt_every={every}: must be >= 1")
    if int(keep) <= 0:
      raise ValueError(f"train.keep_ckpts={keep}: must be >= 1")
    self.workdir = as_path(workdir)
    self.directory = self.workdir / "checkpoints"
    self.rejected_dir = self.workdir / "rejected_checkpoints"
    self.every, self.keep = int(every), int(keep)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=None, save_interval_steps=1, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state, data: dict | None = None, *, force: bool = False) -> bool:
    """Writes `state` and the data position `data` (json) with the state's checksums.

    Raises FloatingPointError (nothing written) if the params or optimizer state are not finite.
    """
    if not force and not self.should_save(step):
      return False
    if step in self.manager.all_steps():
      return False
    sums, finite = checksums(state)
    bad = [k for k, v in finite.items() if not v]
    if bad:
      raise FloatingPointError(f"state fields {bad} hold non-finite values at step {step}: not saved")
    data = dict(data or {})
    shp = shapes(state)
    meta = {"arrays": sums, "shapes": shp, "shapes_sha256": _json_sha(shp), "data_sha256": _json_sha(data),
            "step": int(step), "process_count": jax.process_count()}
    items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data),
             "checksums": ocp.args.JsonSave(meta)}
    return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """(state, data position) of `step` (default latest), restored into `abstract_state`'s shardings
    (any mesh, any host count) and verified against its checksums; CorruptCheckpointError if not."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    self.check_matches(abstract_state, step)
    err = None
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          checksums=ocp.args.JsonRestore()))
      state, data, meta = out["state"], out["data"], out["checksums"]
      if not isinstance(meta, dict) or "arrays" not in meta:
        raise CorruptCheckpointError("its checksums file is missing or unreadable")
    except Exception as e:  # orbax / tensorstore raise many types for missing or damaged files
      err = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    if not _all_hosts_ok(err is None):
      raise CorruptCheckpointError(err or "it failed to restore on another host")
    sums, _ = checksums(state)
    want = meta["arrays"]
    bad = sorted(k for k in set(sums) | set(want) if sums.get(k) != want.get(k))
    if bad:
      raise CorruptCheckpointError(f"checksum mismatch in {len(bad)} of {len(want)} arrays ({', '.join(bad[:4])}"
                                   f"{', ...' if len(bad) > 4 else ''})")
    if meta.get("data_sha256") != _json_sha(data):
      raise CorruptCheckpointError("checksum mismatch in its data position")
    return state, data

  def check_matches(self, abstract_state, step: int):
    """CheckpointMismatchError if `step` holds other arrays (names, shapes or dtypes) than `abstract_state`: a changed
    model or optimizer config, which orbax would report as an unreadable array of no name. Trusted only when
    the checksums file's shape table verifies against its own sha256 (a damaged one is CorruptCheckpointError;
    checkpoints written before the table existed, or an unreadable checksums file: no verdict here, the
    restore reports what it finds)."""
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
    except Exception:   # missing / damaged checksums item: restore() reports it
      return
    if not isinstance(meta, dict) or not isinstance(meta.get("shapes"), dict):
      return
    stored = meta["shapes"]
    if meta.get("shapes_sha256") != _json_sha(stored):
      raise CorruptCheckpointError("checksum mismatch in its shape table")
    diff = mismatch(stored, shapes(abstract_state))
    if diff:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} was written with another model or optimizer config: "
          f"{len(diff)} array(s) differ ({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''}); resume with the "
          "config it was written with, or train in a new workdir")

  def restore_intact(self, abstract_state, *, reject: bool = True):
    """(state, data, step) of the newest step that restores and verifies, or None if there is none.

    Each unusable newer step is reported (a warning naming it and the step used instead) and, with
    `reject`, moved to rejected_checkpoints/. CheckpointError if steps exist but none is intact (then
    nothing is moved: a restarted job keeps failing instead of starting from scratch).
    """
    reasons = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data = self.restore(abstract_state, step)
      except CorruptCheckpointError as e:
        reasons.append((step, str(e)))
        logging.warning("checkpoint step %d in %s is corrupt or incomplete (%s): not used", step, self.directory, e)
        continue
      for bad, why in reasons:
        if reject:
          self.discard(bad, "corrupt")
        logging.warning("checkpoint step %d was unusable (%s); using the previous intact step %d instead%s",
                        bad, why, step, f" (step {bad} moved to {self.rejected_dir})" if reject else "")
      return state, data, step
    if reasons:
      raise CheckpointError(f"no intact checkpoint in {self.directory}: " + "; ".join(
          f"step {s}: {r}" for s, r in reasons) + "; move them away to start from scratch")
    return None

  def discard(self, step: int, why: str):
    """Moves `step` out of the checkpoint directory (kept for inspection in rejected_checkpoints/)."""
    self.wait()
    if jax.process_index() == 0:
      src = self.directory / str(step)
      if src.exists():
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        dst = self.rejected_dir / f"{step}-{why}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
          src.rename(dst)
        except OSError:   # object stores: copy, then delete
          shutil.copytree(str(src), str(dst))
          shutil.rmtree(str(src))
    sync_processes(f"discard_{step}")
    self.manager.reload()

  def prune(self, keep_from: int | None = None):
    """Deletes all but the newest `keep` steps at or below `keep_from` (default: all steps)."""
    steps = [s for s in self.all_steps() if keep_from is None or s <= keep_from]
    for s in steps[:-self.keep]:
      self.manager.delete(s)

  def verify_part(self, step: int, prefix: str, tree) -> bool:
    """Checks `tree` (e.g. params read by other means) against step's checksums of the `prefix/...` arrays.

    True if verified, False if the step has no checksums (written before they existed); raises
    CorruptCheckpointError naming the arrays that differ."""
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
    except Exception:  # no checksums item (an older checkpoint)
      meta = None
    if not isinstance(meta, dict) or "arrays" not in meta:
      return False
    want = {k: v for k, v in meta["arrays"].items() if k.split("/")[0] == prefix}
    sums, _ = checksums_on_host({prefix: tree})
    bad = sorted(k for k in set(sums) | set(want) if sums.get(k) != want.get(k))
    if bad:
      raise CorruptCheckpointError(f"checksum mismatch in {len(bad)} of {len(want)} {prefix} arrays "
                                   f"({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})")
    return True

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def as_path(path) -> epath.Path:
  """A local path made absolute, or a remote one (gs://, s3://, ...) as it is: what orbax reads and writes."""
  return epath.Path(path) if "://" in str(path) else epath.Path(pathlib.Path(path).absolute())


def has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a saved step (a numbered directory under checkpoints/), without orbax."""
  d = as_path(workdir) / "checkpoints"
  return d.is_dir() and any(p.is_dir() and p.name.isdigit() for p in d.iterdir())


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (the restore target for any mesh)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --------------------------------------------------------------------------------------------------
# Preemption
# --------------------------------------------------------------------------------------------------

def jax_preemption_service() -> bool:
  """Whether jax.distributed runs its preemption sync manager (which catches SIGTERM itself)."""
  if not jax.distributed.is_initialized():
    return False
  from jax._src import distributed as _dist

  return getattr(_dist.global_state, "preemption_sync_manager", None) is not None


class PreemptionGuard:
  """Turns SIGTERM (TPU maintenance / preemption notice) into a stop step that every host agrees on.

  Under jax.distributed its preemption sync manager catches the signal (on any one host) and
  `multihost_utils.reached_preemption_sync_point` returns True on every host at the same step. No
  Python handler is installed then: one installed after jax.distributed.initialize() keeps that
  sync point from ever firing. A single process without jax.distributed uses a Python handler.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._flag = threading.Event()
    self._old = {}
    self.uses_jax = jax_preemption_service()
    if not self.uses_jax and threading.current_thread() is threading.main_thread():
      for s in signals:
        self._old[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame):
    logging.warning("received signal %d: finishing the current step, then checkpointing and exiting", signum)
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if self.uses_jax:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        logging.warning("preemption notice: all %d processes stop at step %d", jax.process_count(), step)
        return True
      return False
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
        raise InitWeightsError(f"train.init_from entry {e!r}: expected 'TARGET=PATH' or 'TARGET=PATH::SOURCE'")
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
    raise InitWeightsError("train.pretrained_decoder is not set: this config starts from a converted Qwen2.5 "
                     f"checkpoint ({PRETRAINED_HELP}); pass --config.train.pretrained_decoder=DIR, or "
                     "--config.train.from_scratch=True to train the decoder from random init")
  for target, p, _ in triples:
    if "://" not in p and not (pathlib.Path(p) / "params").is_dir():
      key = "train.pretrained_decoder" if (target, p) == ("decoder", path) else "train.init_from"
      what = "no such directory" if not pathlib.Path(p).exists() else "not a converted checkpoint (no params/)"
      raise InitWeightsNotFoundError(f"{key}={p}: {what}; {PRETRAINED_HELP}")
  return triples


def _has_subtree(path: str, name: str) -> bool:
  try:
    return name in _checkpoint_tree(path)
  except Exception:   # reported by initial_weight_entries' existence check / the restore
    return False


def _checkpoint_tree(path: str) -> dict:
  """Nested dict of ArrayMetadata (shape, dtype) of a `convert.common.save_params` checkpoint."""
  import orbax.checkpoint as ocp

  meta = ocp.StandardCheckpointer().metadata(as_path(path) / "params")
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
        as_path(path) / "params",
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
