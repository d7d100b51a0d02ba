"""Window packing: best fit over fixed windows of a random-access example stream.

Grain's packers are general but spend most of their time in per-example Python bookkeeping.
Because mtjax's mixed stream is random access (a `MapDataset`), packing can work on whole
windows instead: read examples `[w*W, (w+1)*W)` in one batched read, place each, in stream
order, into the open row it fits most tightly (vectorised over all rows of the window), shuffle
the rows with a seed derived from the window, and hand them out one by one. Stream order beats
sorting by size here (measured: fill 0.957 vs 0.91 on the synthetic mixture at 256/64): the
mixed stream interleaves input-heavy and target-heavy examples, which is what fills both
features of a row. The iterator state is `(window, row)`; restoring
recomputes one window, so it is cheap and exact. Output rows look like Grain's packer output:
`<feature>`, `<feature>_segment_ids`, `<feature>_positions` for each packed feature, and
per-token `task_ids` aligned with `targets`.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import numpy as np


def pack_window(examples: list[Mapping[str, np.ndarray]], lengths: Mapping[str, int],
                rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
  """Packs examples (already trimmed to `lengths`) into rows; returns the rows, shuffled."""
  li = np.array([len(ex["inputs"]) for ex in examples])
  lt = np.array([len(ex["targets"]) for ex in examples])
  cap_i, cap_t = lengths["inputs"], lengths["targets"]
  rem_i = np.empty(len(examples), np.int64)  # remaining room of each open row
  rem_t = np.empty(len(examples), np.int64)
  members: list[list[int]] = []
  for j in range(len(examples)):
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
  rows = [_assemble([examples[j] for j in sorted(m)], cap_i, cap_t) for m in members]
  return [rows[i] for i in rng.permutation(len(rows))]


def _assemble(parts: list[Mapping[str, np.ndarray]], cap_i: int, cap_t: int) -> dict:
  row = {}
  for name, cap in (("inputs", cap_i), ("targets", cap_t)):
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
  task_ids = np.zeros(cap_t, np.int32)
  at = 0
  for ex in parts:
    n = len(ex["targets"])
    task_ids[at:at + n] = ex["task_ids"][:n]
    at += n
  row["task_ids"] = task_ids
  return row


class WindowPackIterDataset(grain.IterDataset):
  """Packed rows from a random-access stream of trimmed examples (see module docstring)."""

  def __init__(self, examples: grain.MapDataset, lengths: Mapping[str, int], *,
               window: int = 4096, seed: int = 0):
    super().__init__(examples)
    self._examples, self._lengths = examples, dict(lengths)
    self._window, self._seed = window, seed

  def __iter__(self) -> grain.DatasetIterator:
    return _WindowPackIterator(self)


class _WindowPackIterator(grain.DatasetIterator):

  def __init__(self, ds: WindowPackIterDataset):
    super().__init__()
    self._ds = ds
    self._window, self._row = 0, 0
    self._rows: list[dict[str, Any]] | None = None

  def _load(self) -> None:
    ds = self._ds
    start = self._window * ds._window
    indices = list(range(start, start + ds._window))
    getitems = getattr(ds._examples, "_getitems", None)  # Grain's batched read, when present
    examples = getitems(indices) if getitems else [ds._examples[i] for i in indices]
    rng = np.random.default_rng([ds._seed, self._window])
    self._rows = pack_window(examples, ds._lengths, rng)

  def __next__(self) -> dict[str, Any]:
    if self._rows is None:
      self._load()
    while self._row >= len(self._rows):
      self._window, self._row = self._window + 1, 0
      self._load()
    row = self._rows[self._row]
    self._row += 1
    return row

  def get_state(self) -> dict[str, Any]:
    return {"window": self._window, "row": self._row}

  def set_state(self, state: dict[str, Any]) -> None:
    self._window, self._row = int(state["window"]), int(state["row"])
    self._rows = None
