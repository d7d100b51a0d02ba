"""Where a cache's files live, and how a finished split folder is put in place.

  <cache_dir>/<task>/<split>/manifest.json                        a finished split
  <cache_dir>/.build/<task>/<split>/<build id>/unit-*     units of a split being built

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

from mtjax import fs

MANIFEST = "manifest.json"
BUILD = ".build"  # units of splits being built (a hidden folder: never taken for a task)


def split_path(cache_dir: str, task: str, split: str) -> str:
  return fs.join(cache_dir, task, split)


def build_id(fingerprint: str, blocks) -> str:
  """A build's id: the task definition's fingerprint and the blocks the split is cut into."""
  layout = hashlib.sha256(repr([tuple(b) for b in blocks]).encode()).hexdigest()
  return f"{fingerprint[:16]}-{layout[:8]}"


def work_path(cache_dir: str, task: str, split: str, build: str) -> str:
  """The folder holding the finished units of one build (`build_id`) of a split."""
  return fs.join(cache_dir, BUILD, task, split, build)


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
