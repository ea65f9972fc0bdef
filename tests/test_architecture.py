"""docs/architecture.md's import rules, checked on the source: lower layers never import higher ones, and the
package never imports torch at import time. A new top-level module or folder must be given a layer here (and
in the doc) before it can land."""
import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "dreamfoley_jax"

LAYERS = {   # unit (top-level module or folder of dreamfoley_jax) -> layer; docs/architecture.md
    "checks": 0, "sharding": 0, "text": 0, "plots": 0, "hosts": 0,
    "audio": 1, "video": 1,
    "models": 2,
    "sampling": 3, "convert": 3, "optim": 3,
    "checkpoint": 4, "configs": 4, "data": 4, "eval": 4,
    "train": 5, "generate": 5, "aot": 5,
    "model_dir": 6, "demo": 6, "synthetic": 6,
}
# Upward imports allowed only inside a function (at call time, never at import time), each for its reason.
LAZY_UP = {
    ("audio", "convert"): "audio.tokenizer.HiggsCodec loads a converted checkpoint",
    ("hosts", "generate"): "hosts.generate drives the Generator it is given over the hosts",
    ("configs", "synthetic"): "the main job's pretext section parses into synthetic.pretext.PretextConfig",
    ("generate", "synthetic"): "load_codec reads the synthetic world's codec.npz",
    ("convert", "configs"): "convert.dreamfoley.resolve_config reads the experiment file a checkpoint names",
}


def _unit(path: pathlib.Path) -> str:
  rel = path.relative_to(PKG).parts
  return rel[0] if len(rel) > 1 else rel[0][:-3]


def _imports(tree):
  """(imported dreamfoley_jax unit or 'torch', line, at import time?) for every import in a module."""
  top = {id(n) for n in tree.body}
  for n in ast.walk(tree):
    names = []
    if isinstance(n, ast.ImportFrom) and n.module:
      parts = n.module.split(".")
      if parts[0] == "dreamfoley_jax":
        names = [a.name for a in n.names] if len(parts) == 1 else [parts[1]]
      elif parts[0] == "torch":
        names = ["torch"]
    elif isinstance(n, ast.Import):
      for a in n.names:
        parts = a.name.split(".")
        if parts[0] == "dreamfoley_jax" and len(parts) > 1:
          names.append(parts[1])
        elif parts[0] == "torch":
          names.append("torch")
    for m in names:
      yield m, n.lineno, id(n) in top


def _modules():
  return [p for p in sorted(PKG.rglob("*.py")) if "hf_template" not in p.parts]


def test_every_unit_has_a_layer():
  units = {_unit(p) for p in _modules()} - {"__init__"}
  assert units <= set(LAYERS), f"give these a layer in docs/architecture.md and here: {sorted(units - set(LAYERS))}"


def test_lower_layers_never_import_higher_ones():
  bad = []
  for p in _modules():
    src = _unit(p)
    if src == "__init__":
      continue
    for dst, line, at_import in _imports(ast.parse(p.read_text())):
      if dst == "torch" or dst == src or dst not in LAYERS:
        continue
      if LAYERS[dst] > LAYERS[src] and ((src, dst) not in LAZY_UP or at_import):
        bad.append(f"{p.relative_to(PKG.parent)}:{line}: {src} (layer {LAYERS[src]}) imports {dst} "
                   f"(layer {LAYERS[dst]})")
  assert not bad, "\n".join(bad)


def test_no_torch_at_import_time():
  """The JAX path never needs PyTorch installed: torch is imported inside the functions that use it."""
  bad = [f"{p.relative_to(PKG.parent)}:{line}" for p in _modules()
         for dst, line, at_import in _imports(ast.parse(p.read_text())) if dst == "torch" and at_import]
  assert not bad, bad


def test_the_rules_see_a_violation(tmp_path):
  """The checker itself: a models/ module importing train at import time is caught, a lazy one is too
  (models has no LAZY_UP entry), a listed lazy exception is not."""
  tree = ast.parse("from dreamfoley_jax import train\ndef f():\n  from dreamfoley_jax.convert import higgs\n"
                   "  import torch\n")
  got = list(_imports(tree))
  assert got == [("train", 1, True), ("convert", 3, False), ("torch", 4, False)]
  assert LAYERS["train"] > LAYERS["models"] and ("models", "train") not in LAZY_UP
  assert ("audio", "convert") in LAZY_UP and not got[1][2]
