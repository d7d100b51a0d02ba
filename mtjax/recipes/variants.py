"""Mixture variants of an ablation: which tasks, at which rates, as one `{task: rate}` per variant.

A variant starts from a registered SeqIO mixture (the pool; every task of it is also evaluated, so
a task left out of training shows up as held out) and says how to mix it:

- `tasks` / `exclude`: train on a subset (the others get rate 0);
- `rate_fn`: `mixture` (the mixture's own SeqIO rates, the default), `uniform`,
  `examples_proportional` (T5: `min(n, maximum) ** (1 / temperature)`), `t0` (T0's 500k rule),
  `flan` (`min(n, 3000)`) -- the functions of `mtjax.data.rates`;
- `rates`: explicit `{task: rate}` instead of a rate function;
- `general`: `{"tasks": [...], "fraction": f}`: those tasks (general instruction data) together
  get share `f` of the draws and the rest `1 - f`, each group split by the rates above.

The result goes into the run config as `data.rate_stages = ((0, rates),)`, so each member is an
ordinary run of the unchanged mixture whose sampling rates are the variant's.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mtjax.data import mixing
from mtjax.data import rates as rates_lib

RATE_FNS = ("mixture", "uniform", "examples_proportional", "t0", "flan")
KEYS = ("name", "mixture", "tasks", "exclude", "rate_fn", "maximum", "temperature",
        "num_templates", "cap", "rates", "general", "set")
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One mixture definition of a sweep (see the module docstring for the fields)."""
  name: str
  mixture: str | None = None  # None: the base config's data.mixture
  tasks: tuple[str, ...] = ()  # empty: all tasks of the mixture
  exclude: tuple[str, ...] = ()
  rate_fn: str = "mixture"
  maximum: int | None = None  # examples_proportional cap (None: no cap)
  temperature: float = 1.0
  num_templates: int = 1  # t0: templates per dataset
  cap: int = 500_000  # t0: datasets above this count as cap / num_templates
  rates: Mapping[str, float] | None = None
  general: Mapping[str, Any] | None = None  # {"tasks": [...], "fraction": f}
  set: tuple[str, ...] = ()  # extra `key=value` config overrides for this variant


def parse(raw: Mapping[str, Any], index: int) -> Variant:
  """A variant from a sweep file's dict; errors name the variant and the offending key."""
  if not isinstance(raw, Mapping):
    raise TypeError(f"sweep variants[{index}]: expected a mapping, got {type(raw).__name__}")
  label = f"sweep variant {raw.get('name', f'#{index}')!r}"
  unknown = sorted(set(raw) - set(KEYS))
  if unknown:
    hints = {u: difflib.get_close_matches(u, KEYS, n=1) for u in unknown}
    raise ValueError(f"{label}: unknown key(s) {unknown} (close: {hints}; valid: {list(KEYS)})")
  name = raw.get("name")
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"{label}: `name` must be a non-empty string of letters, digits, "
                     f"'_', '-', '.', '+' (it names the member's run directory), got {name!r}")
  rate_fn = raw.get("rate_fn", "mixture")
  if rate_fn not in RATE_FNS:
    raise ValueError(f"{label}: rate_fn must be one of {RATE_FNS}, got {rate_fn!r}")
  if raw.get("rates") is not None and "rate_fn" in raw:
    raise ValueError(f"{label}: give either `rates` or `rate_fn`, not both")
  if raw.get("tasks") and raw.get("exclude"):
    raise ValueError(f"{label}: give either `tasks` or `exclude`, not both")
  general = raw.get("general")
  if general is not None and (
      not isinstance(general, Mapping) or set(general) != {"tasks", "fraction"}
      or not 0 <= float(general["fraction"]) <= 1 or not general["tasks"]):
    raise ValueError(f"{label}: `general` must be {{tasks: [...], fraction: 0..1}}, "
                     f"got {general!r}")
  for key in ("maximum", "num_templates", "cap"):
    if raw.get(key) is not None and (not isinstance(raw[key], int) or raw[key] <= 0):
      raise ValueError(f"{label}: {key} must be a positive integer, got {raw[key]!r}")
  if float(raw.get("temperature", 1.0)) <= 0:
    raise ValueError(f"{label}: temperature must be positive, got {raw['temperature']!r}")
  sets = raw.get("set", ())
  sets = (sets,) if isinstance(sets, str) else tuple(sets)
  return Variant(name=name, mixture=raw.get("mixture"), tasks=tuple(raw.get("tasks") or ()),
                 exclude=tuple(raw.get("exclude") or ()), rate_fn=rate_fn,
                 maximum=raw.get("maximum"), temperature=float(raw.get("temperature", 1.0)),
                 num_templates=int(raw.get("num_templates", 1)),
                 cap=int(raw.get("cap", 500_000)),
                 rates=dict(raw["rates"]) if raw.get("rates") is not None else None,
                 general=dict(general) if general is not None else None, set=sets)


def _check_tasks(label: str, names: Sequence[str], pool: Sequence[str], what: str) -> None:
  for name in names:
    if name not in pool:
      close = difflib.get_close_matches(name, pool, n=2)
      raise ValueError(f"{label}: {what} task {name!r} is not in the mixture "
                       f"(tasks: {list(pool)}{f'; did you mean {close}?' if close else ''})")


def _fn_rates(variant: Variant, spec: mixing.MixtureSpec, chosen: Sequence[str]) -> dict:
  """Unnormalised rates of the chosen tasks from the variant's rate function."""
  if variant.rate_fn == "mixture":
    own = {t.name: t.rate for t in spec.tasks}
    return {t: own[t] for t in chosen}
  if variant.rate_fn == "uniform":
    return {t: 1.0 for t in chosen}
  import seqio  # pylint: disable=g-import-not-at-top

  if variant.rate_fn == "examples_proportional":
    fn = rates_lib.t5_examples_proportional(variant.maximum or 2 ** 62, variant.temperature)
  elif variant.rate_fn == "t0":
    fn = rates_lib.t0_examples_proportional(variant.num_templates, variant.cap)
  else:
    fn = rates_lib.flan_examples_proportional()
  return {t: float(fn(seqio.get_mixture_or_task(t))) for t in chosen}


def task_rates(variant: Variant, spec: mixing.MixtureSpec) -> dict[str, float]:
  """`{task: rate}` over every task of the mixture (0 for tasks the variant does not train on),
  normalised to sum to 1. `spec` is the flattened mixture (`mixing.from_seqio`)."""
  label = f"sweep variant {variant.name!r}"
  pool = spec.task_names
  _check_tasks(label, variant.tasks, pool, "`tasks`")
  _check_tasks(label, variant.exclude, pool, "`exclude`")
  chosen = [t for t in pool if (not variant.tasks or t in variant.tasks)
            and t not in variant.exclude]
  if variant.rates is not None:
    _check_tasks(label, list(variant.rates), pool, "`rates`")
    raw = {t: float(variant.rates.get(t, 0.0)) for t in chosen}
  else:
    raw = _fn_rates(variant, spec, chosen)
  if any(r < 0 for r in raw.values()):
    raise ValueError(f"{label}: rates must be >= 0, got {raw}")
  if variant.general is not None:
    general = list(variant.general["tasks"])
    _check_tasks(label, general, chosen, "`general`")
    fraction = float(variant.general["fraction"])
    groups = {True: [t for t in chosen if t in general],
              False: [t for t in chosen if t not in general]}
    shares = {True: fraction, False: 1.0 - fraction}
    for is_general, members in groups.items():
      total = sum(raw[t] for t in members)
      if shares[is_general] > 0 and total <= 0:
        raise ValueError(f"{label}: the {'general' if is_general else 'other'} tasks "
                         f"{members} have no positive rate but get share {shares[is_general]}")
      for t in members:
        raw[t] = shares[is_general] * raw[t] / total if total > 0 else 0.0
  total = sum(raw.values())
  if total <= 0:
    raise ValueError(f"{label}: no task has a positive rate")
  return {t: raw.get(t, 0.0) / total for t in pool}
