"""Evaluation inputs: each task's split in cache order, unpacked, with its original examples.

Training streams shuffle, repeat and pack; evaluation needs the opposite: every example exactly
once, in a fixed order, one per row, and next to its features the cached example itself
(`inputs_pretokenized`, `targets_pretokenized`, `answer_choices`, `example_json`, `idx`, ...) so
postprocessors, metric functions and rank classification can read it. Batches have a fixed
shape; the last one is padded with empty rows that `mask` marks False. TF-free.

    for batch in eval_data.task_batches(cache_dir, "synthetic_copy", "validation",
                                        {"inputs": 64, "targets": 16}, batch_size=32):
      predictions = decode(batch.features)[batch.mask]
      references = [ex["targets_pretokenized"] for ex in batch.examples]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mtjax.data import feature_converters, pipeline, records


@dataclasses.dataclass
class EvalBatch:
  """One fixed-shape batch of a task: model features, the cached examples of the real rows."""

  task: str
  features: dict[str, np.ndarray]  # [batch_size, length] each, as the converter names them
  examples: list[dict[str, Any]]  # the real rows' cached examples (strings, answer choices, ...)
  indices: np.ndarray  # [num real rows] position of each example in the cached split
  mask: np.ndarray  # [batch_size] bool: True for real rows, False for padding rows


def num_examples(cache_dir: str, task: str, split: str) -> int:
  return int(pipeline.require_manifest(cache_dir, task, split)["num_examples"])


def example_indices(total: int, *, limit: int | None = None, shard_index: int = 0,
                    num_shards: int = 1) -> np.ndarray:
  """The first `limit` examples (all if None), this host's share `shard_index::num_shards`."""
  n = total if limit is None else min(limit, total)
  return np.arange(n)[shard_index::num_shards]


def task_batches(cache_dir: str, task: str, split: str, lengths: Mapping[str, int],
                 batch_size: int, *, feature_converter: str = "enc_dec", task_id: int = 0,
                 limit: int | None = None, shard_index: int = 0, num_shards: int = 1,
                 start_id: int | None = None) -> Iterator[EvalBatch]:
  """Every example of `task/split` once, in cache order (this host's share), padded features.

  Features are exactly what training feeds the model for that example, unpacked: the post-cache
  ops (EOS), the trim to `lengths`, `task_ids`, then the chosen converter; for decoder-only
  converters, `inputs + targets` concatenated to `inputs_length + targets_length`, starting
  from `start_id` (None: the task's, from its cache manifest, as training starts them).
  """
  feature_converters.check_converter(feature_converter)
  if start_id is None:
    start_id = pipeline.task_start_id(cache_dir, task, split)
  indices = example_indices(num_examples(cache_dir, task, split), limit=limit,
                            shard_index=shard_index, num_shards=num_shards)
  source = pipeline.task_source(cache_dir, task, split)
  prepare = pipeline.preparer(
      cache_dir, task, task_id, split, lengths,
      feature_converters.concatenates(feature_converter))
  for start in range(0, len(indices), batch_size):
    chunk = indices[start:start + batch_size]
    examples = [records.decode(source[int(i)]) for i in chunk]
    rows = [feature_converters.convert(
        feature_converters.pad_example(prepare(ex), feature_converter, lengths),
        feature_converter, packed=False, start_id=start_id) for ex in examples]
    blank = {k: np.zeros_like(v) for k, v in rows[0].items()}
    rows += [blank] * (batch_size - len(rows))
    features = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    mask = np.arange(batch_size) < len(chunk)
    yield EvalBatch(task, features, examples, chunk, mask)


def mixture_batches(task_names: Sequence[str], cache_dir: str, split: str,
                    lengths: Mapping[str, int], batch_size: int,
                    **kwargs) -> dict[str, Iterator[EvalBatch]]:
  """`task_batches` for each task; `task_ids` follow the order of `task_names` (the mixture's)."""
  return {t: task_batches(cache_dir, t, split, lengths, batch_size, task_id=i, **kwargs)
          for i, t in enumerate(task_names)}
