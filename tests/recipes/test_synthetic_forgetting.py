"""The forgetting study's second target (mtjax.mixtures.synthetic_forgetting): its labels, its
layout, its split hygiene and the two-target mixture (scripts/repro_forgetting.py)."""

import collections
import re

import pytest


@pytest.fixture(scope="module")
def two():
  from mtjax.mixtures import synthetic_forgetting  # registers the task and the mixture

  return synthetic_forgetting


def test_greater_labels_are_right_and_balanced(two):
  train = two.generate(two.SECOND_TARGET, "train")
  val = two.generate(two.SECOND_TARGET, "validation")
  assert len(train) == 4000 and len(val) == 200
  for ex in train + val:
    assert re.fullmatch(r"\d\d \d\d", ex["x"])  # the numbers family's inputs
    a, b = map(int, ex["x"].split())
    assert 10 <= a < 100 and 10 <= b < 100 and a != b
    assert ex["answer"] == ("yes" if a > b else "no")
  for split in (train, val[:100]):  # the 100 evaluated examples too
    counts = collections.Counter(ex["answer"] for ex in split)
    assert set(counts) == set(two.LABEL_SET)
    assert abs(counts["yes"] / len(split) - 0.5) < 0.1
  assert not {e["x"] for e in train} & {e["x"] for e in val}
  assert len({e["x"] for e in val}) == len(val)
  assert two.generate(two.SECOND_TARGET, "train")[:5] == train[:5]  # deterministic


def test_two_targets_share_layout_and_labels_but_not_inputs(two):
  import seqio

  from mtjax.mixtures import synthetic_format as fmt

  mixture = seqio.get_mixture_or_task(two.TWO_TARGETS_MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == sorted(two.TARGETS) == ["fmt_greater", fmt.TARGET]
  assert mixture.get_rate(mixture.tasks[0]) == mixture.get_rate(mixture.tasks[1])
  vowel = fmt.generate(fmt.TARGET, "validation")
  assert all(re.fullmatch(r"[a-z]+", e["x"]) for e in vowel)  # letters vs digits: separable
  assert {e["answer"] for e in vowel} == set(two.LABEL_SET)
  task = seqio.get_mixture_or_task(two.SECOND_TARGET)
  assert dict(task.output_features) == fmt.OUTPUT_FEATURES
  assert fmt.TEMPLATE.inputs.format(x="23 41") == "Q: 23 41\nA:"
