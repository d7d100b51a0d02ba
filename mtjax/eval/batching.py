"""Fixed-size, sharded batches of evaluation rows, so each jitted eval function compiles once.

The last batch is padded with zero rows (dropped from the outputs); the batch size is rounded
up to a multiple of the data-parallel mesh size so the batch shards evenly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from mtjax.parallel import rules as rules_lib


def batch_size_for(batch_size: int, num_rows: int, mesh=None) -> int:
  parallel = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  return max(parallel, math.ceil(min(batch_size, max(num_rows, 1)) / parallel) * parallel)


def map_batches(fn: Callable, features: Mapping[str, np.ndarray], *, batch_size: int, mesh=None,
                rules=None):
  """Applies `fn(batch) -> pytree of [B, ...]` over the rows of `features`; numpy outputs."""
  num_rows = len(next(iter(features.values())))
  size = batch_size_for(batch_size, num_rows, mesh)
  sharding = None if mesh is None else NamedSharding(
      mesh, rules_lib.logical_to_spec(("batch",), rules))
  outputs = []
  for start in range(0, num_rows, size):
    chunk = {k: v[start:start + size] for k, v in features.items()}
    n = len(next(iter(chunk.values())))
    chunk = {k: np.pad(v, [(0, size - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in chunk.items()}
    if sharding is not None:
      chunk = {k: jax.device_put(v, sharding) for k, v in chunk.items()}
    outputs.append(jax.tree.map(lambda x, n=n: np.asarray(x)[:n], fn(chunk)))
  if not outputs:
    return None
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
