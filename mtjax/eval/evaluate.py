"""SeqIO-style evaluation of each task in a mixture: decode, score, postprocess, metric functions.

Per task (every example of its eval split once, in cache order, via `mtjax.data.eval_data`):
- predict metrics: decode (greedy / beam / sampling, `mtjax.eval.generate`), then exactly what
  `seqio.Evaluator` does with the token ids: `vocab.decode`, the task's `postprocess_fn` on
  predictions and on `targets_pretokenized`, and each predict-metric fn;
- score metrics: the summed log-likelihood of each example's targets (T5X's `score_fn`);
- rank classification, when examples carry `answer_choices` (PromptSource) or are rows of the
  rank-classification format (`idx`, `is_correct`): accuracy, and per template median / IQR;
- the format-specialisation rate, given a label set: the share of predictions in it.
`task_metrics` is the SeqIO-equivalent metric step on its own, so it can be checked against
`seqio.Evaluator` on the same model outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mtjax import fs
from mtjax.data import eval_data, feature_converters, pipeline
from mtjax.eval import batching, generate, scoring


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocessed_targets(task, examples) -> list:
  vocab = task.output_features["targets"].vocabulary
  out = []
  for ex in examples:
    target = ex.get("targets_pretokenized")
    target = vocab.decode(list(ex["targets"])) if target is None else _text(target)
    out.append(task.postprocess_fn(target, example=ex, is_target=True))
  return out


def postprocessed_predictions(task, examples, predicted_ids) -> list:
  vocab = task.output_features["targets"].vocabulary
  return [task.postprocess_fn(vocab.decode([int(t) for t in ids]), example=ex, is_target=False)
          for ex, ids in zip(examples, predicted_ids)]


def task_metrics(task, examples: Sequence[Mapping[str, Any]], predicted_ids=None,
                 scores=None) -> dict[str, float]:
  """The task's predict metrics on decoded token ids and score metrics on scores, as SeqIO."""
  targets = postprocessed_targets(task, examples)
  metrics = {}
  if predicted_ids is not None:
    predictions = postprocessed_predictions(task, examples, predicted_ids)
    for fn in task.predict_metric_fns:
      metrics.update(fn(targets=targets, predictions=predictions))
  if scores is not None:
    for fn in task.score_metric_fns:
      metrics.update(fn(targets=targets, scores=np.asarray(scores)))
  return {k: float(v) for k, v in metrics.items()}


def format_rate(predictions: Sequence[Any], label_set: Sequence[str]) -> float:
  """Format-specialisation rate: percent of predictions that are exactly one of the labels."""
  labels = {_text(x).strip() for x in label_set}
  hits = sum(_text(p).strip() in labels for p in predictions)
  return 100.0 * hits / max(len(predictions), 1)


def _prepared(examples, cache_dir, task_name, split, lengths):
  prepare = pipeline.preparer(cache_dir, task_name, 0, split, lengths, False)
  return [prepare(ex) for ex in examples]


def _load(cache_dir, task_name, split, lengths, max_examples) -> list[dict]:
  """The first `max_examples` cached examples of the split, in cache order."""
  examples = []
  for batch in eval_data.task_batches(cache_dir, task_name, split, lengths, batch_size=256,
                                      limit=max_examples):
    examples.extend(batch.examples)
  return examples


def evaluate_task(graphdef, params, task_name: str, *, cache_dir: str, split: str,
                  inputs_length: int, targets_length: int, max_examples: int, batch_size: int,
                  mesh=None, rules=None, decode: generate.DecodeOptions | None = None,
                  scoring_mode: str = "sum", family: str = "enc_dec", seed: int = 0,
                  label_set: Sequence[str] = ()) -> dict:
  """Metrics of one task, three samples, and every example's row (input, prediction, target,
  target log-likelihood when scored). `decode`'s EOS and length come from the task."""
  import seqio  # pylint: disable=g-import-not-at-top  (metric fns and vocabularies live in SeqIO)

  task = seqio.get_mixture_or_task(task_name)
  vocab = task.output_features["targets"].vocabulary
  lengths = {"inputs": inputs_length, "targets": targets_length}
  examples = _load(cache_dir, task_name, split, lengths, max_examples)
  if not examples:
    return {"task": task_name, "num_examples": 0, "metrics": {}, "samples": []}
  prepared = _prepared(examples, cache_dir, task_name, split, lengths)
  inputs = [np.asarray(p["inputs"], np.int32) for p in prepared]
  run = functools.partial(batching.map_batches, batch_size=batch_size, mesh=mesh, rules=rules)
  # The task's vocabulary fixes EOS and its targets length the decode length.
  decode = dataclasses.replace(decode or generate.DecodeOptions(), max_length=targets_length,
                               eos_id=int(vocab.eos_id))
  metrics, predictions, predicted_ids, target_scores = {}, None, None, None

  if task.predict_metric_fns or label_set:
    tokens = np.stack([feature_converters.pad_to(x, inputs_length) for x in inputs])
    rng = jax.random.key(seed)
    counter = iter(range(1 << 30))
    predicted_ids = run(
        lambda b: generate.generate(graphdef, params, b, jax.random.fold_in(rng, next(counter)),
                                    options=decode)[0],
        generate.prompt_batch(family, tokens))
    predictions = postprocessed_predictions(task, examples, predicted_ids)

  needs_scores = task.score_metric_fns or "is_correct" in examples[0]
  if needs_scores:
    target_scores = scoring.score_pairs(
        graphdef, params, [(x, p["targets"]) for x, p in zip(inputs, prepared)],
        lengths=lengths, family=family, batch_size=batch_size, mesh=mesh, rules=rules)
  metrics.update(task_metrics(task, examples, predicted_ids,
                              None if target_scores is None else target_scores["sum"]))
  if label_set and predictions is not None:
    metrics["format_rate"] = format_rate(predictions, label_set)

  if "is_correct" in examples[0]:  # SeqIO rank-classification rows
    ranked = scoring.rank_classification_rows(examples, target_scores[scoring_mode])
    metrics["rank_accuracy"] = ranked["accuracy"]
  elif any(len(ex.get("answer_choices", [])) for ex in examples):
    add_eos = bool(task.output_features["targets"].add_eos)
    pairs, owners, gold = scoring.choice_pairs(examples, inputs, vocab, add_eos=add_eos,
                                               targets_length=targets_length)
    choice_scores = scoring.score_pairs(graphdef, params, pairs, lengths=lengths, family=family,
                                        batch_size=batch_size, mesh=mesh, rules=rules)
    ranked = scoring.rank_answer_choices(choice_scores, owners, gold, scoring_mode)
    metrics["rank_accuracy"] = ranked["accuracy"]
    per_template = scoring.per_template_accuracy(examples, ranked["predicted"], gold)
    if len(per_template) > 1:
      summary = scoring.median_iqr(list(per_template.values()))
      metrics["rank_accuracy_median"] = summary["median"]
      metrics["rank_accuracy_iqr"] = summary["iqr"]
      metrics.update({f"rank_accuracy/template_{t}": v for t, v in per_template.items()})

  targets = postprocessed_targets(task, examples)
  rows = [{"inputs": _text(ex.get("inputs_pretokenized", "")),
           "prediction": None if predictions is None else predictions[i],
           "target": targets[i]} for i, ex in enumerate(examples)]
  if target_scores is not None:
    for row, score in zip(rows, target_scores["sum"]):
      row["target_log_likelihood"] = float(score)
  rows = _jsonable(rows)
  return {"task": task_name, "num_examples": len(examples), "metrics": metrics,
          "samples": rows[:3], "rows": rows}


def _jsonable(x):
  return json.loads(json.dumps(x, default=str))


def config_kwargs(cfg) -> dict[str, Any]:
  """`evaluate_task` keyword arguments from a RunConfig (its data and eval sections)."""
  e = cfg.eval
  decode = generate.DecodeOptions(method=e.decode, beam_size=e.beam_size, alpha=e.alpha,
                                  temperature=e.temperature, top_k=e.top_k, top_p=e.top_p)
  if e.scoring not in scoring.MODES:
    raise ValueError(f"eval.scoring must be one of {scoring.MODES}, got {e.scoring!r}")
  return dict(cache_dir=cfg.data.cache_dir, split=e.split, inputs_length=cfg.data.inputs_length,
              targets_length=cfg.data.targets_length, max_examples=e.max_examples,
              batch_size=e.batch_size, decode=decode, scoring_mode=e.scoring,
              family=getattr(cfg.data, "feature_converter", "enc_dec"), seed=e.seed,
              label_set=tuple(e.label_set))


def evaluate_mixture(graphdef, params, task_names: Sequence[str], **kwargs) -> list[dict]:
  return [evaluate_task(graphdef, params, name, **kwargs) for name in task_names]


def averages(results: list[dict]) -> dict[str, float]:
  """Each metric averaged over the mixture's tasks that report it (unweighted, as T5X's
  `average`); few-shot rows (those with a `k`) are summarised by `few_shot_summary` instead."""
  sums: dict[str, list[float]] = {}
  for r in results:
    if "k" in r:
      continue
    for k, v in r["metrics"].items():
      sums.setdefault(k, []).append(v)
  return {k: float(np.mean(v)) for k, v in sums.items()}


def few_shot_summary(results: list[dict]) -> dict[str, float]:
  """Few-shot rows averaged over tasks per variant and k: `few_shot[/<variant>]/<k>shot/<metric>`."""
  groups: dict[tuple, list[float]] = {}
  for r in results:
    if "k" not in r:
      continue
    for metric, value in r["metrics"].items():
      groups.setdefault((r.get("variant", ""), r["k"], metric), []).append(value)
  return {"/".join(x for x in ("few_shot", v, f"{k}shot", m) if x): float(np.mean(vals))
          for (v, k, m), vals in sorted(groups.items())}


def format_table(results: list[dict]) -> str:
  rows = [(r["task"], k, f"{v:.1f}") for r in results for k, v in r["metrics"].items()]
  if sum("k" not in r for r in results) > 1:
    rows += [("average", k, f"{v:.1f}") for k, v in averages(results).items()]
  rows += [("average", k, f"{v:.1f}") for k, v in few_shot_summary(results).items()]
  widths = [max(len(x) for x in col) for col in zip(("task", "metric", "value"), *rows)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([line(("task", "metric", "value")), line(["-" * w for w in widths])] +
                   [line(r) for r in rows])


def write_results(results: list[dict], path: str) -> None:
  """The per-task results (metrics and a few samples; not every row) as one JSON file."""
  fs.write_text(path, json.dumps([{k: v for k, v in r.items() if k != "rows"} for r in results],
                                 indent=1))


def write_predictions(results: list[dict], output_dir: str, step: int) -> None:
  """Every example's input, prediction and target, one JSONL file per task and step (as T5X's
  inference logs): `<output_dir>/predictions/<task>-<step>.jsonl`."""
  folder = fs.join(output_dir, "predictions")
  fs.makedirs(folder)
  for r in results:
    name = r["task"].replace("/", "_")
    fs.write_text(fs.join(folder, f"{name}-{step}.jsonl"),
                  "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in r.get("rows", [])))


def flat_metrics(results: list[dict]) -> dict[str, float]:
  """One flat dict: `<task>/<metric>`, `average/<metric>`, `few_shot/<k>shot/<metric>` (what a
  best-checkpoint policy or a metrics row takes, e.g. `train.best_metric=average/accuracy`)."""
  row = {f"{r['task']}/{k}": v for r in results for k, v in r["metrics"].items()}
  row.update({f"average/{k}": v for k, v in averages(results).items()})
  row.update(few_shot_summary(results))
  return row


def log_results(results: list[dict], output_dir: str, step: int, *,
                tensorboard: bool = True) -> dict[str, float]:
  """Appends one row (`<task>/<metric>` and `average/<metric>`) to `eval_metrics.jsonl` and
  TensorBoard (`<output_dir>/tensorboard`, tags `eval/...`); returns the row."""
  row = flat_metrics(results)
  fs.append_text(fs.join(output_dir, "eval_metrics.jsonl"),
                 json.dumps({"step": int(step), **row}) + "\n")
  if tensorboard:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    copy = fs.WorkingCopy(output_dir)  # a new event file; uploaded whole for a URL
    with SummaryWriter(copy.path("tensorboard")) as tb:
      for k, v in row.items():
        tb.add_scalar(f"eval/{k}", v, int(step))
    copy.close()
  return row


def report(results: list[dict], output_dir: str, step: int) -> None:
  """Writes `eval_results.json` and `predictions/`, appends `eval_metrics.jsonl` and
  TensorBoard, prints the table."""
  write_results(results, fs.join(output_dir, "eval_results.json"))
  write_predictions(results, output_dir, step)
  log_results(results, output_dir, step)
  print(format_table(results), flush=True)
