"""Few-shot in-context evaluation, the format-specialisation rate, and rank classification of a
PromptSource-style task end to end (a tiny file task with answer choices and two templates)."""

import json

import numpy as np
import pytest
from flax import nnx

from mtjax.data import cache, file_tasks
from mtjax.data import few_shot as data_few_shot
from mtjax.data.promptsource import PromptTemplate
from mtjax.eval import evaluate, few_shot, metrics
from mtjax.models import t5

TASK = "mtjax_test_greater"
TEMPLATES = [
    PromptTemplate("greater", "Is {{a}} greater than {{b}}? ||| {{answer_choices[label]}}",
                   answer_choices="no ||| yes"),
    PromptTemplate("bigger", "{{a}} > {{b}}? ||| {{answer_choices[label]}}",
                   answer_choices="False ||| True"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  folder = tmp_path_factory.mktemp("greater")
  rng = np.random.default_rng(0)
  for split, n in (("train", 8), ("validation", 6)):
    with open(folder / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        a, b = (int(x) for x in rng.choice(50, size=2, replace=False))
        f.write(json.dumps({"a": a, "b": b, "label": int(a > b)}) + "\n")
  file_tasks.register_file_task(TASK, {s: str(folder / f"{s}.jsonl")
                                       for s in ("train", "validation")},
                                templates=TEMPLATES, metric_fns=[metrics.accuracy])
  cache_dir = str(tmp_path_factory.mktemp("cache"))
  cache.ensure_cached(TASK, cache_dir, splits=("validation",))
  model = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  return cache_dir, graphdef, state.to_pure_dict()


KW = dict(split="validation", inputs_length=24, targets_length=4, max_examples=6, batch_size=8)


def test_format_rate_by_hand():
  predictions = ["yes", "no", " yes ", "maybe", "Yes", "no"]
  assert evaluate.format_rate(predictions, ("yes", "no")) == 100.0 * 4 / 6
  assert evaluate.format_rate([], ("yes",)) == 0.0


def test_rank_classification_over_templates(setup):
  cache_dir, graphdef, params = setup
  r = evaluate.evaluate_task(graphdef, params, TASK, cache_dir=cache_dir, **KW)
  m = r["metrics"]
  per_template = [m["rank_accuracy/template_0"], m["rank_accuracy/template_1"]]
  assert m["rank_accuracy"] == pytest.approx(np.mean(per_template))  # 3 examples each
  assert m["rank_accuracy_median"] == pytest.approx(np.mean(per_template))
  assert m["rank_accuracy_iqr"] == pytest.approx(abs(per_template[0] - per_template[1]) / 2)
  mean = evaluate.evaluate_task(graphdef, params, TASK, cache_dir=cache_dir, scoring_mode="mean",
                                **KW)
  assert set(mean["metrics"]) == set(m)


def test_k_shot_evaluation(setup):
  cache_dir, graphdef, params = setup
  results = few_shot.evaluate_few_shot(graphdef, {"": params}, [TASK], [0, 2],
                                       cache_dir=cache_dir, label_set=("yes", "no"), **KW)
  assert [(r["task"], r["k"], r["num_examples"]) for r in results] == [
      (f"{TASK}_0shot", 0, 6), (f"{TASK}_2shot", 2, 6)]
  zero, two = (r["samples"][0]["inputs"] for r in results)
  # The 2-shot prompt is two solved demonstrations, then the 0-shot prompt of the same example.
  parts = two.split(data_few_shot.SEPARATOR)
  assert len(parts) == 3 and parts[-1] == zero
  assert all(p.split(data_few_shot.ANSWER_SEPARATOR)[-1] in ("yes", "no") for p in parts[:2])
  for r in results:
    assert {"accuracy", "format_rate", "rank_accuracy"} <= set(r["metrics"])
  summary = evaluate.few_shot_summary(results)
  assert summary["few_shot/2shot/format_rate"] == results[1]["metrics"]["format_rate"]
  assert {k.split("/")[1] for k in summary} == {"0shot", "2shot"}
  # A given 0-shot result is reused, not recomputed.
  plain = {("", TASK): {"task": TASK, "metrics": {"accuracy": 12.5}, "samples": []}}
  again = few_shot.evaluate_few_shot(graphdef, {"": params}, [TASK], [0], cache_dir=cache_dir,
                                     reuse=plain, **KW)
  assert again[0]["metrics"] == {"accuracy": 12.5} and again[0]["task"] == f"{TASK}_0shot"
  assert evaluate.averages(results + [plain[("", TASK)]]) == {"accuracy": 12.5}


def test_flat_metrics_and_table():
  results = [{"task": "a", "metrics": {"accuracy": 50.0}},
             {"task": "b", "metrics": {"accuracy": 100.0, "bleu": 3.0}},
             {"task": "a_2shot", "k": 2, "variant": "", "metrics": {"accuracy": 20.0}},
             {"task": "b_2shot", "k": 2, "variant": "", "metrics": {"accuracy": 40.0}}]
  assert evaluate.flat_metrics(results) == {
      "a/accuracy": 50.0, "b/accuracy": 100.0, "b/bleu": 3.0, "a_2shot/accuracy": 20.0,
      "b_2shot/accuracy": 40.0, "average/accuracy": 75.0, "average/bleu": 3.0,
      "few_shot/2shot/accuracy": 30.0}
  rows = [line.split() for line in evaluate.format_table(results).splitlines()[2:]]
  assert ["average", "accuracy", "75.0", "2", "tasks"] in rows  # over the tasks reporting it
  assert ["average", "bleu", "3.0", "1", "task"] in rows  # never pooled with accuracy
  assert ["average", "few_shot/2shot/accuracy", "30.0"] in rows
