"""Which share of a build's units this process runs when many hosts build one cache.

Every host runs the same command; each takes a disjoint share of the plan's units, decided from
the plan alone (so no host needs to talk to another: they meet in the ledger of the shared cache
dir). The process count and index come from the flags (`--num_processes/--process_id`), else
from the environment JAX's multi-host start-up reads: `JAX_NUM_PROCESSES/JAX_PROCESS_ID`, SLURM,
Open MPI, a multi-worker TPU slice (`TPU_WORKER_HOSTNAMES` / `TPU_WORKER_ID`).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from mtjax import errors


def _pair(env: Mapping[str, str], count: str, index: str) -> tuple[int, int] | None:
  if env.get(count) and env.get(index) not in (None, ""):
    return int(env[count]), int(env[index])
  return None


def process_share(num_processes: int | None = None, process_id: int | None = None,
                  env: Mapping[str, str] = os.environ) -> tuple[int, int]:
  """(number of processes, this process's index)."""
  if num_processes is not None or process_id is not None:
    if num_processes is None or process_id is None:
      raise errors.ConfigError("give both --num_processes and --process_id (or neither)")
    found = (int(num_processes), int(process_id))
  else:
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    found = (_pair(env, "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
             or (_pair(env, "SLURM_NTASKS", "SLURM_PROCID") if "SLURM_JOB_ID" in env else None)
             or _pair(env, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
             or ((len(hosts), int(env.get("TPU_WORKER_ID", "0") or 0)) if len(hosts) > 1
                 else None)
             or (1, 0))
  count, index = found
  if count < 1 or not 0 <= index < count:
    raise errors.ConfigError(f"process id {index} is not in 0..{count - 1} "
                             f"(--num_processes={count})")
  return count, index


def assign(costs: Sequence[int], count: int) -> list[int]:
  """The process of each unit: longest first, each to the least loaded process (ties: lowest
  index). Depends on the costs (the plan) only, so every host computes the same shares."""
  order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
  load = [0] * count
  owner = [0] * len(costs)
  for i in order:
    p = min(range(count), key=lambda q: (load[q], q))
    owner[i] = p
    load[p] += max(1, costs[i])
  return owner
