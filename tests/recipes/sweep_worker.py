"""Runs several `mtjax ablate` invocations in one fresh process for test_ablate.py.

`python -m tests.recipes.sweep_worker PHASES.json`, where the file holds `[[label, argv], ...]`.
Prints `PHASE <label>` before each invocation and `TRAINED <member>` whenever a member's run
starts training, so the test sees exactly which members each invocation trained. A fresh process
can use one CPU device and XLA's LLVM optimisation off (the test sets both), which makes the
compiles that dominate a 2-step member cheaper.
"""

import json
import os
import sys


def main(phases_file: str) -> None:
  from mtjax import cli
  from mtjax.recipes import train as train_recipe

  real_train = train_recipe.run

  def spy(cfg, **kwargs):
    print(f"TRAINED {os.path.basename(cfg.run_dir)}", flush=True)
    return real_train(cfg, **kwargs)

  train_recipe.run = spy
  with open(phases_file) as f:
    phases = json.load(f)
  for label, argv in phases:
    print(f"PHASE {label}", flush=True)
    cli.main(argv)


if __name__ == "__main__":
  main(sys.argv[1])
