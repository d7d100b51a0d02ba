"""The configs that ship with mtjax, found by name: `--config=quickstart`, `--gin_file=t0.gin`.

The repository's `configs/` folder is installed as the package `mtjax.configs` (pyproject.toml),
so a plain `pip install mtjax` has the quickstart, the experiment recipes (python and gin twins)
and the example sweeps. A config argument that is an existing path or a URL is used as it is;
anything else is looked up in the packaged folder, with or without `.py` and with or without a
leading `configs/` (so the README's `--config=configs/quickstart.py` works outside a clone too).
"""

from __future__ import annotations

import functools
import importlib.util
import os

from mtjax import errors, fs


@functools.cache
def config_dir() -> str:
  """The packaged configs folder (`mtjax/configs` in a wheel, the checkout's `configs/` in an
  editable install)."""
  spec = importlib.util.find_spec("mtjax.configs")
  if spec is not None and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  # mtjax imported from a checkout that is not installed: configs/ sits next to mtjax/.
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")


def _files(suffixes: tuple[str, ...]) -> list[str]:
  root, found = config_dir(), []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
    for name in sorted(files):
      if name.endswith(suffixes) and not name.startswith("_"):
        found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
  return found


def python_names() -> list[str]:
  """Packaged python configs by name (`quickstart`, `experiments/t0`, ...); sweeps excluded."""
  return [f[:-len(".py")] for f in _files((".py",)) if not f.startswith("sweeps/")]


def gin_names() -> list[str]:
  return _files((".gin",))


def _candidates(name: str, suffix: str) -> list[str]:
  names = [name]
  if name.startswith("configs/"):
    names.append(name[len("configs/"):])
  out = []
  for n in names:
    out.append(os.path.join(config_dir(), n))
    if not n.endswith(suffix):
      out.append(os.path.join(config_dir(), n + suffix))
  return out


def resolve_python(name: str) -> str:
  """The file `--config=NAME` means: an existing path or a URL as given, else a packaged config.
  Raises FileNotFoundError listing the packaged configs."""
  if fs.is_url(name) or os.path.exists(name):
    return name
  if not os.path.isabs(name):
    for candidate in _candidates(name, ".py"):
      if os.path.isfile(candidate):
        return candidate
  raise errors.MissingError(f"config file {name!r} does not exist, nor is it a packaged "
                            f"config (packaged: {', '.join(python_names())})")


def resolve_gin(name: str) -> str | None:
  """A packaged gin file for `name` (`quickstart.gin`, `experiments/t0`), or None."""
  if fs.is_url(name) or os.path.isabs(name):
    return None
  for candidate in _candidates(name, ".gin"):
    if os.path.isfile(candidate):
      return candidate
  return None
