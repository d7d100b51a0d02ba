"""Register a SeqIO task from your own JSONL / CSV / TSV / Parquet files and prompt templates.

    register_file_task("my_rte", {"train": "rte/train.jsonl", "validation": "rte/dev.jsonl"},
                       templates=promptsource.load("rte/templates.yaml"),
                       metric_fns=[metrics.accuracy])

Files are parsed in Python (no `tf.py_function`), once, when the task is cached. Example `i` gets
template `i % len(templates)` (FLAN-style template mixing; register one task per template for
T0-style tasks). Each cached example keeps `inputs_pretokenized`, `targets_pretokenized`,
`answer_choices` (PromptSource templates), `template_id`, `idx` and the original record as
`example_json`, so postprocessors, metrics and rank classification can see it. A malformed line
is an error naming the file and line, or, with `skip_malformed=True`, skipped and counted (the
count and the first locations go into the cache manifest and the log).
"""

from __future__ import annotations

import csv
import functools
import json
import os
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


def iter_records(path: str, skipped: list[str] | None = None) -> Iterator[tuple[int, dict]]:
  """Yields (line, record) for each record of a JSONL / CSV / TSV (with header) / Parquet file.

  For Parquet the "line" is the 1-based row number. A malformed line raises, naming file and
  line; if a `skipped` list is given, it is skipped and its `file:line: reason` appended instead.
  """

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
      for record in batch.to_pylist():
        row += 1
        yield row, record
    return
  with open(path, newline="", encoding="utf-8") as f:
    if kind == "jsonl":
      for lineno, line in enumerate(f, start=1):
        if not line.strip():
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
    else:
      reader = csv.reader(f, delimiter="," if kind == "csv" else "\t")
      header = next(reader, None)
      if not header:
        raise errors.DataError(f"{path}: empty file (a header row is required)")
      for row in reader:
        lineno = reader.line_num
        if not row:
          continue
        if len(row) != len(header):
          bad(f"{path}:{lineno}: {len(row)} fields, but the header has "
              f"{len(header)} ({', '.join(header)})")
          continue
        yield lineno, dict(zip(header, row))


def count_records(paths: Sequence[str], skipped: list[str] | None = None) -> int:
  return sum(1 for p in paths for _ in iter_records(p, skipped))


def render(template: Template | PromptTemplate, record: Mapping[str, Any]) -> dict[str, Any]:
  out = template.render(record)
  return {"inputs": out["inputs"], "targets": out["targets"],
          "answer_choices": list(out.get("answer_choices", []))}


def rendered_examples(paths: Sequence[str], templates: Sequence,
                      skip_malformed: bool = False) -> list[dict[str, Any]]:
  """Parses the files and renders each record with its template (in file order)."""
  out = []
  for path in paths:
    for lineno, record in iter_records(path, [] if skip_malformed else None):
      i = len(out)
      template = templates[i % len(templates)]
      try:
        example = render(template, record)
      except (KeyError, ValueError) as e:
        reason = str(e.args[0] if e.args else e)
        if f"template {template.name!r}" not in reason:
          reason = f"template {template.name!r}: {reason}"
        raise errors.DataError(f"{path}:{lineno}: {reason}") from None
      example.update(idx=i, template_id=i % len(templates),
                     example_json=json.dumps(record, sort_keys=True, ensure_ascii=False))
      out.append(example)
  if not out:
    raise errors.DataError(f"no records in {list(paths)}")
  return out


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
                skip_malformed: bool = False):
  del shuffle_files, seed  # file order is the canonical order; Grain shuffles later
  return to_dataset(rendered_examples(files[split], templates, skip_malformed))


def register_file_task(name: str, files: Mapping[str, str | Sequence[str]],
                       templates: Sequence[Template | PromptTemplate], *, vocabulary=None,
                       metric_fns: Sequence[Callable] = (), postprocess_fn: Callable | None = None,
                       add_eos: bool = True, skip_malformed: bool = False):
  """Registers (replacing any previous definition) and returns a SeqIO task over the files.

  `skip_malformed`: skip (and count) unparsable lines instead of failing on the first one.
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
  kwargs = {"skip_malformed": True} if skip_malformed else {}  # (keeps old fingerprints)
  dataset_fn = functools.partial(_dataset_fn, files=split_files, templates=tuple(templates),
                                 **kwargs)
  dataset_fn.data_files = [p for paths in split_files.values() for p in paths]  # fingerprinted
  skipped = {s: [] for s in split_files}
  counts = {s: count_records(p, skipped[s] if skip_malformed else None)
            for s, p in split_files.items()}
  for split, n in counts.items():
    if n == 0:
      raise errors.DataError(f"task {name!r} split {split!r} is empty: no records in "
                       f"{split_files[split]}" + (f" ({len(skipped[split])} malformed lines "
                                                   "skipped)" if skipped[split] else ""))
  dataset_fn.skipped = skipped  # reported in the cache manifest
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
