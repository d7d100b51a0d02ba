"""SeqIO-style evaluation of each task in a mixture: decode, score, postprocess, metric functions.

Per task (every example of its eval split once, in cache order, via `mtjax.data.eval_data`;
`eval.max_examples` > 0 keeps the first n and says how many it left out):
- the task's SeqIO metrics, every kind `seqio.Evaluator` computes, fed the way it feeds them:
  SeqIO turns each metric fn into a `seqio.metrics.Metric` (`task.metric_objs`, which also holds
  the metric objects a task was registered with), and each metric object names the model output
  it needs (`ModelOutputType`):
  PREDICTION: decoded token ids (greedy / beam / sampling, `mtjax.eval.generate`), which a
    metric fn sees after `vocab.decode` and the task's `postprocess_fn` (targets: the
    postprocessed `targets_pretokenized`);
  SCORE: the summed log-likelihood of each example's targets (T5X's `score_fn`);
  PREDICTION_WITH_AUX: the token ids plus T5X's aux values `{"scores": ...}` (the beam score
    with beam search, else the summed log-likelihood of the decoded sequence, EOS included);
  SCORE_WITH_INTERMEDIATES (model internals) is refused with an error naming task and metric;
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
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mtjax import errors, fs
from mtjax.data import eval_data, feature_converters, pipeline, registration
from mtjax.eval import batching, generate, scoring

log = logging.getLogger(__name__)


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


def output_types(task) -> set:
  """The model outputs (`seqio.metrics.ModelOutputType`) the task's metrics need.

  Asks `task.metric_objs`, as `seqio.Evaluator` does, so `metric_fns` of every kind and metric
  objects count; a kind mtjax cannot produce is refused here, before any decoding, instead of
  being skipped in silence."""
  from seqio import metrics as seqio_metrics  # pylint: disable=g-import-not-at-top

  kinds = seqio_metrics.ModelOutputType
  known = {kinds.PREDICTION, kinds.SCORE, kinds.PREDICTION_WITH_AUX}
  out = set()
  for metric in task.metric_objs:
    kind = metric.model_output_type
    if kind not in known:
      raise errors.DataError(
          f"task {task.name}: metric {_metric_name(metric)} needs model output "
          f"{seqio_metrics.ModelOutputType.to_str(kind)!r}, which mtjax does not produce "
          "(it computes prediction, score and prediction_with_aux metrics)",
          hint="remove that metric from the task's metric_objs, or evaluate it with "
               "seqio.Evaluator on a model that returns intermediates")
    out.add(kind)
  return out


def _metric_name(metric) -> str:
  """The metric's class name (`PassthroughLegacyMetric` for SeqIO's wrappers of metric fns)."""
  name = type(metric).__name__
  return type(metric).__mro__[1].__name__ if name == "FromMetricFun" else name


def _metric_value(task_name: str, key: str, value):
  """A metric's value as a float; None for non-scalar values (text, images, ...), which only
  SeqIO's loggers can show."""
  from seqio import metrics as seqio_metrics  # pylint: disable=g-import-not-at-top

  if isinstance(value, seqio_metrics.Scalar):
    value = value.value
  if isinstance(value, seqio_metrics.MetricValue):
    log.warning("task %s: metric %s is a %s, not a number: left out of the results",
                task_name, key, type(value).__name__)
    return None
  return float(value)


def task_metrics(task, examples: Sequence[Mapping[str, Any]], predicted_ids=None,
                 scores=None, aux_values: Mapping[str, Any] | None = None) -> dict[str, float]:
  """The task's metrics on model outputs, computed as `seqio.Evaluator._compute_clu_metrics`.

  `predicted_ids` feed PREDICTION metrics (and, with `aux_values`, PREDICTION_WITH_AUX ones),
  `scores` SCORE metrics; a metric whose output is not given is skipped. Every metric goes
  through `task.metric_objs`, so the numbers are SeqIO's by construction (postprocessing,
  decoding, the order of examples, duplicate-name checks), not a re-implementation of them.
  """
  from seqio import metrics as seqio_metrics  # pylint: disable=g-import-not-at-top

  kinds = seqio_metrics.ModelOutputType
  outputs = {}
  if predicted_ids is not None:
    outputs[kinds.PREDICTION] = np.array(predicted_ids)
    if aux_values is not None:
      outputs[kinds.PREDICTION_WITH_AUX] = (
          np.array(predicted_ids), {k: np.array(v) for k, v in aux_values.items()})
  if scores is not None:
    outputs[kinds.SCORE] = np.array(scores)
  features = task.output_features
  cached_targets: list = []  # as the Evaluator's: one collecting metric's targets serve the next
  merged: dict[str, Any] = {}
  for metric in task.metric_objs:
    if metric.model_output_type not in outputs:
      continue
    output = outputs[metric.model_output_type]
    if isinstance(metric, seqio_metrics.LegacyMetric):
      # A fresh copy: LegacyMetric keeps the targets of its first call in the (shared) object.
      metric = metric.replace(metric_fn_kwargs={}, targets_and_inferences={})
    instance = metric.from_model_output(examples, output, features, "targets")
    if isinstance(instance, seqio_metrics.CollectingMetric):
      value, targets_and_inferences = instance.actual_compute(examples, features, "targets",
                                                              cached_targets)
      cached_targets = targets_and_inferences["targets"]
    else:
      value = instance.compute()
    for key, v in value.items():
      if key in merged:
        raise errors.DataError(f"task {task.name}: two metrics return {key!r} (SeqIO's "
                               "Evaluator refuses duplicate metric names too)")
      merged[key] = v
  values = {k: _metric_value(task.name, k, v) for k, v in merged.items()}
  return {k: v for k, v in values.items() if v is not None}


def format_rate(predictions: Sequence[Any], label_set: Sequence[str]) -> float:
  """Format-specialisation rate: percent of predictions that are exactly one of the labels."""
  labels = {_text(x).strip() for x in label_set}
  hits = sum(_text(p).strip() in labels for p in predictions)
  return 100.0 * hits / max(len(predictions), 1)


def _prepared(examples, cache_dir, task_name, split, lengths):
  prepare = pipeline.preparer(cache_dir, task_name, 0, split, lengths, False)
  return [prepare(ex) for ex in examples]


def _limit(max_examples: int) -> int | None:
  """`eval.max_examples` as a cap: 0 is the whole split (the default: a silent subset makes
  numbers that are not the task's)."""
  if max_examples < 0:
    raise errors.ConfigError(f"eval.max_examples must be >= 0 (0 = the whole split), got "
                             f"{max_examples}")
  return max_examples or None


def load_examples(cache_dir, task_name, split, lengths, max_examples) -> list[dict]:
  """The first `max_examples` cached examples of the split (all with 0), in cache order."""
  examples = []
  for batch in eval_data.task_batches(cache_dir, task_name, split, lengths, batch_size=256,
                                      limit=_limit(max_examples)):
    examples.extend(batch.examples)
  return examples


def _sequence_scores(graphdef, params, inputs, predicted_ids, eos_id: int, **kwargs):
  """Summed log-likelihood of each decoded sequence up to and including its first EOS (what
  T5X's decoders return as the `scores` aux value, for greedy and sampled decodes)."""
  pairs = []
  for x, ids in zip(inputs, np.asarray(predicted_ids)):
    ends = np.flatnonzero(ids == eos_id)
    pairs.append((x, ids[:ends[0] + 1] if ends.size else ids))
  return scoring.score_pairs(graphdef, params, pairs, **kwargs)["sum"]


def evaluate_task(graphdef, params, task_name: str, *, cache_dir: str, split: str,
                  inputs_length: int, targets_length: int, max_examples: int, batch_size: int,
                  mesh=None, rules=None, decode: generate.DecodeOptions | None = None,
                  scoring_mode: str = "sum", family: str = "enc_dec", seed: int = 0,
                  label_set: Sequence[str] = ()) -> dict:
  """Metrics of one task, three samples, and every example's row (input, prediction, target,
  target log-likelihood when scored). `decode`'s EOS and length come from the task.

  `num_examples` is how many were evaluated, `split_examples` how many the split has (they
  differ only under an `eval.max_examples` cap, which is then logged)."""
  import seqio  # pylint: disable=g-import-not-at-top  (metric fns and vocabularies live in SeqIO)
  from seqio import metrics as seqio_metrics  # pylint: disable=g-import-not-at-top
  registration.ensure_registered()  # (a fast start-up put it off: `mtjax.data.startup`)
  task = seqio.get_mixture_or_task(task_name)
  kinds = output_types(task)
  vocab = task.output_features["targets"].vocabulary
  lengths = {"inputs": inputs_length, "targets": targets_length}
  total = eval_data.num_examples(cache_dir, task_name, split)
  examples = load_examples(cache_dir, task_name, split, lengths, max_examples)
  if len(examples) < total:
    log.warning("task %s: evaluated %d of %d %s examples (eval.max_examples=%d)", task_name,
                len(examples), total, split, max_examples)
  if not examples:
    return {"task": task_name, "num_examples": 0, "split_examples": total, "metrics": {},
            "samples": []}
  prepared = _prepared(examples, cache_dir, task_name, split, lengths)
  inputs = [np.asarray(p["inputs"], np.int32) for p in prepared]
  run = functools.partial(batching.map_batches, batch_size=batch_size, mesh=mesh, rules=rules)
  # Decoder rows and prompts start where training started them (the tokenizer's BOS, else 0).
  start_id = pipeline.task_start_id(cache_dir, task_name, split)
  score = functools.partial(scoring.score_pairs, graphdef, params, lengths=lengths, family=family,
                            batch_size=batch_size, mesh=mesh, rules=rules, start_id=start_id)
  # The task's vocabulary fixes EOS and its targets length the decode length.
  decode = dataclasses.replace(decode or generate.DecodeOptions(), max_length=targets_length,
                               eos_id=int(vocab.eos_id))
  metrics, predictions, predicted_ids, target_scores, aux = {}, None, None, None, None
  kind = seqio_metrics.ModelOutputType

  if kinds & {kind.PREDICTION, kind.PREDICTION_WITH_AUX} or label_set:
    tokens = np.stack([feature_converters.pad_to(x, inputs_length) for x in inputs])
    rng = jax.random.key(seed)
    counter = iter(range(1 << 30))
    prompt_lengths = [min(len(x), inputs_length) for x in inputs]
    predicted_ids, beam_scores = run(
        lambda b: generate.generate(graphdef, params, b, jax.random.fold_in(rng, next(counter)),
                                    options=decode),
        generate.prompt_batch(family, tokens, prompt_lengths, start_id=start_id),
        row_lengths=generate.prompt_row_lengths(family, prompt_lengths), name="generate")
    predictions = postprocessed_predictions(task, examples, predicted_ids)
    if kind.PREDICTION_WITH_AUX in kinds:
      aux = {"scores": beam_scores if decode.method == "beam" else _sequence_scores(
          graphdef, params, inputs, predicted_ids, decode.eos_id, lengths=lengths, family=family,
          batch_size=batch_size, mesh=mesh, rules=rules, start_id=start_id)}

  if kind.SCORE in kinds or "is_correct" in examples[0]:
    target_scores = score([(x, p["targets"]) for x, p in zip(inputs, prepared)])
  metrics.update(task_metrics(task, examples, predicted_ids,
                              None if target_scores is None else target_scores["sum"], aux))
  if label_set and predictions is not None:
    metrics["format_rate"] = format_rate(predictions, label_set)

  if "is_correct" in examples[0]:  # SeqIO rank-classification rows
    ranked = scoring.rank_classification_rows(examples, target_scores[scoring_mode])
    metrics["rank_accuracy"] = ranked["accuracy"]
  elif any(len(ex.get("answer_choices", [])) for ex in examples):
    add_eos = bool(task.output_features["targets"].add_eos)
    pairs, owners, gold = scoring.choice_pairs(examples, inputs, vocab, add_eos=add_eos,
                                               targets_length=targets_length)
    ranked = scoring.rank_answer_choices(score(pairs), owners, gold, scoring_mode)
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
    for row, value in zip(rows, target_scores["sum"]):
      row["target_log_likelihood"] = float(value)
  rows = _jsonable(rows)
  return {"task": task_name, "num_examples": len(examples), "split_examples": total,
          "metrics": metrics, "samples": rows[:3], "rows": rows}


def _jsonable(x):
  return json.loads(json.dumps(x, default=str))


def config_kwargs(cfg) -> dict[str, Any]:
  """`evaluate_task` keyword arguments from a RunConfig (its data and eval sections)."""
  e = cfg.eval
  decode = generate.DecodeOptions(method=e.decode, beam_size=e.beam_size, alpha=e.alpha,
                                  temperature=e.temperature, top_k=e.top_k, top_p=e.top_p)
  if e.scoring not in scoring.MODES:
    raise ValueError(f"eval.scoring must be one of {scoring.MODES}, got {e.scoring!r}")
  _limit(e.max_examples)  # a negative cap fails here, before any model is built
  return dict(cache_dir=cfg.data.cache_dir, split=e.split, inputs_length=cfg.data.inputs_length,
              targets_length=cfg.data.targets_length, max_examples=e.max_examples,
              batch_size=e.batch_size, decode=decode, scoring_mode=e.scoring,
              family=getattr(cfg.data, "feature_converter", "enc_dec"), seed=e.seed,
              label_set=tuple(e.label_set))


def evaluate_mixture(graphdef, params, task_names: Sequence[str], **kwargs) -> list[dict]:
  return [evaluate_task(graphdef, params, name, **kwargs) for name in task_names]


def _per_metric(results: list[dict]) -> dict[str, list[float]]:
  """Each metric's values over the zero-shot tasks that report it. Only the same metric is ever
  pooled; per-template metrics (`rank_accuracy/template_<id>`) are not, since template ids
  number each task's own templates."""
  values: dict[str, list[float]] = {}
  for r in results:
    if "k" in r:
      continue
    for k, v in r["metrics"].items():
      if "/" not in k:
        values.setdefault(k, []).append(v)
  return values


def averages(results: list[dict]) -> dict[str, float]:
  """Each metric averaged over the mixture's tasks that report it (unweighted, as T5X's
  `average`); few-shot rows (those with a `k`) are summarised by `few_shot_summary` instead."""
  return {k: float(np.mean(v)) for k, v in _per_metric(results).items()}


def few_shot_summary(results: list[dict]) -> dict[str, float]:
  """Few-shot rows averaged over tasks per variant and k (each metric with itself):
  `few_shot[/<variant>]/<k>shot/<metric>`."""
  groups: dict[tuple, list[float]] = {}
  for r in results:
    if "k" not in r:
      continue
    for metric, value in r["metrics"].items():
      groups.setdefault((r.get("variant", ""), r["k"], metric), []).append(value)
  return {"/".join(x for x in ("few_shot", v, f"{k}shot", m) if x): float(np.mean(vals))
          for (v, k, m), vals in sorted(groups.items())}


def examples_cell(result: Mapping[str, Any]) -> str:
  """How many examples a task's numbers cover: `277`, or `200 of 277` under a cap."""
  n, total = result.get("num_examples"), result.get("split_examples")
  if n is None:
    return ""
  return f"{n} of {total}" if total is not None and total > n else str(n)


def format_table(results: list[dict]) -> str:
  """The printed results: one row per (task, metric) with the examples it covers; an average
  row per metric (over the tasks reporting that metric, never across metrics)."""
  rows = [(r["task"], k, f"{v:.1f}", examples_cell(r))
          for r in results for k, v in r["metrics"].items()]
  if sum("k" not in r for r in results) > 1:
    rows += [("average", k, f"{np.mean(v):.1f}", f"{len(v)} task{'s' * (len(v) > 1)}")
             for k, v in _per_metric(results).items()]
  rows += [("average", k, f"{v:.1f}", "") for k, v in few_shot_summary(results).items()]
  head = ("task", "metric", "value", "examples")
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
  return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


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
                tensorboard: bool = True, row: dict[str, float] | None = None) -> dict[str, float]:
  """Appends one row (`<task>/<metric>` and `average/<metric>`, or the `row` given) to
  `eval_metrics.jsonl` and TensorBoard (`<output_dir>/tensorboard`, tags `eval/...`); returns
  the row."""
  row = flat_metrics(results) if row is None else row
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
