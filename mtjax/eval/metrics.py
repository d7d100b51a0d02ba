"""SeqIO-style metric functions: `fn(targets, predictions) -> {name: value}` (percentages)."""

from __future__ import annotations

from collections.abc import Sequence


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
