"""Few-shot in-context evaluation: each task with k demonstrations, k in `eval.few_shot`.

The k-shot prompts come from `mtjax.data.few_shot` (demonstrations drawn deterministically
from the task's train split, same template as the example); k = 0 is the task itself. Each
(task, k) is evaluated like any task (its metrics, plus the format-specialisation rate when a
label set is given: the share of outputs that are one of the labels, e.g. the finetuning task's
labels, which is what ProMoT measures). The prompt is longer with k, so the inputs length is
scaled by k + 1 (T5's relative positions need no retraining for that; the question sits at the
end of the prompt and must not be trimmed away).

`variants` maps a name to parameters, so one call compares e.g. a model with and without its
soft prompt attached (the prompt module is another issue; pass both parameter sets here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtjax.eval import evaluate


def shot_task(task_name: str, k: int, seed: int = 0) -> str:
  """The registered name of the k-shot variant of a task (registering it if needed)."""
  if k == 0:
    return task_name
  from mtjax.data import few_shot  # pylint: disable=g-import-not-at-top

  return few_shot.register_few_shot_task(task_name, k, seed=seed).name


def evaluate_few_shot(graphdef, variants: Mapping[str, Any], task_names: Sequence[str],
                      ks: Sequence[int], *, cache_dir: str, split: str, inputs_length: int,
                      seed: int = 0, reuse: Mapping[tuple[str, str], dict] | None = None,
                      on_result: Callable[[dict], None] | None = None,
                      **kwargs) -> list[dict]:
  """One result per (variant, task, k): `evaluate_task`'s dict plus `base_task`, `k`, `variant`.

  `reuse[(variant, task)]`: an existing 0-shot result of the task (not evaluated again).
  `on_result(result)`: called after each evaluation (not for reused results), e.g. to report
  progress.

  Task names in the results are `<task>_<k>shot` (`<variant>/...` when there are several
  variants), so the table, JSONL and TensorBoard rows keep them apart.
  """
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top

  results, reuse = [], dict(reuse or {})
  for k in ks:
    if k < 0:
      raise ValueError(f"eval.few_shot: k must be >= 0, got {k}")
    for task in task_names:
      name = shot_task(task, k, seed)
      cache.ensure_cached(name, cache_dir, splits=(split,))
      for variant, params in variants.items():
        if k == 0 and (variant, task) in reuse:  # the plain task, already evaluated
          r = dict(reuse[(variant, task)])
        else:
          r = evaluate.evaluate_task(graphdef, params, name, cache_dir=cache_dir, split=split,
                                     inputs_length=inputs_length * (k + 1), seed=seed, **kwargs)
        label = f"{name}_0shot" if k == 0 else name
        r.update(task=label if len(variants) == 1 else f"{variant}/{label}", base_task=task,
                 k=k, variant=variant)
        results.append(r)
        if on_result is not None and not (k == 0 and (variant, task) in reuse):
          on_result(r)
  return results
