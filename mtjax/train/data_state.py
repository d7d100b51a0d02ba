"""The data iterator's checkpoint item, restorable on another number of processes.

Grain's Orbax handler writes one `process_<i>-of-<n>.json` per process (the iterator's state)
and restores only the file of the same index and count. `DataIterHandler` writes the same files
(checkpoints of either handler restore with the other on the same process count) and, when this
run's process count differs from the checkpoint's, restores a saved process's state instead and
lets the iterator move to its own slots of the next global batch. That is exact only for streams
whose global batches do not depend on the number of processes: the window packer
(`mtjax.data.packing`) and the unpacked stream (`mtjax.data.pipeline.HostSlotsIterDataset`), with
or without staged rates (`StagedBatches` passes the inner state through), without worker
processes. Their states carry the layout that wrote them (`num_shards`, ...). Any other stream is
a one-line `ConfigError` naming the data option that forbids the change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from mtjax.errors import ConfigError

log = logging.getLogger(__name__)

_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def host_dependence(state: Any) -> str | None:
  """None if `state` may restore on another number of processes, else the data option that
  forbids it (in words, for the error message)."""
  if not isinstance(state, dict):
    return "this data iterator"
  if {"stage", "step", "inner"} <= state.keys():  # StagedBatches: the step is global
    return host_dependence(state["inner"])
  if "num_shards" in state and "global_batch" in state:  # window packer, unpacked host slots
    return None
  if {"window", "row", "rows_before"} <= state.keys():
    return ("its data state was written before process-count changes were supported (window "
            "packer state without layout)")
  if any(k in state for k in ("iterators_in_use_states", "workers_state", "workers")):
    return "data.worker_count > 0 states (one per worker process) do not convert"
  if {"parent", "next_row"} <= state.keys():
    return "data.packer=best_fit / first_fit streams depend on the number of processes"
  if state.keys() == {"next_index"}:
    return ("its data state was written before process-count changes were supported "
            "(data.pack=False state without layout)")
  return "this data stream depends on the number of processes"


def _saved_files(directory) -> dict[int, list[int]]:
  """{process count: [process indices]} of the state files in `directory`."""
  found: dict[int, list[int]] = {}
  for path in directory.iterdir():
    m = _FILE.fullmatch(path.name)
    if m:
      found.setdefault(int(m.group(2)), []).append(int(m.group(1)))
  return {n: sorted(v) for n, v in found.items()}


def _process() -> tuple[int, int]:
  """(this process's index, the number of processes): the file the state goes to."""
  return jax.process_index(), jax.process_count()


class DataIterHandler(grain.checkpoint.CheckpointHandler):
  """Grain's checkpoint handler (same files), restorable on another process count."""

  def save(self, directory, item=None, args=None):
    item = item or args.item
    index, count = _process()
    state = item.get_state()
    text = json.dumps(state, indent=4) if isinstance(item, grain.DatasetIterator) else \
        state.decode()
    (directory / f"process_{index}-of-{count}.json").write_text(text)

  def restore(self, directory, item=None, args=None):
    item = item or args.item
    index, count = _process()
    if (directory / f"process_{index}-of-{count}.json").exists():
      return self._restore_own(directory, item, index, count)
    saved = {n: v for n, v in _saved_files(directory).items() if n != count}
    if not saved:
      return self._restore_own(directory, item, index, count)  # Grain's "does not exist"
    n = max(saved, key=lambda k: (len(saved[k]), k))  # one count per checkpoint in practice
    step = directory.parent.name
    where = (f"checkpoint step {step}" if step.isdigit() else f"checkpoint {directory.parent}")
    state = json.loads((directory / f"process_{saved[n][0]}-of-{n}.json").read_text())
    reason = host_dependence(state) if isinstance(item, grain.DatasetIterator) else \
        "this data loader"
    if reason is not None:
      raise ConfigError(f"{where} was written by {n} processes, this run has {count}: {reason}; "
                        f"resume on {n} processes (data.packer=window and data.pack=False "
                        "streams without data.worker_count resume on any number)")
    try:
      item.set_state(state)
    except ValueError as e:
      raise ConfigError(f"{where} was written by {n} processes, this run has {count}: its data "
                        f"state does not convert ({e})") from e
    item.start_prefetch()
    log.info("%s: data state of process %d of %d restored on process %d of %d (same global "
             "batches)", where, saved[n][0], n, index, count)
    return item

  def _restore_own(self, directory, item, index: int, count: int):
    """Grain's restore: the state this process wrote."""
    path = directory / f"process_{index}-of-{count}.json"
    if not path.exists():
      raise ValueError(f"File {path} does not exist.")
    text = path.read_text()
    item.set_state(json.loads(text) if isinstance(item, grain.DatasetIterator) else text.encode())
    item.start_prefetch()
    return item


@ocp.args.register_with_handler(DataIterHandler, for_save=True)
@dataclasses.dataclass
class DataIterSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataIterHandler, for_restore=True)
@dataclasses.dataclass
class DataIterRestore(ocp.args.CheckpointArgs):
  item: Any
