"""The format-specialisation suite of scripts/repro_promot.py (mtjax.mixtures.synthetic_format):
every task shares the target's surface form, only the target answers yes/no, the in-context tasks
are ambiguous zero-shot, and the prompts fit the lengths the study uses."""

import collections
import os

import pytest

from mtjax.data import few_shot
from mtjax.mixtures import synthetic_format as suite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_task_shares_the_targets_layout_and_only_the_target_says_yes_no():
  for task in suite.TASKS:
    for split in ("train", "validation"):
      examples = suite.generate(task, split)
      assert len(examples) == (suite.NUM_TRAIN if split == "train" else suite.NUM_VALIDATION)
      for ex in examples[:200]:
        rendered = suite.TEMPLATE.inputs.format(**ex)
        assert rendered.startswith("Q: ") and rendered.endswith("\nA:")
      answers = {ex["answer"] for ex in examples}
      if task == suite.TARGET:
        assert answers == set(suite.LABEL_SET)
        counts = collections.Counter(ex["answer"] for ex in examples)
        assert abs(counts["yes"] - counts["no"]) <= 0.15 * len(examples)  # balanced
      else:
        assert not answers & set(suite.LABEL_SET)


def test_splits_are_disjoint_and_the_target_is_on_the_letters_alphabet():
  for task in suite.TASKS:
    train = {ex["x"] for ex in suite.generate(task, "train")}
    assert not train & {ex["x"] for ex in suite.generate(task, "validation")}
  alphabet = set("abcdefghijklmnopqrstuvwxyz")
  for task in ("fmt_copy", "fmt_first", "fmt_before", suite.TARGET):
    assert all(set(ex["x"]) <= alphabet for ex in suite.generate(task, "validation"))


@pytest.mark.parametrize("family", list(suite.FAMILIES))
def test_family_tasks_share_inputs_and_differ_in_the_mapping(family):
  (a, make_a), (b, make_b) = suite.FAMILIES[family].items()
  del a, b
  import numpy as np

  rng = np.random.default_rng(0)
  differ = 0
  for _ in range(50):
    state = rng.bit_generator.state
    ex_a = make_a(rng)
    rng.bit_generator.state = state
    ex_b = make_b(rng)
    assert ex_a["x"] == ex_b["x"]  # the same input draw ...
    differ += ex_a["answer"] != ex_b["answer"]
  assert differ >= 25  # ... mapped differently: zero-shot, the task is ambiguous


def test_k_shot_prompts_fit_the_study_lengths():
  # pretraining: up to 3 shots in 72 input tokens; evaluation: 2 shots in 24 * 3 tokens
  longest = max(len(ex["x"]) + len(ex["answer"]) for t in suite.ICL_TASKS
                for ex in suite.generate(t, "validation"))
  demo = len("Q: \nA:\n") + longest + len(few_shot.SEPARATOR)
  query = len("Q: \nA:") + 5 + 1  # longest input and EOS (byte vocabulary: a token a byte)
  assert 3 * demo + query <= 72
  assert 2 * demo + query <= 24 * 3
  assert query <= 24


def test_the_script_exposes_the_suite_for_other_studies():
  import importlib
  import sys

  cwd = os.getcwd()
  sys.path.insert(0, ROOT)
  try:
    study = importlib.import_module("scripts.repro_promot")
  finally:
    os.chdir(cwd)
    sys.path.remove(ROOT)
  args = study.parser().parse_args([])
  cfg = study.pretrain_config(args)
  assert cfg.data.mixture == suite.PRETRAIN_MIXTURE
  assert study.FAMILIES == suite.family_tasks() and study.TARGET == suite.TARGET
  main, equal = (study.promot_config(args, 1, run) for run in ("main", "equal_total"))
  assert main.train.seed == main.data.seed == 1
  assert (main.promot.prompt_steps, main.promot.model_steps) == (args.model_steps,) * 2
  assert equal.promot.prompt_steps + equal.promot.model_steps == args.model_steps
