"""Named mixing-rate functions of published recipes, for `seqio.MixtureRegistry.add(...)`.

Each returns a SeqIO rate function `task -> float`; the mixture normalises the rates. `n` is the
task's number of training examples (SeqIO's cached stats if present, else the source's count).

- T5 (Raffel et al. 2020, multi-task mixing): examples-proportional with a cap K and temperature T,
  `rate = min(n, K) ** (1 / T)`.
- T0 (Sanh et al. 2022, training details): examples-proportional, but a dataset with more than
  500,000 examples counts as `500,000 / num_templates`: `rate = n if n <= 500_000 else 500_000 / num_templates`.
- FLAN (Wei et al. 2022, training details): examples-proportional with a maximum of 3,000 per dataset,
  `rate = min(n, 3_000)`.
"""

from __future__ import annotations

import functools
from typing import Callable


def _num_examples(task, split: str) -> int:
  n = task.num_input_examples(split)
  try:  # SeqIO's own cache statistics win when present, as in seqio.mixing_rate_num_examples
    n = task.get_cached_stats(split)["examples"]
  except (ValueError, AssertionError, KeyError, AttributeError):
    pass
  if n is None:
    raise ValueError(f"task {task.name!r}: number of {split!r} examples is unknown; give the "
                     "source num_input_examples or use an explicit rate")
  return int(n)


def t5_examples_proportional(maximum: int, temperature: float = 1.0,
                             split: str = "train") -> Callable:
  """`min(n, maximum) ** (1 / temperature)` (T5's examples-proportional / temperature mixing)."""
  if maximum <= 0 or temperature <= 0:
    raise ValueError("maximum and temperature must be positive")

  def rate(task) -> float:
    return float(min(_num_examples(task, split), maximum)) ** (1.0 / temperature)

  return rate


def t0_examples_proportional(num_templates: int, cap: int = 500_000,
                             split: str = "train") -> Callable:
  """`n` if `n <= cap`, else `cap / num_templates` (T0's rule for very large datasets)."""
  if num_templates <= 0:
    raise ValueError("num_templates must be positive")

  def rate(task) -> float:
    n = _num_examples(task, split)
    return float(n) if n <= cap else cap / num_templates

  return rate


flan_examples_proportional = functools.partial(t5_examples_proportional, 3_000)
flan_examples_proportional.__doc__ = "`min(n, 3000)`: FLAN's examples-proportional cap."
