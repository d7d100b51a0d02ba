"""`mtjax train`: the training loop with mtjax's evaluation plugged in.

The loop (`mtjax.train.loop`) sits below `mtjax.eval` and never imports it; evaluation builds
its models through `mtjax.train.setup`. This module, above both, composes them: the loop gets
`mtjax.eval`'s full evaluation (`eval.every`, `eval.at_end`; its metrics rank checkpoints) as a
`mtjax.train.hooks.Evaluation`. Everything that trains a run with evaluation goes through `run`:
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


def run(cfg: schema.RunConfig, *, progress: bool = True, command: str = "mtjax train",
        hooks: Sequence[hooks_lib.LoopHook] = ()) -> dict:
  """Trains (or resumes) `cfg`'s run and evaluates it as `cfg.eval` says (`loop.train`)."""
  from mtjax.train import loop  # pylint: disable=g-import-not-at-top

  return loop.train(cfg, progress=progress, command=command, evaluation=evaluation(),
                    hooks=hooks)
