"""T5's metrics without TensorFlow (`mtjax.eval.metrics`, `metrics_text`, `metrics_rank`): hand
computed values, the packages T5 calls (sacrebleu, rouge-score, scikit-learn) as references,
and clear errors for bad input."""

import functools

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn import metrics as sk

from mtjax.collections import t5_postprocessors
from mtjax.eval import metrics


def test_every_t5_metric_is_reachable_from_metrics():
  for name in ("bleu", "rouge", "squad", "trivia_qa", "span_squad", "sequence_accuracy",
               "mean_multiclass_f1", "matthews_corrcoef", "pearson_corrcoef",
               "spearman_corrcoef", "multirc_f1_over_all_answers", "auc", "rank_classification",
               "coqa_f1", "edit_distance", "f1_score_with_invalid", "accuracy"):
    assert callable(getattr(metrics, name)), name
  with pytest.raises(AttributeError):
    getattr(metrics, "no_such_metric")


def test_bleu_is_t5s_sacrebleu_call_with_the_intl_tokenizer():
  refs = ["«Bonjour», dit-il — 3,5 % de plus.", "The cat sat on the mat."]
  hyps = ["«Bonjour» dit-il — 3,5 % de plus.", "The cat sat on a mat."]
  want = sacrebleu.corpus_bleu(hyps, [refs], smooth_method="exp", smooth_value=0.0, force=False,
                               lowercase=False, tokenize="intl", use_effective_order=False).score
  assert metrics.bleu(refs, hyps) == {"bleu": pytest.approx(want)}
  default = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
  assert abs(want - default) > 1  # the tokenizer matters: T5's is intl, sacrebleu's default 13a
  assert metrics.bleu(["a b c d"], ["a b c d"]) == {"bleu": pytest.approx(100.0)}
  two = metrics.bleu([["a b c d e", "x y"], ["f g h i j", "z"]], ["a b c d e", "f g h i j"])
  assert two["bleu"] == pytest.approx(100.0)  # lists of references per target


def test_rouge_splits_sentences_as_t5_and_means_by_default():
  assert metrics.rouge(["a a . b b"], ["b b . a a"])["rougeLsum"] == pytest.approx(100.0)
  plain = rouge_scorer.RougeScorer(["rougeLsum"]).score("a a . b b", "b b . a a")
  assert plain["rougeLsum"].fmeasure * 100 == pytest.approx(50.0)  # without T5's split
  targets = ["the cat sat on the mat", "a quick brown fox", "hello world"]
  preds = ["the cat sat", "a quick red fox jumps", "hello there world"]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])
  by_hand = {k: 100 * np.mean([scorer.score(t, p)[k].fmeasure for t, p in zip(targets, preds)])
             for k in ("rouge1", "rouge2", "rougeLsum")}
  assert metrics.rouge(targets, preds) == pytest.approx(by_hand)
  # rouge1 of the first pair by hand: 3 common unigrams, P = 3/3, R = 3/6 -> F = 2/3
  assert metrics.rouge(targets[:1], preds[:1])["rouge1"] == pytest.approx(200 / 3)
  boot = metrics.rouge(targets, preds, bootstrap=True)
  assert boot == metrics.rouge(targets, preds, bootstrap=True)  # seeded
  assert set(boot) == set(by_hand)


def test_qa_metrics_by_hand():
  assert metrics.normalize_trivia_qa("The ‘Beatles’_band!") == "beatles band"
  assert metrics.trivia_qa([["The Beatles", "Beatles"]], ["beatles"]) == {"em": 100.0,
                                                                          "f1": 100.0}
  got = metrics.trivia_qa([["new york city"], ["paris"]], ["new york", "london"])
  assert got["em"] == 0.0 and got["f1"] == pytest.approx(100 * (0.8 + 0.0) / 2)  # P 1, R 2/3
  span = metrics.span_squad([{"answers": ["quick brown"], "context": "The quick brown fox"}],
                            ["start: 1 end: 2"])
  assert span == {"em": 100.0, "f1": 100.0}
  assert metrics.span_squad([{"answers": ["fox"], "context": "The fox"}], ["start: x end: 1"]) \
      == {"em": 0.0, "f1": 0.0}  # unreadable positions: the empty answer
  assert metrics.coqa_f1([["the red car", "a car"]], ["red car"]) == {"f1": 100.0}
  assert metrics.coqa_f1([[""]], [""]) == {"f1": 100.0}
  edits = metrics.edit_distance(["a b c", "x"], ["a c", "x"])
  assert edits == {"min_edit": 0.0, "max_edit": 1.0, "mean_edit": 0.5, "median_edit": 0.5,
                   "sum_edit": 1.0}


def test_classification_metrics_equal_sklearn():
  rng = np.random.default_rng(0)
  t = rng.integers(0, 3, 200).tolist()
  p = rng.integers(-1, 3, 200).tolist()  # -1: an invalid prediction
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == pytest.approx(
      100 * sk.matthews_corrcoef(t, p))
  assert metrics.mean_multiclass_f1(3)(t, p)["mean_3class_f1"] == pytest.approx(
      100 * sk.fbeta_score(t, p, beta=1, labels=range(3), average="macro"))
  tb = rng.integers(0, 2, 100)
  pb = rng.integers(-1, 2, 100)
  fixed = np.where((pb != 0) & (pb != 1), 1 - tb, pb)
  assert metrics.f1_score_with_invalid(tb.tolist(), pb.tolist())["f1"] == pytest.approx(
      100 * sk.f1_score(tb, fixed))


def test_auc_equals_sklearn_and_keeps_t5s_scale():
  t = [0, 0, 1, 1, 0, 1]
  s = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
  got = metrics.auc(t, s)
  assert got["auc-roc"] == pytest.approx(sk.roc_auc_score(t, s))
  assert got["auc-pr"] == pytest.approx(sk.average_precision_score(t, s))
  assert got["auc-roc"] == pytest.approx(8 / 9)  # 8 of the 9 (positive, negative) pairs ordered
  assert metrics.auc([0.2, 0.9, 0.7], [1, 3, 2], targets_threshold=0.5)["auc-roc"] == 1.0
  with pytest.raises(ValueError, match="one class only"):
    metrics.auc([1, 1], [0.2, 0.3])


def _rows(is_correct, num_choices):
  return [((i // num_choices, i % num_choices), bool(c), 1.0, 3) for i, c in enumerate(is_correct)]


def test_rank_classification_by_hand():
  # three examples, two choices; correct choices 0, 1, 0; predicted 0, 0, 1
  targets = _rows([1, 0, 0, 1, 1, 0], 2)
  scores = [-1.0, -2.0, -1.0, -3.0, -5.0, -1.0]
  got = metrics.rank_classification(targets, scores, num_classes=2)
  assert got["accuracy"] == pytest.approx(100 / 3)
  assert got["f1"] == 0.0  # choice 1 is right once and predicted once, never both
  assert got["auc-roc"] == 0.0  # the one positive (example 1) has the lowest P(choice 1)
  assert got["auc-pr"] == pytest.approx(100 / 3)
  # order of rows does not matter; without num_classes only accuracy
  shuffled = list(zip(targets, scores))[::-1]
  assert metrics.rank_classification(*zip(*shuffled), num_classes=2) == got
  assert metrics.rank_classification(targets, scores) == {"accuracy": pytest.approx(100 / 3)}
  three = metrics.rank_classification(_rows([0, 0, 1, 0, 1, 0], 3), [-3, -2, -1, -1, -2, -3],
                                      num_classes=3)
  assert three == {"accuracy": 50.0, "mean_3class_f1": pytest.approx(100 * (0 + 0 + 1) / 3)}
  several = metrics.rank_classification(_rows([1, 1, 0, 1], 2), [-1, -2, -1, -2], num_classes=2)
  assert several == {"accuracy": 50.0}  # a hit on any correct row counts
  with pytest.raises(ValueError, match="idx, is_correct, weight, target_length"):
    metrics.rank_classification([1, 2], [0.1, 0.2])


def test_rank_classification_postprocessor_and_partial():
  example = {"idx": np.array([4, 1]), "is_correct": np.array(1), "targets": np.array([5, 6])}
  assert t5_postprocessors.rank_classification(-1.5, example=example, is_target=True) == (
      (4, 1), True, 1.0, 2)
  assert t5_postprocessors.rank_classification(-1.5, example=example) == -1.5
  fn = functools.partial(metrics.rank_classification, num_classes=2)
  import seqio  # pylint: disable=g-import-not-at-top

  metric = seqio.metrics.LegacyMetric.empty(fn, None)
  assert metric.model_output_type == seqio.metrics.ModelOutputType.SCORE


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.bleu(["a"], ["a", "b"]), "1 targets but 2 predictions"),
    (lambda: metrics.rouge([], []), "no examples"),
    (lambda: metrics.trivia_qa([["a"]], [3]), "prediction 0 must be a string"),
    (lambda: metrics.span_squad(["a"], ["start: 0 end: 0"]), "must be a dict"),
    (lambda: metrics.bleu([["a", "b"], ["c"]], ["a", "c"]), "same number of references"),
    (lambda: metrics.rank_classification([], []), "no examples"),
])
def test_bad_input_is_one_clear_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()
