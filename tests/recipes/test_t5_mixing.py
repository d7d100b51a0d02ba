"""The T5 mixing study's suite and sweep (mtjax.mixtures.synthetic_sizes, configs/sweeps/
t5_mixing.py): split hygiene of the suite and each variant's rates, against hand-computed values."""

import importlib.util
import os

import pytest

from mtjax.data import mixing
from mtjax.recipes import sweep, variants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sizes():
  from mtjax.mixtures import synthetic_sizes  # registers the tasks and mixtures

  return synthetic_sizes


def _load_sweep():
  path = os.path.join(ROOT, "configs", "sweeps", "t5_mixing.py")
  spec = importlib.util.spec_from_file_location("t5_mixing_sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return sweep.parse(module.get_sweep())


def test_suite_splits_are_disjoint_and_probes_read_the_train_set(sizes):
  for task, (rule, num_train, _) in sizes.TASKS.items():
    if num_train > 2000:
      continue  # the big tasks are slow to draw; the rule is the same
    train, val = sizes.generate(task, "train"), sizes.generate(task, "validation")
    assert len(train) == num_train and len(val) == sizes.VALIDATION_SIZE
    assert not {e["text"] for e in train} & {e["text"] for e in val}
    assert all(e["answer"] == rule(e["text"]) for e in train[:50])
  assert sizes.TASKS["swap"][0]("abcde") == "badce"
  assert sizes.TASKS["shift"][0]("azy") == "baz"
  assert sizes.TASKS["double"][0]("ab") == "aabb"
  import seqio

  probe = seqio.get_mixture_or_task("sizes_shift_trainset")
  assert probe.num_input_examples("validation") == 200


def test_t5_mixing_rates_by_hand(sizes):
  del sizes
  spec = mixing.from_seqio("synthetic_sizes")
  rates = {v.name: variants.task_rates(v, spec) for v in _load_sweep().variants}
  n = {"sizes_reverse": 20000, "sizes_swap": 2000, "sizes_shift": 200, "sizes_double": 200}
  # Proportional: 20000 / 22400 = 0.892857...; 200 / 22400 = 0.008929 each.
  assert rates["proportional"]["sizes_reverse"] == pytest.approx(20000 / 22400)
  assert rates["proportional"]["sizes_shift"] == pytest.approx(200 / 22400)
  # Cap K = 2000: 2000, 2000, 200, 200 of 4400.
  assert rates["prop_K2000"]["sizes_reverse"] == pytest.approx(2000 / 4400)
  assert rates["prop_K2000"]["sizes_swap"] == pytest.approx(2000 / 4400)
  # T = 2: sqrt(20000) = 141.421, sqrt(2000) = 44.721, sqrt(200) = 14.142; total 214.427.
  assert rates["T2"]["sizes_reverse"] == pytest.approx(141.421 / 214.427, abs=1e-4)
  assert rates["T2"]["sizes_shift"] == pytest.approx(14.142 / 214.427, abs=1e-4)
  # T = 4: 20000**0.25 = 11.892, 2000**0.25 = 6.687, 200**0.25 = 3.761; total 26.101.
  assert rates["T4"]["sizes_double"] == pytest.approx(3.761 / 26.101, abs=1e-4)
  assert rates["equal"] == pytest.approx(
      {t: (0.25 if t in n else 0.0) for t in spec.task_names})
  # T = 2 with the general task at 25%: the four tasks share the other 75% as in T2.
  general = rates["T2_general25"]
  assert general["sizes_copy"] == pytest.approx(0.25)
  assert general["sizes_reverse"] == pytest.approx(0.75 * 141.421 / 214.427, abs=1e-4)
  for name, r in rates.items():  # the train-set probes are never trained on
    assert r["sizes_shift_trainset"] == r["sizes_double_trainset"] == 0.0, name
    if name != "T2_general25":
      assert r["sizes_copy"] == 0.0, name
