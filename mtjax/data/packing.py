"""Window packing: best fit over fixed windows of the global, random-access example stream.

Grain's packers are general but spend most of their time in per-example Python bookkeeping.
Because mtjax's mixed stream is random access, packing can work on whole windows instead, and
only needs each example's lengths to decide: read the plan entries `[w*W, (w+1)*W)` (task,
index, final lengths) in one batched read, place each, in stream order, into the open row it
fits most tightly (vectorised over the window's rows), shuffle the rows with a seed derived
from the window, and hand them out. Stream order beats sorting by size here (measured: fill
0.957 vs 0.91 on the synthetic mixture at 256/64): the mixed stream interleaves input-heavy and
target-heavy examples, which is what fills both features of a row.

Because the plan is global and cheap, every host computes the same rows and reads tokens only
for its own slots of each global batch: global batches do not depend on the number of hosts.
The iterator state is the scan position `(window, row, rows_before)` plus the layout that wrote
it (`global_batch`, `num_shards`, `shard_index`); restoring recomputes one window's plan. A state
written by another host (or host count) restores too, at its batch boundary: the number of global
batches it had delivered follows from its position and layout (see `_WindowPackIterator.set_state`).
Rows look like Grain's packer output: `<feature>`, `<feature>_segment_ids`,
`<feature>_positions` for inputs and targets, and per-token `task_ids` aligned with `targets`.
Decoder-only streams pack one concatenated sequence per example: inputs capacity 0, and
`inputs_mask` (which tokens are the prompt) aligned with `targets` like `task_ids`.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import numpy as np


_SHORT_SEARCH = 32  # open rows up to which a Python loop beats numpy's per-call overhead


def plan_rows(li: np.ndarray, lt: np.ndarray, lengths: Mapping[str, int]) -> list[list[int]]:
  """Best fit in stream order: which examples (by position) go into which row.

  Each example goes to the row it leaves with the least input room (then target room), the
  first such row on ties, or opens a new row. Rows that can take no example of the window any
  more drop out of the search; while few rows are open (short examples in long rows) the
  search is a Python loop over them, else one vectorised pass over all rows (same choice).
  """
  cap_i, cap_t = lengths["inputs"], lengths["targets"]
  n_ex = len(li)
  li_l, lt_l = [int(x) for x in li], [int(x) for x in lt]
  min_i, min_t = (min(li_l), min(lt_l)) if n_ex else (0, 0)
  rem_i = np.empty(n_ex, np.int64)  # remaining room of each row (numpy and list copies)
  rem_t = np.empty(n_ex, np.int64)
  ri_l: list[int] = []
  rt_l: list[int] = []
  members: list[list[int]] = []
  active: list[int] = []  # rows that can still take some example of the window, in row order
  big = np.iinfo(np.int64).max
  for j in range(n_ex):
    a, b = li_l[j], lt_l[j]
    best = -1
    if len(active) <= _SHORT_SEARCH:
      best_slack = big
      for r in active:
        if ri_l[r] >= a and rt_l[r] >= b:
          slack = (ri_l[r] - a) * (cap_t + 1) + (rt_l[r] - b)
          if slack < best_slack:
            best, best_slack = r, slack
    else:  # rows out of `active` cannot fit this example: no mask needed
      n = len(members)
      fits = (rem_i[:n] >= a) & (rem_t[:n] >= b)
      if fits.any():
        slack = (rem_i[:n] - a) * (cap_t + 1) + (rem_t[:n] - b)
        best = int(np.argmin(np.where(fits, slack, big)))
    if best < 0:
      best = len(members)
      members.append([])
      ri_l.append(cap_i)
      rt_l.append(cap_t)
      active.append(best)
    members[best].append(j)
    ri_l[best] -= a
    rt_l[best] -= b
    rem_i[best], rem_t[best] = ri_l[best], rt_l[best]
    if ri_l[best] < min_i or rt_l[best] < min_t:
      active.remove(best)
  return members


def _assemble(parts: list[Mapping[str, np.ndarray]], cap_i: int, cap_t: int) -> dict:
  """One packed row. A zero capacity drops that feature (decoder-only rows carry `targets`
  only); `task_ids` and `inputs_mask` (prefix LM) are aligned with `targets`."""
  row = {}
  for name, cap in (("inputs", cap_i), ("targets", cap_t)):
    if cap == 0:
      continue
    tokens = np.zeros(cap, np.int32)
    seg = np.zeros(cap, np.int32)
    pos = np.zeros(cap, np.int32)
    at = 0
    for k, ex in enumerate(parts, start=1):
      n = len(ex[name])
      tokens[at:at + n] = ex[name]
      seg[at:at + n] = k
      pos[at:at + n] = np.arange(n)
      at += n
    row[name], row[f"{name}_segment_ids"], row[f"{name}_positions"] = tokens, seg, pos
  for name in ("task_ids", "inputs_mask"):
    if parts and name not in parts[0]:
      continue
    values = np.zeros(cap_t, np.int32)
    at = 0
    for ex in parts:
      n = len(ex["targets"])
      values[at:at + n] = ex[name][:n]
      at += n
    row[name] = values
  return row


class WindowPackIterDataset(grain.IterDataset):
  """This host's rows of a global packed stream that does not depend on the number of hosts.

  Every host plans the same global rows from a cheap plan stream (task, index and final lengths
  of each example: no token reads), one window at a time. Global row
  `g` belongs to global batch `g // global_batch` at slot `g % global_batch`; a host keeps the
  slots `[h * per_host, (h + 1) * per_host)` and reads the tokens of those rows only. So the
  global batches are identical for 1, 2 or N hosts, and each host reads only its share.
  """

  def __init__(self, plan, fetch, lengths: Mapping[str, int], *,
               global_batch: int, shard_index: int, num_shards: int, window: int = 4096,
               seed: int = 0, batch_slice: slice | None = None):
    """`plan.read(start, stop)`: arrays `task_ids, index, inputs_len, targets_len` of the global
    stream's positions `[start, stop)`; `fetch(task_id, index)`: one prepared example."""
    super().__init__()
    if global_batch % num_shards:
      raise ValueError(f"global batch {global_batch} is not divisible by {num_shards} hosts")
    self.plan, self.fetch, self.lengths = plan, fetch, dict(lengths)
    self.global_batch, self.shard_index, self.num_shards = global_batch, shard_index, num_shards
    self.window, self.seed = window, seed
    # Only global batches `batch_slice` (a multiprocess worker's share); others are skipped.
    self.batch_slice = batch_slice or slice(0, None, 1)

  def __iter__(self) -> grain.DatasetIterator:
    return _WindowPackIterator(self)


class _WindowPackIterator(grain.DatasetIterator):

  def __init__(self, ds: WindowPackIterDataset):
    super().__init__()
    self._ds = ds
    self._window, self._row, self._rows_before = 0, 0, 0
    self._plan: list | None = None

  def _load(self) -> None:
    ds = self._ds
    start = self._window * ds.window
    entries = ds.plan.read(start, start + ds.window)
    members = plan_rows(entries["inputs_len"], entries["targets_len"], ds.lengths)
    order = np.random.default_rng([ds.seed, self._window]).permutation(len(members))
    tasks, index = entries["task_ids"].tolist(), entries["index"].tolist()
    self._plan = [[(tasks[j], index[j]) for j in members[i]] for i in order]

  def _mine(self, global_row: int) -> bool:
    ds = self._ds
    per_host = ds.global_batch // ds.num_shards
    batch, sl = global_row // ds.global_batch, ds.batch_slice
    if batch < (sl.start or 0) or (batch - (sl.start or 0)) % (sl.step or 1):
      return False
    return (global_row % ds.global_batch) // per_host == ds.shard_index

  def __next__(self) -> dict[str, Any]:
    ds = self._ds
    while True:
      if self._plan is None:
        self._load()
      if self._row >= len(self._plan):
        self._rows_before += len(self._plan)
        self._window, self._row, self._plan = self._window + 1, 0, None
        continue
      row, global_row = self._plan[self._row], self._rows_before + self._row
      self._row += 1
      if self._mine(global_row):
        parts = [ds.fetch(task, index) for task, index in row]
        return _assemble(parts, ds.lengths["inputs"], ds.lengths["targets"])

  def get_state(self) -> dict[str, Any]:
    ds = self._ds
    return {"window": self._window, "row": self._row, "rows_before": self._rows_before,
            "global_batch": ds.global_batch, "num_shards": ds.num_shards,
            "shard_index": ds.shard_index}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a scan position. A state written by another host or host count (its layout keys
    differ) moves to the first row of the next global batch that host had not delivered;
    states without layout keys (older checkpoints) restore on the same host only."""
    ds = self._ds
    self._window, self._row = int(state["window"]), int(state["row"])
    self._rows_before = int(state["rows_before"])
    self._plan = None
    layout = (state.get("num_shards", ds.num_shards), state.get("shard_index", ds.shard_index))
    if layout != (ds.num_shards, ds.shard_index):
      self._seek(batches_done(state, ds.global_batch) * ds.global_batch)

  def _seek(self, target: int) -> None:
    """Moves the scan position to global row `target` (in this or a later window)."""
    ds = self._ds
    if ds.batch_slice != slice(0, None, 1):
      raise ValueError("a window packer state restores onto another host count only without "
                       "worker processes (data.worker_count=0)")
    if target < self._rows_before:
      raise ValueError(f"window packer state: row {target} lies before its window "
                       f"(rows from {self._rows_before})")
    self._row = 0
    while True:
      if self._plan is None:
        self._load()
      if target < self._rows_before + len(self._plan):
        self._row = target - self._rows_before
        return
      self._rows_before += len(self._plan)
      self._window, self._plan = self._window + 1, None


def batches_done(state: Mapping[str, Any], global_batch: int | None = None) -> int:
  """Global batches a host had delivered in full at a window packer `state` (with layout keys).

  A host's scan position sits right after its last delivered row, so rows before it in its own
  slots (`[h * per_host, (h + 1) * per_host)` of each global batch) were delivered. A position
  inside the host's slots of a batch (a state taken mid-batch) has no host-independent meaning
  and is an error; so is a state written under another global batch size.
  """
  if "num_shards" not in state:
    raise ValueError("this window packer state predates host-count-independent states (no "
                     "layout keys); restore it on the same number of processes")
  g, n, h = int(state["global_batch"]), int(state["num_shards"]), int(state["shard_index"])
  if global_batch is not None and g != global_batch:
    raise ValueError(f"window packer state of global batch {g}, this stream has {global_batch}")
  per_host = g // n
  done, into = divmod(int(state["rows_before"]) + int(state["row"]), g)
  mine = min(max(into - h * per_host, 0), per_host)
  if 0 < mine < per_host:
    raise ValueError(f"window packer state is inside global batch {done} (host {h} of {n} had "
                     f"delivered {mine} of its {per_host} rows); only batch boundaries restore "
                     "onto another host count")
  return done + (mine == per_host)
