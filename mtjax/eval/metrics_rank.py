"""T5's score-based metrics: AUC and rank classification (`t5.evaluation.metrics.auc`,
`score_auc`, `rank_classification`), computed with scikit-learn as T5 does.

`rank_classification` is a SCORE metric (its second argument is `scores`, so SeqIO feeds it the
summed log-likelihood of each row's target) for tasks in the rank-classification row format
(`idx = [example, choice]`, `is_correct`, optional `weight`), with T5's
`rank_classification` postprocessor turning each target row into (idx, is_correct, weight,
target length) (`mtjax.collections.t5_postprocessors.rank_classification`). Reached as
`mtjax.eval.metrics.<name>` too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from mtjax.eval import metrics as _base


def auc(targets, predictions, targets_threshold: float | None = None) -> dict[str, float]:
  """Areas under the ROC and precision-recall curves, keys `auc-roc`, `auc-pr`, on T5's 0-1
  scale (T5's `metrics.auc` does not multiply by 100): `sklearn.metrics.roc_auc_score` and
  `average_precision_score`; continuous targets are binarised at `targets_threshold`."""
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top

  _base._check_nonempty(targets, predictions, "auc")  # pylint: disable=protected-access
  t = _base._numbers(targets, "auc", "targets")  # pylint: disable=protected-access
  p = _base._numbers(predictions, "auc", "predictions")  # pylint: disable=protected-access
  if targets_threshold is not None:
    t = np.where(t < targets_threshold, 0, 1)
  if len(set(t.tolist())) < 2:
    raise ValueError("auc: the targets hold one class only; ROC AUC is undefined")
  return {"auc-roc": float(sk.roc_auc_score(t, p)),
          "auc-pr": float(sk.average_precision_score(t, p))}


def score_auc(targets, scores, targets_threshold: float | None = None) -> dict[str, float]:
  """`auc` over model scores (a SCORE metric: SeqIO passes log-likelihoods as `scores`)."""
  return auc(targets, scores, targets_threshold)


def rank_classification(targets: Sequence, scores: Sequence[float],
                        num_classes: int | None = None,
                        normalize_by_target_length: bool = False,
                        idx_len: int = 2) -> dict[str, float]:
  """Classification by ranking each example's answer choices by log-likelihood.

  T5's `metrics.rank_classification`: `targets` are (idx, is_correct, weight, target length)
  per row, `scores` the rows' log-likelihoods (divided by the target length when
  `normalize_by_target_length`). Rows are grouped by `idx[0]`; the best-scored row is the
  prediction. Without `num_classes` (choices vary): weighted `accuracy` only. With it: rows
  form [examples, num_classes]; several correct rows -> `accuracy` of hitting any; else
  `accuracy`, and for two classes `f1` (positive class = choice 1), `auc-roc` and `auc-pr` of
  choice 1's softmax probability, for more classes `mean_{n}class_f1` (all x 100)."""
  from sklearn import metrics as sk  # pylint: disable=g-import-not-at-top

  _base._check_nonempty(targets, scores, "rank_classification")  # pylint: disable=protected-access
  if not all(isinstance(t, (tuple, list)) and len(t) == 4 for t in targets):
    raise ValueError(f"rank_classification: each target must be (idx, is_correct, weight, "
                     f"target_length), got {targets[0]!r} (use T5's rank_classification "
                     "postprocessor)")
  rows = [tuple(t) for t in targets]
  scores = [float(s) for s in scores]
  if normalize_by_target_length:
    scores = [s / r[3] for r, s in zip(rows, scores)]
  idx = rows[0][0]
  if not hasattr(idx, "__len__") or len(idx) != idx_len:
    raise ValueError(f"rank_classification: 'idx' must be {idx_len}-dimensional, got {idx!r}")
  ordered = sorted(zip(rows, scores), key=lambda x: tuple(x[0][0]))
  if not num_classes:
    correct = total = 0.0
    for _, group in itertools.groupby(ordered, key=lambda x: x[0][0][0]):
      exs, likelihoods = zip(*group)
      best = exs[int(np.argmax(likelihoods))]
      correct += float(best[1]) * best[2]
      total += best[2]
    return {"accuracy": 100.0 * correct / total}
  if len(ordered) % num_classes:
    raise ValueError(f"rank_classification: {len(ordered)} rows are not a multiple of "
                     f"num_classes={num_classes}")
  labels = np.array([bool(r[1]) for r, _ in ordered]).reshape(-1, num_classes)
  weights = np.array([r[2] for r, _ in ordered], np.float64).reshape(-1, num_classes)[:, 0]
  likelihoods = np.array([s for _, s in ordered], np.float32).reshape(-1, num_classes)
  predictions = likelihoods.argmax(-1)
  if np.any(labels.sum(-1) > 1):  # several right answers: a hit on any counts
    return {"accuracy": float(100 * np.average(labels[np.arange(len(labels)), predictions],
                                               weights=weights))}
  predicted = np.eye(num_classes)[predictions]
  out = {"accuracy": float(100 * sk.accuracy_score(labels, predicted, sample_weight=weights))}
  if num_classes > 2:
    out[f"mean_{num_classes}class_f1"] = float(100 * sk.fbeta_score(
        labels, predicted, beta=1, labels=range(num_classes), average="macro",
        sample_weight=weights))
    return out
  shifted = likelihoods - likelihoods.max(-1, keepdims=True)
  probs = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
  out["f1"] = float(100 * sk.f1_score(labels.argmax(-1), predictions, sample_weight=weights))
  out["auc-roc"] = float(100 * sk.roc_auc_score(labels[:, 1], probs[:, 1], multi_class="ovr",
                                                sample_weight=weights, average="macro"))
  out["auc-pr"] = float(100 * sk.average_precision_score(labels[:, 1], probs[:, 1],
                                                         sample_weight=weights, average="macro"))
  return out
