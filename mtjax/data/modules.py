"""Registering a run's tasks: importing `data.modules`, and k-shot variants on demand.

Every command that reads a run's tasks (train, eval, infer, cache, promot, ablate) registers them
here, the same way, so a task resolves to the same SeqIO definition (and the same cache
fingerprint) whichever command asks. This sits in `mtjax.data` because registering tasks is a
data concern: nothing here knows about models, training or evaluation.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable

from mtjax import errors
from mtjax.data import vocabularies

log = logging.getLogger(__name__)

# Where registrations find their data, for the collections (`mtjax.collections`): the run's
# `data.hf_data_dir` / `data.promptsource_dir` while `data.modules` import, else these
# environment variables.
OPTION_ENV = {"hf_data_dir": "MTJAX_HF_DATA_DIR", "promptsource_dir": "MTJAX_PROMPTSOURCE_DIR"}
_options: dict[str, str] = {}


def option(name: str) -> str | None:
  """A data-location option for registrations: the importing run's value, else its environment
  variable (`OPTION_ENV`), else None."""
  if name not in OPTION_ENV:
    raise KeyError(f"unknown data option {name!r}; known: {sorted(OPTION_ENV)}")
  return _options.get(name) or os.environ.get(OPTION_ENV[name]) or None


def run_options(data_config) -> dict[str, str]:
  """The options of a run's `DataConfig` (`data.hf_data_dir`, `data.promptsource_dir`)."""
  return {k: getattr(data_config, k, "") for k in OPTION_ENV if getattr(data_config, k, "")}


@contextlib.contextmanager
def options_set(options: dict[str, str] | None):
  global _options
  saved, _options = _options, dict(options or {})
  try:
    yield
  finally:
    _options = saved


def import_modules(modules: Iterable[str], vocabulary=None, *, hint: str = "",
                   missing_seqio_ok: bool = True, options: dict[str, str] | None = None) -> None:
  """Imports the modules that register the config's SeqIO tasks and mixtures.

  `vocabulary` (`mtjax.data.vocabularies.for_run`): the default vocabulary of tasks registered
  during the imports (None: SeqIO's ByteVocabulary).

  The working directory is importable, as with `python -m`, so `data.modules=my_tasks` finds a
  `my_tasks.py` next to where `mtjax` runs. The built-in mixtures are `mtjax.mixtures.*`; the
  name they had before they moved into the package, `mixtures.X` (in older run dirs and
  configs), still means the built-in `mtjax.mixtures.X`, so a user folder named `mixtures/`
  cannot shadow them (a module of the user's own in such a folder still imports).

  A module that cannot import for want of seqio or TensorFlow is skipped with a warning when
  `missing_seqio_ok` (training on an existing cache needs neither); `mtjax infer` needs the
  tasks themselves and passes False. `hint`: the `hint:` line of the error. `options`: where
  collections find their data (`run_options`; see `option`).
  """
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for name in modules:
    name = builtin_name(name)
    try:
      with vocabularies.defaulting_to(vocabulary), options_set(options):
        module = importlib.import_module(name)
    except ImportError as e:
      if missing_seqio_ok and getattr(e, "name", None) in ("seqio", "tensorflow"):
        log.warning("cannot import %s without %s; using the existing cache", name, e.name)
        continue
      raise errors.ModuleError(f"data.modules: cannot import {name!r}: {e}", hint=hint) from e
    with vocabularies.defaulting_to(vocabulary), options_set(options):
      check_registered(module)


def register_or_defer(register: Callable[[], object]) -> errors.UserError | None:
  """For a module that registers a collection at import: runs `register()`; when its data or
  templates are not on this machine (`errors.MissingError`) logs that once and returns the error
  for the module to keep as `REGISTRATION_ERROR` (see `check_registered`), so importing the
  module still succeeds (other code, tests and `mtjax tasks` use its functions)."""
  try:
    register()
  except errors.MissingError as e:
    log.warning("%s (%s)", e, e.hint)
    return e
  return None


def check_registered(module) -> None:
  """A module that registers at import may defer its failure (`REGISTRATION_ERROR`, e.g. a
  collection whose templates were not found): try its `register()` again under the current
  options, and raise the error if it still fails."""
  if getattr(module, "REGISTRATION_ERROR", None) is None:
    return
  if callable(getattr(module, "register", None)):
    try:
      module.register()
      module.REGISTRATION_ERROR = None
      return
    except errors.UserError as e:
      module.REGISTRATION_ERROR = e
  raise module.REGISTRATION_ERROR


def builtin_name(name: str) -> str:
  """`mixtures.X` -> `mtjax.mixtures.X` when that built-in exists (see `import_modules`)."""
  if name.startswith("mixtures."):
    try:
      if importlib.util.find_spec("mtjax." + name) is not None:
        return "mtjax." + name
    except ImportError:  # no such built-in package: the user's own
      pass
  return name


def ensure_shot_task(name: str, seed: int = 0) -> None:
  """Registers `<task>_<k>shot` on demand when only its base task is registered, so a run whose
  mixture is a few-shot variant (ProMoT's +1-shot stages) resumes and evaluates in a fresh
  process. Anything else is left to SeqIO (which names what is missing); without seqio, the
  cache must already hold it."""
  try:
    import seqio  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  match = re.fullmatch(r"(.+)_(\d+)shot", name)
  if match is None or name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return
  if match.group(1) in seqio.TaskRegistry.names() and int(match.group(2)) > 0:
    from mtjax.data import few_shot  # pylint: disable=g-import-not-at-top

    few_shot.register_few_shot_task(match.group(1), int(match.group(2)), seed=seed)
