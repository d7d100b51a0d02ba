"""configs/experiments/: each recipe has the published hyperparameters, its gin and python twins
agree, and it trains 2 steps at toy scale (tiny model, short sequences) on CPU."""

import json
import os
import subprocess
import sys

import pytest

from mtjax.config import gin_config, python_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = os.path.join(ROOT, "configs", "experiments")
NAMES = ("t0", "flan_t5", "mt0_xp3", "promot_stage1", "promot_stage2")

# The values as the papers state them (see each config's docstring for the section), written out
# here independently of the config files.
PUBLISHED = {
    "t0": {"optimizer.name": "adafactor", "optimizer.learning_rate": 1e-3,
           "optimizer.schedule": "constant", "data.batch_size": 1024, "data.inputs_length": 1024,
           "data.targets_length": 256, "data.pack": True, "train.steps": 12_200,
           "model.dropout_rate": 0.1, "data.mixture": "t0_train"},
    "flan_t5": {"optimizer.name": "adafactor", "optimizer.schedule": "constant",
                "data.pack": True, "data.inputs_length": 2048, "data.targets_length": 512,
                "data.mixture": "flan2022"},
    "mt0_xp3": {"optimizer.name": "adafactor", "optimizer.learning_rate": 1e-3,
                "optimizer.schedule": "constant", "model.dropout_rate": 0.1,
                "data.batch_size": 512, "data.inputs_length": 1024,
                "data.targets_length": 1024, "data.pack": False,
                "train.loss_normalization": "sample", "model.preset": "mt5_xxl",
                "data.mixture": "xp3"},
    "promot_stage1": {"optimizer.name": "adafactor", "optimizer.learning_rate": 0.3,
                      "optimizer.schedule": "constant", "optimizer.decay_rate": 0.8,
                      "optimizer.parameter_scale": False, "optimizer.weight_decay": 1e-5,
                      "data.pack": False, "train.trainable": ("prompt",)},
    "promot_stage2": {"optimizer.name": "adafactor", "optimizer.learning_rate": 1e-3,
                      "model.dropout_rate": 0.1, "train.label_smoothing": 0.1,
                      "data.pack": False, "train.trainable": ("all_but_prompt",)},
}
def _get(cfg, dotted):
  for part in dotted.split("."):
    cfg = getattr(cfg, part)
  return cfg


@pytest.mark.parametrize("name", NAMES)
def test_published_values_and_gin_twin(name):
  cfg = python_config.load(os.path.join(EXPERIMENTS, f"{name}.py"))
  for key, value in PUBLISHED[name].items():
    assert _get(cfg, key) == value, key
  assert gin_config.load([os.path.join(EXPERIMENTS, f"{name}.gin")]) == cfg


def test_each_recipe_trains_two_steps_at_toy_scale(tmp_path, synthetic_cache, worker_env):
  env = dict(os.environ, **worker_env)
  # Two worker processes at once (a 2-core CI machine): the packed recipes, and ProMoT's two
  # stages in order.
  groups = (("t0", "flan_t5", "mt0_xp3"), ("promot_stage1", "promot_stage2"))
  procs, logs = [], []
  for i, group in enumerate(groups):  # output to files: a full pipe would stall a worker
    logs.append(tmp_path / f"worker{i}.log")
    with open(logs[-1], "w") as log:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "tests.recipes.recipe_worker", str(tmp_path), synthetic_cache,
           *group], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  for p, log in zip(procs, logs):
    p.wait(timeout=600)
    assert p.returncode == 0, log.read_text()[-5000:]
  results = {r["recipe"]: r for log in logs
             for r in (json.loads(line[len("RESULT "):]) for line in log.read_text().splitlines()
                       if line.startswith("RESULT "))}
  assert sorted(results) == sorted(NAMES)
  for name, r in results.items():
    assert r["steps"] == 2 and r["loss"] > 0, name
    assert os.path.isdir(tmp_path / name / "checkpoints" / "2"), name
  trainable = {}
  for stage in ("promot_stage1", "promot_stage2"):
    with open(tmp_path / stage / "model_summary.json") as f:
      trainable[stage] = {p: v["trainable"] for p, v in json.load(f)["params"].items()}
  prompt = [p for p in trainable["promot_stage1"] if "prompt" in p]
  assert prompt
  for path, trains in trainable["promot_stage1"].items():  # stage 1: only the prompt trains
    assert trains == (path in prompt), path
  for path, trains in trainable["promot_stage2"].items():  # stage 2: all but the prompt
    assert trains == (path not in prompt), path
