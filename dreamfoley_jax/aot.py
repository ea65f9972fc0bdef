"""Ahead-of-time compilation of the real train step, and of the CFG sampling loop, for a named TPU topology
(no TPUs needed).

Uses libtpu from PyPI (`pip install 'jax[tpu]'`) and `jax.experimental.topologies`; every argument is
abstract (jax.eval_shape), so no array is ever allocated.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax

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


# Datasheet HBM bandwidth per chip, GB/s: the decode-step ceiling of `compile_sample`.
_HBM_GBS = {"v5p": 2765.0, "v4": 1228.0, "v5e": 819.0}


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


def memory_figures(mem, t: Topology) -> dict:
  """Per-chip GiB of a compiled program's `memory_analysis()` against the topology's HBM."""
  gib = 1024 ** 3
  args, temps = mem.argument_size_in_bytes / gib, mem.temp_size_in_bytes / gib
  outs, alias = mem.output_size_in_bytes / gib, mem.alias_size_in_bytes / gib
  total = args + temps + outs - alias
  return {"args_gib": args, "temps_gib": temps, "outputs_gib": outs, "alias_gib": alias, "total_gib": total,
          "hbm_gib": t.hbm_gib, "fits": total < t.hbm_gib, "headroom_gib": t.hbm_gib - total}


def compile_train_step(c, topology: str) -> dict:
  """Compiles train.make_train_step for `c` on `topology`; returns memory / FLOPs figures per chip."""
  import flax.linen as nn  # noqa: F401

  from dreamfoley_jax import optim, sharding, train
  from dreamfoley_jax.models import foley
  from dreamfoley_jax.models import params as foley_params

  t = parse_topology(topology)
  devices = topology_devices(t)
  mesh = sharding.make_mesh(dict(c.mesh), devices=devices)
  fcfg = train.model_config(c)
  model = foley.DreamFoley(fcfg)
  ap = foley_params.abstract_params(fcfg)
  regex = c.train.get("frozen_regex") or None
  tx, sched = optim.make_optimizer(c.optim, int(c.train.steps), ap, regex)
  labels = optim.param_labels(ap, regex)
  spec = train.global_batch_spec(c, fcfg)
  with sharding.use_mesh(mesh):
    init = train.make_init_fn(model, tx, fcfg, int(c.train.seed))
    abstract = jax.eval_shape(init)
    state_sh = train.state_shardings(abstract, mesh)
    abstract = train.unbox_abstract(abstract)
    a_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, state_sh)
    replicated = sharding.large_replicated(abstract, state_sh)     # params / Adam leaves >= 64 MB on every chip
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
  return {
      "topology": t.name, "tpu_topology": t.topology, "chips": t.chips, "mesh": dict(mesh.shape),
      "params": n_all, "global_batch": B, "grad_accum": int(c.train.get("grad_accum", 1)), "seq_len": S,
      "remat": fcfg.decoder.remat_policy, "scan_layers": fcfg.decoder.scan_layers,
      **memory_figures(mem, t),
      "xla_flops_per_chip": float(cost.get("flops", float("nan"))) if cost else float("nan"),
      "model_flops_per_step": train.step_flops(fcfg, n_mm, B, S), "compile_s": secs,
      "large_replicated": replicated,
  }


def default_sample_mesh(cfg, chips: int) -> dict:
  """Sampling mesh: the layers split over `tensor` = the largest divisor of the chip count that divides the KV
  heads (whole heads per chip, no attention collectives beyond the two all-reduces per layer), the rest of
  the chips over `data` (clips)."""
  kv = cfg.decoder.num_key_value_heads
  tensor = max(d for d in range(1, chips + 1) if chips % d == 0 and kv % d == 0)
  return {"data": chips // tensor, "fsdp": 1, "tensor": tensor}


def check_sample_args(topology: str, batch: int, seconds: float, mesh: dict | None) -> Topology:
  """Validates `compile_sample`'s arguments (clear ValueErrors, before any compile)."""
  from dreamfoley_jax import sharding

  t = parse_topology(topology)
  if batch < 1:
    raise ValueError(f"batch must be >= 1 clip, got {batch}")
  if round(seconds * 25) < 1:
    raise ValueError(f"seconds must cover at least one 25 Hz audio frame, got {seconds}")
  if mesh:
    sharding.mesh_shape(mesh, t.chips)        # raises if the sizes do not multiply to the chip count
  return t


def compile_sample(c, topology: str, batch: int = 8, seconds: float = 10.0, mesh: dict | None = None,
                   text_len: int = 32) -> dict:
  """Compiles the jitted CFG sampling loop (`sampling.sample_program`, the program `sampling.sample(mesh=...)` and
  tools/generate.py --mesh run) for `c`'s model in its inference layout (`foley_params.inference_layout`: unrolled
  layers, weights in the compute dtype) on `topology`, for `batch` clips of `seconds` of audio. Returns
  per-chip memory and the weight-streaming ceiling of one decode step (weight bytes per chip / datasheet
  HBM bandwidth; KV-cache reads and collectives come on top)."""
  import numpy as np

  from dreamfoley_jax import configs, sampling, sharding, train
  from dreamfoley_jax.models import params as foley_params

  t = check_sample_args(topology, batch, seconds, mesh)
  devices = topology_devices(t)
  cfg = train.model_config(c)
  holder = {}

  def layout(p):
    holder["cfg"], out = foley_params.inference_layout(cfg, p)
    return out
  a_params = jax.eval_shape(layout, foley_params.abstract_params(cfg))
  icfg = holder["cfg"]
  mesh_spec = dict(mesh) if mesh else default_sample_mesh(icfg, t.chips)
  m = sharding.make_mesh(mesh_spec, devices=devices)
  rules = sampling.mesh_rules(m, batch)
  p_sh = sampling.param_shardings(icfg, m, rules)
  if jax.tree.structure(p_sh) != jax.tree.structure(a_params):
    raise ValueError("the inference-layout params do not match the model of the inference config")
  a_params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), a_params, p_sh)
  frames = int(round(seconds * icfg.sync_rate))
  prompt = {k: v for k, v in jax.eval_shape(lambda: foley_params.dummy_batch(
      icfg, batch, text_len=text_len, video_frames=frames)).items() if not k.startswith("audio_")}
  a_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sampling.clip_sharding(m, rules, v.ndim))
             for k, v in prompt.items()}
  # sampling.sample hands lengths, keys and the drop flags over uncommitted: replicated on the mesh
  rep = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(m))
  a_keys = rep(jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch)))
  a_lengths = rep(jax.ShapeDtypeStruct((batch,), np.int32))
  a_flag = rep(jax.ShapeDtypeStruct((batch,), np.bool_))
  sc = configs.sample_config(c.get("sample", {}))
  a_prompt = sampling.Prompt(text_ids=a_batch.pop("text_ids"), text_mask=a_batch.pop("text_mask"), video=a_batch,
                             lengths=a_lengths, drop_text=a_flag, drop_video=a_flag)
  t0 = time.time()
  with sharding.use_mesh(m, rules):
    lowered = sampling.sample_program.lower(a_params, a_prompt, a_keys, cfg=icfg, sc=sc, max_frames=frames,
                                            return_logits=False)
    compiled = lowered.compile()
  secs = time.time() - t0
  mem = compiled.memory_analysis()
  gib = 1024 ** 3
  per_chip = lambda x: math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
  w_chip = sum(per_chip(x) for x in jax.tree.leaves(a_params))
  step_w = sum(per_chip(x) for x in sampling.decode_weights(a_params))
  hbm_gbs = _HBM_GBS[topology.partition("-")[0]]
  return {
      "topology": t.name, "tpu_topology": t.topology, "chips": t.chips, "mesh": dict(m.shape),
      "batch": batch, "cfg_rows": 2 * batch if sc.cfg_scale is not None else batch, "seconds": seconds,
      "frames": frames, "decode_steps": sampling.num_columns(frames, icfg.num_codebooks) - 1,
      "params": sum(math.prod(x.shape) for x in jax.tree.leaves(a_params)),
      "param_dtype": str(icfg.decoder.param_dtype), "params_gib_per_chip": w_chip / gib,
      "step_weight_gib_per_chip": step_w / gib, "clips_split": rules is sharding.LOGICAL_RULES,
      **memory_figures(mem, t),
      "hbm_gbs": hbm_gbs, "ceiling_steps_per_s": hbm_gbs * 1e9 / step_w, "compile_s": secs,
  }


def _size(gib: float) -> str:
  return f"{gib:.2f} GiB" if gib >= 0.1 else f"{gib * 1024:.2f} MiB"


def format_sample_report(r: dict) -> str:
  return "\n".join([
      f"sampling on {r['topology']} ({r['tpu_topology']}, {r['chips']} chips), mesh {r['mesh']}; "
      f"{r['batch']} clips x {r['seconds']:g} s ({r['frames']} frames, {r['decode_steps']} decode steps, "
      f"{r['cfg_rows']} rows with CFG), clips {'split over data x fsdp' if r['clips_split'] else 'replicated'}",
      f"model {r['params']:,} params in the inference layout ({r['param_dtype']}): "
      f"{_size(r['params_gib_per_chip'])} per chip, {_size(r['step_weight_gib_per_chip'])} read per decode step",
      f"per chip: arguments {_size(r['args_gib'])}, temporaries {_size(r['temps_gib'])} (KV cache, activations), "
      f"outputs {_size(r['outputs_gib'])}; total {_size(r['total_gib'])} of {r['hbm_gib']:.0f} GiB HBM -> "
      f"{'FITS' if r['fits'] else 'DOES NOT FIT'} (headroom {r['headroom_gib']:.2f} GiB)",
      f"decode ceiling (weights per chip / {r['hbm_gbs']:.0f} GB/s datasheet HBM, before KV reads and "
      f"collectives): {r['ceiling_steps_per_s']:.0f} steps/s = {r['decode_steps'] / r['ceiling_steps_per_s']:.2f} s "
      f"per {r['seconds']:g} s batch",
      "replicated state leaves >= 64 MB per chip: " + (", ".join(f"{p} ({n / 2**20:.0f} MB)" for p, n in
                                                          r["large_replicated"]) or "none"),
      f"compile time {r['compile_s']:.0f} s",
  ])


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
      "replicated state leaves >= 64 MB per chip: " + (", ".join(f"{p} ({n / 2**20:.0f} MB)" for p, n in
                                                          r["large_replicated"]) or "none"),
      f"compile time {r['compile_s']:.0f} s",
  ])
