"""Where a cache's files live, and how a finished split folder is put in place.

  <cache_dir>/<task>/<split>/manifest.json                        a finished split
  <cache_dir>/.build/<task>/<split>/<build id>/unit-*     units of a split being built
  <cache_dir>/.build/.scratch/<pid>-<random>/              a unit being written by one process

A split folder is built under a temporary name and renamed into place by `publish_dir`; its
`manifest.json` is written last, so a manifest means a complete split.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid

from mtjax import fs

MANIFEST = "manifest.json"
BUILD = ".build"  # units of splits being built (a hidden folder: never taken for a task)
SCRATCH = ".scratch"  # under BUILD: each writer's unit files until they are renamed into place


def split_path(cache_dir: str, task: str, split: str) -> str:
  return fs.join(cache_dir, task, split)


def build_id(fingerprint: str, blocks) -> str:
  """A build's id: the task definition's fingerprint and the blocks the split is cut into."""
  layout = hashlib.sha256(repr([tuple(b) for b in blocks]).encode()).hexdigest()
  return f"{fingerprint[:16]}-{layout[:8]}"


def work_path(cache_dir: str, task: str, split: str, build: str) -> str:
  """The folder holding the finished units of one build (`build_id`) of a split."""
  return fs.join(cache_dir, BUILD, task, split, build)


def make_scratch(cache_dir: str) -> str:
  """A new folder of this process's own under `cache_dir`'s build area (same file system as the
  units, so a finished file is renamed into place), removed by `remove_scratch`."""
  path = os.path.join(cache_dir, BUILD, SCRATCH, f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
  for _ in range(100):
    try:
      os.makedirs(path)
      return path
    except FileNotFoundError:  # another process's remove_scratch took an empty parent meanwhile
      continue
  raise RuntimeError(f"could not create {path}: its parent folders keep vanishing")


def remove_scratch(path: str) -> None:
  shutil.rmtree(path, ignore_errors=True)
  for folder in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    try:
      os.rmdir(folder)  # only when empty: other writers' scratch folders stay
    except OSError:
      break


def remove_dir(path: str) -> None:
  """Removes a local folder by renaming it aside first (atomic), so a concurrent writer that
  renames files into it finds it whole or gone, never half-deleted."""
  aside = f"{path}.removed-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    os.replace(path, aside)
  except OSError:
    return  # gone already (or never there)
  shutil.rmtree(aside, ignore_errors=True)


def read_local_manifest(folder: str) -> dict | None:
  try:
    with open(os.path.join(folder, MANIFEST)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def manifest_fingerprint(folder: str) -> str | None:
  return (read_local_manifest(folder) or {}).get("fingerprint")


def publish_dir(tmp: str, final: str, fp: str) -> None:
  """Moves a finished split into place. Several runs sharing a cache dir may build the same split
  at once: whoever publishes a cache of this definition first wins and the others drop theirs; a
  stale cache is renamed aside before removal, so a reader never sees a half-deleted directory
  (and open memory maps of it stay valid). Writers of different definitions racing: last wins."""
  for _ in range(100):
    if manifest_fingerprint(final) == fp:
      shutil.rmtree(tmp, ignore_errors=True)
      return
    if os.path.exists(final):
      stale = tempfile.mkdtemp(prefix=".stale-", dir=os.path.dirname(final))
      try:
        os.replace(final, stale)  # onto an empty directory: allowed, atomic
      except OSError:
        pass  # another writer moved or replaced it first; look again
      shutil.rmtree(stale, ignore_errors=True)
    try:
      os.replace(tmp, final)
      return
    except OSError as e:
      if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
        raise
  raise RuntimeError(f"could not publish the cache at {final}: other writers keep replacing it")
