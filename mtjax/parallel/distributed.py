"""Multi-host start-up: the one place that calls `jax.distributed.initialize()`.

A run is multi-process when the command line says so (`--coordinator_address`, `--num_processes`,
`--process_id`), when the standard variables do (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`), or when a cluster launcher JAX detects by itself is present (SLURM with more
than one task, Open MPI, a multi-worker TPU slice). Otherwise nothing happens, so single-host runs
never wait for a coordinator. Each host then loads only its shard of the data
(`jax.process_index()` of `jax.process_count()`; see `mtjax.train.setup.data_iterator`).
"""

from __future__ import annotations

import logging
import os

import jax

from mtjax.parallel import compile_cache

log = logging.getLogger(__name__)

_initialized = False


def cluster_detected(env=os.environ) -> bool:
  """Whether a launcher that `jax.distributed.initialize()` auto-detects started >1 process."""
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return True
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def settings(coordinator_address: str | None = None, num_processes: int | None = None,
             process_id: int | None = None, env=os.environ) -> dict | None:
  """The `jax.distributed.initialize` arguments for this process, or None for single-process."""
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  num = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
  pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
  if address:
    if num is None or pid is None:
      raise ValueError("multi-host: a coordinator address needs the number of processes and "
                       "this process's id (--num_processes/--process_id or JAX_NUM_PROCESSES/"
                       "JAX_PROCESS_ID)")
    return {"coordinator_address": address, "num_processes": int(num), "process_id": int(pid)}
  if cluster_detected(env):
    return {}  # JAX reads the launcher's variables itself
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the other processes when the settings say so (once per process). True if joined.
  Also turns on the persistent compilation cache (`mtjax.parallel.compile_cache`): every
  command that runs a model passes here first."""
  global _initialized
  compile_cache.enable()
  if _initialized:
    return True
  kwargs = settings(coordinator_address, num_processes, process_id)
  if kwargs is None:
    return False
  if os.environ.get("JAX_PLATFORMS") == "cpu":
    # CPU processes exchange data through gloo (the default CPU backend has no collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  _initialized = True
  log.info("process %d of %d joined (%d devices in all, %d local)", jax.process_index(),
           jax.process_count(), jax.device_count(), jax.local_device_count())
  return True


def barrier(name: str, timeout_s: int = 900) -> None:
  """Waits until every process reaches `name` (no-op for one process).

  Uses the coordinator's key-value barrier, not a device collective: on CPU the first gloo
  collective gives up when the other processes are more than 30 s behind (a fixed timeout in
  XLA), which a loaded machine easily exceeds while one process still compiles. Calling this
  before the first collective of a phase (checkpoint directory creation, the first train step)
  lines the processes up with a generous timeout instead.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = getattr(jax_distributed.global_state, "client", None)
  if client is None:  # not started through jax.distributed: fall back to a device barrier
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(f"mtjax_{name}", timeout_in_ms=timeout_s * 1000)


_shared_calls: dict[str, int] = {}


def share_error(name: str, message: str | None, timeout_s: int = 900) -> str | None:
  """Process 0's outcome of a step only it performs (e.g. taking the run-dir lock), told to every
  process through the coordinator's key-value store: None if it went well, else its error
  message (each process then raises, instead of the others waiting at the next barrier until
  they time out). Single process: returns `message`."""
  if jax.process_count() == 1:
    return message
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  # Keys are write-once; every process calls this in the same order, so a count tells the
  # calls apart (e.g. ProMoT locks its run dir, then each stage's).
  _shared_calls[name] = _shared_calls.get(name, 0) + 1
  key = f"mtjax_outcome_{name}_{_shared_calls[name]}"
  if jax.process_index() == 0:
    client.key_value_set(key, "ok" if message is None else "error:" + message)
    return message
  value = client.blocking_key_value_get(key, timeout_s * 1000)
  return None if value == "ok" else value[len("error:"):]


_broadcasts: dict[str, int] = {}
_sent: dict[str, list[str]] = {}
BROADCAST_PART = 1 << 20  # bytes per key-value entry (the store's messages stay small)


def broadcast_bytes(name: str, payload: bytes | None, timeout_s: int = 6 * 3600) -> bytes:
  """Process 0's `payload` on every process (process 0 passes it, the others None), through the
  coordinator's key-value store rather than a device collective: a process may wait here for as
  long as process 0 works alone (e.g. builds an evaluation's requests), which the first gloo
  collective on CPU would not survive (module doc of `barrier`). Every process calls this in the
  same order with the same `name`; the keys are numbered per name (a payload over
  BROADCAST_PART bytes is split over several, its part count set last), and process 0 frees the
  ones every process has read with `drop_broadcasts`. Single process: returns `payload`."""
  if jax.process_count() == 1:
    return payload
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  _broadcasts[name] = _broadcasts.get(name, 0) + 1
  key = f"mtjax_broadcast_{name}_{_broadcasts[name]}"
  if jax.process_index() == 0:
    parts = [payload[i:i + BROADCAST_PART]
             for i in range(0, len(payload), BROADCAST_PART)] or [b""]
    for i, part in enumerate(parts):
      client.key_value_set_bytes(f"{key}_{i}", part)
    client.key_value_set(key, str(len(parts)))
    _sent.setdefault(name, []).extend([key] + [f"{key}_{i}" for i in range(len(parts))])
    return payload
  count = int(client.blocking_key_value_get(key, timeout_s * 1000))
  return b"".join(client.blocking_key_value_get_bytes(f"{key}_{i}", 60 * 1000)
                  for i in range(count))


def drop_broadcasts(name: str) -> None:
  """Frees `name`'s broadcast keys (process 0; call it once every process is known to have read
  them, e.g. after a computation they all took part in)."""
  if jax.process_count() == 1 or jax.process_index() != 0:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  client = jax_distributed.global_state.client
  for key in _sent.pop(name, []):
    client.key_value_delete(key)
