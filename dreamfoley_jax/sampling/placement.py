"""Mesh placement for sampling: the logical rules for a batch of clips, and params laid out as the trainer's.

Legend: B clips; mesh axes (data, fsdp, tensor) as in sharding.py.
"""
from __future__ import annotations

import functools

import jax

from dreamfoley_jax import sharding
from dreamfoley_jax.models import foley
from dreamfoley_jax.models import params as foley_params


def mesh_rules(mesh, batch_size: int):
  """The logical rules for sampling `batch_size` clips on `mesh`: the trainer's, except that the batch axis
  stays replicated when the clips do not split evenly over (data, fsdp) (e.g. one clip on a pod)."""
  missing = [a for a in sharding.MESH_AXES if a not in mesh.shape]
  if missing:
    raise ValueError(f"sampling needs a {sharding.MESH_AXES} mesh (sharding.make_mesh); this one has axes "
                     f"{tuple(mesh.shape)}, missing {missing}")
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % dp == 0:
    return sharding.LOGICAL_RULES
  return tuple((n, None) if n == "batch" else (n, a) for n, a in sharding.LOGICAL_RULES)


def clip_sharding(mesh, rules, ndim: int):
  """Sharding of a clip-leading (B, ...) prompt array under `mesh_rules`: split over (data, fsdp) when the
  rules split the batch, else replicated."""
  if rules is sharding.LOGICAL_RULES:
    return sharding.data_sharding(mesh, ndim)
  return sharding.replicated(mesh)


@functools.lru_cache(maxsize=8)
def _param_shardings(cfg: foley.FoleyConfig, mesh, rules):
  with sharding.use_mesh(mesh, rules):
    return sharding.shardings_for(foley_params.abstract_params(cfg), mesh, rules)


def param_shardings(cfg: foley.FoleyConfig, mesh, rules=sharding.LOGICAL_RULES):
  """The shardings of `cfg`'s params on `mesh` under `rules` (a pytree matching the params)."""
  return _param_shardings(cfg, mesh, tuple(tuple(r) for r in rules))


def place_params(cfg: foley.FoleyConfig, params, mesh, rules=sharding.LOGICAL_RULES):
  """`params` laid out on `mesh` by their logical axis names (the trainer's layout: layers split over
  tensor / fsdp), so a model too large for one chip samples across the slice."""
  sh = param_shardings(cfg, mesh, rules)
  want, got = jax.tree.structure(sh), jax.tree.structure(params)
  if want != got:
    raise ValueError(f"params do not match the model of this config (pass them through models.params.inference_layout "
                     f"with this config first): expected the tree {want}, got {got}")

  def put(path, x, s):
    try:
      return jax.device_put(x, s)
    except ValueError as e:
      raise ValueError(f"params{jax.tree_util.keystr(path)} {tuple(x.shape)} cannot be laid out as {s.spec} on "
                       f"mesh {dict(mesh.shape)}: {e}") from e

  return jax.tree_util.tree_map_with_path(put, params, sh)
