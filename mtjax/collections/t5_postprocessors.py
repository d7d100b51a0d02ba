"""T5's postprocessors (t5/data/postprocessors.py), as SeqIO calls them.

SeqIO applies a task's `postprocess_fn` to each target as `fn(targets_pretokenized,
example=ex, is_target=True)` and to each decoded prediction as `fn(text, example=ex,
is_target=False)`; the metric functions then see what these return. `example` is the cached
example: strings are `str`, integer fields 0-d numpy arrays (made plain ints here, so groups are
hashable), and ReCoRD's answer list is the JSON string `answers_json` (mtjax's cache keeps
string and integer fields; see `mtjax.collections.glue.record`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

WSC_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some", "that",
    "the", "their", "these", "this", "those", "which", "whose", "your"})


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _int(value) -> int:
  """A cached integer field (0-d array, numpy scalar or int) as a Python int."""
  item = getattr(value, "item", None)
  return int(item() if item is not None else value)


def string_to_float(string, example=None, is_target=False, *, default: float = -1.0) -> float:
  """`float(string)`, or `default` (-1.0) when it is not a number (T5's `string_to_float`)."""
  del example, is_target
  try:
    return float(string)
  except (TypeError, ValueError):
    return default


def string_label_to_class_id(string_label, example=None, is_target=False, *,
                             label_classes: Sequence[str], default: int = -1) -> int:
  """The label's index in `label_classes` (exact, case-sensitive), else `default` (-1).

  T5's `string_label_to_class_id`; bind the classes with `functools.partial`."""
  del example, is_target
  label_classes = list(label_classes)
  return label_classes.index(string_label) if string_label in label_classes else default


def multirc(string_label, example=None, is_target=False) -> dict[str, Any]:
  """{"value": class id of False/True}; a target also gets `"group"`: its question's index.

  T5's `multirc`: metrics group answer options by `idx/question` (`mean_group_metric`)."""
  out = {"value": string_label_to_class_id(string_label, label_classes=("False", "True"))}
  if is_target:
    out["group"] = _int(example["idx/question"])
  return out


def record_answers(example: Mapping[str, Any]) -> list[str]:
  """A ReCoRD example's gold answers: `answers_json` as mtjax caches it, else an `answers`
  list (an example from elsewhere, e.g. TFDS)."""
  if "answers_json" in example:
    return [str(a) for a in json.loads(_text(example["answers_json"]))]
  return [_text(a) for a in example["answers"]]


def record(answer, example=None, is_target=False) -> dict[str, Any]:
  """A target: {"value": all gold answers, "group": (passage idx, query idx)}; a prediction:
  {"value": answer}. T5's `record` (scored by `deduplicate_metric(squad)`)."""
  if is_target:
    return {"value": record_answers(example),
            "group": (_int(example["idx/passage"]), _int(example["idx/query"]))}
  return {"value": answer}


def wsc_simple(prediction, example=None, is_target=False) -> int:
  """WSC / WNLI "simple": did the model name the referent? T5's `wsc_simple`.

  A target is the example's `label` (1: the candidate is the referent). A prediction is 1 when
  its words (lower case, determiners dropped) are a subset or superset of the candidate's
  (`targets_pretokenized`), 0 when not or when exactly one of the two has an apostrophe (Bob
  vs Bob's hat), -1 when nothing is left of it."""
  if is_target:
    return _int(example["label"])

  def clean(s: str) -> str:
    s = _text(s).strip().lower()
    return " ".join(w for w in s.split(" ") if w not in WSC_DETERMINERS)

  prediction = clean(prediction)
  if not prediction:
    return -1  # an empty prediction must not match a 0 label by accident
  referent = clean(example["targets_pretokenized"])
  if ("'" in prediction) != ("'" in referent):
    return 0
  predicted, gold = set(prediction.split(" ")), set(referent.split(" "))
  return int(predicted.issubset(gold) or gold.issubset(predicted))


def rank_classification(score, example=None, is_target=False):
  """T5's `rank_classification` postprocessor (for the rank-classification row format and the
  `rank_classification` metric): a target row becomes (idx, is_correct, weight, number of target
  tokens as cached, without EOS); a prediction (the row's score) stays as it is."""
  if not is_target:
    return score
  idx = tuple(int(i) for i in getattr(example["idx"], "tolist", lambda: example["idx"])())
  weight = example.get("weight", 1.0)
  weight = float(getattr(weight, "item", lambda: weight)())
  return (idx, bool(_int(example["is_correct"])), weight, len(example["targets"]))
