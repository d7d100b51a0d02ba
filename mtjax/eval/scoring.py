"""Log-likelihood of targets given inputs, and rank classification (T0 / GPT-3 style).

Scores come from the model's full teacher-forced forward (`model(batch)`, the same call the
trainer makes), so they are what the training loss measures: the sum of the log-probabilities
of the target tokens (EOS included, as the targets feature carries it), and that sum divided by
the number of target tokens ("mean", length-normalised). The model family only changes how an
(inputs, targets) pair becomes features (`FEATURES`); for decoder-only and prefix-LM models
the inputs are a prefix whose tokens have loss weight 0, so only target tokens are scored.

Rank classification scores every answer choice of an example and predicts the argmax. Two
input formats: PromptSource-style examples carrying `answer_choices` (the target is one of
them), and SeqIO's rank-classification format (T5's `rank_classification` preprocessor: one
row per choice with `idx = [example, choice]` and `is_correct`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtjax.data import feature_converters
from mtjax.eval import batching, prefix_sharing
from mtjax.eval.log_probs import target_log_probs

MODES = ("sum", "mean")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def score_batch(graphdef, params, batch) -> dict[str, jax.Array]:
  """`{"sum": [B], "length": [B], "greedy": [B]}`: summed target log-probability, number of
  target tokens, and whether every target token is the argmax of its logits (what greedy
  decoding would produce given the same prefix: lm-evaluation-harness's `is_greedy`)."""
  model = nnx.merge(graphdef, params)
  logits = model(batch)
  weights = batch["decoder_loss_weights"]
  targets = batch["decoder_target_tokens"]
  lp = target_log_probs(logits, targets, weights)
  greedy = jnp.all((jnp.argmax(logits, -1) == targets) | (weights <= 0), axis=-1)
  return {"sum": lp.sum(-1), "length": (weights > 0).sum(-1), "greedy": greedy}


def _enc_dec(inputs, targets, lengths, start_id: int = feature_converters.BOS_ID):
  del start_id  # T5's decoder starts from 0 whatever the vocabulary
  return feature_converters.enc_dec(feature_converters.pad_example(
      {"inputs": inputs, "targets": targets}, "enc_dec", lengths), packed=False)


def _prefix_lm(inputs, targets, lengths, causal_prefix: bool = False,
               start_id: int = feature_converters.BOS_ID):
  inputs = np.asarray(inputs, np.int32)[:lengths["inputs"]]
  targets = np.asarray(targets, np.int32)[:lengths["targets"]]
  joined = feature_converters.pad_example(
      feature_converters.concat_for_prefix_lm({"inputs": inputs, "targets": targets}),
      "prefix_lm", lengths)  # (marks padding by length: id 0 may be text)
  out = feature_converters.prefix_lm(joined, packed=False, loss_on_targets_only=True,
                                    start_id=start_id)
  if causal_prefix:  # a plain decoder-only model: causal attention over the prompt too
    del out["decoder_causal_attention"]
  return out


# How an (inputs, targets) pair becomes model features, per model family. A family whose
# converter is not here (e.g. a new decoder) adds an entry.
FEATURES = {
    "enc_dec": _enc_dec,
    "decoder_only": functools.partial(_prefix_lm, causal_prefix=True),
    "prefix_lm": _prefix_lm,
}


def pair_features(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], lengths: Mapping[str, int],
                  family: str = "enc_dec",
                  start_id: int = feature_converters.BOS_ID) -> dict[str, np.ndarray]:
  """Stacked model features of (input tokens, target tokens) pairs, truncated to `lengths`;
  decoder rows start from `start_id`, as the task's training rows do (`pipeline.start_id`)."""
  if family not in FEATURES:
    raise ValueError(f"unknown model family {family!r} for scoring; known: {sorted(FEATURES)}")
  rows = [FEATURES[family](np.asarray(i, np.int32), np.asarray(t, np.int32), lengths,
                           start_id=start_id) for i, t in pairs]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def score_pairs(graphdef, params, pairs, *, lengths, family: str = "enc_dec",
                batch_size: int = 64, mesh=None, rules=None,
                start_id: int = feature_converters.BOS_ID,
                share_inputs: bool = True) -> dict[str, np.ndarray]:
  """`{"sum", "length", "mean", "greedy"}` per pair (numpy); `start_id` as in `pair_features`.

  Inputs and targets are cut to `lengths`; batches are padded to the length buckets of their
  longest pair (`batching`), not to `lengths`. When pairs share inputs (answer choices) and
  `share_inputs`, each input runs once for all its targets (`prefix_sharing`); otherwise each
  pair is one row of the model's teacher-forced forward (`score_batch`)."""
  if not pairs:
    return {"sum": np.zeros(0), "length": np.zeros(0, np.int64), "mean": np.zeros(0),
            "greedy": np.zeros(0, bool)}
  if family not in FEATURES:
    raise ValueError(f"unknown model family {family!r} for scoring; known: {sorted(FEATURES)}")
  pairs = [(np.asarray(i, np.int32)[:lengths["inputs"]], np.asarray(t, np.int32)[:lengths["targets"]])
           for i, t in pairs]
  grouped = prefix_sharing.groups(pairs) if share_inputs else None
  if grouped is not None and len(grouped) < len(pairs) and prefix_sharing.supported(graphdef):
    out = prefix_sharing.score(graphdef, params, pairs, family=family, batch_size=batch_size,
                               mesh=mesh, rules=rules, start_id=start_id, grouped=grouped)
  else:
    out = _score_each(graphdef, params, pairs, family=family, batch_size=batch_size, mesh=mesh,
                      rules=rules, start_id=start_id)
  out["mean"] = out["sum"] / np.maximum(out["length"], 1)
  return out


def _bucket_features(pairs, family: str, start_id: int) -> dict[str, np.ndarray]:
  """`pair_features` of (already cut) pairs, padded to the length buckets of the longest."""
  convert = FEATURES[family]
  if family == "enc_dec":
    lengths = {"inputs": batching.bucket(max(len(i) for i, _ in pairs)),
               "targets": batching.bucket(max(len(t) for _, t in pairs))}
    rows = [convert(i, t, lengths, start_id=start_id) for i, t in pairs]
  else:  # one concatenated row: the inputs take what the targets leave
    total = batching.bucket(max(len(i) + len(t) for i, t in pairs))
    rows = [convert(i, t, {"inputs": total - len(t), "targets": len(t)}, start_id=start_id)
            for i, t in pairs]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _score_each(graphdef, params, pairs, *, family, batch_size, mesh, rules, start_id):
  """Pair by pair: `score_batch` over length-bucketed batches, results in pair order."""
  out = {"sum": np.zeros(len(pairs), np.float32), "length": np.zeros(len(pairs), np.int64),
         "greedy": np.zeros(len(pairs), bool)}
  sizes = [len(i) + len(t) for i, t in pairs]
  for chunk, rows in batching.plan(sizes, batch_size, mesh):
    features = _bucket_features([pairs[i] for i in chunk], family, start_id)
    features = {k: batching.pad_rows(v, rows) for k, v in features.items()}
    batching.SHAPES.add("score", features)
    result = score_batch(graphdef, params, batching.put(features, mesh, rules))
    for key in out:
      out[key][chunk] = np.asarray(result[key])[:len(chunk)]
  return out


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def encode_target(vocab, text: str, add_eos: bool, length: int) -> list[int]:
  """Tokens of a target string as the task's targets feature would be (EOS after trimming)."""
  ids = list(vocab.encode(text))
  return ids[:length - 1] + [int(vocab.eos_id)] if add_eos else ids[:length]


def choice_pairs(examples: Sequence[Mapping[str, Any]], input_tokens: Sequence[Sequence[int]],
                 vocab, *, add_eos: bool, targets_length: int):
  """(pairs, owner example index per pair, gold choice index per example or -1)."""
  pairs, owners, gold = [], [], []
  for i, (ex, inputs) in enumerate(zip(examples, input_tokens)):
    choices = [_text(c) for c in ex.get("answer_choices", [])]
    target = _text(ex.get("targets_pretokenized", ""))
    gold.append(choices.index(target) if target in choices else -1)
    for c in choices:
      pairs.append((inputs, encode_target(vocab, c, add_eos, targets_length)))
      owners.append(i)
  return pairs, np.asarray(owners, np.int64), np.asarray(gold, np.int64)


def argmax_by_group(scores: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
  """Index (into `scores`) of the best row of each group; -1 for empty groups. First wins ties."""
  best = np.full(num_groups, -1, np.int64)
  for row, (g, s) in enumerate(zip(groups, scores)):
    if best[g] < 0 or s > scores[best[g]]:
      best[g] = row
  return best


def rank_answer_choices(scores: Mapping[str, np.ndarray], owners: np.ndarray, gold: np.ndarray,
                        mode: str = "sum") -> dict[str, Any]:
  """Predicted choice per example and accuracy (percent) over examples with a gold choice."""
  if mode not in MODES:
    raise ValueError(f"eval.scoring must be one of {MODES}, got {mode!r}")
  best = argmax_by_group(scores[mode], owners, len(gold))
  first = np.searchsorted(owners, np.arange(len(gold)))  # owners ascend: pairs in example order
  predicted = np.where(best >= 0, best - first, -1)
  valid = gold >= 0
  accuracy = 100.0 * float(np.mean(predicted[valid] == gold[valid])) if valid.any() else 0.0
  return {"predicted": predicted, "accuracy": accuracy, "num_scored": int(valid.sum())}


def rank_classification_rows(rows: Sequence[Mapping[str, Any]], scores: np.ndarray
                             ) -> dict[str, Any]:
  """SeqIO rank-classification format: rows grouped by `idx[0]`; correct if the best row is.

  `scores` are one number per row (sum or mean log-likelihood, chosen by the caller).
  """
  keys = [int(np.asarray(r["idx"]).reshape(-1)[0]) for r in rows]
  ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
  groups = np.asarray([ids[k] for k in keys], np.int64)
  best = argmax_by_group(np.asarray(scores, np.float64), groups, len(ids))
  correct = [bool(rows[b]["is_correct"]) for b in best]
  return {"accuracy": 100.0 * float(np.mean(correct)) if correct else 0.0,
          "num_examples": len(ids), "predicted_rows": best}


def median_iqr(values: Sequence[float]) -> dict[str, float]:
  """T0 reporting over a task's prompt templates: median and interquartile range."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return {"median": float("nan"), "iqr": float("nan")}
  q1, med, q3 = np.percentile(v, [25, 50, 75])
  return {"median": float(med), "iqr": float(q3 - q1)}


def per_template_accuracy(examples: Sequence[Mapping[str, Any]], predicted: np.ndarray,
                          gold: np.ndarray) -> dict[str, float]:
  """Accuracy per `template_id` (file / PromptSource tasks carry it); {} if absent."""
  by_template: dict[str, list[bool]] = {}
  for ex, p, g in zip(examples, predicted, gold):
    if "template_id" not in ex or g < 0:
      continue
    by_template.setdefault(str(int(np.asarray(ex["template_id"]))), []).append(p == g)
  return {t: 100.0 * float(np.mean(v)) for t, v in sorted(by_template.items())}
