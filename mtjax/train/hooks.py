"""What the training loop calls but does not own: full evaluation and step hooks.

The loop (`mtjax.train.loop`) steps, logs, computes the teacher-forced eval loss, saves and
stops. Two things happen at its events that belong to other layers, so they are handed in:

- `Evaluation`: full evaluation (`eval.every`, `eval.at_end`). `mtjax.eval` sits above
  `mtjax.train` (it builds models through `mtjax.train.setup` and restores through the
  checkpointer), so the loop cannot import it; the composition root `mtjax.recipes.train`
  passes `mtjax.eval`'s. Its metrics rank checkpoints (`train.best_metric`). Without one, the
  loop trains and saves but does not evaluate (it says so once).
- `PeriodicEvaluation`s: other evaluations with their own schedule (`eval.lm_eval_*`: the
  lm-evaluation-harness tasks of `mtjax.eval.lm_eval`), handed in the same way; their metrics
  are logged to the trackers and kept with the step's checkpoint metrics like full evaluation's.
- `LoopHook`s: `before_step` may replace the parameters before a step runs; `after_step` runs
  once a step's log and evaluation events are done, before its checkpoint decision (a signal
  raised there is seen by that step's save). Hooks passed to `loop.train` apply to that run;
  `install` adds one to every run this process starts, which is how a test worker reaches a run
  started by the CLI (tests/train/fault_worker.py injects SIGKILL / SIGTERM / NaN faults so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Full evaluation as the loop calls it."""
  # (setup, params, step) -> per-task results; writes its own reports (None: the final step).
  run: Callable[[Any, Any, int | None], list[dict]]
  # results -> one flat row (`<task>/<metric>`, `average/<metric>`): trackers and checkpoints.
  metrics: Callable[[list[dict]], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class PeriodicEvaluation:
  """An evaluation the loop runs every `every` steps (0: never mid-run) and, with `at_end`,
  after the final step (not after a SIGTERM: the save comes first)."""
  name: str
  every: int
  at_end: bool
  # (setup, params, step) -> per-task results; writes its own reports (every process calls it).
  run: Callable[[Any, Any, int], list[dict]]
  # results -> one flat row (e.g. `lm_eval/<task>/<metric>`): trackers and checkpoint metrics.
  metrics: Callable[[list[dict]], dict[str, float]]

  def due(self, step: int, final: bool) -> bool:
    return (self.every > 0 and step % self.every == 0) or (final and self.at_end)


class LoopHook:
  """A loop event hook; override what you need (steps count from 1)."""

  def before_step(self, step: int, params: Any) -> Any:
    """Called before step `step` runs; returns the parameters it will run with."""
    return params

  def after_step(self, step: int) -> None:
    """Called after step `step` (its metrics logged, any evaluation done), before its save."""


_installed: list[LoopHook] = []


def install(hook: LoopHook) -> None:
  """Adds `hook` to every training run this process starts from now on."""
  _installed.append(hook)


def uninstall(hook: LoopHook) -> None:
  _installed.remove(hook)


def installed() -> tuple[LoopHook, ...]:
  return tuple(_installed)
