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


def assemble(ledger: units.Ledger, task: str, split: str, fp: str, build: str, num_units: int,
             num_shards: int, token_features: Sequence[str], base: Mapping[str, Any],
             empty_message: str) -> dict:
  """Writes the split from its `num_units` finished units and publishes it (first writer of this
  fingerprint wins; for a remote cache dir: uploaded, manifest last). Returns the manifest."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  entries = ledger.done(task, split, build)
  missing = [i for i in range(num_units) if i not in entries]
  if missing:
    raise RuntimeError(f"{task}/{split}: units {missing[:5]} are not finished")
  bases = [ledger.fetch(task, split, build, i) for i in range(num_units)]
  tables = [np.load(b + units.FILES[1]) for b in bases]
  lengths = (np.concatenate(tables) if tables else np.zeros((0, len(token_features)), np.int64))
  total = len(lengths)
  if total == 0:
    raise errors.DataError(empty_message)
  final = local_split_dir(ledger.cache_dir, task, split)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{split}-tmp-", dir=os.path.dirname(final))
  try:
    names = [f"data.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    writers = [array_record_module.ArrayRecordWriter(os.path.join(tmp, n), "group_size:1")
               for n in names]
    sums = lengths.sum(axis=0)
    flat = {name: (np.lib.format.open_memmap(os.path.join(tmp, f"{name}.tokens.npy"), "w+",
                                             np.int32, (int(sums[f]),)) if sums[f] else
                   np.zeros(0, np.int32))
            for f, name in enumerate(token_features)}
    pos = np.zeros(len(token_features), np.int64)
    features, i, prepared = {}, 0, 0
    for u, b in enumerate(bases):
      entry = entries[u]
      fix = bool(prepared and entry["auto_idx"])  # idx counted from this unit's start
      auto = None if entry["auto_idx"] == "all" else set(entry["auto_idx"] or ())
      if entry["count"]:
        for j, record in enumerate(units.read_records(b, entry["count"])):
          if fix and (auto is None or j in auto):
            record = records.encode(_offset(dict(records.decode(record)), prepared))
          if i == 0:
            features = {k: feature_spec(v) for k, v in records.decode(record).items()}
          writers[i % num_shards].write(record)
          i += 1
        arrays = units.read_tokens(b)
        for f, name in enumerate(token_features):
          array = arrays[name]
          flat[name][pos[f]:pos[f] + len(array)] = array
          pos[f] += len(array)
      prepared += entry["prepared"]
    for w in writers:
      w.close()
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
    counts = [len(range(s, total, num_shards)) for s in range(num_shards)]
    manifest = {
        "format_version": base["format_version"],
        "task": task,
        "split": split,
        "fingerprint": fp,
        "num_examples": total,
        "shards": [{"file": n, "num_examples": c} for n, c in zip(names, counts)],
        "features": features,
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
    layout.publish_dir(tmp, final, fp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if ledger.remote_cache:
    manifest = staging.publish(final, ledger.cache_dir, task, split)
  ledger.clear(task, split, build)
  return manifest
