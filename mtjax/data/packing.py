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
The iterator state is `(window, row, rows_before)`; restoring recomputes one window's plan.
Rows look like Grain's packer output: `<feature>`, `<feature>_segment_ids`,
`<feature>_positions` for inputs and targets, and per-token `task_ids` aligned with `targets`.
Decoder-only streams pack one concatenated sequence per example: inputs capacity 0, and
`inputs_mask` (which tokens are the prompt) aligned with `targets` like `task_ids`.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import numpy as np


def plan_rows(li: np.ndarray, lt: np.ndarray, lengths: Mapping[str, int]) -> list[list[int]]:
  """Best fit in stream order: which examples (by position) go into which row."""
  cap_i, cap_t = lengths["inputs"], lengths["targets"]
  rem_i = np.empty(len(li), np.int64)  # remaining room of each open row
  rem_t = np.empty(len(li), np.int64)
  members: list[list[int]] = []
  for j in range(len(li)):
    n = len(members)
    fits = (rem_i[:n] >= li[j]) & (rem_t[:n] >= lt[j])
    if fits.any():
      # Best fit: the row left with the least input room (then target room) afterwards.
      slack = (rem_i[:n] - li[j]) * (cap_t + 1) + (rem_t[:n] - lt[j])
      r = int(np.argmin(np.where(fits, slack, np.iinfo(np.int64).max)))
    else:
      r = n
      members.append([])
      rem_i[r], rem_t[r] = cap_i, cap_t
    members[r].append(int(j))
    rem_i[r] -= li[j]
    rem_t[r] -= lt[j]
  return [sorted(m) for m in members]


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

  def __init__(self, plan: grain.MapDataset, fetch, lengths: Mapping[str, int], *,
               global_batch: int, shard_index: int, num_shards: int, window: int = 4096,
               seed: int = 0, batch_slice: slice | None = None):
    super().__init__(plan)
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
    indices = list(range(start, start + ds.window))
    getitems = getattr(ds.plan, "_getitems", None)
    entries = getitems(indices) if getitems else [ds.plan[i] for i in indices]
    li = np.array([e["inputs_len"] for e in entries])
    lt = np.array([e["targets_len"] for e in entries])
    members = plan_rows(li, lt, ds.lengths)
    order = np.random.default_rng([ds.seed, self._window]).permutation(len(members))
    self._plan = [[entries[j] for j in members[i]] for i in order]

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
        parts = [ds.fetch(int(e["task_ids"]), int(e["index"])) for e in row]
        return _assemble(parts, ds.lengths["inputs"], ds.lengths["targets"])

  def get_state(self) -> dict[str, Any]:
    return {"window": self._window, "row": self._row, "rows_before": self._rows_before}

  def set_state(self, state: dict[str, Any]) -> None:
    self._window, self._row = int(state["window"]), int(state["row"])
    self._rows_before = int(state["rows_before"])
    self._plan = None
