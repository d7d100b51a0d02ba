"""The teacher-forced loss on the eval split, every `eval.loss_every` steps.

Part of training, not of `mtjax.eval`: it runs the train step's loss (no decoding, no metrics)
on a fixed set of eval batches, so its numbers compare directly with the training loss.
"""

from __future__ import annotations

import jax

from mtjax.data import pipeline
from mtjax.parallel import arrays
from mtjax.train import metrics as metrics_lib
from mtjax.train import setup as setup_lib


def eval_batches(setup: setup_lib.Setup) -> list:
  """A fixed set of batches of the eval split (the same ones every time)."""
  cfg = setup.cfg
  n_hosts = jax.process_count()
  options = pipeline.PipelineOptions(
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      batch_size=cfg.data.batch_size // n_hosts, pack=cfg.data.pack, packer=cfg.data.packer,
      packing_bins=cfg.data.packing_bins, seed=cfg.data.seed,
      feature_converter=cfg.data.feature_converter, shard_index=jax.process_index(),
      num_shards=n_hosts, prefetch=0)
  it = iter(pipeline.train_batches(setup.spec, cfg.data.cache_dir, options,
                                   split=cfg.eval.split))
  return [next(it) for _ in range(max(cfg.eval.loss_batches, 1))]


def eval_loss(setup: setup_lib.Setup, params, batches, eval_step) -> dict[str, float]:
  """Teacher-forced loss and token accuracy on `batches`, overall and per task (`eval/...`)."""
  sums = None
  for local in batches:
    m = eval_step(params, arrays.global_batch(setup_lib.local_batch(setup, local), setup.mesh,
                                              setup.rules))
    sums = m if sums is None else jax.tree.map(jax.numpy.add, sums, m)
  row = metrics_lib.summarize(jax.device_get(sums), setup.spec.task_names)
  return {f"eval/{k}": v for k, v in row.items()}
