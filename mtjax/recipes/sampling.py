"""The mixture a run actually trained on: examples and target tokens per task in its batches.

The training stream is deterministic (same config and seed, same batches on any host count), so
replaying the run's pipeline gives exactly the batches it drew; counting the `task_ids` of their
examples measures the sampled mixture, which packing, trimming and the finite number of steps
make differ from the configured rates.
"""

from __future__ import annotations

import numpy as np

from mtjax.config import schema
from mtjax.data import mixing, pipeline


def count_batch(batch: dict, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
  """(examples, target tokens) per task id in one model batch, packed or not.

  An example is a run of loss-weighted target tokens with one segment id (one row when
  unpacked); its task is the `task_ids` entry of its first token.
  """
  task_ids = np.asarray(batch["task_ids"])
  weights = np.asarray(batch["decoder_loss_weights"]) > 0
  segments = batch.get("decoder_segment_ids")
  segments = (np.asarray(segments) if segments is not None
              else np.where(weights, 1, 0).astype(np.int32))
  # An example starts where a weighted token's segment differs from the previous weighted
  # token's segment in the same row (or at the row's first weighted token).
  prev = np.full(segments.shape[:-1], -1)
  starts = np.zeros(weights.shape, bool)
  for t in range(weights.shape[-1]):
    w = weights[..., t]
    starts[..., t] = w & (segments[..., t] != prev)
    prev = np.where(w, segments[..., t], prev)
  examples = np.bincount(task_ids[starts], minlength=num_tasks)[:num_tasks]
  tokens = np.bincount(task_ids[weights], minlength=num_tasks)[:num_tasks]
  return examples, tokens


def drawn(cfg: schema.RunConfig, spec: mixing.MixtureSpec, num_batches: int
          ) -> dict[str, dict[str, int]]:
  """`{task: {"examples": n, "tokens": m}}` over the run's first `num_batches` global batches."""
  options = pipeline.PipelineOptions(
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      batch_size=cfg.data.batch_size, pack=cfg.data.pack, packer=cfg.data.packer,
      packing_bins=cfg.data.packing_bins, seed=cfg.data.seed,
      feature_converter=cfg.data.feature_converter, rate_stages=cfg.data.rate_stages,
      prefetch=0)
  n = len(spec.task_names)
  examples, tokens = np.zeros(n, np.int64), np.zeros(n, np.int64)
  it = iter(pipeline.train_batches(spec, cfg.data.cache_dir, options))
  for _ in range(num_batches):
    e, t = count_batch(next(it), n)
    examples += e
    tokens += t
  return {task: {"examples": int(examples[i]), "tokens": int(tokens[i])}
          for i, task in enumerate(spec.task_names)}
