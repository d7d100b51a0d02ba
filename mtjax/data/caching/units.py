"""Units of work and the ledger of finished ones.

A unit is one block of a task split: rows [start, stop) of its source. A worker writes a unit's
examples as encoded records (`unit-NNNNN.records`: their sizes, then their bytes, back to back)
and their token lengths
(`unit-NNNNN.lengths.npy`), then its ledger entry (`unit-NNNNN.json`: counts) last, each file
under a temporary name renamed into place. A unit is finished exactly when its entry exists, so a
build killed at any moment (SIGKILL included) restarts with the units it had not finished, and two
builders of one unit write the same bytes over each other harmlessly. A build's folder is named
by its id (the task definition's fingerprint and the block layout), so units of builds that cut
a split differently never mix.

The ledger lives in the cache dir (`layout.work_path`), so every host sharing the cache dir sees
every host's finished units. For a remote cache dir (`gs://...`) units are written in the local
mirror (`staging.mirror_root`) and uploaded, entry last; the assembling host downloads the units
it did not build.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

from mtjax import fs
from mtjax.data import records, staging
from mtjax.data.caching import layout


@dataclasses.dataclass(frozen=True)
class Unit:
  task: str
  split: str
  build: str  # the build's id: the task definition's fingerprint and the block layout
  index: int
  start: int
  stop: int | None  # None: to the end of the source (a source whose size is unknown)
  rows: int  # rows it covers (for progress; 0 when unknown)

  @property
  def key(self) -> tuple[str, str]:
    return self.task, self.split

  @property
  def name(self) -> str:
    return f"unit-{self.index:05d}"


# a unit's data files (records, token lengths, flat tokens per feature); its entry comes last
FILES = (".records", ".lengths.npy", ".tokens.npz")


class Ledger:
  """Finished units under one cache dir (local, shared, or a URL)."""

  def __init__(self, cache_dir: str, shared: bool = True):
    """`shared`: for a remote cache dir, keep the units in the store (where every host sees
    them; what a many-host build needs) rather than in this host's mirror only."""
    self.cache_dir = cache_dir
    self.remote_cache = fs.is_url(cache_dir)
    self.local_root = staging.mirror_root(cache_dir) if self.remote_cache else cache_dir
    self.remote = self.remote_cache and shared  # units uploaded
    self.root = cache_dir if self.remote else self.local_root

  def remote_dir(self, task: str, split: str, build: str) -> str:
    return layout.work_path(self.root, task, split, build)

  def local_dir(self, task: str, split: str, build: str) -> str:
    return layout.work_path(self.local_root, task, split, build)

  def done(self, task: str, split: str, build: str) -> dict[int, dict]:
    """index -> entry of every finished unit of this build of the split."""
    folder = self.remote_dir(task, split, build)
    if self.remote:
      fs.forget_listings(folder)
    if not fs.isdir(folder):
      return {}
    out = {}
    try:
      names = fs.listdir(folder)
    except FileNotFoundError:  # published and cleared meanwhile
      return out
    for name in names:
      if name.startswith("unit-") and name.endswith(".json"):
        try:
          out[int(name[5:10])] = json.loads(fs.read_text(fs.join(folder, name)))
        except (OSError, ValueError):
          continue  # (vanished: the split was just published and its units removed)
    return out

  def entry(self, task: str, split: str, build: str, index: int) -> dict:
    """The ledger entry of a finished unit."""
    folder = self.remote_dir(task, split, build)
    return json.loads(fs.read_text(fs.join(folder, f"unit-{index:05d}.json")))

  def has(self, unit: Unit) -> bool:
    """Whether the unit is finished (its entry exists)."""
    return fs.exists(fs.join(self.remote_dir(unit.task, unit.split, unit.build),
                             unit.name + ".json"))

  def write(self, unit: Unit, examples: Iterable[Mapping[str, Any]], token_features,
            prepared: int, auto_idx) -> int:
    """Writes a unit's files and then its entry. Returns the number of examples.

    The files are written in a folder of this writer's own (`layout.make_scratch`) and moved into
    the unit's folder at the end: a concurrent builder that publishes the split meanwhile removes
    the unit's folder (`clear`), never this writer's half-written files, and the moves are retried
    into a re-created folder (the split is then in place; `run.build` removes such leftovers)."""
    folder = self.local_dir(unit.task, unit.split, unit.build)
    scratch = layout.make_scratch(self.local_root)
    try:
      tmp = os.path.join(scratch, unit.name)
      blobs = []
      lengths = []
      tokens = {k: [] for k in token_features}
      for example in examples:
        blobs.append(records.encode(example))
        lengths.append([len(example[k]) for k in token_features])
        for k in token_features:
          tokens[k].append(np.asarray(example[k], np.int32))
      _write_records(tmp + FILES[0], blobs)
      del blobs
      table = np.asarray(lengths, np.int64).reshape(len(lengths), len(token_features))
      with open(tmp + FILES[1], "wb") as f:
        np.save(f, table)
      with open(tmp + FILES[2], "wb") as f:
        np.savez(f, **{k: np.concatenate(v) if v else np.zeros(0, np.int32)
                       for k, v in tokens.items()})
      entry = {"count": len(lengths), "prepared": int(prepared), "auto_idx": auto_idx,
               "start": unit.start, "stop": unit.stop}
      with open(tmp + ".json", "w") as f:
        f.write(json.dumps(entry))
      if self.remote:
        url = self.remote_dir(unit.task, unit.split, unit.build)
        for ext in FILES:
          _put(tmp + ext, fs.join(url, unit.name + ext))
        fs.write_text(fs.join(url, unit.name + ".json"), json.dumps(entry))
      _move_into(tmp, os.path.join(folder, unit.name), (*FILES, ".json"))
    finally:
      layout.remove_scratch(scratch)
    return len(lengths)

  def fetch(self, unit_task: str, split: str, build: str, index: int) -> str:
    """The local path prefix (`.../unit-NNNNN`) of a finished unit's files (downloaded once)."""
    folder = self.local_dir(unit_task, split, build)
    base = os.path.join(folder, f"unit-{index:05d}")
    if not self.remote or all(os.path.exists(base + ext) for ext in (*FILES, ".json")):
      return base
    os.makedirs(folder, exist_ok=True)
    url = self.remote_dir(unit_task, split, build)
    for ext in FILES:
      tmp = base + ext + f".tmp{os.getpid()}"
      _get(fs.join(url, f"unit-{index:05d}{ext}"), tmp)
      os.replace(tmp, base + ext)
    return base

  def clear(self, task: str, split: str, build: str) -> None:
    """Removes a published split's units (and the emptied folders above them). The local folder
    is first renamed aside, so a concurrent writer finds it either whole or gone."""
    layout.remove_dir(self.local_dir(task, split, build))
    if self.remote:
      fs.rmtree(self.remote_dir(task, split, build))
    for root in {self.local_root}:
      for folder in (os.path.join(root, layout.BUILD, task, split),
                     os.path.join(root, layout.BUILD, task), os.path.join(root, layout.BUILD)):
        try:
          os.rmdir(folder)
        except OSError:
          break


def _move_into(src: str, dst: str, exts, tries: int = 20) -> None:
  """Renames src+ext to dst+ext for each ext, the entry (last) marking the unit finished;
  re-creates dst's folder when a concurrent `clear` removed it in between. If a `clear` took
  data files already moved, the entry is taken back: a unit is never finished without its files
  (that only happens once the split is published, so nothing is lost)."""
  for ext in exts:
    for attempt in range(tries):
      try:  # (a `clear` may also take the emptied folders above while they are re-created)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src + ext, dst + ext)
        break
      except FileNotFoundError:
        if not os.path.exists(src + ext) or attempt == tries - 1:
          raise
  if not all(os.path.exists(dst + ext) for ext in exts):
    try:
      os.remove(dst + exts[-1])
    except FileNotFoundError:
      pass


def _put(local: str, url: str) -> None:
  with open(local, "rb") as src, fs.open(url, "wb") as dst:
    while chunk := src.read(1 << 24):
      dst.write(chunk)


def _get(url: str, local: str) -> None:
  with fs.open(url, "rb") as src, open(local, "wb") as dst:
    while chunk := src.read(1 << 24):
      dst.write(chunk)


def _write_records(path: str, blobs: list[bytes]) -> None:
  """A unit's records: their count and sizes (int64), then the records back to back. (Not an
  ArrayRecord file: a unit is read once, whole, by the assembler, which compresses the shards.)"""
  sizes = np.asarray([len(b) for b in blobs], np.int64)
  with open(path, "wb") as f:
    f.write(np.asarray([len(blobs)], np.int64).tobytes())
    f.write(sizes.tobytes())
    f.write(b"".join(blobs))


def read_records(base: str, count: int) -> Iterable[bytes]:
  """A finished unit's records, in order."""
  with open(base + FILES[0], "rb") as f:
    data = f.read()
  n = int(np.frombuffer(data, np.int64, 1)[0])
  if n != count:
    raise ValueError(f"{base}{FILES[0]}: {n} records, its entry says {count}")
  ends = np.cumsum(np.frombuffer(data, np.int64, n, 8)) + 8 * (n + 1)
  start = 8 * (n + 1)
  for end in ends.tolist():
    yield data[start:end]
    start = end


def read_tokens(base: str) -> dict[str, np.ndarray]:
  """A finished unit's flat token arrays, by feature."""
  with np.load(base + FILES[2]) as data:
    return {k: data[k] for k in data.files}
