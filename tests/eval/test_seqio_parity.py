"""mtjax's metric step equals `seqio.Evaluator` on the same model outputs.

As SeqIO's own evaluator tests do, the "model" is a fixed function of each example: predictions
and scores are derived from the example's target tokens, so both evaluators see identical model
outputs whatever order they visit examples in. The task has a postprocessor (which matters: some
predictions only match after it), two predict metrics and one score metric.
"""

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from mtjax.data import cache, pipeline
from mtjax.eval import evaluate, metrics

TASK = "mtjax_test_parity"
VOCAB = seqio.ByteVocabulary()
WORDS = ["apple", "Pear", "fig", "banana", "kiwi", "plum", "lime", "grape", "melon", "date",
         "cherry", "mango", "peach"]


def _dataset_fn(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  import tensorflow as tf

  return tf.data.Dataset.from_tensor_slices({
      "inputs": [f"name a fruit, number {i}" for i in range(len(WORDS))],
      "targets": [f" {w} " for w in WORDS]})


def _postprocess(text, example=None, is_target=False):
  del example, is_target
  return text.strip().lower()


def _mean_prediction_length(targets, predictions):
  del targets
  return {"mean_prediction_length": float(np.mean([len(p) for p in predictions]))}


def _score_metrics(targets, scores):
  longest = int(np.argmax([len(t) for t in targets]))
  return {"mean_score": float(np.mean(scores)), "score_of_longest_target": float(scores[longest])}


def _content(tokens):
  return [int(t) for t in tokens if int(t) not in (0, 1)]


def _prediction(target_tokens):
  """Right after the postprocessor (upper case), right as is, or wrong, by content."""
  ids = _content(target_tokens)
  text = VOCAB.decode(ids)
  kind = sum(ids) % 3
  out = text.upper() if kind == 0 else text if kind == 1 else text[::-1] + "x"
  ids = VOCAB.encode(out) + [1]
  return ids + [0] * (16 - len(ids))  # fixed width, as a decoder returns


def _score(target_tokens):
  ids = _content(target_tokens)
  return -0.5 * len(ids) + (sum(ids) % 7) / 7.0


@pytest.fixture(scope="module")
def task(tmp_path_factory):
  seqio.TaskRegistry.remove(TASK)
  features = {k: seqio.Feature(vocabulary=VOCAB, add_eos=True) for k in ("inputs", "targets")}
  task = seqio.TaskRegistry.add(
      TASK, source=seqio.FunctionDataSource(_dataset_fn, splits=("validation",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features, postprocess_fn=_postprocess,
      metric_fns=[metrics.exact_match, _mean_prediction_length, _score_metrics])
  cache_dir = str(tmp_path_factory.mktemp("parity_cache"))
  cache.cache_task_split(task, "validation", cache_dir)
  yield task, cache_dir
  seqio.TaskRegistry.remove(TASK)


def test_metrics_equal_seqio_evaluator(task):
  task, cache_dir = task
  evaluator = seqio.Evaluator(TASK, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                              eval_split="validation", async_compute_metrics=False)
  predict_fn = lambda ds: [(i, _prediction(ex["decoder_target_tokens"]))
                           for i, ex in ds.as_numpy_iterator()]
  score_fn = lambda ds: [(i, _score(ex["decoder_target_tokens"])) for i, ex in
                         ds.as_numpy_iterator()]
  seqio_metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                        score_fn=score_fn)
  expected = seqio_metrics.result()[TASK]

  examples = pipeline.read_examples(cache_dir, TASK, "validation")
  assert len(examples) == len(WORDS)
  ours = evaluate.task_metrics(task, examples,
                               predicted_ids=[_prediction(ex["targets"]) for ex in examples],
                               scores=[_score(ex["targets"]) for ex in examples])
  assert set(ours) == set(expected) == {"exact_match", "mean_prediction_length", "mean_score",
                                        "score_of_longest_target"}
  for key, value in expected.items():
    np.testing.assert_allclose(ours[key], value, rtol=1e-6, err_msg=key)
  assert 0 < ours["exact_match"] < 100  # the predictions are a real mix of right and wrong
