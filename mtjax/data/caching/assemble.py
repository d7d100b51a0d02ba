"""A split's finished units -> its cache folder: shards, token arrays, manifest (written last).

Both paths (SeqIO's and the TF-free one) end here, so they differ in nothing but the records
their units hold. Units are read in order, so the split's example order (and with it the shards'
round-robin and the token arrays) is the source's, whatever the number of workers or hosts that
built them. Memory: the token arrays are filled through memory maps of known size and records
are copied one at a time; only the per-example lengths of the split are held.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from mtjax import errors, fs
from mtjax.data import records, staging
from mtjax.data.caching import layout, units

log = logging.getLogger(__name__)


def local_split_dir(cache_dir: str, task: str, split: str) -> str:
  if fs.is_url(cache_dir):
    return staging.local_split_dir(cache_dir, task, split)
  return os.path.join(cache_dir, task, split)


def feature_spec(value: Any) -> dict:
  """dtype and rank of a record's field (strings and lists of strings are "string")."""
  if isinstance(value, str):
    return {"dtype": "string", "rank": 0}
  if isinstance(value, list):
    return {"dtype": "string", "rank": 1}
  array = np.asarray(value)
  if array.dtype.kind in ("S", "O", "U"):
    return {"dtype": "string", "rank": int(array.ndim)}
  return {"dtype": array.dtype.name, "rank": int(array.ndim)}


def length_stats(lengths: np.ndarray) -> dict:
  """Summary plus a histogram (length -> count) so trimming can be counted for any length."""
  values, counts = np.unique(lengths, return_counts=True)
  return {"min": int(lengths.min()), "mean": float(lengths.mean()),
          "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()),
          "histogram": {str(v): int(c) for v, c in zip(values, counts)}}


def _offset(example: dict, by: int) -> dict:
  idx = example["idx"]
  if np.ndim(idx) == 0:
    example["idx"] = np.asarray(idx + by, np.asarray(idx).dtype)
  else:
    fixed = np.array(idx)
    fixed[0] += by
    example["idx"] = fixed
  return example


class SplitWriter:
  """Assembles one split from its finished units, fed in order (`add`) as they finish: the
  records go to the shards while later units are still being built, so the one serial step of
  a build (compressing the shards) overlaps the workers; `finish` adds the token arrays and the
  manifest and publishes the split (first writer of this fingerprint wins; for a remote cache
  dir: uploaded, manifest last)."""

  def __init__(self, ledger: units.Ledger, task: str, split: str, fp: str, build: str,
               num_units: int, num_shards: int, token_features: Sequence[str],
               base: Mapping[str, Any], empty_message: str):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    self.ledger, self.task, self.split, self.fp, self.build = ledger, task, split, fp, build
    self.num_units, self.num_shards = num_units, num_shards
    self.token_features, self.base, self.empty_message = tuple(token_features), base, empty_message
    self.final = local_split_dir(ledger.cache_dir, task, split)
    os.makedirs(os.path.dirname(self.final), exist_ok=True)
    self.tmp = tempfile.mkdtemp(prefix=f".{split}-tmp-", dir=os.path.dirname(self.final))
    self.names = [f"data.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    self.writers = [array_record_module.ArrayRecordWriter(os.path.join(self.tmp, n),
                                                          "group_size:1") for n in self.names]
    self.next = 0  # the next unit to add
    self.count = 0  # records written
    self.prepared = 0  # source rows that gave examples, in the units added
    self.features: dict = {}
    self.bases: list[str] = []

  def add(self, entry: Mapping[str, Any]) -> None:
    """Copies the records of unit `self.next` (finished, `entry` its ledger entry)."""
    b = self.ledger.fetch(self.task, self.split, self.build, self.next)
    fix = bool(self.prepared and entry["auto_idx"])  # idx counted from this unit's start
    auto = None if entry["auto_idx"] == "all" else set(entry["auto_idx"] or ())
    for j, record in enumerate(units.read_records(b, entry["count"]) if entry["count"] else ()):
      if fix and (auto is None or j in auto):
        record = records.encode(_offset(dict(records.decode(record)), self.prepared))
      if self.count == 0:
        self.features = {k: feature_spec(v) for k, v in records.decode(record).items()}
      self.writers[self.count % self.num_shards].write(record)
      self.count += 1
    self.prepared += entry["prepared"]
    self.bases.append(b)
    self.next += 1

  def finish(self) -> dict:
    """Token arrays and manifest of the added units (all of them); publishes. Returns the
    manifest."""
    if self.next != self.num_units:
      raise RuntimeError(f"{self.task}/{self.split}: {self.num_units - self.next} units "
                         "were not added")
    for w in self.writers:
      w.close()
    self.writers = []
    token_features, tmp, total = self.token_features, self.tmp, self.count
    tables = [np.load(b + units.FILES[1]) for b in self.bases]
    lengths = (np.concatenate(tables) if tables else np.zeros((0, len(token_features)), np.int64))
    if len(lengths) != total:
      raise RuntimeError(f"{self.task}/{self.split}: {len(lengths)} token lengths for "
                         f"{total} records")
    if total == 0:
      raise errors.DataError(self.empty_message)
    sums = lengths.sum(axis=0)
    flat = {name: (np.lib.format.open_memmap(os.path.join(tmp, f"{name}.tokens.npy"), "w+",
                                             np.int32, (int(sums[f]),)) if sums[f] else
                   np.zeros(0, np.int32))
            for f, name in enumerate(token_features)}
    pos = np.zeros(len(token_features), np.int64)
    for b in self.bases:
      arrays = units.read_tokens(b)
      for f, name in enumerate(token_features):
        array = arrays[name]
        flat[name][pos[f]:pos[f] + len(array)] = array
        pos[f] += len(array)
    token_arrays = {}
    for f, name in enumerate(token_features):
      array = flat[name]
      if isinstance(array, np.memmap):
        array.flush()
        del array
      else:
        np.save(os.path.join(tmp, f"{name}.tokens.npy"), array)
      offsets = np.zeros(total + 1, np.int64)
      np.cumsum(lengths[:, f], out=offsets[1:])
      np.save(os.path.join(tmp, f"{name}.offsets.npy"), offsets)
      token_arrays[name] = {"tokens": f"{name}.tokens.npy", "offsets": f"{name}.offsets.npy"}
    flat.clear()
    base = self.base
    counts = [len(range(s, total, self.num_shards)) for s in range(self.num_shards)]
    manifest = {
        "format_version": base["format_version"],
        "task": self.task,
        "split": self.split,
        "fingerprint": self.fp,
        "num_examples": total,
        "shards": [{"file": n, "num_examples": c} for n, c in zip(self.names, counts)],
        "features": self.features,
        "post_cache_ops": base["post_cache_ops"],
        "sequence_length": base["sequence_length"],
        "skipped_records": base["skipped_records"],
        "token_lengths": {name: length_stats(lengths[:, f])
                          for f, name in enumerate(token_features)},
        "token_arrays": token_arrays,
        "output_features": base["output_features"],
    }
    with open(os.path.join(tmp, layout.MANIFEST), "w") as f:
      json.dump(manifest, f, indent=1)
    layout.publish_dir(tmp, self.final, self.fp)
    if self.ledger.remote_cache:
      manifest = staging.publish(self.final, self.ledger.cache_dir, self.task, self.split)
    self.ledger.clear(self.task, self.split, self.build)
    return manifest

  def abort(self) -> None:
    for w in self.writers:
      try:
        w.close()
      except Exception:  # pylint: disable=broad-except
        pass
    self.writers = []
    shutil.rmtree(self.tmp, ignore_errors=True)


def assemble(ledger: units.Ledger, task: str, split: str, fp: str, build: str, num_units: int,
             num_shards: int, token_features: Sequence[str], base: Mapping[str, Any],
             empty_message: str) -> dict:
  """Writes the split from its `num_units` finished units at once (`SplitWriter`) and publishes
  it. Returns the manifest."""
  entries = ledger.done(task, split, build)
  missing = [i for i in range(num_units) if i not in entries]
  if missing:
    raise RuntimeError(f"{task}/{split}: units {missing[:5]} are not finished")
  writer = SplitWriter(ledger, task, split, fp, build, num_units, num_shards, token_features,
                       base, empty_message)
  try:
    for i in range(num_units):
      writer.add(entries[i])
    return writer.finish()
  except BaseException:
    writer.abort()
    raise
