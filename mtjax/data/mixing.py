"""Mixtures as the pipeline sees them: a flat, ordered list of (task, rate).

SeqIO is the source of truth for rates: `Mixture.get_rate(task)` already flattens nested
mixtures (a sub-mixture's rate is shared among its tasks in proportion to their rates). The
flattened spec is also written next to the cache so a run on an existing cache needs no SeqIO.
The order of `tasks` defines `task_ids`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Mapping

from mtjax import errors, fs

# Staged rate schedule: ((start_step, {task: rate}), ...), increasing start steps. From each
# start step on, the mixture samples with those rates (tasks left out get 0); before the first,
# with the mixture's own. Consumed by `pipeline.PipelineOptions.rate_stages`.
StagedRates = tuple[tuple[int, Mapping[str, float]], ...]


@dataclasses.dataclass(frozen=True)
class TaskRate:
  name: str
  rate: float


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
  name: str
  tasks: tuple[TaskRate, ...]

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)

  @property
  def weights(self) -> tuple[float, ...]:
    """Rates normalised to sum to one."""
    total = sum(t.rate for t in self.tasks)
    return tuple(t.rate / total for t in self.tasks)


def from_seqio(name: str) -> MixtureSpec:
  """Flattens a registered SeqIO mixture (or wraps a single task) into a MixtureSpec."""
  import seqio  # pylint: disable=g-import-not-at-top

  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    import difflib  # pylint: disable=g-import-not-at-top

    mixtures, tasks = sorted(seqio.MixtureRegistry.names()), sorted(seqio.TaskRegistry.names())
    close = difflib.get_close_matches(name, mixtures + tasks, n=3, cutoff=0.6)
    if close:
      hint = f" Did you mean {', '.join(map(repr, close))}?"
    else:  # no near miss: name a few that exist
      some = mixtures or tasks
      more = f" and {len(some) - 8} more" if len(some) > 8 else ""
      hint = (f" Registered {'mixtures' if mixtures else 'tasks'}: {', '.join(some[:8])}{more}."
              if some else " No mixture or task is registered.")
    raise errors.ConfigError(f"unknown SeqIO mixture or task {name!r}.{hint} If it is yours, "
                             "list the module that registers it in data.modules.") from None
  if isinstance(provider, seqio.Task):
    return MixtureSpec(name, (TaskRate(provider.name, 1.0),))
  entries = tuple(TaskRate(t.name, float(provider.get_rate(t))) for t in provider.tasks)
  entries = tuple(e for e in entries if e.rate > 0)
  if not entries:
    raise errors.ConfigError(f"mixture {name!r} has no task with a positive rate")
  return MixtureSpec(name, entries)


def _path(name: str, cache_dir: str) -> str:
  return fs.join(cache_dir, "mixtures", f"{name}.json")


def _to_json(spec: MixtureSpec) -> dict:
  return {"name": spec.name, "tasks": [dataclasses.asdict(t) for t in spec.tasks]}


def write_spec(spec: MixtureSpec, cache_dir: str) -> None:
  """Atomic, and safe when several runs share a cache dir: each writer has its own temp file
  (a URL: one object upload, which appears whole)."""
  path = _path(spec.name, cache_dir)
  if fs.is_url(path):
    fs.write_json(path, _to_json(spec), indent=1)
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".tmp", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_to_json(spec), f, indent=1)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_spec(name: str, cache_dir: str) -> MixtureSpec | None:
  path = _path(name, cache_dir)
  if fs.is_url(path):
    fs.forget_listings(fs.join(cache_dir, "mixtures"))
    try:
      raw = fs.read_json(path)
    except FileNotFoundError:
      return None
  else:
    if not os.path.exists(path):
      return None
    with open(path) as f:
      raw = json.load(f)
  return MixtureSpec(raw["name"], tuple(TaskRate(**t) for t in raw["tasks"]))
