"""Named mixing-rate functions of published recipes, for `seqio.MixtureRegistry.add(...)`.

Each returns a SeqIO rate function `task -> float`; the mixture normalises the rates. `n` is the
task's number of training examples (SeqIO's cached stats if present, else the source's count).

- T5 (Raffel et al. 2020, multi-task mixing): examples-proportional with a cap K and temperature T,
  `rate = min(n, K) ** (1 / T)`.
- T0 (Sanh et al. 2022, training details): examples-proportional, but a dataset with more than
  500,000 examples counts as `500,000 / num_templates`:
  `rate = n if n <= 500_000 else 500_000 / num_templates`.
- FLAN (Wei et al. 2022, training details): examples-proportional with a maximum of 3,000 per
  dataset, `rate = min(n, 3_000)`.
- OPT-IML (Iyer et al. 2022, "OPT-IML: Scaling Language Model Instruction Meta Learning through
  the Lens of Generalization", arXiv:2212.12017, Sec. 4 on task sampling): examples-proportional
  with a per-task cap inside each benchmark (or category), then fixed proportions across them:
  `rate(t) = p[b(t)] * min(n_t, K) / sum(min(n_u, K) for u in b(t))`.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

from mtjax import errors


def _num_examples(task, split: str) -> int:
  n = task.num_input_examples(split)
  try:  # SeqIO's own cache statistics win when present, as in seqio.mixing_rate_num_examples
    n = task.get_cached_stats(split)["examples"]
  except (ValueError, AssertionError, KeyError, AttributeError):
    pass
  if n is None:
    raise errors.DataError(f"task {task.name!r}: number of {split!r} examples is unknown; give "
                           "the source num_input_examples or use an explicit rate")
  return int(n)


def t5_examples_proportional(maximum: int, temperature: float = 1.0,
                             split: str = "train") -> Callable:
  """`min(n, maximum) ** (1 / temperature)` (T5's examples-proportional / temperature mixing)."""
  if maximum <= 0 or temperature <= 0:
    raise errors.ConfigError("maximum and temperature must be positive")

  def rate(task) -> float:
    return float(min(_num_examples(task, split), maximum)) ** (1.0 / temperature)

  return rate


def t0_examples_proportional(num_templates: int, cap: int = 500_000,
                             split: str = "train") -> Callable:
  """`n` if `n <= cap`, else `cap / num_templates` (T0's rule for very large datasets)."""
  if num_templates <= 0:
    raise errors.ConfigError("num_templates must be positive")

  def rate(task) -> float:
    n = _num_examples(task, split)
    return float(n) if n <= cap else cap / num_templates

  return rate


flan_examples_proportional = functools.partial(t5_examples_proportional, 3_000)
flan_examples_proportional.__doc__ = "`min(n, 3000)`: FLAN's examples-proportional cap."


def opt_iml_examples_proportional(groups: Mapping[str, Sequence[str]],
                                  proportions: Mapping[str, float], maximum: int,
                                  split: str = "train") -> Callable:
  """OPT-IML's two-level rate: `p[b] * min(n_t, K) / sum(min(n_u, K) for u in b)`.

  `groups` maps a benchmark (or task category) to its task names, `proportions` gives each
  benchmark's share of the mixture, `maximum` is the per-task cap K. Benchmark b then receives
  exactly share `p[b] / sum(p)` of the draws, split among its tasks by capped example counts.
  Caveat: this is our reading of the paper's sampling description (Sec. 4); the cap and the
  benchmark proportions OPT-IML itself used are not reproduced here (we could not verify their
  exact values), so both are required arguments.
  """
  if maximum <= 0:
    raise errors.ConfigError("maximum must be positive")
  missing = sorted(set(groups) - set(proportions))
  if missing:
    raise errors.ConfigError(f"no proportion for groups {missing}")
  if any(p < 0 for p in proportions.values()):
    raise errors.ConfigError("proportions must be non-negative")
  group_of = {}
  for group, tasks in groups.items():
    for t in tasks:
      if t in group_of:
        raise errors.ConfigError(f"task {t!r} is in groups {group_of[t]!r} and "
                                 f"{group!r}")
      group_of[t] = group
  totals: dict[str, float] = {}

  def capped(name: str) -> float:
    import seqio  # pylint: disable=g-import-not-at-top

    return float(min(_num_examples(seqio.get_mixture_or_task(name), split), maximum))

  def rate(task) -> float:
    if task.name not in group_of:
      raise errors.ConfigError(f"task {task.name!r} is in no OPT-IML group "
                               f"({sorted(groups)})")
    group = group_of[task.name]
    if group not in totals:
      totals[group] = sum(capped(t) for t in groups[group])
    return proportions[group] * capped(task.name) / totals[group]

  return rate
