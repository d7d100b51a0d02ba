"""T5's text-generation metrics: BLEU, ROUGE, TriviaQA, span SQuAD, CoQA F1, edit distance.

Ports of `t5.evaluation.metrics` (google-research/text-to-text-transfer-transformer,
t5/evaluation/metrics.py and qa_utils.py) that need no TensorFlow: the same function names,
argument order (`targets, predictions`), keys and 0-100 scale, computed with the packages T5
uses (sacrebleu, rouge-score). Reached as `mtjax.eval.metrics.<name>` too, so SeqIO tasks can
list them in `metric_fns`. Bad input (lengths that differ, no examples, a non-string
prediction) is a ValueError naming the metric, never a quiet 0.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

from mtjax.eval import metrics as _base


def _texts(values, what: str, side: str) -> list[str]:
  bad = [v for v in values if not isinstance(v, str)]
  if bad:
    raise ValueError(f"{what}: {side} must be strings, got {bad[0]!r}")
  return list(values)


def bleu(targets: Sequence, predictions: Sequence[str], tokenizer: str = "intl"
         ) -> dict[str, float]:
  """Corpus BLEU, key `bleu` (0-100).

  T5's `metrics.bleu`: `sacrebleu.corpus_bleu(predictions, [targets], smooth_method="exp",
  smooth_value=0.0, force=False, lowercase=False, tokenize=tokenizer ("intl"),
  use_effective_order=False).score`. A target may be a list of references (every target then
  has the same number of them)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top

  _base._check_nonempty(targets, predictions, "bleu")  # pylint: disable=protected-access
  predictions = _texts(predictions, "bleu", "predictions")
  if isinstance(targets[0], (list, tuple)):
    counts = {len(t) for t in targets}
    if len(counts) != 1:
      raise ValueError(f"bleu: every target needs the same number of references, got {counts}")
    references = [[t[i] for t in targets] for i in range(counts.pop())]
  else:
    references = [_texts(targets, "bleu", "targets")]
  score = sacrebleu.corpus_bleu(predictions, references, smooth_method="exp", smooth_value=0.0,
                                force=False, lowercase=False, tokenize=tokenizer,
                                use_effective_order=False)
  return {"bleu": float(score.score)}


def _prepare_summary(summary: str) -> str:
  """T5's rouge preparation: `" . "` becomes `" .\\n"`, so rougeLsum sees sentences."""
  return summary.replace(" . ", " .\n")


def rouge(targets: Sequence[str], predictions: Sequence[str],
          score_keys: Sequence[str] | None = None, tokenizer=None, bootstrap: bool = False,
          seed: int = 0) -> dict[str, float]:
  """ROUGE F-measures x 100, keys `rouge1`, `rouge2`, `rougeLsum` by default.

  T5's `metrics.rouge`: `rouge_score.rouge_scorer.RougeScorer(score_keys, tokenizer=tokenizer)`
  (no stemmer) on texts whose `" . "` became `" .\\n"` (`_prepare_summary`, so rougeLsum splits
  sentences), then T5 reports the bootstrap aggregate's `mid.fmeasure * 100`. Here the default
  is the plain mean of the per-example F-measures (deterministic, and what the bootstrap's mid
  estimates); `bootstrap=True` is T5's `scoring.BootstrapAggregator` (resampled with numpy
  seeded by `seed`; T5's is unseeded)."""
  from rouge_score import rouge_scorer, scoring  # pylint: disable=g-import-not-at-top

  _base._check_nonempty(targets, predictions, "rouge")  # pylint: disable=protected-access
  targets = _texts(targets, "rouge", "targets")
  predictions = _texts(predictions, "rouge", "predictions")
  keys = list(score_keys or ("rouge1", "rouge2", "rougeLsum"))
  scorer = rouge_scorer.RougeScorer(keys, tokenizer=tokenizer)
  scores = [scorer.score(target=_prepare_summary(t), prediction=_prepare_summary(p))
            for t, p in zip(targets, predictions)]
  if bootstrap:
    import numpy as np  # pylint: disable=g-import-not-at-top

    state = np.random.get_state()
    np.random.seed(seed)
    try:
      aggregator = scoring.BootstrapAggregator()
      for s in scores:
        aggregator.add_scores(s)
      result = aggregator.aggregate()
    finally:
      np.random.set_state(state)
    return {k: float(result[k].mid.fmeasure * 100) for k in keys}
  return {k: float(100.0 * sum(s[k].fmeasure for s in scores) / len(scores)) for k in keys}


def normalize_trivia_qa(answer: str) -> str:
  """The official TriviaQA normalisation (T5's `qa_utils.normalize_trivia_qa`): lower case,
  punctuation and the quote marks ‘’´` and `_` replaced by spaces, the words a/an/the replaced
  by a space, whitespace collapsed, stripped."""
  text = answer.lower()
  replace = set(string.punctuation + "‘’´`_")
  text = "".join(" " if ch in replace else ch for ch in text)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split()).strip()


def _qa_metrics(targets, predictions, normalize, what: str) -> dict[str, float]:
  _base._check_nonempty(targets, predictions, what)  # pylint: disable=protected-access
  ems, f1s = [], []
  for i, (answers, prediction) in enumerate(zip(targets, predictions)):
    if isinstance(answers, (str, bytes)) or not isinstance(answers, Sequence) or not answers:
      raise ValueError(f"{what}: target {i} must be a non-empty list of answers, got {answers!r}")
    if not isinstance(prediction, str):
      raise ValueError(f"{what}: prediction {i} must be a string, got {prediction!r}")
    golds, pred = [normalize(a) for a in answers], normalize(prediction)
    ems.append(max(float(g == pred) for g in golds))
    f1s.append(max(_base._token_f1(g, pred) for g in golds))  # pylint: disable=protected-access
  return {"em": 100.0 * sum(ems) / len(ems), "f1": 100.0 * sum(f1s) / len(f1s)}


def trivia_qa(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """TriviaQA exact match and token F1 in percent, keys `em`, `f1`, each the best over an
  example's answers (T5's `metrics.trivia_qa`: `normalize_trivia_qa`, then `qa_metrics`)."""
  return _qa_metrics(targets, predictions, normalize_trivia_qa, "trivia_qa")


def span_squad(targets: Sequence[Mapping], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD EM / F1 for span predictions written `start: S end: E` (T5's `metrics.span_squad`).

  Each target is `{"answers": [...], "context": "..."}`; the context and the prediction are
  split into words on non-word characters; a prediction of fewer than four words or with
  non-integer positions is the empty answer; else the answer is context words S..E joined by
  spaces; then `squad`."""
  _base._check_lengths(targets, predictions)  # pylint: disable=protected-access

  def words(s: str) -> list[str]:
    return re.sub(r"\W", " ", s).split()

  def answer(context: list[str], tokens: list[str]) -> str:
    if len(tokens) < 4:
      return ""
    try:
      start, end = int(tokens[1]), int(tokens[3])
    except ValueError:
      return ""
    return " ".join(context[start:end + 1])

  for i, t in enumerate(targets):
    if not isinstance(t, Mapping) or "answers" not in t or "context" not in t:
      raise ValueError(f"span_squad: target {i} must be a dict with 'answers' and 'context', "
                       f"got {t!r}")
  texts = _texts(predictions, "span_squad", "predictions")
  final = [answer(words(t["context"]), words(p)) for t, p in zip(targets, texts)]
  return _base.squad([t["answers"] for t in targets], final)


def coqa_f1(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """CoQA's mean turn F1 x 100, key `f1` (T5's `metrics.coqa_f1`: lower case, punctuation
  deleted, a/an/the removed; per turn the best token F1 over its answers; two empty texts
  score 1)."""
  _base._check_nonempty(targets, predictions, "coqa_f1")  # pylint: disable=protected-access

  def tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split()).split()

  def f1(target: list[str], prediction: list[str]) -> float:
    if not (target or prediction):
      return float(target == prediction)
    same = sum((collections.Counter(target) & collections.Counter(prediction)).values())
    if same == 0:
      return 0.0
    precision, recall = same / len(prediction), same / len(target)
    return 2 * precision * recall / (precision + recall)

  scores = [max(f1(tokens(t), tokens(p)) for t in answers)
            for answers, p in zip(targets, _texts(predictions, "coqa_f1", "predictions"))]
  return {"f1": 100.0 * sum(scores) / len(scores)}


def edit_distance(targets: Sequence[str], predictions: Sequence[str], lower: bool = True
                  ) -> dict[str, float]:
  """Word-level Levenshtein distances (T5's `metrics.edit_distance`: texts split on every
  non-word character, so empty words count): keys `min_edit`, `max_edit`, `mean_edit`,
  `median_edit`, `sum_edit`."""
  import statistics  # pylint: disable=g-import-not-at-top

  _base._check_nonempty(targets, predictions, "edit_distance")  # pylint: disable=protected-access

  def distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
      previous, row[0] = row[0], i
      for j, y in enumerate(b, start=1):
        previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]

  values = []
  for t, p in zip(_texts(targets, "edit_distance", "targets"),
                  _texts(predictions, "edit_distance", "predictions")):
    if lower:
      t, p = t.lower(), p.lower()
    values.append(distance(re.split(r"[^\w]", p), re.split(r"[^\w]", t)))
  return {"min_edit": float(min(values)), "max_edit": float(max(values)),
          "mean_edit": float(sum(values) / len(values)),
          "median_edit": float(statistics.median(values)), "sum_edit": float(sum(values))}
