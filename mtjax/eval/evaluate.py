"""SeqIO-style evaluation of each task in a mixture: decode, postprocess, metric functions.

Predictions are greedy decodes of the cached validation inputs; targets are the task's
pretokenized targets. Both go through the task's own `postprocess_fn`, and the task's own
predict-metric functions score them, so numbers match what SeqIO/T5X would report.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from mtjax.data import cache, feature_converters, pipeline
from mtjax.eval.decoding import greedy_decode
from mtjax.parallel import rules as rules_lib


def _encoder_inputs(examples, cache_dir, task, split, inputs_length) -> np.ndarray:
  manifest = cache.read_manifest(cache_dir, task, split)
  rows = []
  for ex in examples:
    ex = pipeline.post_cache(ex, manifest["post_cache_ops"], manifest["output_features"],
                             {"inputs": inputs_length, "targets": 10**9})
    rows.append(feature_converters.pad_to(np.asarray(ex["inputs"], np.int32), inputs_length))
  return np.stack(rows)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def evaluate_task(graphdef, params, task_name: str, *, cache_dir: str, split: str,
                  inputs_length: int, targets_length: int, max_examples: int, batch_size: int,
                  mesh=None, rules=None) -> dict:
  """Metrics of one task, plus a few (input, prediction, target) samples."""
  import seqio  # pylint: disable=g-import-not-at-top  (metric fns and vocabularies live in SeqIO)

  task = seqio.get_mixture_or_task(task_name)
  vocab = task.output_features["targets"].vocabulary
  examples = pipeline.read_examples(cache_dir, task_name, split, limit=max_examples)
  tokens = _encoder_inputs(examples, cache_dir, task_name, split, inputs_length)
  parallel = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = max(parallel, int(math.ceil(min(batch_size, len(tokens)) / parallel)) * parallel)
  sharding = None if mesh is None else NamedSharding(
      mesh, rules_lib.logical_to_spec(("batch",), rules))
  decoded = []
  for start in range(0, len(tokens), batch_size):
    chunk = tokens[start:start + batch_size]
    padded = np.pad(chunk, ((0, batch_size - len(chunk)), (0, 0)))
    batch = padded if sharding is None else jax.device_put(padded, sharding)
    out = np.asarray(greedy_decode(graphdef, params, batch, max_length=targets_length,
                                   eos_id=int(vocab.eos_id)))
    decoded.extend(out[:len(chunk)])
  predictions, targets = [], []
  for ex, ids in zip(examples, decoded):
    ids = [int(t) for t in ids]
    if vocab.eos_id in ids:
      ids = ids[:ids.index(vocab.eos_id)]
    predictions.append(task.postprocess_fn(vocab.decode(ids), example=ex, is_target=False))
    targets.append(task.postprocess_fn(_text(ex["targets_pretokenized"]), example=ex,
                                       is_target=True))
  metrics = {}
  for fn in task.predict_metric_fns:
    metrics.update({k: float(v) for k, v in fn(targets, predictions).items()})
  samples = [{"inputs": _text(ex.get("inputs_pretokenized", "")), "prediction": p, "target": t}
             for ex, p, t in list(zip(examples, predictions, targets))[:3]]
  return {"task": task_name, "num_examples": len(examples), "metrics": metrics,
          "samples": samples}


def evaluate_mixture(graphdef, params, task_names: Sequence[str], **kwargs) -> list[dict]:
  return [evaluate_task(graphdef, params, name, **kwargs) for name in task_names]


def format_table(results: list[dict]) -> str:
  rows = [(r["task"], k, f"{v:.1f}") for r in results for k, v in r["metrics"].items()]
  widths = [max(len(x) for x in col) for col in zip(("task", "metric", "value"), *rows)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
  return "\n".join([line(("task", "metric", "value")), line(["-" * w for w in widths])] +
                   [line(r) for r in rows])


def write_results(results: list[dict], path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
