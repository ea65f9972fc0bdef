"""Ahead-of-time compilation of the real train step for a named TPU topology (no TPUs needed).

Uses libtpu from PyPI (`pip install 'jax[tpu]'`) and `jax.experimental.topologies`; every argument is
abstract (jax.eval_shape), so no array is ever allocated.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
from absl import logging

# name -> (topology_name, chip_config_name, chips, HBM GiB per chip)
_FAMILIES = {
    # v5p-N / v4-N count TensorCores: N/2 megacore chips.
    "v5p": ("v5", "megacore", 95.0, {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4",
                                      256: "4x4x8", 512: "4x8x8", 1024: "8x8x8"}),
    "v4": ("v4", "megacore", 32.0, {8: "2x2x1", 16: "2x2x2", 32: "2x2x4", 64: "2x4x4", 128: "4x4x4",
                                    256: "4x4x8", 512: "4x8x8"}),
    # v5e-N counts chips.
    "v5e": ("v5e", "default", 16.0, {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
                                     256: "16x16"}),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str            # e.g. v5p-128
  topology: str        # e.g. v5:4x4x4
  chip_config: str
  chips: int
  hbm_gib: float


def parse_topology(name: str) -> Topology:
  fam, _, n = name.partition("-")
  if fam not in _FAMILIES or not n.isdigit() or int(n) not in _FAMILIES[fam][3]:
    known = [f"{f}-{k}" for f, v in _FAMILIES.items() for k in v[3]]
    raise ValueError(f"unknown topology {name!r}; known: {', '.join(known)}")
  prefix, chip_cfg, hbm, shapes = _FAMILIES[fam]
  shape = shapes[int(n)]
  return Topology(name, f"{prefix}:{shape}", chip_cfg, math.prod(int(x) for x in shape.split("x")), hbm)


def topology_devices(t: Topology):
  from jax.experimental import topologies

  dims = [int(x) for x in t.topology.split(":")[1].split("x")]
  host = tuple(min(d, 2) for d in dims[:2]) + ((1,) if len(dims) == 3 else ())
  desc = topologies.get_topology_desc(platform="tpu", topology_name=t.topology, chip_config_name=t.chip_config,
                                      chips_per_host_bounds=host + (1,) * (3 - len(host)), num_slices=1,
                                      wrap=(False,) * 3)
  return desc.devices


def compile_train_step(c, topology: str) -> dict:
  """Compiles train.make_train_step for `c` on `topology`; returns memory / FLOPs figures per chip."""
  import flax.linen as nn  # noqa: F401

  from dreamfoley_jax import optim, sharding, train
  from dreamfoley_jax.models import foley

  t = parse_topology(topology)
  devices = topology_devices(t)
  mesh = sharding.make_mesh(dict(c.mesh), devices=devices)
  fcfg = train.model_config(c)
  model = foley.DreamFoley(fcfg)
  ap = foley.abstract_params(fcfg)
  regex = c.train.get("frozen_regex") or None
  tx, sched = optim.make_optimizer(c.optim, int(c.train.steps), ap, regex)
  labels = optim.param_labels(ap, regex)
  spec = train.global_batch_spec(c, fcfg)
  with sharding.use_mesh(mesh):
    init = train.make_init_fn(model, tx, fcfg, int(c.train.seed))
    abstract = jax.eval_shape(init)
    state_sh = train.state_shardings(abstract, mesh, tx)
    abstract = train.unbox_abstract(abstract)
    a_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, state_sh)
    b_sh = train.batch_shardings(spec, mesh)
    a_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=b_sh[k]) for k, v in spec.items()}
    update = train.make_train_step(model, fcfg, tx, sched, labels, int(c.train.get("grad_accum", 1)))
    fn = jax.jit(update, in_shardings=(state_sh, b_sh), out_shardings=(state_sh, None), donate_argnums=0)
    t0 = time.time()
    lowered = fn.lower(a_state, a_batch)
    compiled = lowered.compile()
    secs = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  S = train.seq_len({k: v.shape for k, v in spec.items()})
  B = int(c.train.global_batch)
  n_mm = train.matmul_params(ap)
  n_all = sum(math.prod(x.shape) for x in jax.tree.leaves(train.unbox_abstract(ap)))
  gib = 1024 ** 3
  args = mem.argument_size_in_bytes / gib
  temps = mem.temp_size_in_bytes / gib
  outs = mem.output_size_in_bytes / gib
  alias = mem.alias_size_in_bytes / gib
  total = args + temps + outs - alias
  return {
      "topology": t.name, "tpu_topology": t.topology, "chips": t.chips, "mesh": dict(mesh.shape),
      "params": n_all, "global_batch": B, "grad_accum": int(c.train.get("grad_accum", 1)), "seq_len": S,
      "remat": fcfg.decoder.remat_policy, "scan_layers": fcfg.decoder.scan_layers,
      "args_gib": args, "temps_gib": temps, "outputs_gib": outs, "alias_gib": alias, "total_gib": total,
      "hbm_gib": t.hbm_gib, "fits": total < t.hbm_gib, "headroom_gib": t.hbm_gib - total,
      "xla_flops_per_chip": float(cost.get("flops", float("nan"))) if cost else float("nan"),
      "model_flops_per_step": train.step_flops(fcfg, n_mm, B, S), "compile_s": secs,
  }


def format_report(r: dict) -> str:
  return "\n".join([
      f"topology {r['topology']} ({r['tpu_topology']}, {r['chips']} chips), mesh {r['mesh']}",
      f"model {r['params']:,} params; global batch {r['global_batch']} x {r['seq_len']} tokens "
      f"(largest bucket), grad_accum {r['grad_accum']}, remat {r['remat']}, scan_layers {r['scan_layers']}",
      f"per chip: arguments {r['args_gib']:.2f} GiB, temporaries {r['temps_gib']:.2f} GiB, outputs "
      f"{r['outputs_gib']:.2f} GiB (aliased/donated {r['alias_gib']:.2f}); total {r['total_gib']:.2f} GiB of "
      f"{r['hbm_gib']:.0f} GiB HBM -> {'FITS' if r['fits'] else 'DOES NOT FIT'} "
      f"(headroom {r['headroom_gib']:.2f} GiB)",
      f"FLOPs: XLA cost analysis {r['xla_flops_per_chip']:.3e} per chip (a scanned layer body counted once); "
      f"model FLOPs {r['model_flops_per_step']:.3e} per step = {r['model_flops_per_step'] / r['chips']:.3e} "
      f"per chip",
      f"compile time {r['compile_s']:.0f} s",
  ])
