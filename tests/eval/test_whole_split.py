"""Evaluation covers the whole split unless capped; a cap says what it cut; the printed table
shows each task's example count; `predict_with_aux` metric fns get T5X's aux `scores` (the
sequence log-likelihood for greedy decodes, the beam score for beam search: with one beam and
no length penalty the two are the same number, from two different code paths)."""

import json
import logging

import numpy as np
import pytest
from flax import nnx

from mtjax.config import schema
from mtjax.data import cache, file_tasks
from mtjax.data.promptsource import PromptTemplate
from mtjax.eval import evaluate, metrics
from mtjax.models import t5

TASK = "mtjax_test_whole_split"
NUM_VALIDATION = 7
AUX_SEEN: list[dict] = []  # what the predict_with_aux metric fn was given, per evaluation


def _aux_metric(targets, predictions, aux_values):
  AUX_SEEN.append({"predictions": list(predictions), "scores": np.asarray(aux_values["scores"])})
  return {"aux_mean_score": float(np.mean(aux_values["scores"]))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  folder = tmp_path_factory.mktemp("whole_split")
  for split, n in (("train", 3), ("validation", NUM_VALIDATION)):
    with open(folder / f"{split}.jsonl", "w") as f:
      for i in range(n):
        f.write(json.dumps({"word": f"w{i}{split[0]}"}) + "\n")
  file_tasks.register_file_task(
      TASK, {s: str(folder / f"{s}.jsonl") for s in ("train", "validation")},
      templates=[PromptTemplate("echo", "Say {{word}} ||| {{word}}")],
      metric_fns=[metrics.exact_match, _aux_metric])
  cache_dir = str(tmp_path_factory.mktemp("cache"))
  cache.ensure_cached(TASK, cache_dir, splits=("validation",))
  model = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  return cache_dir, graphdef, state.to_pure_dict()


def _kwargs(cache_dir, **eval_fields):
  cfg = schema.RunConfig(data=schema.DataConfig(cache_dir=cache_dir, inputs_length=16,
                                                targets_length=6),
                         eval=schema.EvalConfig(batch_size=4, **eval_fields))
  return evaluate.config_kwargs(cfg)


def test_default_is_the_whole_split_and_a_cap_says_what_it_cut(setup, caplog):
  cache_dir, graphdef, params = setup
  assert schema.EvalConfig().max_examples == 0  # 0 = the whole split
  with caplog.at_level(logging.WARNING, logger="mtjax.eval.evaluate"):
    whole = evaluate.evaluate_task(graphdef, params, TASK, **_kwargs(cache_dir))
  assert (whole["num_examples"], whole["split_examples"]) == (NUM_VALIDATION, NUM_VALIDATION)
  assert len(whole["rows"]) == NUM_VALIDATION and "evaluated" not in caplog.text

  with caplog.at_level(logging.WARNING, logger="mtjax.eval.evaluate"):
    capped = evaluate.evaluate_task(graphdef, params, TASK, **_kwargs(cache_dir, max_examples=5))
  assert (capped["num_examples"], capped["split_examples"]) == (5, NUM_VALIDATION)
  assert (f"task {TASK}: evaluated 5 of {NUM_VALIDATION} validation examples "
          "(eval.max_examples=5)") in caplog.text

  table = [line.split() for line in evaluate.format_table([whole, capped]).splitlines()]
  assert table[0] == ["task", "metric", "value", "examples"]
  assert [TASK, "exact_match", f"{whole['metrics']['exact_match']:.1f}",
          str(NUM_VALIDATION)] in table
  assert [TASK, "exact_match", f"{capped['metrics']['exact_match']:.1f}",
          "5", "of", str(NUM_VALIDATION)] in table
  with pytest.raises(ValueError, match="eval.max_examples must be >= 0"):
    _kwargs(cache_dir, max_examples=-1)


def test_predict_with_aux_gets_sequence_scores(setup):
  cache_dir, graphdef, params = setup
  AUX_SEEN.clear()
  greedy = evaluate.evaluate_task(graphdef, params, TASK, **_kwargs(cache_dir))
  beam = evaluate.evaluate_task(graphdef, params, TASK,
                                **_kwargs(cache_dir, decode="beam", beam_size=1, alpha=0.0))
  assert len(AUX_SEEN) == 2
  by_greedy, by_beam = AUX_SEEN
  # One beam, no length penalty: greedy's sequences, scored by the decoder as it searched.
  assert by_greedy["predictions"] == by_beam["predictions"]
  assert by_greedy["scores"].shape == (NUM_VALIDATION,)
  assert np.all(by_greedy["scores"] < 0)
  np.testing.assert_allclose(by_greedy["scores"], by_beam["scores"], rtol=1e-4, atol=1e-4)
  assert greedy["metrics"]["aux_mean_score"] == pytest.approx(
      float(np.mean(by_greedy["scores"])))
  assert set(greedy["metrics"]) == set(beam["metrics"]) == {"exact_match", "aux_mean_score"}
