"""`mtjax train`: the training loop with mtjax's evaluation plugged in.

The loop (`mtjax.train.loop`) sits below `mtjax.eval` and never imports it; evaluation builds
its models through `mtjax.train.setup`. This module, above both, composes them: the loop gets
`mtjax.eval`'s full evaluation (`eval.every`, `eval.at_end`; its metrics rank checkpoints) as a
`mtjax.train.hooks.Evaluation`, and `eval.lm_eval_*`'s lm-evaluation-harness tasks as a
`PeriodicEvaluation`. Everything that trains a run with evaluation goes through `run`:
the CLI, each ProMoT stage, each ablation member, the notebook.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtjax.config import schema
from mtjax.train import hooks as hooks_lib


def evaluation() -> hooks_lib.Evaluation:
  """`mtjax eval`'s evaluation of a run's params (reports in the run dir), as the loop calls it."""
  from mtjax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from mtjax.eval import run as eval_run  # pylint: disable=g-import-not-at-top

  return hooks_lib.Evaluation(
      run=lambda setup, params, step: eval_run.evaluate_setup(setup, params, step=step),
      metrics=evaluate.flat_metrics)


def evaluations(cfg: schema.RunConfig) -> tuple[hooks_lib.PeriodicEvaluation, ...]:
  """The evaluations with their own schedules that `cfg.eval` asks for: lm-evaluation-harness
  tasks (`eval.lm_eval_tasks`, `mtjax.eval.lm_eval`)."""
  if not cfg.eval.lm_eval_tasks:
    return ()
  from mtjax.eval import lm_eval  # pylint: disable=g-import-not-at-top

  return (lm_eval.training_evaluation(cfg),)


def run(cfg: schema.RunConfig, *, progress: bool = True, command: str = "mtjax train",
        hooks: Sequence[hooks_lib.LoopHook] = ()) -> dict:
  """Trains (or resumes) `cfg`'s run and evaluates it as `cfg.eval` says (`loop.train`)."""
  from mtjax.train import loop  # pylint: disable=g-import-not-at-top

  return loop.train(cfg, progress=progress, command=command, evaluation=evaluation(),
                    hooks=hooks, evaluations=evaluations(cfg))
