"""Register a SeqIO task from your own JSONL / CSV / TSV / Parquet files and prompt templates.

    register_file_task("my_rte", {"train": "rte/train.jsonl", "validation": "rte/dev.jsonl"},
                       templates=promptsource.load("rte/templates.yaml"),
                       metric_fns=[metrics.accuracy])

Files are parsed in Python (no `tf.py_function`), once, when the task is cached. Example `i` gets
template `i % len(templates)` (FLAN-style template mixing; register one task per template for
T0-style tasks). Each cached example keeps `inputs_pretokenized`, `targets_pretokenized`,
`answer_choices` (PromptSource templates), `template_id`, `idx` and the record the template saw
as `example_json`, so postprocessors, metrics and rank classification can see it. A malformed
line is an error naming the file and line, or, with `skip_malformed=True`, skipped and counted
(the count and the first locations go into the cache manifest and the log).

Files are read as their formats define them, so the text is the dataset's: CSV with RFC 4180
quoting; TSV as plain tab-separated lines (as GLUE's loaders read GLUE's TSVs: a `"` is text).
CSV/TSV values are strings; `label_names` turns string labels into the integer indexes
PromptSource templates expect (`{{ answer_choices[label] }}`), and `map_record` reshapes a
record (rename, derive, drop) before its template sees it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from mtjax import errors
from mtjax.data.promptsource import PromptTemplate
from mtjax.data import vocabularies
from mtjax.data.templates import Template

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet"}


def _format(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise errors.DataError(f"{path}: unknown file type {ext!r}; use one of {sorted(FORMATS)}")
  return FORMATS[ext]


def _tsv_rows(f, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
  """(line, fields) of a TSV file: plain tab-separated lines, no quote processing.

  GLUE's TSVs (and the loaders of GLUE in HF datasets and TFDS) treat `"` as text: read with
  CSV rules, a field that starts with a quote loses its quotes. A `\r\n` line end is one line
  end. An empty line yields no fields.
  """
  for lineno, line in enumerate(f, start=first_line):
    line = line[:-1] if line.endswith("\n") else line
    line = line[:-1] if line.endswith("\r") else line
    yield lineno, line.split("\t") if line else []


def _csv_rows(f) -> Iterator[tuple[int, list[str]]]:
  """(line where the record starts, fields) of a CSV file, RFC 4180 quoting: quoted fields may
  hold commas, doubled quotes and line breaks."""
  reader = csv.reader(f)
  while True:
    start = reader.line_num + 1
    row = next(reader, None)
    if row is None:
      return
    yield start, row


INDEX_EVERY = 1024  # records between two checkpoints of a file's record index
_LONE_CR = re.compile(rb"\r(?!\n)")


def _is_record_line(line: bytes, kind: str) -> bool:
  """Whether the line (bytes, its "\n" included) is a record line as the text readers below
  see it: TSV, any non-empty line; JSONL, a line that is not all whitespace (`str.strip`)."""
  if kind == "tsv":
    return line not in (b"", b"\n", b"\r\n", b"\r")
  stripped = line.strip()
  if not stripped:
    return False
  if stripped[0] < 0x80 and stripped[0] not in (0x1c, 0x1d, 0x1e, 0x1f):
    return True  # an ASCII character that is no whitespace to str.strip either
  return bool(line.decode("utf-8", errors="replace").strip())


@functools.lru_cache(maxsize=64)
def _record_index(path: str, kind: str, size: int, mtime_ns: int, every: int):
  """(number of records, byte offsets and line numbers of records 0, K, 2K, ... with K =
  INDEX_EVERY) of a JSONL or TSV file (a TSV's records: its lines after the header), from one pass over its bytes; None where the lines the
  text reader splits cannot be found in bytes alone (a "\r" that ends no "\r\n" in JSONL, which
  the reader takes for a line end). A block of a large file then starts reading at its nearest
  checkpoint instead of passing over every line before it (and the file is counted once per
  process, not once per block). `size` / `mtime_ns` key the cache: a changed file is re-read."""
  del size, mtime_ns
  import numpy as np  # pylint: disable=g-import-not-at-top

  offsets, lines = [], []
  count, pos = 0, 0
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, start=1):
      if lineno == 1 and kind == "tsv":  # the header
        pos += len(line)
        continue
      if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):  # utf-8-sig drops the mark
        record = _is_record_line(line[3:], kind)
      else:
        record = _is_record_line(line, kind)
      if kind == "jsonl" and b"\r" in line and _LONE_CR.search(line):
        return None
      if record:
        if count % every == 0:
          offsets.append(pos)
          lines.append(lineno)
        count += 1
      pos += len(line)
  return count, np.asarray(offsets, np.int64), np.asarray(lines, np.int64)


def record_index(path: str):
  """`_record_index` of a JSONL / TSV file (None for other formats)."""
  kind = _format(path)
  if kind not in ("jsonl", "tsv"):
    return None
  stat = os.stat(path)
  return _record_index(path, kind, stat.st_size, stat.st_mtime_ns, INDEX_EVERY)


def iter_records(path: str, skipped: list[str] | None = None,
                 start: int = 0) -> Iterator[tuple[int, dict]]:
  """Yields (line, record) for each record of a JSONL / CSV / TSV (with header) / Parquet file.

  CSV follows RFC 4180 quoting; TSV is split on tabs only (see `_tsv_rows`); all values of
  both are strings. For Parquet the "line" is the 1-based row number. A malformed line raises,
  naming file and line; if a `skipped` list is given, it is skipped and its `file:line: reason`
  appended instead.

  `start`: the first `start` records are passed over without being parsed (JSONL / TSV: the
  non-empty lines, each of which is a record or an error; CSV: rows; Parquet: rows), so a block of
  a large file is read from where it begins. Only without `skipped` (a skipped line would shift
  the count).
  """
  if start and skipped is not None:
    raise ValueError("iter_records: start needs skipped=None")

  def bad(message: str):
    if skipped is None:
      raise errors.DataError(message) from None  # (the parser's own exception adds nothing)
    skipped.append(message)

  if not os.path.exists(path):
    raise errors.MissingError(f"data file {path!r} does not exist")
  kind = _format(path)
  if kind == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    try:
      parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
      raise errors.DataError(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for batch in parquet.iter_batches():
      if row + batch.num_rows <= start:
        row += batch.num_rows
        continue
      first = max(0, start - row)
      row += first
      for record in batch.slice(first).to_pylist():
        row += 1
        yield row, record
    return
  # utf-8-sig: a byte order mark (Excel's exports) is not part of the first column's name.
  # TSV lines end at "\n" only (a stray "\r" inside a field stays text); the csv module wants
  # newline="" to see line breaks inside quoted fields itself.
  newline = "\n" if kind == "tsv" else ""
  with open(path, newline=newline, encoding="utf-8-sig") as f:
    header = None
    if kind != "jsonl":
      rows = _csv_rows(f) if kind == "csv" else _tsv_rows(f)
      _, header = next(rows, (0, None))
      if not header:
        raise errors.DataError(f"{path}: empty file (a header row is required)")
      repeated = sorted({h for h in header if header.count(h) > 1})
      if repeated:
        raise errors.DataError(f"{path}:1: the header names {repeated} more than once")
    index = record_index(path) if start >= INDEX_EVERY else None
    if index is None:
      lines = rows if kind != "jsonl" else enumerate(f, start=1)
      yield from _text_records(lines, path, kind, header, start, 0, bad)
      return
  # A block from far into the file: read from the checkpoint at or before its first record.
  checkpoint = min(start // INDEX_EVERY, len(index[1]) - 1)
  with open(path, "rb") as raw:
    raw.seek(int(index[1][checkpoint]))
    f = io.TextIOWrapper(raw, encoding="utf-8" if index[1][checkpoint] else "utf-8-sig",
                         newline=newline)
    first_line = int(index[2][checkpoint])
    lines = _tsv_rows(f, first_line) if kind == "tsv" else enumerate(f, start=first_line)
    yield from _text_records(lines, path, kind, header, start, checkpoint * INDEX_EVERY, bad)


def _text_records(lines, path: str, kind: str, header, start: int, passed: int,
                  bad) -> Iterator[tuple[int, dict]]:
  """`iter_records` of a JSONL file's (line number, line) or a CSV / TSV file's (line number,
  fields) pairs after its header, where `passed` records come before the first pair."""
  if kind == "jsonl":
    for lineno, line in lines:
      if not line.strip():
        continue
      if passed < start:
        passed += 1
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        bad(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
        continue
      if not isinstance(record, dict):
        bad(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        continue
      yield lineno, record
    return
  for lineno, row in lines:
    if not row:
      continue
    if passed < start:
      passed += 1
      continue
    if len(row) != len(header):
      bad(f"{path}:{lineno}: {len(row)} fields, but the header has "
          f"{len(header)} ({', '.join(header)})")
      continue
    yield lineno, dict(zip(header, row))


def label_mapper(label_names: Sequence[str], label_field: str = "label") -> Callable:
  """`fn(record, where)`: the record with its `label_field` as the integer index PromptSource
  templates expect (`{{ answer_choices[label] }}`).

  A string equal to one of `label_names` becomes its index; a string of digits (or "-1") and an
  integer are kept as that integer. -1 is HF datasets' "no label" (test splits); any other
  value outside 0..len(label_names)-1 is an error naming `where` (file:line), the value and the
  allowed names. A record without the field is left as it is.
  """
  names = tuple(label_names)
  index = {name: i for i, name in enumerate(names)}

  def convert(record: dict, where: str) -> dict:
    if label_field not in record:
      return record
    value = label = record[label_field]
    if isinstance(value, str):
      stripped = value[1:] if value.startswith("-") else value
      label = index.get(value, int(value) if stripped.isdigit() and value.isascii() else None)
    elif isinstance(value, bool) or not isinstance(value, int):
      label = None
    if label is None or not -1 <= label < len(names):
      raise errors.DataError(
          f"{where}: {label_field} {value!r} is not one of the label_names {list(names)} nor "
          f"an index 0..{len(names) - 1} (or -1 for no label)")
    return dict(record, **{label_field: label})

  return convert


def _num_raw_records(path: str) -> int:
  """How many records `iter_records(path)` yields when no line is malformed, counted without
  parsing them (Parquet: from its metadata)."""
  kind = _format(path)
  if kind == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    return pq.ParquetFile(path).metadata.num_rows
  index = record_index(path)
  if index is not None:
    return index[0]
  with open(path, newline="\n" if kind == "tsv" else "", encoding="utf-8-sig") as f:
    if kind == "jsonl":
      return sum(1 for line in f if line.strip())
    rows = _csv_rows(f) if kind == "csv" else _tsv_rows(f)
    next(rows, None)
    return sum(1 for _, row in rows if row)


def records(paths: Sequence[str], skipped: list[str] | None = None, *,
            map_record: Callable | None = None, label_names: Sequence[str] | None = None,
            label_field: str = "label", start: int = 0) -> Iterator[tuple[str, int, dict]]:
  """Yields (path, line, record) for each record the templates see, in file order.

  Each parsed record goes through `map_record(record)` (if given; a dict replaces the record,
  None drops it), then through the `label_names` conversion (if given; see `label_mapper`).
  `start`: begin at that record (passed over without parsing where nothing can drop a record:
  no `map_record`, no `skipped`; else parsed and dropped).
  """
  convert = label_mapper(label_names, label_field) if label_names else None
  if start and (map_record is not None or skipped is not None):
    yield from itertools.islice(records(paths, skipped, map_record=map_record,
                                        label_names=label_names, label_field=label_field),
                                start, None)
    return
  for path in paths:
    first = 0
    if start:
      n = _num_raw_records(path)
      if start >= n:
        start -= n
        continue
      first, start = start, 0
    for lineno, record in iter_records(path, skipped, first):
      where = f"{path}:{lineno}"
      if map_record is not None:
        try:
          record = map_record(record)
        except errors.UserError:
          raise
        except Exception as e:  # the user's function: name it and the record it failed on
          fn = getattr(map_record, "__qualname__", type(map_record).__name__)
          raise errors.DataError(f"{where}: map_record {fn} failed: {type(e).__name__}: "
                                 f"{e}") from e
        if record is None:
          continue
        if not isinstance(record, Mapping):
          raise errors.DataError(f"{where}: map_record returned {type(record).__name__}; "
                                 "return a dict (the record) or None (drop it)")
        record = dict(record)
      if convert is not None:
        record = convert(record, where)
      yield path, lineno, record


def count_records(paths: Sequence[str], skipped: list[str] | None = None, **options) -> int:
  """How many records `records(paths, **options)` yields."""
  return sum(1 for _ in records(paths, skipped, **options))


RECORD_OPTIONS = ("map_record", "label_names", "label_field")  # `records` options a task keeps


def task_records(keywords: Mapping[str, Any], split: str) -> list[dict]:
  """The records a file task's split renders, from its dataset function's keywords (so other
  modules, e.g. few-shot variants, read the files exactly as the task does)."""
  skipped = [] if keywords.get("skip_malformed") else None
  options = {k: keywords[k] for k in RECORD_OPTIONS if k in keywords}
  return [r for _, _, r in records(keywords["files"][split], skipped, **options)]


def render(template: Template | PromptTemplate, record: Mapping[str, Any]) -> dict[str, Any]:
  out = template.render(record)
  return {"inputs": out["inputs"], "targets": out["targets"],
          "answer_choices": list(out.get("answer_choices", []))}


def rendered_examples(paths: Sequence[str], templates: Sequence, skip_malformed: bool = False,
                      start: int = 0, stop: int | None = None,
                      **options) -> list[dict[str, Any]]:
  """Parses the files and renders each record with its template (in file order).

  `options`: `map_record`, `label_names`, `label_field` (see `records`). `example_json` is the
  record as the template saw it (after them). `start`, `stop`: only records [start, stop) (a
  block of the split: `FileRows`), numbered as in the whole split.
  """
  out = []
  stream = records(paths, [] if skip_malformed else None, start=start, **options)
  if stop is not None:
    stream = itertools.islice(stream, stop - start)
  for path, lineno, record in stream:
    i = start + len(out)
    template = templates[i % len(templates)]
    try:
      example = render(template, record)
    except (KeyError, ValueError) as e:
      reason = str(e.args[0] if e.args else e)
      if f"template {template.name!r}" not in reason:
        reason = f"template {template.name!r}: {reason}"
      if ("UndefinedError" in reason and isinstance(record.get("label"), str)
          and not options.get("label_names")):
        reason += (" (CSV/TSV values are strings: give register_file_task label_names=... to "
                   "turn string labels into the indexes answer_choices[label] needs)")
      raise errors.DataError(f"{path}:{lineno}: {reason}") from None
    example.update(idx=i, template_id=i % len(templates),
                   example_json=json.dumps(record, sort_keys=True, ensure_ascii=False,
                                           default=str))
    out.append(example)
  if not out and not start and stop is None:
    raise errors.DataError(f"no records in {list(paths)}")
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class FileRows:
  """A file task's rows for the TF-free cache path (`mtjax.data.caching.fast`): blocks of its
  records rendered exactly as `_dataset_fn` renders the whole split."""

  files: Mapping[str, Sequence[str]]
  templates: tuple
  counts: Mapping[str, int]  # records per split (counted at registration)
  skip_malformed: bool = False
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def num_rows(self, split: str) -> int:
    return self.counts[split]

  def seekable(self, split: str) -> bool:
    del split
    return not self.skip_malformed and self.options.get("map_record") is None

  def block(self, split: str, start: int, stop: int | None):
    examples = rendered_examples(self.files[split], self.templates, self.skip_malformed,
                                 start=start, stop=stop, **self.options)
    return examples, len(examples), []


def to_dataset(examples: Sequence[Mapping[str, Any]]):
  """Rendered examples -> tf.data: strings, `answer_choices` (ragged), int ids (`idx` int64)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tensors = {}
  for key, value in examples[0].items():
    column = [ex[key] for ex in examples]
    if isinstance(value, str):
      tensors[key] = tf.constant(column, tf.string)
    elif isinstance(value, (list, tuple)):
      dtype = tf.string if key == "answer_choices" else tf.int32
      tensors[key] = tf.ragged.constant(column, dtype=dtype, ragged_rank=1)
    else:
      tensors[key] = tf.constant(column, tf.int64 if key == "idx" else tf.int32)
  return tf.data.Dataset.from_tensor_slices(tensors)


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, files, templates,
                skip_malformed: bool = False, map_record=None, label_names=None,
                label_field: str = "label"):
  del shuffle_files, seed  # file order is the canonical order; Grain shuffles later
  return to_dataset(rendered_examples(files[split], templates, skip_malformed,
                                      map_record=map_record, label_names=label_names,
                                      label_field=label_field))


def register_file_task(name: str, files: Mapping[str, str | Sequence[str]],
                       templates: Sequence[Template | PromptTemplate], *, vocabulary=None,
                       metric_fns: Sequence[Callable] = (), postprocess_fn: Callable | None = None,
                       add_eos: bool = True, skip_malformed: bool = False,
                       map_record: Callable[[dict], dict | None] | None = None,
                       label_names: Sequence[str] | None = None, label_field: str = "label"):
  """Registers (replacing any previous definition) and returns a SeqIO task over the files.

  `skip_malformed`: skip (and count) unparsable lines instead of failing on the first one.
  `map_record(record) -> dict | None`: runs on each parsed record before the template (SeqIO's
  preprocessing of the raw example): return the record the template should see, or None to
  drop it. A module-level function or a `functools.partial` of one is fingerprinted by its
  source and arguments, so changing it rebuilds the cache (a closure's captured values are not).
  `label_names`: e.g. ("entailment", "not_entailment"): after `map_record`, the `label_field`
  value becomes an integer index (a name -> its position, "0"/"1" -> 0/1; see `label_mapper`),
  so templates that index `answer_choices[label]` work on CSV/TSV string labels.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  if not templates:
    raise errors.DataError(f"task {name!r}: give at least one template")
  split_files = {split: [p] if isinstance(p, str) else list(p) for split, p in files.items()}
  for split, paths in split_files.items():
    for p in paths:
      _format(p)
      if not os.path.exists(p):
        raise errors.MissingError(f"task {name!r} split {split!r}: data file {p!r} does not "
                                  "exist")
  vocabulary = vocabulary or vocabularies.default()  # the run's tokenizer, else bytes
  features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=add_eos)
              for k in ("inputs", "targets")}
  # Options go into the partial (and so the cache fingerprint) only when set, so tasks that do
  # not use them keep the fingerprints of their existing caches.
  kwargs = {"skip_malformed": True} if skip_malformed else {}
  if map_record is not None:
    if not callable(map_record):
      raise errors.DataError(f"task {name!r}: map_record must be a function (record -> dict "
                             f"or None), got {type(map_record).__name__}")
    kwargs["map_record"] = map_record
  if label_names is not None:
    names = () if isinstance(label_names, str) else tuple(label_names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
      raise errors.DataError(f"task {name!r}: label_names must be distinct strings in label "
                             f"order, e.g. ('entailment', 'not_entailment'); got {label_names!r}")
    kwargs["label_names"] = names
    if label_field != "label":
      kwargs["label_field"] = label_field
  options = {k: v for k, v in kwargs.items() if k in RECORD_OPTIONS}
  dataset_fn = functools.partial(_dataset_fn, files=split_files, templates=tuple(templates),
                                 **kwargs)
  dataset_fn.data_files = [p for paths in split_files.values() for p in paths]  # fingerprinted
  skipped = {s: [] for s in split_files}
  try:
    counts = {s: count_records(p, skipped[s] if skip_malformed else None, **options)
              for s, p in split_files.items()}
  except errors.DataError as e:
    raise errors.DataError(f"task {name!r}: {e}") from None
  for split, n in counts.items():
    if n == 0:
      raise errors.DataError(f"task {name!r} split {split!r} is empty: no records in "
                             f"{split_files[split]}" + (f" ({len(skipped[split])} malformed "
                                                        "lines skipped)" if skipped[split]
                                                        else "")
                             + (" (map_record dropped every record)" if map_record else ""))
  dataset_fn.skipped = skipped  # reported in the cache manifest
  dataset_fn.rows = FileRows(split_files, tuple(templates), counts, skip_malformed, options)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn,
          splits=tuple(split_files),
          num_input_examples=counts),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features,
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))
