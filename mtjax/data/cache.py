"""Materialise SeqIO task splits into ArrayRecord shards plus a `manifest.json`.

This is the only data module that imports SeqIO (and with it TensorFlow). It plans a mixture's
splits as units (`plan_mixture`, `plan_split`) and hands them to `mtjax.data.caching`, which runs
them on worker processes and hosts and assembles each split (shards, token arrays, manifest
written last, renamed into place: a crash never leaves a half-written cache that looks complete).
A unit's examples come from the task's source and its pre-cache preprocessors through SeqIO, or,
for mtjax's own sources (file tasks, Hugging Face datasets, the collections), from the TF-free
path (`caching/fast.py`), which writes the same bytes. This module records what the TF-free
pipeline needs to finish the job in numpy: the post-cache operations, the EOS ids and the mixture
rates. A fingerprint of the task definition decides when a cache is stale and must be rebuilt.

Layout::

  <cache_dir>/<task>/<split>/manifest.json
  <cache_dir>/<task>/<split>/data.array_record-00000-of-0000N
  <cache_dir>/mixtures/<mixture>.json       (flattened rates; lets training run without TF)
  <cache_dir>/.build/...                    (units of a build in progress: `caching/units.py`)

`cache_dir` may be a URL (`gs://...`): a split is then built in a local mirror and uploaded with
its manifest last, and read from a local staging copy (`staging.py`); `split_dir` names that copy.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from typing import Any, Mapping

from mtjax import errors, fs
from mtjax.data import mixing, records, staging
from mtjax.data.caching import fast, layout
from mtjax.data.caching import run as caching_run
from mtjax.data.caching import units as caching_units

MANIFEST = layout.MANIFEST
FORMAT_VERSION = 3  # bump when the record format or manifest changes: old caches rebuild
# Post-cache SeqIO preprocessors that the pipeline re-implements in numpy (see pipeline.py).
NUMPY_POST_CACHE_OPS = ("append_eos_after_trim", "append_eos")

log = logging.getLogger(__name__)


def describe(obj: Any) -> str:
  """A stable description of a callable for fingerprints: name, bound args and source."""
  import functools  # pylint: disable=g-import-not-at-top

  if isinstance(obj, functools.partial):
    args = ", ".join([describe(a) for a in obj.args] +
                     [f"{k}={describe(v)}" for k, v in sorted(obj.keywords.items())])
    return f"partial({describe(obj.func)}, {args})"
  if hasattr(obj, "templates"):
    return f"templates{[(t.name, t.inputs, t.targets) for t in obj.templates]}"
  if callable(obj):
    name = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    try:
      source = inspect.getsource(obj)
    except (OSError, TypeError):
      source = ""
    return f"{name}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"
  return repr(obj)


def split_preprocessors(task) -> tuple[list, list[str]]:
  """Returns (pre-cache preprocessors, names of post-cache ops) for a SeqIO task.

  Everything before `seqio.CacheDatasetPlaceholder` runs at cache time. Without a placeholder,
  everything runs at cache time except trailing EOS ops. Post-cache ops must be ones the numpy
  pipeline implements; anything else is an error naming the task and the preprocessor.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  preps = list(task.preprocessors)
  marks = [i for i, p in enumerate(preps) if isinstance(p, seqio.CacheDatasetPlaceholder)]
  if marks:
    pre, post = preps[:marks[0]], preps[marks[0] + 1:]
  else:
    cut = len(preps)
    while cut > 0 and getattr(preps[cut - 1], "__name__", "") in NUMPY_POST_CACHE_OPS:
      cut -= 1
    pre, post = preps[:cut], preps[cut:]
  names = []
  for p in post:
    name = getattr(p, "__name__", type(p).__name__)
    if name not in NUMPY_POST_CACHE_OPS:
      raise errors.DataError(
          f"task {task.name!r}: post-cache preprocessor {name!r} has no numpy implementation "
          f"(supported: {NUMPY_POST_CACHE_OPS}). Move it before seqio.CacheDatasetPlaceholder().")
    names.append(name)
  return pre, names


def has_placeholder(task) -> bool:
  import seqio  # pylint: disable=g-import-not-at-top

  return any(isinstance(p, seqio.CacheDatasetPlaceholder) for p in task.preprocessors)


def takes_sequence_length(prep) -> bool:
  """Whether SeqIO would pass `sequence_length` to `prep` (`seqio.utils.add_kwargs_to_transform`:
  a dataclass field or a parameter not already bound by a `functools.partial`)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import functools  # pylint: disable=g-import-not-at-top

  if dataclasses.is_dataclass(prep):
    return "sequence_length" in {f.name for f in dataclasses.fields(prep)}
  try:
    names = set(inspect.signature(prep).parameters)
  except (TypeError, ValueError):
    return False
  if isinstance(prep, functools.partial):
    names -= set(prep.keywords)
  return "sequence_length" in names


def length_dependent(task) -> list:
  """The cache-time preprocessors that read the run's `sequence_length`.

  SeqIO runs every preprocessor of a task without `CacheDatasetPlaceholder` at read time with
  the run's feature lengths; mtjax runs them at cache time, so their output (and the cache)
  depends on those lengths. With a placeholder SeqIO itself forbids such preprocessors before
  it (and passes None), so there this is empty.
  """
  if has_placeholder(task):
    return []
  return [p for p in split_preprocessors(task)[0] if takes_sequence_length(p)]


def _lengths_key(sequence_length) -> str:
  return ",".join(f"{k}={int(v)}" for k, v in sorted(sequence_length.items()))


def vocab_start_id(vocab) -> int:
  """The token decoder rows of a task with this vocabulary start from: the vocabulary's
  `start_id` (an HF tokenizer's BOS, `HFVocabulary.start_id`), else 0 as SeqIO's converters
  (`feature_converters.BOS_ID`; SeqIO's vocabularies have no such attribute)."""
  from mtjax.data.feature_converters import BOS_ID  # pylint: disable=g-import-not-at-top

  start = getattr(vocab, "start_id", None)
  return BOS_ID if start is None else int(start)


def fingerprint(task, split: str, sequence_length: Mapping[str, int] | None = None) -> str:
  """Hash of everything that determines a task split's cached examples.

  `sequence_length` counts only for a task whose cache-time preprocessors read it
  (`length_dependent`): other tasks keep one cache for any feature lengths.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  pre, post = split_preprocessors(task)
  source = task.source
  parts = [f"v{FORMAT_VERSION}", task.name, split, type(source).__name__]
  if sequence_length is not None and length_dependent(task):
    parts.append(f"sequence_length:{_lengths_key(sequence_length)}")
  if isinstance(source, seqio.TfdsDataSource):
    parts.append(_tfds_identity(task, split))
  fn = getattr(source, "_dataset_fn", None)
  if isinstance(source, seqio.FunctionDataSource) and hasattr(fn, "fingerprint_parts"):
    # A source that knows its own identity (mtjax.collections.hf_tasks: repo, config, split,
    # commit, files, templates), instead of the function's description and file stats.
    parts += list(fn.fingerprint_parts(split))
  elif isinstance(source, seqio.FunctionDataSource):
    parts.append(describe(fn))
    for path in getattr(fn, "data_files", ()):  # files read by the function: size and mtime
      st = os.stat(path)
      parts.append(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}")
  else:
    patterns = getattr(source, "_split_to_filepattern", None)
    parts.append(repr(patterns or ""))
    if patterns and split in patterns:  # file sources: the files' sizes and mtimes
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      pattern = patterns[split]
      for path in sorted(tf.io.gfile.glob(pattern)):
        st = tf.io.gfile.stat(path)
        parts.append(f"{path}:{st.length}:{st.mtime_nsec}")
  parts += [describe(p) for p in pre] + post
  for name, feature in sorted(task.output_features.items()):
    vocab = feature.vocabulary
    # `fingerprint`: a vocabulary's own identity (e.g. a hash of an HF tokenizer's files)
    ident = getattr(vocab, "fingerprint", None) or getattr(vocab, "sentencepiece_model_file", "")
    parts.append(f"{name}:{type(vocab).__name__}:{vocab.vocab_size}:{feature.add_eos}:"
                 f"{feature.dtype}:{ident}")
    start = vocab_start_id(vocab)
    if start != 0:  # a cache of an older mtjax lacks "start_id" (read as 0): rebuild it; a
      # start of 0 (SeqIO's vocabularies) leaves the fingerprint, and so existing caches, alone
      parts.append(f"{name}:start_id:{start}")
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def split_dir(cache_dir: str, task_name: str, split: str) -> str:
  """The local folder holding a split's files: for a remote cache dir, its staging copy (current
  once `read_manifest` has returned a manifest for it)."""
  if fs.is_url(cache_dir):
    return staging.local_split_dir(cache_dir, task_name, split)
  return os.path.join(cache_dir, task_name, split)


def read_manifest(cache_dir: str, task_name: str, split: str) -> dict | None:
  """The split's manifest, None if it is not cached. For a remote cache dir this is the gate
  every reader passes: the split is staged (downloaded once per host) before it returns."""
  if fs.is_url(cache_dir):
    return staging.stage(cache_dir, task_name, split)
  path = os.path.join(split_dir(cache_dir, task_name, split), MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def cached_splits(cache_dir: str) -> list[str]:
  """`task/split` of every split with a manifest under `cache_dir` (local or URL; for a URL this
  lists the store, a call per task: for error messages, not for hot paths)."""
  if not fs.isdir(cache_dir):
    return []
  out = []
  for t in fs.listdir(cache_dir):
    task_dir = fs.join(cache_dir, t)
    if t == "mixtures" or not fs.isdir(task_dir):
      continue
    out += [f"{t}/{sp}" for sp in fs.listdir(task_dir)
            if fs.exists(fs.join(task_dir, sp, MANIFEST))]
  return sorted(out)


def _tfds_builder(task, split: str | None):
  """(TFDS name, data dir, builder) of a TFDS task's split; the builder is SeqIO's own (memoised).
  A dataset that TFDS cannot read there is a `MissingError` naming task, dataset and data dir
  (SeqIO itself reports "Task x has no splits" or a KeyError, or starts a download)."""
  loader = task.source.tfds_dataset
  name, data_dir = loader.get_split_params(split)
  where = data_dir or _tfds_default_data_dir()

  def missing(reason: str, prepare: bool = True) -> errors.MissingError:
    advice = (f"Prepare it there first (`tfds.builder({name!r}, data_dir={where!r})"
              ".download_and_prepare()`; mtjax does not download TFDS datasets) or point the "
              "task's tfds_data_dir at a prepared copy" if prepare else
              "Check the TFDS name (dataset/config:version) and that TFDS can read the data_dir")
    return errors.MissingError(f"task {task.name!r}: TFDS dataset {name!r} cannot be read from "
                               f"data_dir {where!r}: {reason.rstrip('.')}. {advice}")

  try:
    builder = loader._get_builder(split)  # pylint: disable=protected-access
  except Exception as e:  # DatasetNotFoundError, a bad version or config, an unreadable dir
    first = (str(e).strip().splitlines() or [""])[0]
    raise missing(f"{type(e).__name__}: {first}", prepare=False) from e
  if not builder.is_prepared():
    path = str(builder.data_dir)
    if data_dir and not _exists(data_dir):
      reason = "that directory does not exist"
    else:
      reason = f"it is not prepared there (no {os.path.join(path, 'dataset_info.json')})"
    raise missing(reason)
  if not builder.info.splits:
    raise missing(f"its dataset info at {builder.data_dir} lists no splits")
  return name, data_dir, builder


def _tfds_default_data_dir() -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return str(tfds.core.constants.DATA_DIR)


def _exists(path: str) -> bool:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: local, gs://, ...)

  return tf.io.gfile.exists(path)


def check_source(task, split: str | None = None) -> None:
  """A TFDS source that cannot be read is one error naming task, dataset and data dir, before
  SeqIO turns it into "Task x has no splits" (or tries to download it)."""
  import seqio  # pylint: disable=g-import-not-at-top

  if not isinstance(task.source, seqio.TfdsDataSource):
    return
  per_split = task.source.tfds_dataset.tfds_splits  # a TFDS dataset per split (TfdsSplit)
  for s in [split] if split is not None else list(per_split or [None]):
    _tfds_builder(task, s)


def _tfds_identity(task, split: str) -> str:
  """What a TFDS split's examples depend on: the resolved dataset (name/config/version), the TFDS
  split it maps to, and that split's size (the data dir itself may move without a rebuild)."""
  _, _, builder = _tfds_builder(task, split)
  loader = task.source.tfds_dataset
  try:
    mapped = loader._map_split(split)  # pylint: disable=protected-access
  except KeyError:
    mapped = split
  info = builder.info.splits.get(str(mapped).split("[")[0])
  return f"tfds:{builder.info.full_name}:{mapped}:{info.num_examples if info else ''}"


def check_vocabularies(task) -> None:
  """A missing SentencePiece model file is named (SeqIO would fail deep inside TF)."""
  for name, feature in task.output_features.items():
    path = getattr(feature.vocabulary, "sentencepiece_model_file", None)
    if not path:
      continue
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: local, gs://, ...)

    if not tf.io.gfile.exists(path):
      raise errors.MissingError(f"task {task.name!r}, feature {name!r}: vocabulary file "
                                f"{path!r} does not exist")


def _pre_cache_dataset(task, split: str, seed: int, start: int = 0, stop: int | None = None,
                       sequence_length: Mapping[str, int] | None = None):
  """The task's source (optionally examples [start, stop) of it) through the pre-cache ops.

  As SeqIO: a task without `CacheDatasetPlaceholder` runs every preprocessor with the run's
  `sequence_length` (SeqIO's `preprocess_postcache`); before a placeholder they get None. Without
  lengths (None, as SeqIO's `get_dataset` default) a preprocessor that fails on None is named.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  dataset = task.source.get_dataset(split=split, shuffle=False, seed=seed)
  if start or stop is not None:
    dataset = dataset.skip(start)
    if stop is not None:
      dataset = dataset.take(stop - start)
  lengths = None if has_placeholder(task) else sequence_length
  lengths = dict(lengths) if lengths is not None else None
  with seqio.utils.map_seed_manager(seed):
    for prep in split_preprocessors(task)[0]:
      fn = seqio.utils.add_kwargs_to_transform(
          prep, sequence_length=lengths, output_features=task.output_features)
      try:
        dataset = fn(dataset)
      except Exception as e:
        if lengths is not None or has_placeholder(task) or not takes_sequence_length(prep):
          raise
        name = getattr(prep, "__name__", None) or getattr(getattr(prep, "func", None),
                                                          "__name__", type(prep).__name__)
        raise errors.DataError(
            f"task {task.name!r}: preprocessor {name!r} reads sequence_length, which SeqIO gives "
            "a task without CacheDatasetPlaceholder at run time, but this cache was built without "
            f"feature lengths ({type(e).__name__}: {e}). Cache it with the run's lengths (training "
            "does; `mtjax cache` needs them too) or put seqio.CacheDatasetPlaceholder() before "
            "that preprocessor") from e
  return dataset


def _blocks(num_examples: int, block_size: int) -> list[tuple[int, int]]:
  """Contiguous source ranges. They depend on the data only, never on the worker count."""
  count = max(1, -(-num_examples // block_size))
  return [(b * num_examples // count, (b + 1) * num_examples // count) for b in range(count)]


def _cache_block(payload: bytes, split: str, seed: int, start: int, stop: int,
                 path: str, sequence_length: Mapping[str, int] | None = None) -> int:
  """Worker process: one source block through the pre-cache ops into an ArrayRecord file."""
  import cloudpickle  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  task = cloudpickle.loads(payload)
  # So lookups by name inside the task work (e.g. a few-shot task reads its base task).
  for t in (task, *getattr(getattr(task.source, "_dataset_fn", None), "required_tasks", ())):
    if t.name not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add_provider(t.name, t)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  count = 0
  for example in _numpy_examples(_pre_cache_dataset(task, split, seed, start, stop,
                                                    sequence_length)):
    writer.write(records.encode(example))
    count += 1
  writer.close()
  return count


def _register_in_worker(task) -> None:
  """So lookups by name inside the task work in a worker process (e.g. a few-shot task reads
  its base task)."""
  import seqio  # pylint: disable=g-import-not-at-top

  for t in (task, *getattr(getattr(task.source, "_dataset_fn", None), "required_tasks", ())):
    if t.name not in seqio.TaskRegistry.names():
      seqio.TaskRegistry.add_provider(t.name, t)


def _seqio_producer(payload, split: str, start: int, stop: int | None):
  """A unit's examples through SeqIO: the source (rows [start, stop)) and the pre-cache ops."""
  task, seed, sequence_length = payload
  _register_in_worker(task)
  examples = _numpy_examples(_pre_cache_dataset(task, split, seed, start, stop,
                                                sequence_length))
  return examples, 0, []


def _fast_producer(payload, split: str, start: int, stop: int | None):
  """A unit's examples on the TF-free path: rendered by the source, tokenized in batches."""
  rows, encoders = payload
  examples, prepared, auto = rows.block(split, start, stop)
  return fast.tokenized(examples, encoders), prepared, auto


FAST_BLOCK = 4096  # most rows per unit on the TF-free path (a block starts anywhere cheaply)
FAST_UNITS = 32  # ... and at least this many units per split, down to FAST_MIN_BLOCK rows each,
FAST_MIN_BLOCK = 256  # so a small split still spreads over the workers


def fast_block_size(num_rows: int) -> int:
  """Rows per unit of a seekable split on the TF-free path. It depends on the split's size
  only (never on worker or host counts), so every builder cuts a split alike and a restarted
  build finds its units."""
  return max(1, min(FAST_BLOCK, max(FAST_MIN_BLOCK, -(-num_rows // FAST_UNITS))))
FAST_READ_BLOCK = 25_000  # ... where a block is found by reading the rows before it


def fast_spec(task):
  """(rows source, encoders) when the task can take the TF-free path (`caching/fast.py`): its
  source offers `rows`, `seqio.preprocessors.tokenize` is its only pre-cache preprocessor, and
  every output feature is int32 with a vocabulary that has a batch encoder; else None."""
  import seqio  # pylint: disable=g-import-not-at-top

  rows = getattr(getattr(task.source, "_dataset_fn", None), "rows", None)
  if rows is None:
    return None
  pre, _ = split_preprocessors(task)
  if len(pre) != 1 or pre[0] is not seqio.preprocessors.tokenize:
    return None
  encoders = {}
  for name, feature in task.output_features.items():
    encoder = fast.encoder_for(feature.vocabulary)
    if encoder is None or getattr(feature.dtype, "name", str(feature.dtype)) != "int32":
      return None
    encoders[name] = encoder
  return rows, encoders


def _published(cache_dir: str, task_name: str, split: str) -> dict | None:
  if fs.is_url(cache_dir):
    return staging.remote_manifest(cache_dir, task_name, split)
  return read_manifest(cache_dir, task_name, split)


def plan_split(task, split: str, cache_dir: str, num_shards: int = 1, seed: int = 0,
               block_size: int = 100_000, sequence_length: Mapping[str, int] | None = None,
               tf_free: bool | None = None):
  """The build of one task split as units (a `caching.run.SplitJob`), or its manifest when a
  cache of this task definition is already in place.

  `tf_free`: None takes the TF-free path where the task allows it (`fast_spec`), False always
  SeqIO's, True requires the TF-free path (an error names why a task cannot take it).
  """
  check_source(task, split)
  if split not in task.splits:
    raise errors.DataError(f"task {task.name!r} has no split {split!r} (it has "
                           f"{list(task.splits)})")
  check_vocabularies(task)
  fp = fingerprint(task, split, sequence_length)
  existing = _published(cache_dir, task.name, split)
  if existing and existing.get("fingerprint") == fp:
    return existing
  if existing:
    log.info("cache of %s/%s is stale (task definition changed): rebuilding", task.name, split)
  spec = fast_spec(task) if tf_free is not False else None
  if tf_free and spec is None:
    raise errors.DataError(
        f"task {task.name!r} cannot be cached without TensorFlow: only file tasks, Hugging Face "
        "and collection tasks whose only pre-cache preprocessor is seqio.preprocessors.tokenize, "
        "with SentencePiece / byte / HF tokenizer vocabularies, can")
  post = split_preprocessors(task)[1]
  if spec is not None:
    rows = spec[0]
    total = int(rows.num_rows(split))
    size = fast_block_size(total) if rows.seekable(split) else max(FAST_READ_BLOCK, total // 64)
    blocks = _blocks(total, size) if total else [(0, 0)]
    producer, payload = _fast_producer, spec
  else:
    total = task.num_input_examples(split)
    blocks = _blocks(total, block_size) if total and total > block_size else [(0, total or 0)]
    blocks[-1] = (blocks[-1][0], None)  # the last block runs to the source's end
    producer, payload = _seqio_producer, (task, seed, sequence_length)
  skipped = getattr(getattr(task.source, "_dataset_fn", None), "skipped", {}).get(split, [])
  base = {
      "format_version": FORMAT_VERSION,
      "post_cache_ops": post,
      # the lengths the cache-time preprocessors read (None: none reads them)
      "sequence_length": (dict(sequence_length) if sequence_length is not None and
                          length_dependent(task) else None),
      "skipped_records": {"count": len(skipped), "first": skipped[:20]},
      "output_features": {
          name: {"add_eos": bool(f.add_eos), "eos_id": int(f.vocabulary.eos_id),
                 "pad_id": int(f.vocabulary.pad_id), "vocab_size": int(f.vocabulary.vocab_size),
                 # decoder rows' start token (absent in older manifests: 0)
                 "start_id": vocab_start_id(f.vocabulary)}
          for name, f in task.output_features.items()},
  }
  build = layout.build_id(fp, blocks)
  unit_list = [caching_units.Unit(task.name, split, build, i, a, b,
                                  (b if b is not None else int(total or 0)) - a)
               for i, (a, b) in enumerate(blocks)]
  return caching_run.SplitJob(
      task.name, split, fp, build, unit_list, producer, payload, num_shards,
      tuple(task.output_features), base,
      f"task {task.name!r} split {split!r} is empty: its source and pre-cache preprocessors "
      f"produced no examples (source count: {total})")


def _report(manifest: dict) -> None:
  log.info("cached %s/%s: %d examples", manifest["task"], manifest["split"],
           manifest["num_examples"])
  skipped = manifest.get("skipped_records", {})
  if skipped.get("count"):
    log.warning("task %s/%s: skipped %d malformed records (first: %s)", manifest["task"],
                manifest["split"], skipped["count"], ", ".join(skipped["first"][:3]))


def cache_task_split(task, split: str, cache_dir: str, num_shards: int = 1, seed: int = 0,
                     num_workers: int = 1, block_size: int = 100_000,
                     sequence_length: Mapping[str, int] | None = None,
                     tf_free: bool | None = None, **build_options) -> dict:
  """Builds (or reuses, if the fingerprint matches) the cache of one task split.

  `sequence_length` (the run's feature lengths, e.g. {"inputs": 512, "targets": 114}) reaches the
  preprocessors of a task without `CacheDatasetPlaceholder` that take it, as in SeqIO; such a
  task's cache is then for those lengths (they are in its fingerprint: other lengths rebuild).

  The split is built as units (`plan_split`) by `num_workers` processes; the result depends on
  neither the worker nor the host count. On SeqIO's path a unit is `block_size` source examples
  (per-example ops give the same cache as one unblocked pass; ops that look across examples or at
  positions, e.g. packing before the cache, see each block separately, so a split larger than
  `block_size` gets block-local positions). On the TF-free path (`tf_free`, see `plan_split`)
  blocks are smaller and change nothing. `build_options`: `caching.run.build`'s (hosts,
  progress).
  """
  job = plan_split(task, split, cache_dir, num_shards=num_shards, seed=seed,
                   block_size=block_size, sequence_length=sequence_length, tf_free=tf_free)
  if not isinstance(job, caching_run.SplitJob):
    return job
  manifest = caching_run.build([job], cache_dir, num_workers=num_workers,
                               **build_options)[job.key]
  _report(manifest)
  return manifest


_publish = layout.publish_dir  # (the name tests and older callers use)


def count_trimmed(manifest: dict, lengths: dict[str, int]) -> dict[str, int]:
  """How many examples of a cached split lose tokens at these feature lengths (EOS included)."""
  out = {}
  for name, length in lengths.items():
    stats = manifest.get("token_lengths", {}).get(name)
    if stats is None:
      continue
    eos = 1 if manifest["output_features"].get(name, {}).get("add_eos") and \
        manifest["post_cache_ops"] else 0
    out[name] = sum(c for v, c in stats["histogram"].items() if int(v) + eos > length)
  return out


def _numpy_examples(dataset, batch_size: int = 1024):
  """Yields examples as numpy; batches raggedly under the hood (4x faster than one by one)."""
  if all(len(spec.shape) <= 1 for spec in dataset.element_spec.values()):
    for batch in dataset.ragged_batch(batch_size).as_numpy_iterator():
      for i in range(len(next(iter(batch.values())))):
        yield {k: v[i] for k, v in batch.items()}
  else:
    yield from dataset.as_numpy_iterator()


def plan_mixture(name: str, cache_dir: str, splits=("train", "validation"),
                 num_shards: int = 1, sequence_length: Mapping[str, int] | None = None,
                 tf_free: bool | None = None):
  """(flattened rates, jobs, manifests already in place) for a SeqIO mixture (or a single task):
  one plan over every (task, split, block) unit, evaluation splits of zero-rate members
  included. Sources are checked first: rates and split lists read them too."""
  import seqio  # pylint: disable=g-import-not-at-top

  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    provider = None  # `from_seqio` names close matches
  if provider is not None:
    for task in getattr(provider, "tasks", None) or [provider]:
      check_source(task)
  spec = mixing.from_seqio(name)
  training = set(spec.task_names)
  members = [seqio.get_mixture_or_task(n) for n in spec.task_names]
  members += [t for t in getattr(provider, "tasks", None) or [] if t.name not in training]
  jobs, ready = [], []
  for task in members:  # zero-rate members (T5's eval-only tasks): their evaluation splits
    for split in splits:
      if split in task.splits and (task.name in training or split != "train"):
        job = plan_split(task, split, cache_dir, num_shards=num_shards,
                         sequence_length=sequence_length, tf_free=tf_free)
        (jobs if isinstance(job, caching_run.SplitJob) else ready).append(job)
  return spec, jobs, ready


def cache_mixture(name: str, cache_dir: str, splits=("train", "validation"),
                  num_shards: int = 1, num_workers: int = 1,
                  sequence_length: Mapping[str, int] | None = None,
                  tf_free: bool | None = None, engine: str = "local",
                  pipeline_options=None, **build_options) -> mixing.MixtureSpec:
  """Caches every task of a SeqIO mixture (or a single task) and records its flattened rates.

  One plan (`plan_mixture`) runs on `num_workers` processes across tasks; `build_options` are
  `caching.run.build`'s: `num_processes` / `process_id` (this host's share when many hosts
  build one cache dir), `progress_every`, `summary`. `sequence_length`: the run's feature
  lengths, for tasks whose preprocessors read them (`cache_task_split`).

  `engine="beam"` runs the plan as an Apache Beam pipeline instead (`caching/beam.py`; the same
  bytes): `pipeline_options` are Beam's (flags as a string or list, a dict, or PipelineOptions;
  None: the DirectRunner), which spread the units; worker and host options are then an error.
  """
  if engine not in ("local", "beam"):
    raise errors.ConfigError(f"cache engine {engine!r}: expected 'local' or 'beam'")
  if engine == "beam":
    taken = ["num_workers"] * (num_workers != 1) + sorted(
        k for k, v in build_options.items()
        if v is not None and k not in ("progress_every", "summary", "stream"))
    if taken:
      raise errors.ConfigError(
          f"the beam engine takes no {', '.join(taken)}: "
          "its runner spreads the units (give runner options as pipeline_options, e.g. "
          "--direct_num_workers=4 --direct_running_mode=multi_processing)")
    from mtjax.data.caching import beam  # pylint: disable=g-import-not-at-top

    beam.import_beam()  # before planning: a missing install is one error, before any work
  elif pipeline_options is not None:
    raise errors.ConfigError("pipeline_options are for engine='beam'")
  spec, jobs, _ = plan_mixture(name, cache_dir, splits, num_shards, sequence_length, tf_free)
  if jobs:
    if engine == "beam":
      manifests = beam.build(jobs, cache_dir, pipeline_options)
    else:
      manifests = caching_run.build(jobs, cache_dir, num_workers=num_workers, **build_options)
    for manifest in manifests.values():
      _report(manifest)
  mixing.write_spec(spec, cache_dir)
  return spec


def eval_task_names(name: str, split: str, training: tuple[str, ...]) -> tuple[str, ...]:
  """The tasks evaluated on `split` for mixture `name`, as SeqIO's evaluator picks them: every
  member that has the split, zero-rate members included (T5's GLUE mixture lists MNLI matched /
  mismatched at rate 0 to evaluate them; MNLI itself has no `validation`). Without SeqIO, or
  when no member has the split: the training tasks (`training`), as before."""
  try:
    import seqio  # pylint: disable=g-import-not-at-top
  except ImportError:
    return tuple(training)
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    return tuple(training)
  members = getattr(provider, "tasks", None) or [provider]
  found = tuple(t.name for t in members if split in t.splits)
  return found or tuple(training)


def ensure_cached(name: str, cache_dir: str, splits=("train", "validation"),
                  sequence_length: Mapping[str, int] | None = None) -> mixing.MixtureSpec:
  """Caches on first use. Without SeqIO/TF installed, falls back to an existing cache.

  Pass the run's feature lengths as `sequence_length` (SeqIO's task feature lengths): a task
  without `CacheDatasetPlaceholder` gives them to its preprocessors, as SeqIO does. Tasks whose
  registration a fast start-up put off (`mtjax.data.startup`) are registered first.
  """
  from mtjax.data import registration  # pylint: disable=g-import-not-at-top

  registration.ensure_registered()
  try:
    import seqio  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    spec = mixing.read_spec(name, cache_dir)
    if spec is None:
      raise RuntimeError(
          f"mixture {name!r} is not cached in {cache_dir} and seqio is not installed to build it; "
          "run `mtjax cache` on a machine with seqio first") from None
    if sequence_length is not None:
      _check_cached_lengths(spec, cache_dir, splits, sequence_length)
    return spec
  return cache_mixture(name, cache_dir, splits=splits, sequence_length=sequence_length)


def _check_cached_lengths(spec: mixing.MixtureSpec, cache_dir: str, splits,
                          sequence_length: Mapping[str, int]) -> None:
  """Without SeqIO a cache cannot be rebuilt: one built for other feature lengths (by a task
  whose preprocessors read them) is an error rather than silently other data."""
  want = {k: int(v) for k, v in sequence_length.items()}
  for task in spec.task_names:
    for split in splits:
      manifest = read_manifest(cache_dir, task, split)
      built = (manifest or {}).get("sequence_length")
      if built is not None and built != want:
        raise errors.DataError(
            f"task {task!r} split {split!r} in {cache_dir} was cached for sequence_length "
            f"{built}, this run has {want}, and its preprocessors read them; rebuild it with "
            "`mtjax cache` on a machine with seqio")
