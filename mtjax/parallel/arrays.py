"""Host-local numpy batches -> global `jax.Array`s sharded over the mesh's batch axes."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding

from mtjax.parallel import rules as rules_lib


def batch_sharding(mesh: jax.sharding.Mesh, rules: rules_lib.Rules) -> NamedSharding:
  return NamedSharding(mesh, rules_lib.logical_to_spec(("batch",), rules))


def global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                 rules: rules_lib.Rules) -> dict[str, jax.Array]:
  """Assembles each host's slice of the batch into one global array per feature.

  Each host passes only the rows it loaded; the global batch is their concatenation in process
  order (the pipeline shards data by process index to match).
  """
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
