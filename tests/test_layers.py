"""Dependencies flow one way: no module of mtjax imports a layer above its own, and no module
imports itself back through others (no import circles, inside a layer or a package either).

Layers, top to bottom (docs/DESIGN.md, "Layers"); a module may import its own layer and any
layer below it:

  cli -> recipes | merge -> collections -> eval -> train -> models -> peft -> data | config |
  parallel -> base

`base` is `mtjax/__init__.py`, `errors.py`, `fs.py`, `quiet.py`, `progress.py`. Every import
counts, at module level or inside a function (a lazy import is still a dependency).
`mtjax.mixtures` and `mtjax.configs` are user-level registrations (imported by name from `data.modules` / `--config`)
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


def _modules() -> dict[str, str]:
  """Dotted name -> path of every module of mtjax (a package is its `__init__.py`)."""
  found = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "mtjax")):
    for file in files:
      if file.endswith(".py"):
        path = os.path.join(folder, file)
        found[_module(path)] = path
  return found


def import_graph(modules: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
  """module -> {imported mtjax module: first line}, every import counted (module level or in a
  function). `from mtjax.models import hf` imports the module `mtjax.models.hf`; importing a
  module does not count as importing its parent packages (theirs import nothing today)."""
  modules = _modules() if modules is None else modules
  graph = {}
  for module, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    edges = {}
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = module.split(".")[:len(module.split(".")) - node.level
                                   + path.endswith("__init__.py")]
          base = ".".join(base + ([node.module] if node.module else []))
        else:
          base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
      else:
        continue
      for name in names:
        if name in modules and name != module:
          edges.setdefault(name, node.lineno)
    graph[module] = edges
  return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """The import circles of `graph`: its strongly connected components of more than one module
  (Tarjan's algorithm, iterative), each sorted."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = len(index)
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, {})))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          found.append(sorted(component))
  return found


def test_no_import_circles():
  """No module of mtjax imports, directly or through others, a module that imports it back
  (inside a package too; lazy imports count, as for the layers)."""
  graph = import_graph()
  left = circles(graph)
  described = ["; ".join(f"{a} imports {b} (line {graph[a][b]})"
                         for a in c for b in sorted(graph[a]) if b in c) for c in left]
  assert described == [], "import circles: " + " | ".join(described)


def test_the_circle_check_finds_circles():
  graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1},
           "f": {"g": 1}, "g": {"f": 1}}
  assert sorted(circles(graph)) == [["a", "b", "c"], ["f", "g"]]


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
