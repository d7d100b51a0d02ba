"""A remote cache dir (`gs://...`) read through a local staging copy, one per host.

ArrayRecord readers and the memory-mapped token arrays that training reads need local files, so a
split of a remote cache is downloaded once into a local mirror and read there: the training hot
path is the same as for a local cache. The mirror of `<url>` is
`$MTJAX_STAGING_DIR/<sha256(url)[:16]>/` (default `~/.cache/mtjax/staging/...`), laid out like the
cache itself (`<task>/<split>/`).

A split's `manifest.json` is uploaded last (`publish`), so a remote manifest means a complete
split. Before a split is read (`stage`), its local copy must exist and carry the remote manifest's
fingerprint and format; otherwise the split is downloaded into a temporary folder that is renamed
into place (`caching.layout.publish_dir`: concurrent processes on one host are safe, and a crashed
download is never taken for a complete one). A process reads each remote manifest once and remembers it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

from mtjax import fs
from mtjax.data.caching import layout

MANIFEST = layout.MANIFEST

log = logging.getLogger(__name__)

# (cache url, task, split) -> remote manifest, as read (or published) by this process.
_remote: dict[tuple[str, str, str], dict] = {}
# (cache url, task, split) -> manifest of the local copy known to match the remote one.
_staged: dict[tuple[str, str, str], dict] = {}


def mirror_root(cache_dir: str) -> str:
  """The local folder that mirrors the remote cache dir `cache_dir`."""
  url = fs.abspath(cache_dir)
  base = os.environ.get("MTJAX_STAGING_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "mtjax", "staging")
  return os.path.join(base, hashlib.sha256(url.encode()).hexdigest()[:16])


def local_split_dir(cache_dir: str, task: str, split: str) -> str:
  return os.path.join(mirror_root(cache_dir), task, split)


def _key(cache_dir: str, task: str, split: str) -> tuple[str, str, str]:
  return fs.abspath(cache_dir), task, split


def _read_remote(url: str) -> dict | None:
  """The manifest under the split folder `url` as stored now (None if there is none)."""
  fs.forget_listings(url)
  try:
    return json.loads(fs.read_text(fs.join(url, MANIFEST)))
  except FileNotFoundError:
    return None


def remote_manifest(cache_dir: str, task: str, split: str) -> dict | None:
  """The remote split's manifest; read once per process (a missing one is asked again)."""
  key = _key(cache_dir, task, split)
  if key not in _remote:
    manifest = _read_remote(fs.join(key[0], task, split))
    if manifest is None:
      return None
    _remote[key] = manifest
  return _remote[key]


def current_manifest(cache_dir: str, task: str, split: str) -> dict | None:
  """The remote split's manifest as stored now (asks the store every time: for builders polling
  for other hosts' work); remembered as `remote_manifest` is."""
  key = _key(cache_dir, task, split)
  manifest = _read_remote(fs.join(key[0], task, split))
  if manifest is None:
    _remote.pop(key, None)
  else:
    _remote[key] = manifest
  return manifest


def _read_local(folder: str) -> dict | None:
  return layout.read_local_manifest(folder)


def _same(a: dict | None, b: dict | None) -> bool:
  return bool(a and b) and all(a.get(k) == b.get(k) for k in ("fingerprint", "format_version"))


def stage(cache_dir: str, task: str, split: str) -> dict | None:
  """Makes the local copy of a remote split current; returns its (local) manifest, or None when
  the remote split has no manifest (absent, or still being written)."""
  key = _key(cache_dir, task, split)
  if key in _staged:
    return _staged[key]
  remote = remote_manifest(cache_dir, task, split)
  if remote is None:
    return None
  final = local_split_dir(cache_dir, task, split)
  local = _read_local(final)
  if not _same(local, remote):
    local = _download(fs.join(key[0], task, split), final, remote)
    if local is None:
      _remote.pop(key, None)
      return None
  _staged[key] = local
  return local


def _download(url: str, final: str, remote: dict) -> dict | None:
  """Downloads the split at `url` into `final` (via a temporary folder and a rename). Checks that
  the remote manifest did not change meanwhile (a writer replacing the split), else retries."""
  os.makedirs(os.path.dirname(final), exist_ok=True)
  for _ in range(5):
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}-download-",
                           dir=os.path.dirname(final))
    try:
      try:
        fs.download_tree(url, tmp)
      except FileNotFoundError:  # a file vanished under us: the split is being replaced
        pass
      now = _read_remote(url)
      if now is not None and _same(now, remote) and _same(_read_local(tmp), remote):
        layout.publish_dir(tmp, final, remote["fingerprint"])
        log.info("staged %s into %s", url, final)
        return _read_local(final)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    if now is None:
      return None
    remote = now
  raise RuntimeError(f"could not stage {url}: its manifest keeps changing")


def publish(local_dir: str, cache_dir: str, task: str, split: str) -> dict:
  """Uploads a finished local split (the mirror's) to the remote cache, manifest last. If the
  remote split already has this fingerprint, it is kept (first writer wins, as locally). A stale
  remote manifest is removed before the new files go up, so no reader trusts it meanwhile."""
  key = _key(cache_dir, task, split)
  url = fs.join(key[0], task, split)
  manifest = _read_local(local_dir)
  current = _read_remote(url)
  if current is not None and _same(current, manifest):
    _remote[key] = current
    return current
  if current is not None:
    fs.remove(fs.join(url, MANIFEST))
  fs.upload_tree(local_dir, url, last=(MANIFEST,))
  _remote[key] = manifest
  _staged[key] = manifest
  log.info("uploaded %s", url)
  return manifest


def forget() -> None:
  """Forgets the remote manifests this process read (the next read asks the store again)."""
  _remote.clear()
  _staged.clear()
