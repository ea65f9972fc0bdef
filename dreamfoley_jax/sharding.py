"""Device mesh over (data, fsdp, tensor), logical axis rules, and helpers to shard params/activations.

Params carry logical axis names (``nn.with_logical_partitioning``); one short table maps them to mesh
axes. Activations are constrained at block boundaries with ``constrain`` (a no-op without a mesh).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
    # params
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("codebooks", None),
    ("codebook_vocab", None),   # 1026 = 1024 codes + BOS + EOS: not divisible by most mesh sizes
    ("embed_in", "fsdp"),       # input features of projectors (fused video, 1792 = 2^8 x 7)
    ("head_mlp", ("fsdp", "tensor")),   # the codebook heads' hidden width, input of their last layer
    ("layers", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("kernel", None),
    ("null", None),
    ("audio_channels", None),  # audio tokenizer weights: small, replicated
    ("audio_channels_in", None),  # their kernels' input channels
    ("embed_out", None),       # output width of metric-model heads (ImageBind 1024; PANNs 527 and DeSync 21 classes)
)


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves a {data, fsdp, tensor} spec where at most one entry is -1 (= fill the rest)."""
  unknown = sorted(set(spec) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh spec {dict(spec)}: unknown axes {unknown}; the axes are {MESH_AXES}")
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  fills = [i for i, s in enumerate(sizes) if s == -1]
  if len(fills) > 1:
    raise ValueError(f"mesh spec {dict(spec)}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh spec {dict(spec)}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if fills:
    if num_devices % known:
      raise ValueError(f"mesh spec {dict(spec)}: {num_devices} devices not divisible by {known}")
    sizes[fills[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh spec {dict(spec)} -> {tuple(sizes)} needs {math.prod(sizes)} devices, "
                     f"have {num_devices}")
  return tuple(sizes)


def parse_mesh_spec(spec: str) -> dict[str, int] | None:
  """'tensor=8' / 'data=-1,tensor=2' (a command-line mesh) -> {axis: size}; empty -> None (one device)."""
  if not spec.strip():
    return None
  out = {}
  for part in spec.split(","):
    name, _, size = part.partition("=")
    name, size = name.strip(), size.strip()
    if name not in MESH_AXES or not size.lstrip("-").isdigit():
      raise ValueError(f"mesh {spec!r}: {part.strip()!r} is not AXIS=SIZE; expected comma-separated "
                       f"{'|'.join(MESH_AXES)}=SIZE (SIZE -1 = the rest)")
    if name in out:
      raise ValueError(f"mesh {spec!r}: axis {name!r} given twice")
    out[name] = int(size)
  return out


def make_mesh(spec: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (linen constraints need Auto, not Explicit)."""
  devices = list(devices) if devices is not None else jax.devices()
  spec = dict(spec or {"data": -1})
  shape = mesh_shape(spec, len(devices))
  try:
    from jax.experimental import mesh_utils

    arr = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # simulated / odd device sets
    arr = np.asarray(devices).reshape(shape)
  return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules=LOGICAL_RULES):
  """Activates `mesh` and the logical rules so `constrain` and logical partitioning take effect."""
  if mesh is None:
    with nn.logical_axis_rules(rules):
      yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def constrain(x, logical_axes: Sequence[str | None]):
  """Activation sharding constraint by logical names; a no-op when no mesh is active."""
  return nn.with_logical_constraint(x, tuple(logical_axes))


def logical_specs(abstract_boxed):
  """PartitionSpecs (logical names) of a tree of nn.Partitioned / LogicallyPartitioned leaves."""
  return nn.get_partition_spec(abstract_boxed)


def shardings_for(abstract_boxed, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for a boxed (logically partitioned) abstract tree, e.g. from jax.eval_shape(init)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_boxed), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch-leading arrays: batch over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def init_sharded(module: nn.Module, mesh: Mesh, rng, *args, rules=LOGICAL_RULES, **kwargs):
  """Initialises `module` directly into its sharded layout; returns (unboxed params, shardings)."""
  def init_fn(r):
    return module.init(r, *args, **kwargs)

  with use_mesh(mesh, rules):
    abstract = jax.eval_shape(init_fn, rng)
    shardings = shardings_for(abstract, mesh, rules)
    variables = jax.jit(init_fn, out_shardings=shardings)(rng)
  return nn.unbox(variables), shardings


def shard_tree(tree, shardings):
  """Places an (unboxed) tree according to a matching tree of shardings."""
  return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def per_device_bytes(shape, dtype, spec: P, mesh_shape: Mapping[str, int]) -> int:
  """Bytes one device holds of a global array laid out by `spec` on a mesh of `mesh_shape` (even split)."""
  n = math.prod(shape) * np.dtype(dtype).itemsize
  for entry in spec:
    for axis in ((entry,) if isinstance(entry, str) else (entry or ())):
      n //= mesh_shape[axis]
  return int(n)


def large_replicated(tree, shardings, min_bytes: int = 64 << 20) -> list[tuple[str, int]]:
  """(path, bytes) of each leaf at least `min_bytes` large that no mesh axis splits (a full copy per device):
  on a pod such a leaf costs its whole size on every chip, with its Adam moments three times."""
  out = []
  for (path, x), sh in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(shardings)):
    nbytes = math.prod(x.shape) * np.dtype(x.dtype).itemsize
    if nbytes >= min_bytes and not any(e for e in sh.spec):
      out.append(("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path), nbytes))
  return out
