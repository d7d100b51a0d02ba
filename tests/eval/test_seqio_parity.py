"""mtjax's metric step equals `seqio.Evaluator` on the same model outputs.

As SeqIO's own evaluator tests do, the "model" is a fixed function of each example: predictions
and scores are derived from the example's target tokens, so both evaluators see identical model
outputs whatever order they visit examples in. The task has a postprocessor (which matters: some
predictions only match after it), two predict metrics and one score metric; a second task adds
SeqIO's newer kinds: a `predict_with_aux` metric fn (T5X's aux `scores`) and `metric_objs` (a
collecting `PassthroughLegacyMetric` and a non-collecting `LegacyMetric` without postprocessor).
"""

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from mtjax.data import cache, pipeline
from mtjax.eval import evaluate, metrics

TASK = "mtjax_test_parity"
AUX_TASK = "mtjax_test_parity_aux"
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


def _aux_metric(targets, predictions, aux_values):
  scores = np.asarray(aux_values["scores"])
  hits = np.array([t == p for t, p in zip(targets, predictions)])
  return {"aux_mean_score": float(scores.mean()), "aux_score_of_hits": float(scores[hits].sum())}


def _hits_by_length(targets, predictions):
  return {"long_hits": 100.0 * np.mean([t == p and len(t) > 4
                                        for t, p in zip(targets, predictions)])}


def _raw_prediction_length(targets, predictions):
  """Sees the raw decoded strings (this metric object has no postprocessor)."""
  return {"raw_prediction_length": float(np.mean([len(p) for p in predictions])),
          "raw_targets_with_spaces": float(sum(t.startswith(" ") for t in targets))}


def _aux_scores(target_tokens):
  return float(sum(_content(target_tokens)) % 11) - 5.0


@pytest.fixture(scope="module")
def aux_task(tmp_path_factory):
  seqio.TaskRegistry.remove(AUX_TASK)
  features = {k: seqio.Feature(vocabulary=VOCAB, add_eos=True) for k in ("inputs", "targets")}
  objs = [seqio.metrics.PassthroughLegacyMetric.from_metric_fn(_hits_by_length,
                                                               _postprocess).empty(),
          seqio.metrics.LegacyMetric.empty(_raw_prediction_length, None)]
  task = seqio.TaskRegistry.add(
      AUX_TASK, source=seqio.FunctionDataSource(_dataset_fn, splits=("validation",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features, postprocess_fn=_postprocess,
      metric_fns=[metrics.exact_match, _aux_metric, _score_metrics], metric_objs=objs)
  cache_dir = str(tmp_path_factory.mktemp("parity_aux_cache"))
  cache.cache_task_split(task, "validation", cache_dir)
  yield task, cache_dir
  seqio.TaskRegistry.remove(AUX_TASK)


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


def test_metric_objs_and_predict_with_aux_equal_seqio_evaluator(aux_task):
  task, cache_dir = aux_task
  evaluator = seqio.Evaluator(AUX_TASK, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                              eval_split="validation", async_compute_metrics=False)
  rows = lambda ds: list(ds.as_numpy_iterator())
  predict_fn = lambda ds: [(i, _prediction(ex["decoder_target_tokens"])) for i, ex in rows(ds)]
  score_fn = lambda ds: [(i, _score(ex["decoder_target_tokens"])) for i, ex in rows(ds)]

  def predict_with_aux_fn(ds):
    out = rows(ds)
    return ([(i, _prediction(ex["decoder_target_tokens"])) for i, ex in out],
            {"scores": [_aux_scores(ex["decoder_target_tokens"]) for _, ex in out]})

  seqio_metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                        score_fn=score_fn, predict_with_aux_fn=predict_with_aux_fn)
  expected = seqio_metrics.result()[AUX_TASK]

  examples = pipeline.read_examples(cache_dir, AUX_TASK, "validation")
  ours = evaluate.task_metrics(
      task, examples, predicted_ids=[_prediction(ex["targets"]) for ex in examples],
      scores=[_score(ex["targets"]) for ex in examples],
      aux_values={"scores": [_aux_scores(ex["targets"]) for ex in examples]})
  assert set(ours) == set(expected) == {
      "exact_match", "aux_mean_score", "aux_score_of_hits", "mean_score",
      "score_of_longest_target", "long_hits", "raw_prediction_length", "raw_targets_with_spaces"}
  for key, value in expected.items():
    np.testing.assert_allclose(ours[key], value, rtol=1e-6, err_msg=key)
  assert ours["raw_targets_with_spaces"] == len(WORDS)  # no postprocessor: raw " word " targets
  assert ours["aux_score_of_hits"] != 0  # the aux scores reached the metric fn


def test_unsupported_metric_output_is_refused(tmp_path):
  """A metric object that needs model internals (SCORE_WITH_INTERMEDIATES) is an error naming
  the task and the metric, raised before any model is run, not a metric silently missing."""
  import flax

  from mtjax import errors

  @flax.struct.dataclass
  class IntermediatesMetric(seqio.metrics.Metric):

    @classmethod
    def from_model_output(cls, *args, **kwargs):
      raise AssertionError("never fed")

  name = "mtjax_test_parity_intermediates"
  seqio.TaskRegistry.remove(name)
  kind = seqio.metrics.ModelOutputType.SCORE_WITH_INTERMEDIATES
  task = seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(_dataset_fn, splits=("validation",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(vocabulary=VOCAB, add_eos=True)
                       for k in ("inputs", "targets")},
      metric_objs=[IntermediatesMetric(model_output_type=kind)])
  try:
    cache.cache_task_split(task, "validation", str(tmp_path))
    with pytest.raises(errors.DataError, match=f"task {name}: metric IntermediatesMetric needs "
                       "model output 'score_with_intermediates'"):
      evaluate.evaluate_task(None, None, name, cache_dir=str(tmp_path), split="validation",
                             inputs_length=32, targets_length=16, max_examples=0, batch_size=4)
  finally:
    seqio.TaskRegistry.remove(name)
