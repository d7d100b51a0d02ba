"""Pre-rendered datasets: rows that already are examples (Flan 2022's submixes, xP3's files).

Their `inputs` and `targets` are text as the collection's authors rendered it; a task is a set of
rows: xP3's one file, or Flan's rows of a submix whose key columns (`task_name`,
`template_type`) have given values. Shared by `flan2022` and `xp3`:

- `PreRenderedSource`: an `hf_tasks.HFSource` that keeps only the rows whose columns equal
  `where`. In parquet files those rows are found with a per-file index of the key columns (read
  once with pyarrow, dictionary codes compared in numpy, kept in memory), so a task reads only
  the row groups holding its rows rather than rendering every row of a multi-GB file in Python.
  Its examples carry no `example_json`: the record is the example, a copy would double the
  cache.
- `register_task`: `hf_tasks.register_hf_task` for such a source.
- `key_counts`: rows per key of a set of files (the index a collection registers its tasks
  from); `count_rows`: rows of data files (parquet metadata, else lines).
- `local_folder`: where a Hub dataset is on this machine (a folder, `<data_root>/<repo>`, the
  Hugging Face cache), never downloading: collections list their tasks from what is here.
- `sanitize` / `unique_names`: the task-name rule.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import re
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mtjax import errors
from mtjax.collections import hf_datasets, hf_tasks

# ---- names ---------------------------------------------------------------------------------------


def sanitize(text: str) -> str:
  """A name part from any string: runs of characters other than ASCII letters, digits and `_`
  become one `_`, leading and trailing `_` are dropped (`glue/mnli:2.0.0` -> `glue_mnli_2_0_0`;
  case is kept); an empty result is `unnamed`."""
  return re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_") or "unnamed"


def unique_names(originals: Iterable[str]) -> dict[str, str]:
  """{original: sanitized name}; originals whose sanitized names coincide each get
  `_` + the first 8 hex digits of the SHA-1 of the original appended (deterministic)."""
  originals = sorted(set(originals))
  plain = {o: sanitize(o) for o in originals}
  seen = collections.Counter(plain.values())
  return {o: n if seen[n] == 1 else f"{n}_{hashlib.sha1(o.encode()).hexdigest()[:8]}"
          for o, n in plain.items()}


def glob_literal(name: str) -> str:
  """A file name as an fnmatch pattern matching only itself (`?`, `*`, `[` bracketed)."""
  return re.sub(r"([*?\[])", r"[\1]", name)


# ---- where the data is ---------------------------------------------------------------------------


def hub_snapshot(repo: str, revision: str | None = None) -> tuple[str, str] | None:
  """(snapshot folder, commit) of a dataset in the Hugging Face cache, or None (no download)."""
  folder = os.path.join(hf_datasets.hub_cache_dir(), "datasets--" + repo.replace("/", "--"))
  commit = revision if revision and hf_datasets.SHA.fullmatch(revision) else None
  ref = os.path.join(folder, "refs", revision or "main")
  if commit is None and os.path.isfile(ref):
    with open(ref, encoding="utf-8") as f:
      commit = f.read().strip()
  snapshot = os.path.join(folder, "snapshots", commit or "")
  return (snapshot, commit) if commit and os.path.isdir(snapshot) else None


def local_folder(repo: str, path: str | None = None,
                 data_root: str | None = None) -> tuple[str, str] | None:
  """(folder, origin) of a Hub dataset on this machine: `path`, else `<data_root>/<repo>` (a
  `hf download --local-dir` copy), else its snapshot in the Hugging Face cache; None if none.
  Nothing is downloaded."""
  if path:
    if not os.path.isdir(path):
      raise errors.MissingError(f"dataset {repo}: path {path!r} is not a folder")
    return path, "folder"
  if data_root and os.path.isdir(os.path.join(data_root, repo)):
    return os.path.join(data_root, repo), "local copy"
  found = hub_snapshot(repo)
  return (found[0], f"hub cache {found[1][:12]}") if found else None


def download_hint(repo: str, data_root: str | None, include: str = "") -> str:
  where = os.path.join(data_root, repo) if data_root else f"<data.hf_data_dir>/{repo}"
  include = f" --include '{include}'" if include else ""
  return f"`hf download --repo-type dataset {repo}{include} --local-dir {where}`"


# ---- counting ------------------------------------------------------------------------------------


def _identity(path: str) -> tuple[str, int, int]:
  st = os.stat(path)  # (through a Hub-cache symlink: its blob's size and time)
  return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=65536)
def _rows_of(identity: tuple[str, int, int]) -> int:
  path = identity[0]
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    return pq.ParquetFile(path).metadata.num_rows
  if path.endswith(".jsonl") and identity[1]:
    count, last = 0, b"\n"
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 24), b""):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (last != b"\n")
  return sum(1 for _ in hf_datasets.iter_file(path))


def count_rows(paths: Sequence[str]) -> int:
  """Rows of data files: parquet from its metadata, `.jsonl` by counting lines at disk speed
  (blank lines count: xP3's files have none), other formats by reading them; memoised per file
  (path, size, mtime)."""
  return sum(_rows_of(_identity(p)) for p in paths)


# ---- the key index of a parquet file -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileIndex:
  """The key columns of one parquet file, as codes: row `i` has key `keys[codes[i]]` (-1 where
  a key column is null). `row_group_starts[g]` is the first row of row group `g` (and the last
  entry the number of rows)."""

  path: str
  columns: tuple[str, ...]
  keys: tuple[tuple[str, ...], ...]
  counts: tuple[int, ...]
  codes: Any  # np.ndarray, one per row
  row_group_starts: Any  # np.ndarray

  def rows(self, key: tuple[str, ...]):
    """The (sorted) row numbers whose key columns equal `key`."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    try:
      code = self.keys.index(tuple(key))
    except ValueError:
      return np.zeros(0, np.int64)
    return np.flatnonzero(self.codes == code)


def _column_codes(column) -> tuple[Any, list]:
  """(per-row code into `values`, -1 for null; values) of a pyarrow ChunkedArray."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top

  if not pa.types.is_dictionary(column.type):
    column = column.dictionary_encode()
  column = pa.table({"c": column}).unify_dictionaries().column("c")  # one shared dictionary
  if not column.num_chunks:
    return np.zeros(0, np.int64), []
  values = column.chunk(0).dictionary.to_pylist()
  codes = np.concatenate([c.indices.fill_null(-1).to_numpy(zero_copy_only=False)
                          for c in column.chunks]).astype(np.int64)
  # a dictionary may repeat a value (unified from differently encoded chunks): first wins
  first = {}
  remap = np.array([first.setdefault(v, len(first)) for v in values] + [-1], np.int64)
  return remap[codes], list(first)


def _build_index(path: str, columns: tuple[str, ...]) -> FileIndex:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  try:
    parquet = pq.ParquetFile(path, read_dictionary=list(columns))
  except Exception as e:  # pyarrow raises several types for a bad file
    raise errors.DataError(f"{path}: not a readable Parquet file ({e})") from None
  names = parquet.schema_arrow.names
  missing = [c for c in columns if c not in names]
  if missing:
    raise errors.DataError(f"{path}: no column(s) {missing}; it has {names}")
  table = parquet.read(columns=list(columns))
  combined, radix, values = np.zeros(table.num_rows, np.int64), 1, []
  null = np.zeros(table.num_rows, bool)
  for name in reversed(columns):  # mixed radix: the first column is the most significant digit
    codes, column_values = _column_codes(table.column(name))
    null |= codes < 0
    combined += np.where(codes < 0, 0, codes) * radix
    radix *= max(len(column_values), 1)
    values.insert(0, column_values)
  valid = ~null
  if radix <= 4 * table.num_rows + 1024:  # few key values (the usual case): count them
    counts = np.bincount(combined[valid], minlength=radix)
    present = np.flatnonzero(counts)
    counts = counts[present]
    lookup = np.zeros(radix, np.int64)
    lookup[present] = np.arange(len(present))
    inverse = lookup[combined[valid]]
  else:
    present, inverse, counts = np.unique(combined[valid], return_inverse=True,
                                         return_counts=True)
  codes = np.full(table.num_rows, -1, np.int32 if len(present) < 2**31 else np.int64)
  codes[valid] = inverse
  keys = []
  for value in present:
    key, rest = [], int(value)
    for column_values in reversed(values):
      rest, digit = divmod(rest, max(len(column_values), 1))
      key.insert(0, column_values[digit])
    keys.append(tuple(key))
  row_groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
  starts = np.concatenate([[0], np.cumsum(row_groups, dtype=np.int64)])
  return FileIndex(path, tuple(columns), tuple(keys), tuple(int(c) for c in counts), codes,
                   starts)


_INDEXES: collections.OrderedDict = collections.OrderedDict()
_INDEX_LOCK = threading.Lock()
MAX_INDEXES = 64  # files whose index stays in memory (about 4 bytes per row each)


def file_index(path: str, columns: Sequence[str]) -> FileIndex:
  """The key index of a parquet file (memoised per (path, size, mtime, columns))."""
  key = (_identity(path), tuple(columns))
  with _INDEX_LOCK:
    if key in _INDEXES:
      _INDEXES.move_to_end(key)
      return _INDEXES[key]
  index = _build_index(path, tuple(columns))
  with _INDEX_LOCK:
    _INDEXES[key] = index
    while len(_INDEXES) > MAX_INDEXES:
      _INDEXES.popitem(last=False)
  return index


def key_counts(paths: Sequence[str], columns: Sequence[str]) -> dict[tuple[str, ...], int]:
  """{key: rows} over the files, a key being the values of `columns` (nulls are left out):
  parquet through `file_index`, other formats by reading their records."""
  out: collections.Counter = collections.Counter()
  for path in paths:
    if path.endswith(".parquet"):
      index = file_index(path, columns)
      out.update(dict(zip(index.keys, index.counts)))
    else:
      for _, record in hf_datasets.iter_file(path):
        key = tuple(record.get(c) for c in columns)
        if None not in key:
          out[tuple(str(k) for k in key)] += 1
  return dict(out)


def select_rows(path: str, where: Sequence[tuple[str, str]],
                columns: Sequence[str] | None = None) -> Iterator[tuple[int, dict]]:
  """(1-based row, record) of the rows of one file whose columns equal `where`, in file order.
  Parquet: only the row groups holding such rows are read (and only `columns`, if given)."""
  names = tuple(c for c, _ in where)
  want = tuple(v for _, v in where)
  if not path.endswith(".parquet"):
    for row, record in hf_datasets.iter_file(path):
      if tuple(str(record.get(c)) for c in names) == want:
        yield row, record
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

  index = file_index(path, names)
  rows = index.rows(want)
  if not rows.size:
    return
  parquet = pq.ParquetFile(path)
  if columns is not None:
    have = parquet.schema_arrow.names
    columns = [c for c in columns if c in have]
  starts = index.row_group_starts
  groups = np.searchsorted(starts, rows, side="right") - 1
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(groups)) + 1, [len(rows)]])
  for begin, end in zip(bounds[:-1], bounds[1:]):
    part, group = rows[begin:end], int(groups[begin])
    table = parquet.read_row_group(group, columns=columns)
    taken = table.take(pa.array(part - starts[group]))
    for row, record in zip(part, taken.to_pylist()):
      yield int(row) + 1, record


# ---- the source and the task ---------------------------------------------------------------------


def text_example(record: Mapping[str, Any], *, inputs: str = "inputs",
                 targets: str = "targets") -> dict[str, str]:
  """A pre-rendered row as an example: its `inputs` and `targets` text as given (null -> "")."""
  return {"inputs": str(record.get(inputs) or ""), "targets": str(record.get(targets) or "")}


@dataclasses.dataclass(eq=False)
class PreRenderedSource(hf_tasks.HFSource):
  """An `HFSource` over pre-rendered rows; `where` ((column, value), ...) selects the task's
  rows, `columns` the columns read (None: all)."""

  where: tuple[tuple[str, str], ...] = ()
  columns: tuple[str, ...] | None = None

  def records(self, split: str):
    if not self.where:
      yield from super().records(split)
      return
    resolved = self.resolve(split)
    for path in resolved.files:
      for row, record in select_rows(path, self.where, self.columns):
        yield f"{path}:{row}", record

  def examples(self, split: str) -> list[dict[str, Any]]:
    out = super().examples(split)
    for example in out:  # the record is the example: no copy of it in the cache
      example.pop("example_json", None)
    return out

  def block(self, split: str, start: int, stop: int | None):
    out, count, auto = super().block(split, start, stop)
    for example in out:  # as `examples`
      example.pop("example_json", None)
    return out, count, auto

  def fingerprint_parts(self, split: str) -> list[str]:
    return super().fingerprint_parts(split) + [f"where={self.where}", f"columns={self.columns}"]


def register_task(name: str, source: hf_tasks.HFSource, **options):
  """Registers a SeqIO task over `source` (`hf_tasks.register_source_task`)."""
  return hf_tasks.register_source_task(name, source, **options)


def forget_mixtures(names: Iterable[str]) -> None:
  """Removes mixtures a previous registration made (if SeqIO was ever imported, it has them)."""
  import sys  # pylint: disable=g-import-not-at-top

  if "seqio" in sys.modules:
    for name in names:
      sys.modules["seqio"].MixtureRegistry.remove(name)


def register_mixture(name: str, members: Sequence[tuple[str, Any]]):
  """Registers (replacing any previous definition) a SeqIO mixture of (task or mixture, rate)."""
  import seqio  # pylint: disable=g-import-not-at-top

  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(members))
