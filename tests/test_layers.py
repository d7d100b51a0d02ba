"""Dependencies flow one way: no module of mtjax imports a layer above its own.

Layers, top to bottom (docs/DESIGN.md, "Layers"); a module may import its own layer and any
layer below it:

  cli -> recipes | merge -> collections -> eval -> train -> models -> peft -> data | config |
  parallel -> base

`base` is `mtjax/__init__.py`, `errors.py`, `fs.py`, `quiet.py`, `progress.py`. Every import counts, at module
level or inside a function (a lazy import is still a dependency). `mtjax.mixtures` and
`mtjax.configs` are user-level registrations (imported by name from `data.modules` / `--config`)
and may import any layer; they are not checked. The test reads the sources with `ast`, so it
needs no import of mtjax and cannot be fooled by import order.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = (("cli",), ("recipes", "merge"), ("collections",), ("eval",), ("train",), ("models",), ("peft",),
          ("data", "config", "parallel"), ("errors", "fs", "quiet", "progress", ""))
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _part(module: str) -> str:
  """The top-level part of mtjax a dotted module name belongs to ("" for `mtjax` itself)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports(tree: ast.AST, module: str, is_package: bool):
  """(line, imported mtjax module) for every import anywhere in the file."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against this module's package
        base = module.split(".")[:len(module.split(".")) - node.level + is_package]
        name = ".".join(base + ([node.module] if node.module else []))
      else:
        name = node.module or ""
      for alias in node.names:  # `from mtjax import eval` imports the package mtjax.eval
        yield node.lineno, f"{name}.{alias.name}" if name == "mtjax" else name


def upward_imports():
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, "mtjax")):
    for file in files:
      if not file.endswith(".py"):
        continue
      path = os.path.join(folder, file)
      module = _module(path)
      mine = RANK[_part(module)]
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
      for line, name in _imports(tree, module, file == "__init__.py"):
        if name != "mtjax" and not name.startswith("mtjax."):
          continue
        part = _part(name)
        if part in ("mixtures", "configs") or part not in RANK:
          continue
        if RANK[part] < mine:
          found.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} "
                       f"({_part(module) or 'base'}) imports {name} ({part})")
  return found


def test_every_part_of_mtjax_has_a_layer():
  parts = {name[:-3] if name.endswith(".py") else name
           for name in os.listdir(os.path.join(ROOT, "mtjax"))
           if name != "__pycache__" and not name.startswith(".")}
  parts.discard("__init__")
  assert parts <= set(RANK), f"give {sorted(parts - set(RANK))} a layer here and in DESIGN.md"


def test_no_module_imports_a_layer_above_its_own():
  assert upward_imports() == []


def test_the_check_sees_lazy_and_relative_imports():
  """The walker finds an import inside a function and resolves a relative one."""
  source = ("def f():\n  from mtjax.eval import run\n"
            "from ..eval import evaluate\n"
            "from mtjax import recipes\n")
  found = sorted(name for _, name in _imports(ast.parse(source), "mtjax.train.x", False))
  assert found == ["mtjax.eval", "mtjax.eval", "mtjax.recipes"]


def test_the_module_map_names_every_module_of_the_layers_it_maps():
  """docs/DESIGN.md's module map stays true for train, eval, peft, recipes and collections: a
  module added there without a line in the map fails here."""
  with open(os.path.join(ROOT, "docs", "DESIGN.md"), encoding="utf-8") as f:
    design = f.read()
  start = design.index("### Module map")
  the_map = design[start:design.index("\n## ", start)]
  missing = [f"mtjax/{part}/{name}" for part in ("train", "eval", "peft", "recipes",
                                                  "collections")
             for name in sorted(os.listdir(os.path.join(ROOT, "mtjax", part)))
             if name.endswith(".py") and name != "__init__.py" and name not in the_map]
  assert missing == [], f"add {missing} to the module map in docs/DESIGN.md"
