"""Which share of a build's units this process runs when many hosts build one cache.

Every host runs the same command; each takes a disjoint share of the plan's units, decided from
the plan alone (so no host needs to talk to another: they meet in the ledger of the shared cache
dir). The process count and index come from the flags (`--num_processes/--process_id`), else
from the environment JAX's multi-host start-up reads: `JAX_NUM_PROCESSES/JAX_PROCESS_ID`, SLURM,
Open MPI, a multi-worker TPU slice (`TPU_WORKER_HOSTNAMES` / `TPU_WORKER_ID`).
"""

from __future__ import annotations

import os
import zlib
from typing import Mapping

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


def _spread(task: str, split: str) -> int:
  return zlib.crc32(f"{task}/{split}".encode())


def unit_owner(task: str, split: str, index: int, count: int) -> int:
  """The process that builds unit `index` of a split: a split's units go round the processes,
  starting at a place given by the split's name. It depends on nothing but the split (not on
  which other splits a host found already built when it planned), so every host agrees."""
  return (_spread(task, split) + index) % count


def assembler(task: str, split: str, count: int) -> int:
  """The process that assembles and publishes a split once all its units are finished."""
  return _spread(task, split) % count
