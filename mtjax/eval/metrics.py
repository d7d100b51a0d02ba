"""SeqIO-style metric functions: `fn(targets, predictions) -> {name: value}` (percentages).

T5's metrics without TensorFlow, same names, keys and scale (t5/evaluation/metrics.py): the
classification and QA ones here; BLEU, ROUGE, TriviaQA, span SQuAD, CoQA F1 and edit distance in
`metrics_text`; AUC and rank classification in `metrics_rank`. All are reachable as
`mtjax.eval.metrics.<name>` (the other two modules load when first asked for), so a SeqIO task
lists any of them in `metric_fns`.
"""

from __future__ import annotations

import importlib

from collections.abc import Mapping, Sequence


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target string."""
  _check_lengths(targets, predictions)
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"exact_match": 100.0 * hits / max(len(targets), 1)}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Classification accuracy in percent (predictions compared as labels)."""
  _check_lengths(targets, predictions)
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {"accuracy": 100.0 * hits / max(len(targets), 1)}


def _check_lengths(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


# ---- T5's metrics (t5/evaluation/metrics.py, qa_utils.py) ----------------------------------------
# Ports of the metric functions T5 attaches to its GLUE / SuperGLUE tasks (`t5.data.glue_utils`),
# same keys and numbers (0-100 scale), without TensorFlow: where T5 calls sklearn, the formula
# sklearn computes is written out here (the tests hold each equal to sklearn's). Bad input (lengths that differ, no
# examples, a correlation over non-numbers) is a ValueError, never a quiet 0.


def _check_nonempty(targets, predictions, what: str):
  _check_lengths(targets, predictions)
  if len(targets) == 0:
    raise ValueError(f"{what}: no examples (empty targets and predictions)")


def _numbers(values, what: str, side: str):
  import numpy as np  # pylint: disable=g-import-not-at-top

  bad = [v for v in values if isinstance(v, (str, bytes)) or v is None
         or not isinstance(v, (int, float, np.number, np.ndarray))
         or (isinstance(v, np.ndarray) and (v.ndim or v.dtype.kind not in "biuf"))]
  if bad:
    raise ValueError(f"{what}: {side} must be numbers, got {bad[0]!r}"
                     + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
  return np.asarray([float(v) for v in values], np.float64)


def _labels(values, what: str, side: str) -> list:
  """Class labels as plain hashable values (0-d arrays from the cache become ints)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  out = []
  for v in values:
    if isinstance(v, np.ndarray):
      if v.ndim:
        raise ValueError(f"{what}: {side} must be class labels, got an array of shape {v.shape}")
      v = v.item()
    elif isinstance(v, np.generic):
      v = v.item()
    if isinstance(v, (list, dict)) or v is None:
      raise ValueError(f"{what}: {side} must be class labels, got {v!r}")
    out.append(v)
  return out


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions exactly equal to their target sequence.

  T5's `t5.evaluation.metrics.sequence_accuracy`: `100 * mean(p == t)`, key
  `sequence_accuracy`."""
  _check_nonempty(targets, predictions, "sequence_accuracy")
  return {"sequence_accuracy": 100.0 * sum(p == t for t, p in zip(targets, predictions))
                               / len(targets)}


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 (positive class 1) in percent, a prediction other than 0 or 1 counted as wrong.

  T5's `t5.evaluation.metrics.f1_score_with_invalid`: an invalid prediction is replaced by
  `1 - target`, then `100 * sklearn.metrics.f1_score(targets, predictions)` (binary,
  pos_label=1), i.e. `2 tp / (2 tp + fp + fn)`; sklearn's 0.0 when there is no positive target
  or prediction at all. Targets must be 0 or 1 (sklearn refuses other labels in binary mode)."""
  _check_nonempty(targets, predictions, "f1_score_with_invalid")
  t = _labels(targets, "f1_score_with_invalid", "targets")
  p = _labels(predictions, "f1_score_with_invalid", "predictions")
  if any(x not in (0, 1) or isinstance(x, str) for x in t):
    bad = next(x for x in t if x not in (0, 1) or isinstance(x, str))
    raise ValueError(f"f1_score_with_invalid: targets must be 0 or 1, got {bad!r}")
  p = [q if (q in (0, 1) and not isinstance(q, str)) else 1 - y for y, q in zip(t, p)]
  tp = sum(1 for y, q in zip(t, p) if y == 1 and q == 1)
  fp = sum(1 for y, q in zip(t, p) if y == 0 and q == 1)
  fn = sum(1 for y, q in zip(t, p) if y == 1 and q == 0)
  denominator = 2 * tp + fp + fn
  return {"f1": 100.0 * (2 * tp / denominator if denominator else 0.0)}


def matthews_corrcoef(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """Matthews correlation coefficient x 100 (T5's CoLA metric), key `matthews_corrcoef`.

  T5: `sklearn_metrics_wrapper("matthews_corrcoef", metric_post_process_fn=lambda x: 100 * x)`
  (`t5.data.glue_utils.GLUE_METRICS["cola"]`). sklearn's multiclass formula over the labels seen
  in either list (an invalid prediction, -1, is a class of its own): with C the confusion
  matrix, t/p its row/column sums, c its trace and s the count,
  `(c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))`; 0.0 where the denominator is 0 (sklearn's)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  _check_nonempty(targets, predictions, "matthews_corrcoef")
  t = _labels(targets, "matthews_corrcoef", "targets")
  p = _labels(predictions, "matthews_corrcoef", "predictions")
  classes = {c: i for i, c in enumerate(sorted(set(t) | set(p), key=repr))}
  matrix = np.zeros((len(classes), len(classes)), np.float64)
  for y, q in zip(t, p):
    matrix[classes[y], classes[q]] += 1
  t_sum, p_sum = matrix.sum(axis=1), matrix.sum(axis=0)
  correct, n = np.trace(matrix), matrix.sum()
  cov_tp = correct * n - t_sum @ p_sum
  cov_pp = n * n - p_sum @ p_sum
  cov_tt = n * n - t_sum @ t_sum
  if cov_pp * cov_tt == 0:
    return {"matthews_corrcoef": 0.0}
  return {"matthews_corrcoef": float(100.0 * cov_tp / np.sqrt(cov_tt * cov_pp))}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Pearson correlation x 100 (T5's STS-B metric), key `pearson_corrcoef`.

  T5's `t5.evaluation.metrics.pearson_corrcoef`: `100 * scipy.stats.pearsonr(t, p)[0]`. At
  least two pairs; a constant list gives scipy's NaN (with its warning), as in T5."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  _check_nonempty(targets, predictions, "pearson_corrcoef")
  t = _numbers(targets, "pearson_corrcoef", "targets")
  p = _numbers(predictions, "pearson_corrcoef", "predictions")
  if len(t) < 2:
    raise ValueError("pearson_corrcoef: needs at least 2 examples")
  return {"pearson_corrcoef": float(100.0 * stats.pearsonr(t, p)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """Spearman rank correlation x 100 (T5's STS-B metric), key `spearman_corrcoef`.

  T5's `t5.evaluation.metrics.spearman_corrcoef`: `100 * scipy.stats.spearmanr(t, p)[0]` (ties
  get average ranks). At least two pairs; a constant list gives scipy's NaN, as in T5."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  _check_nonempty(targets, predictions, "spearman_corrcoef")
  t = _numbers(targets, "spearman_corrcoef", "targets")
  p = _numbers(predictions, "spearman_corrcoef", "predictions")
  if len(t) < 2:
    raise ValueError("spearman_corrcoef: needs at least 2 examples")
  return {"spearman_corrcoef": float(100.0 * stats.spearmanr(t, p)[0])}


def mean_multiclass_f1(num_classes: int):
  """The metric: unweighted mean over classes 0..num_classes-1 of each class's F1, x 100.

  T5's `t5.evaluation.metrics.mean_multiclass_f1(num_classes)`: `sklearn.metrics.fbeta_score(
  t, p, beta=1, labels=range(num_classes), average="macro") * 100`, key
  `mean_{num_classes}class_f1` (CB uses 3). Per class `2 tp / (2 tp + fp + fn)`, 0.0 for a
  class that is neither a target nor a prediction (sklearn's zero_division); a prediction
  outside the classes (-1) is just a miss for its target's class."""
  key = f"mean_{int(num_classes)}class_f1"

  def metric(targets, predictions):
    _check_nonempty(targets, predictions, key)
    t = _labels(targets, key, "targets")
    p = _labels(predictions, key, "predictions")
    scores = []
    for c in range(num_classes):
      tp = sum(1 for y, q in zip(t, p) if y == c and q == c)
      fp = sum(1 for y, q in zip(t, p) if y != c and q == c)
      fn = sum(1 for y, q in zip(t, p) if y == c and q != c)
      denominator = 2 * tp + fp + fn
      scores.append(2 * tp / denominator if denominator else 0.0)
    return {key: 100.0 * sum(scores) / num_classes}

  metric.__name__ = metric.__qualname__ = key
  return metric


def multirc_f1_over_all_answers(targets: Sequence[Mapping], predictions: Sequence[Mapping]):
  """`f1_score_with_invalid` over the `value`s of MultiRC's postprocessed dicts, key `f1`.

  T5's `t5.evaluation.metrics.multirc_f1_over_all_answers` (every answer option of every
  question counts once)."""
  _check_nonempty(targets, predictions, "multirc_f1_over_all_answers")
  return f1_score_with_invalid([_value(t, "targets") for t in targets],
                               [_value(p, "predictions") for p in predictions])


def all_match(targets: Sequence, predictions: Sequence) -> dict[str, float]:
  """100 if every prediction equals its target, else 0; key `exact_match`.

  T5's `t5.evaluation.metrics.all_match` (`np.array_equal`), used per group by
  `mean_group_metric` (MultiRC: all answer options of a question right)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  return {"exact_match": 100.0 * float(np.array_equal(np.asarray(targets),
                                                      np.asarray(predictions)))}


def mean_group_metric(metric_fn, group_key: str = "group", value_key: str = "value"):
  """A metric that computes `metric_fn` on each group of examples and averages over groups.

  T5's `t5.evaluation.metrics.mean_group_metric`: targets (and predictions) are dicts; the
  targets' `group_key` groups them, `metric_fn` sees the `value_key`s of a group; each returned
  key is averaged over groups (MultiRC: `mean_group_metric(all_match)` -> `exact_match`, the
  share of questions with every answer option right). Evaluate whole groups only (a subsample
  that splits a group changes the number, as in T5)."""

  def metric(targets, predictions):
    _check_nonempty(targets, predictions, "mean_group_metric")
    groups: dict = {}
    for t, p in zip(targets, predictions):
      key = _group(t, group_key)
      pair = groups.setdefault(key, ([], []))
      pair[0].append(_value(t, "targets", value_key))
      pair[1].append(_value(p, "predictions", value_key))
    scores: dict[str, list[float]] = {}
    for t, p in groups.values():
      for name, score in metric_fn(t, p).items():
        scores.setdefault(name, []).append(score)
    return {name: float(sum(v) / len(v)) for name, v in scores.items()}

  name = getattr(metric_fn, "__name__", "metric")
  metric.__name__ = metric.__qualname__ = f"mean_group_{name}"
  return metric


def deduplicate_metric(metric_fn, group_key: str = "group", value_key: str = "value"):
  """A metric that keeps only the first (target, prediction) of each group, then `metric_fn`.

  T5's `t5.evaluation.metrics.deduplicate_metric`: ReCoRD repeats an input once per gold answer
  (`deduplicate_metric(squad)` scores each query once, against all its answers)."""

  def metric(targets, predictions):
    _check_nonempty(targets, predictions, "deduplicate_metric")
    seen, kept_t, kept_p = set(), [], []
    for t, p in zip(targets, predictions):
      key = _group(t, group_key)
      if key in seen:
        continue
      seen.add(key)
      kept_t.append(_value(t, "targets", value_key))
      kept_p.append(_value(p, "predictions", value_key))
    return metric_fn(kept_t, kept_p)

  name = getattr(metric_fn, "__name__", "metric")
  metric.__name__ = metric.__qualname__ = f"deduplicate_{name}"
  return metric


def normalize_squad(answer: str) -> str:
  """The official SQuAD v1.1 normalisation (T5's `t5.evaluation.qa_utils.normalize_squad`):
  lower case, delete `string.punctuation`, replace the words a/an/the by a space, collapse
  whitespace."""
  import re  # pylint: disable=g-import-not-at-top
  import string  # pylint: disable=g-import-not-at-top

  text = answer.lower()
  punctuation = set(string.punctuation)
  text = "".join(ch for ch in text if ch not in punctuation)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  import collections  # pylint: disable=g-import-not-at-top

  prediction_tokens, target_tokens = prediction.split(), target.split()
  common = collections.Counter(prediction_tokens) & collections.Counter(target_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(prediction_tokens), same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match and token F1 in percent, each the best over an example's gold answers.

  T5's `t5.evaluation.metrics.squad` (+ `qa_utils.qa_metrics`): answers and predictions are
  `normalize_squad`-ed; per example the max over its answers of exact match / token F1
  (Counter overlap); keys `em`, `f1`, means over examples. Each target is a list of answer
  strings (at least one)."""
  _check_nonempty(targets, predictions, "squad")
  ems, f1s = [], []
  for i, (answers, prediction) in enumerate(zip(targets, predictions)):
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence):
      raise ValueError(f"squad: target {i} must be a list of answer strings, got {answers!r}")
    if not answers:
      raise ValueError(f"squad: target {i} has no gold answers (an unlabeled split?)")
    if not isinstance(prediction, str):
      raise ValueError(f"squad: prediction {i} must be a string, got {prediction!r}")
    golds = [normalize_squad(a) for a in answers]
    pred = normalize_squad(prediction)
    ems.append(max(float(g == pred) for g in golds))
    f1s.append(max(_token_f1(g, pred) for g in golds))
  return {"em": 100.0 * sum(ems) / len(ems), "f1": 100.0 * sum(f1s) / len(f1s)}


def _value(item, side: str, key: str = "value"):
  if not isinstance(item, Mapping) or key not in item:
    raise ValueError(f"{side} must be dicts with a {key!r} key (a T5 postprocessor's output), "
                     f"got {item!r}")
  return item[key]


def _group(target, key: str):
  import numpy as np  # pylint: disable=g-import-not-at-top

  if not isinstance(target, Mapping) or key not in target:
    raise ValueError(f"targets must be dicts with a {key!r} key (a T5 postprocessor's output), "
                     f"got {target!r}")
  group = target[key]
  if isinstance(group, np.ndarray):
    group = group.item() if group.ndim == 0 else tuple(group.tolist())
  elif isinstance(group, list):
    group = tuple(group)
  return group


_ELSEWHERE = {name: "metrics_text" for name in ("bleu", "rouge", "trivia_qa", "span_squad",
                                                "coqa_f1", "edit_distance",
                                                "normalize_trivia_qa")}
_ELSEWHERE.update({name: "metrics_rank" for name in ("auc", "score_auc", "rank_classification")})


def __getattr__(name: str):  # PEP 562: `metrics.bleu` loads metrics_text on first use
  if name in _ELSEWHERE:
    return getattr(importlib.import_module(f"mtjax.eval.{_ELSEWHERE[name]}"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
