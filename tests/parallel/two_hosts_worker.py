"""One process of the two-host test: joins via the JAX_* variables, loads its data shard and
assembles the global batch; process 0 writes the gathered global batch (see test_distributed)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mtjax.parallel import distributed

assert distributed.initialize(), "JAX_COORDINATOR_ADDRESS etc. should start multi-process"

import jax
import numpy as np
from jax.experimental import multihost_utils

from mtjax.data import mixing, pipeline
from mtjax.parallel import arrays
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib


def main(cache_dir: str, out: str, global_batch: int) -> None:
  spec = mixing.read_spec("synthetic", cache_dir)
  options = pipeline.PipelineOptions(
      {"inputs": 32, "targets": 8}, batch_size=global_batch // jax.process_count(),
      shard_index=jax.process_index(), num_shards=jax.process_count(), prefetch=0)
  local = next(iter(pipeline.train_batches(spec, cache_dir, options)))
  mesh = mesh_lib.make_mesh()  # all devices of both processes
  batch = arrays.global_batch(local, mesh, rules_lib.DEFAULT_RULES)
  assert batch["decoder_target_tokens"].shape[0] == global_batch
  tokens = jax.jit(lambda w: w.sum())(batch["decoder_loss_weights"])  # a cross-host reduction
  gathered = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in batch.items()}
  if jax.process_index() == 0:
    np.savez(out, tokens=np.asarray(tokens), **gathered)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
