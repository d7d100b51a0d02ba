"""SeqIO tasks over Hugging Face datasets: `register_hf_task`.

    register_hf_task("rte_t5", HFDataset("nyu-mll/glue", "rte", revision=SHA),
                     prepare=functools.partial(glue.t5_example, benchmark="rte"),
                     splits={"train": "train", "validation": "validation"},
                     class_label_names=("label",))

A task split (`validation`) reads a dataset split (`validation`, or ANLI's `dev_r1`). Each record
goes through `map_record` (rename, derive, drop), then ClassLabel fields named in
`class_label_names` become their label names (from the dataset's own features), then
`prepare(record)`, which returns the example (a dict with `inputs`, `targets` and any other
fields, e.g. `answer_choices`), a list of examples (rank-classification rows, `idx` = [example,
row]), or None (dropped).
The examples are tokenized and cached like file tasks' (`mtjax.data.file_tasks`): rendered in
Python once, when the split is cached, with `idx` (the example's position) and `example_json`
(the record `prepare` saw) kept beside them.

The cache fingerprint of such a task is mtjax's own (`fingerprint_parts`): the dataset's
`hf_datasets.identity` (repo, config, split, commit, files) plus a description of `prepare`,
`map_record` and the label options, never `datasets`' fingerprint. `prepare` and `map_record`
should be module-level functions or `functools.partial`s of them, as for file tasks: their
source and arguments are what the fingerprint sees.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
from typing import Any, Callable, Mapping, Sequence

from mtjax import errors
from mtjax.collections import hf_datasets
from mtjax.data import vocabularies

Prepare = Callable[[dict], "dict | list[dict] | None"]


@dataclasses.dataclass(eq=False)
class HFSource:
  """What a task reads and how it turns records into examples (see the module docstring)."""

  dataset: hf_datasets.HFDataset
  prepare: Prepare
  splits: Mapping[str, str]  # task split -> dataset split
  map_record: Callable[[dict], dict | None] | None = None
  class_label_names: tuple[str, ...] = ()
  data_root: str | None = None
  task: str = ""
  recorded: Mapping[str, int] = dataclasses.field(default_factory=dict)  # known split sizes
  _memo: tuple | None = dataclasses.field(default=None, repr=False)
  _available: tuple | None = dataclasses.field(default=None, repr=False)

  def available(self, declared: Sequence[str]) -> tuple[str, ...]:
    """The declared task splits whose dataset split exists, where the dataset can be looked at
    without a download (a folder, the local copy, the Hub cache); else all declared ones."""
    if self._available is None:
      try:
        if hf_datasets.offline() or self.dataset.path or self.dataset.data_dir or (
            self.data_root and os.path.isdir(os.path.join(self.data_root, self.dataset.repo))):
          have = set(hf_datasets.available_splits(self.dataset, self.data_root))
        else:
          have = set(hf_datasets.available_splits_cached(self.dataset))
        self._available = tuple(s for s in declared if self.splits[s] in have) if have else None
      except errors.UserError:
        self._available = None
      if self._available is None:
        return tuple(declared)
    return self._available

  def dataset_split(self, split: str) -> str:
    if split not in self.splits:
      raise errors.DataError(f"task {self.task!r} has no split {split!r}; it has "
                             f"{', '.join(self.splits)}")
    return self.splits[split]

  def resolve(self, split: str) -> hf_datasets.Resolved:
    try:
      return hf_datasets.resolve(self.dataset, self.dataset_split(split), self.data_root)
    except errors.UserError as e:
      raise type(e)(f"task {self.task!r} split {split!r}: {e}", hint=e.hint) from None

  def records(self, split: str):
    """(where, record) the task's `prepare` sees, after map_record and label names."""
    resolved = self.resolve(split)
    labels = {f: n for f, n in resolved.class_labels().items() if f in self.class_label_names}
    missing = [f for f in self.class_label_names if f not in labels]
    if missing:
      raise errors.DataError(f"task {self.task!r}: {missing} are not ClassLabel features of "
                             f"{self.dataset.label} (its ClassLabels: "
                             f"{sorted(resolved.class_labels()) or 'none'})")
    for where, record in hf_datasets.iter_records(resolved):
      if self.map_record is not None:
        record = _call(self.map_record, record, where, "map_record")
        if record is None:
          continue
      for field, names in labels.items():
        value = record.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
          record[field] = names[value] if 0 <= value < len(names) else ""  # -1: no label
      yield where, record

  def examples(self, split: str) -> list[dict[str, Any]]:
    """The split's examples, in dataset order (memoised: counting and caching render once)."""
    if self._memo is not None and self._memo[0] == split:
      return self._memo[1]
    out, count = [], 0
    for where, record in self.records(split):
      made = _call(self.prepare, record, where, "prepare")
      if made is None:
        continue
      record_json = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
      if isinstance(made, list):  # one example's rows: idx = [example, row] (T5's rank rows)
        for row, ex in enumerate(made):
          out.append(dict(ex, idx=ex.get("idx", [count, row]), example_json=record_json))
      else:
        out.append(dict(made, idx=made.get("idx", count), example_json=record_json))
      count += 1
    if not out:
      raise errors.DataError(f"task {self.task!r} split {split!r}: no examples (every record of "
                             f"{self.dataset.label} was dropped or the split is empty)")
    self._memo = (split, out)
    return out

  # --- rows for the TF-free cache path (mtjax.data.caching.fast) ------------------------------

  def _plain(self) -> bool:
    """Whether `records` yields every row of the dataset's files (nothing dropped)."""
    return self.map_record is None and type(self).records is HFSource.records

  def num_rows(self, split: str) -> int:
    """The rows blocks are cut from: the records `prepare` sees (from the files' metadata where
    nothing drops a record, else counted by reading them)."""
    if self._plain():
      return hf_datasets.num_rows(self.resolve(split))
    return sum(1 for _ in self.records(split))

  def seekable(self, split: str) -> bool:
    del split
    return False  # a block is found by reading (not preparing) the rows before it

  def block(self, split: str, start: int, stop: int | None):
    """Examples of records [start, stop), as `examples` makes them; `idx` counts from the
    block's first prepared record (auto_idx: the assembler adds the earlier blocks' count)."""
    out, count, auto = [], 0, []
    for where, record in itertools.islice(self.records(split), start, stop):
      made = _call(self.prepare, record, where, "prepare")
      if made is None:
        continue
      record_json = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
      for row, ex in enumerate(made) if isinstance(made, list) else [(None, made)]:
        if "idx" not in ex:
          auto.append(len(out))
        idx = ex.get("idx", count if row is None else [count, row])
        out.append(dict(ex, idx=idx, example_json=record_json))
      count += 1
    return out, count, "all" if len(auto) == len(out) else auto

  def local_rows(self, split: str) -> int | None:
    """The dataset split's record count from the files' metadata when the files are on this
    machine (no download, no rendering); None otherwise."""
    try:
      resolved = hf_datasets.resolve(self.dataset, self.dataset_split(split), self.data_root,
                                     download=False)
      return hf_datasets.num_rows(resolved) if all(
          f.endswith((".parquet", ".arrow")) for f in resolved.files) else None
    except errors.UserError:
      return None

  def first(self, split: str, n: int) -> list[dict[str, Any]]:
    """The first `n` examples of a split (or rows of its first examples), reading no further:
    what `mtjax tasks --show` prints."""
    out = []
    for where, record in self.records(split):
      made = _call(self.prepare, record, where, "prepare")
      if made is not None:
        out.append(made)
      if len(out) >= n:
        break
    return out

  def fingerprint_parts(self, split: str) -> list[str]:
    """mtjax's fingerprint of this task split (read by `mtjax.data.cache.fingerprint`)."""
    from mtjax.data.cache import describe  # pylint: disable=g-import-not-at-top

    try:
      ident = hf_datasets.identity(self.dataset, self.dataset_split(split), self.data_root)
    except errors.UserError as e:
      raise type(e)(f"task {self.task!r} split {split!r}: {e}", hint=e.hint) from None
    return [ident, describe(self.prepare), describe(self.map_record),
            f"class_label_names={self.class_label_names}"]

  def __getstate__(self):  # worker processes re-read the data rather than receive it pickled
    return dict(self.__dict__, _memo=None, _available=None)


def _call(fn, record, where: str, what: str):
  try:
    return fn(record)
  except errors.UserError as e:
    raise type(e)(f"{where}: {e}", hint=e.hint) from None
  except Exception as e:  # the collection's or the user's function
    name = getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__qualname__",
                                                        type(fn).__name__)
    raise errors.DataError(f"{where}: {what} {name} failed: {type(e).__name__}: {e}") from e


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, source: HFSource):
  from mtjax.data import file_tasks  # pylint: disable=g-import-not-at-top

  del shuffle_files, seed  # dataset order is the canonical order; Grain shuffles later
  return file_tasks.to_dataset(source.examples(split))


@functools.lru_cache(maxsize=None)
def _source_class():
  """`seqio.FunctionDataSource` whose `splits` are those the dataset has (see
  `HFSource.available`): a collection declares train/validation/test and a dataset without a
  validation split is not asked for one. (A function, so seqio is imported only when used.)"""
  import seqio  # pylint: disable=g-import-not-at-top

  class HFDataSource(seqio.FunctionDataSource):

    @property
    def splits(self):
      return self._dataset_fn.hf_source.available(self._splits)

    def num_input_examples(self, split: str) -> int:
      """Counted when asked (at cache time), by rendering the split once (memoised)."""
      return len(self._dataset_fn.hf_source.examples(split))

  return HFDataSource


def register_hf_task(name: str, dataset: hf_datasets.HFDataset, prepare: Prepare, *,
                     splits: Mapping[str, str] | Sequence[str] = ("train", "validation"),
                     vocabulary=None, metric_fns: Sequence[Callable] = (),
                     postprocess_fn: Callable | None = None, add_eos: bool = True,
                     map_record: Callable | None = None,
                     class_label_names: Sequence[str] = (), data_root: str | None = None,
                     recorded: Mapping[str, int] | None = None):
  """Registers (replacing any previous definition) and returns a SeqIO task over a dataset.

  `splits`: the task's splits, as names shared with the dataset or as {task split: dataset
  split} (ANLI: {"train": "train_r1", "validation": "dev_r1"}). Nothing is read here.
  `add_eos`: SeqIO's feature option for both features, or a pair (inputs, targets): T0's inputs
  have no EOS. `recorded`: split sizes known from the collection's metadata (shown by `mtjax
  tasks`; the cache counts the examples itself).
  """
  split_map = dict(splits) if isinstance(splits, Mapping) else {s: s for s in splits}
  if not split_map:
    raise errors.DataError(f"task {name!r}: give at least one split")
  source = HFSource(dataset, prepare, split_map, map_record, tuple(class_label_names),
                    data_root, task=name, recorded=dict(recorded or {}))
  return register_source_task(name, source, vocabulary=vocabulary, metric_fns=metric_fns,
                              postprocess_fn=postprocess_fn, add_eos=add_eos)


def register_source_task(name: str, source: HFSource, *, vocabulary=None,
                         metric_fns: Sequence[Callable] = (),
                         postprocess_fn: Callable | None = None, add_eos=True):
  """Registers (replacing any previous definition) and returns a SeqIO task reading `source`
  (an `HFSource` or a subclass: `mtjax.collections.prerendered` filters rows of shared files).
  `register_hf_task` builds the plain source and calls this."""
  import seqio  # pylint: disable=g-import-not-at-top

  source.task = name
  dataset_fn = functools.partial(_dataset_fn, source=source)
  dataset_fn.fingerprint_parts = source.fingerprint_parts
  dataset_fn.hf_source = source  # for `mtjax tasks` (listing, --show)
  dataset_fn.rows = source  # blocks for the TF-free cache path (mtjax.data.caching.fast)
  vocabulary = vocabulary or vocabularies.default()
  eos = tuple(add_eos) if isinstance(add_eos, (tuple, list)) else (add_eos, add_eos)
  features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=e)
              for k, e in zip(("inputs", "targets"), eos)}
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=_source_class()(dataset_fn, splits=tuple(source.splits)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features,
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))


def hf_source(task) -> HFSource | None:
  """The `HFSource` of a task registered here (None for other tasks)."""
  fn = getattr(getattr(task, "source", None), "_dataset_fn", None)
  return getattr(fn, "hf_source", None)
