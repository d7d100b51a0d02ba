"""Trains configs/experiments/ recipes for 2 steps at toy scale, in a fresh process.

Run by test_experiment_configs.py as `python -m tests.recipes.recipe_worker OUT CACHE_DIR
RECIPE...` with one CPU device and XLA's LLVM optimisation off: compiling the train steps is
nearly all the work, and both settings make it cheaper (neither changes what the configs train).
"""

import json
import os
import sys

RECIPES = ("t0", "flan_t5", "mt0_xp3", "promot_stage1", "promot_stage2")
TOY = ["model.preset=t5_test", "model.dtype=float32", "train.steps=2", "data.batch_size=8",
       "data.inputs_length=32", "data.targets_length=8", "train.log_every=2",
       "train.checkpoint_every=2", "eval.at_end=False"]


def main(out: str, cache_dir: str, *recipes: str) -> None:
  from mtjax.config import python_config
  from mtjax.recipes import train as train_recipe

  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for name in recipes or RECIPES:  # stage 2 starts from stage 1's run, as in ProMoT
    extra = [f"run_dir={os.path.join(out, name)}", f"data.cache_dir={cache_dir}"]
    if name in ("t0", "flan_t5", "mt0_xp3"):  # their real collections: the synthetic suite here
      extra += ["data.mixture=synthetic", "data.modules=mtjax.mixtures.synthetic"]
    if name.startswith("promot"):
      extra.append("model.prompt_length=4")
    if name == "promot_stage2":
      extra.append(f"train.init_from={os.path.join(out, 'promot_stage1')}")
    cfg = python_config.load(os.path.join(root, "configs", "experiments", f"{name}.py"),
                             TOY + extra)
    summary = train_recipe.run(cfg, progress=False)
    print("RESULT " + json.dumps({"recipe": name, "steps": summary["steps"],
                                  "loss": summary["final_metrics"]["loss"]}), flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
