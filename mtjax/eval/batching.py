"""Batches of evaluation rows with few distinct shapes, so evaluation compiles little and pads
little.

Rows are sorted longest first and cut into batches of `batch_size` rows; each batch is padded
only to the length bucket of its longest row (`bucket`: at most 25% over, four buckets per
doubling), not to `data.inputs_length` / `targets_length`. Only the last batch of a call may be
short: its row count is rounded up to a power of two (times the data parallelism), so a task
with fewer rows than `eval.batch_size` neither pads to a full batch nor compiles a program of its
own size. The number of programs is thus bounded by the buckets the data reaches (times the few
short-batch sizes); `Shapes` counts the distinct shapes run, which evaluation prints.
Batch row counts are multiples of the mesh's data parallelism so every batch shards evenly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from mtjax.parallel import rules as rules_lib

MIN_LENGTH = 16  # shortest padded length: tiny rows share one program
STEPS_PER_DOUBLING = 4


def bucket(n: int, cap: int | None = None) -> int:
  """The padded length of a batch whose longest row has `n` tokens: `n` rounded up to a
  multiple of 1/4 of the power of two below it (16, 20, 24, 28, 32, 40, ... 256, 320, 384,
  448, 512, ...), at least MIN_LENGTH; at most `cap` (and never below `n`)."""
  if n <= MIN_LENGTH:
    size = MIN_LENGTH
  else:
    step = max(1, (1 << (n - 1).bit_length()) // (2 * STEPS_PER_DOUBLING))
    size = -(-n // step) * step
  return size if cap is None else max(min(size, cap), n)


def parallelism(mesh=None) -> int:
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def batch_size_for(batch_size: int, num_rows: int, mesh=None) -> int:
  """Rows of a full batch: `batch_size` rounded up to the data parallelism; a call with fewer
  rows than that gets `short_rows(num_rows)` instead."""
  parallel = parallelism(mesh)
  full = max(parallel, math.ceil(batch_size / parallel) * parallel)
  return full if num_rows >= full else short_rows(num_rows, full, parallel)


def short_rows(n: int, full: int, parallel: int = 1) -> int:
  """Rows of a short batch holding `n` rows: the next power of two times `parallel`, at most
  `full`."""
  units = max(1, math.ceil(n / parallel))
  return min(full, (1 << (units - 1).bit_length()) * parallel)


def plan(sizes: Sequence[int], batch_size: int, mesh=None, *,
         parallel: int | None = None) -> list[tuple[np.ndarray, int]]:
  """(row indices, padded row count) per batch: rows by `sizes` descending (ties in order), cut
  into full batches; the last one short (`short_rows`). Row counts are multiples of the
  mesh's data parallelism (or `parallel`)."""
  parallel = parallelism(mesh) if parallel is None else parallel
  full = max(parallel, math.ceil(batch_size / parallel) * parallel)
  order = np.asarray(sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)), np.int64)
  out = []
  for start in range(0, len(order), full):
    chunk = order[start:start + full]
    out.append((chunk, full if len(chunk) == full else short_rows(len(chunk), full, parallel)))
  return out


class Shapes:
  """The distinct (program, feature shapes) an evaluation ran: each is one compilation of a
  jitted function (a shape seen before reuses its program)."""

  def __init__(self):
    self._seen: set = set()
    self._lock = threading.Lock()
    self.batches = 0

  def add(self, name: str, features: Mapping[str, np.ndarray]) -> None:
    key = (name, tuple(sorted((k, tuple(np.shape(v))) for k, v in features.items())))
    with self._lock:
      self._seen.add(key)
      self.batches += 1

  def __len__(self) -> int:
    return len(self._seen)

  def summary(self) -> str:
    return f"{self.batches} batches, {len(self)} distinct shapes (compiled programs)"


SHAPES = Shapes()  # process-wide: what this process's evaluations compiled


def put(features: Mapping[str, np.ndarray], mesh=None, rules=None) -> dict:
  """Host rows onto the mesh, split along the batch axis."""
  if mesh is None:
    return dict(features)
  sharding = NamedSharding(mesh, rules_lib.logical_to_spec(("batch",), rules))
  return {k: jax.device_put(v, sharding) for k, v in features.items()}


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  x = np.asarray(x)
  return np.pad(x, [(0, rows - len(x))] + [(0, 0)] * (x.ndim - 1))


def map_batches(fn: Callable, features: Mapping[str, np.ndarray], *, batch_size: int, mesh=None,
                rules=None, row_lengths: Sequence[int] | None = None, name: str = "batch"):
  """Applies `fn(batch) -> pytree of [B, ...]` over the rows of `features`; numpy outputs in row
  order.

  With `row_lengths` (each row's real length along axis 1, its padding trailing; every
  `[N, L, ...]` feature has the same `L`), rows run longest first and those features are cut to
  the bucket of their batch's longest row; without, rows keep their order and width."""
  num_rows = len(next(iter(features.values())))
  if not num_rows:
    return None
  sizes = [0] * num_rows if row_lengths is None else [int(n) for n in row_lengths]
  outputs, order = [], []
  for chunk, rows in plan(sizes, batch_size, mesh):
    batch = {k: pad_rows(np.asarray(v)[chunk], rows) for k, v in features.items()}
    if row_lengths is not None:
      width = max(sizes[i] for i in chunk)
      batch = {k: v[:, :bucket(width, v.shape[1])] if v.ndim >= 2 else v
               for k, v in batch.items()}
    SHAPES.add(name, batch)
    out = fn(put(batch, mesh, rules))
    outputs.append(jax.tree.map(lambda x, n=len(chunk): np.asarray(x)[:n], out))
    order.append(chunk)
  joined = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
  inverse = np.empty(num_rows, np.int64)
  inverse[np.concatenate(order)] = np.arange(num_rows)
  return jax.tree.map(lambda x: x[inverse], joined)
