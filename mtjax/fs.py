"""Paths that may be URLs: the one file-system layer of the package.

Every path a user gives mtjax (run dir, checkpoints, cache dir, config files, HF dirs, export
targets) may be a local path or a URL such as `gs://bucket/runs/t0`. Local paths go through `os`
(fast, atomic renames); URLs go through fsspec, the layer under `etils.epath` with which Orbax
writes its checkpoints, so gcsfs serves `gs://` for our files and for Orbax's metadata alike
(Orbax writes array data through TensorStore's own GCS driver). Other fsspec schemes (`s3://`,
`memory://`, ...) work where their fsspec package is installed.

Object stores have no atomic rename and no append. Code that needs those works on a local copy
and publishes it: `download_tree` / `upload_tree` for directories (the cache, HF checkpoints),
and `write_text` for single files (an object appears whole when its upload finishes).

Emulators: set `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT` (the variable gcsfs and
google-cloud-storage read); this module points TensorStore at the same server and turns off
gcsfs's zonal-bucket probe, which such servers do not implement (FACTS: it waits 60 s a bucket).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
from typing import Any

# etils.epath routes gs:// through tf.io.gfile whenever TensorFlow is installed, which would import
# TensorFlow on the training path and ignore the fsspec settings; fsspec (gcsfs) it is.
os.environ.setdefault("EPATH_USE_TF", "false")
if os.environ.get("STORAGE_EMULATOR_HOST"):
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", os.environ["STORAGE_EMULATOR_HOST"])
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")


class StorageError(OSError):
  """A path that cannot be used: its message is one line naming the path and the cause."""


def is_url(path: str | os.PathLike) -> bool:
  """True for `scheme://...` paths other than `file://`."""
  m = _URL.match(os.fspath(path))
  return bool(m) and m.group(1).lower() != "file"


def _local(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  return path[len("file://"):] if path.startswith("file://") else path


def abspath(path: str | os.PathLike) -> str:
  """`os.path.abspath` for local paths; a URL is returned as given (without a trailing '/')."""
  path = os.fspath(path)
  if is_url(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rstrip('/')}" if rest.rstrip("/") else path
  return os.path.abspath(_local(path))


def join(path: str, *parts: str) -> str:
  """Joins with '/' for URLs (and like `os.path.join` locally)."""
  return os.path.join(os.fspath(path), *parts)


def _fs(path: str):
  """(fsspec file system, path inside it) for a URL."""
  import fsspec  # pylint: disable=g-import-not-at-top

  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    scheme = path.split("://", 1)[0]
    raise StorageError(f"{path}: no file system for {scheme}:// ({e})") from None


def exists(path: str) -> bool:
  if not is_url(path):
    return os.path.exists(_local(path))
  fs, p = _fs(path)
  return fs.exists(p)


def isdir(path: str) -> bool:
  if not is_url(path):
    return os.path.isdir(_local(path))
  fs, p = _fs(path)
  return fs.isdir(p)


def isfile(path: str) -> bool:
  if not is_url(path):
    return os.path.isfile(_local(path))
  fs, p = _fs(path)
  return fs.isfile(p)


def listdir(path: str) -> list[str]:
  """Names (not paths) in a directory, like `os.listdir`."""
  if not is_url(path):
    return os.listdir(_local(path))
  fs, p = _fs(path)
  fs.invalidate_cache(p)
  if not fs.isdir(p):
    raise FileNotFoundError(f"{path}: no such directory")
  return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)
                 if e.rstrip("/") != p.rstrip("/")})


def makedirs(path: str) -> None:
  """Creates a local directory (and parents). Object stores have no directories: a no-op."""
  if not is_url(path):
    os.makedirs(_local(path), exist_ok=True)


def open(path: str, mode: str = "r", **kwargs):  # pylint: disable=redefined-builtin
  """A file object; remote writes appear whole when the file is closed."""
  if not is_url(path):
    return builtins.open(_local(path), mode, **kwargs)
  fs, p = _fs(path)
  return fs.open(p, mode, **kwargs)


def read_text(path: str) -> str:
  with open(path, "r") as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes a whole file so that no reader ever sees part of it: locally through a per-writer
  temporary file and a rename, remotely as one object upload."""
  if is_url(path):
    with open(path, "w") as f:
      f.write(text)
    return
  path = _local(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with builtins.open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def write_json(path: str, obj: Any, indent: int | None = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent) + "\n")


def remove(path: str) -> None:
  if not is_url(path):
    os.remove(_local(path))
    return
  fs, p = _fs(path)
  fs.rm_file(p)


def rename(src: str, dst: str) -> None:
  """Moves a file or folder. Local: one atomic rename. A bucket has no rename: every object
  is copied, then the originals are deleted (a crash in between leaves both, never neither)."""
  if not is_url(src):
    os.rename(_local(src), _local(dst))
    return
  fs, p = _fs(src)
  _, q = _fs(dst)
  if fs.isdir(p):
    fs.copy(p.rstrip("/") + "/", q, recursive=True)
    fs.rm(p, recursive=True)
  else:
    fs.copy(p, q)
    fs.rm_file(p)
  forget_listings(src)
  forget_listings(dst)


def rmtree(path: str) -> None:
  if not is_url(path):
    shutil.rmtree(_local(path), ignore_errors=True)
    return
  fs, p = _fs(path)
  if fs.exists(p):
    fs.rm(p, recursive=True)


def download_tree(url: str, local_dir: str) -> None:
  """Copies every file under `url` into `local_dir` (created), keeping relative paths."""
  if not is_url(url):
    shutil.copytree(_local(url), local_dir, dirs_exist_ok=True)
    return
  fs, p = _fs(url)
  p = p.rstrip("/")
  os.makedirs(local_dir, exist_ok=True)
  for remote in fs.find(p):
    rel = remote[len(p) + 1:]
    target = os.path.join(local_dir, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.get_file(remote, target)


def upload_tree(local_dir: str, url: str, last: tuple[str, ...] = ()) -> None:
  """Copies every file under `local_dir` to `url`. Files named in `last` (relative paths) are
  uploaded after all others, so a reader that trusts them (a manifest) never sees a partial tree."""
  if not is_url(url):
    shutil.copytree(local_dir, _local(url), dirs_exist_ok=True)
    return
  fs, p = _fs(url)
  p = p.rstrip("/")
  files = []
  for root, _, names in os.walk(local_dir):
    for name in names:
      files.append(os.path.relpath(os.path.join(root, name), local_dir))
  files.sort(key=lambda rel: (rel in last, rel))
  for rel in files:
    fs.put_file(os.path.join(local_dir, rel), f"{p}/{rel.replace(os.sep, '/')}")


def check_usable(path: str, what: str) -> None:
  """Raises StorageError (one line: `what`, the path, the cause) unless the bucket or host that
  `path` lives on can be listed. Local paths pass (they are created on demand)."""
  if not is_url(path):
    return
  scheme, rest = path.split("://", 1)
  bucket = rest.split("/", 1)[0]
  if not bucket:
    raise StorageError(f"{what} {path}: no bucket in the URL")
  fs, _ = _fs(path)
  root = f"{scheme}://{bucket}"
  unreachable = _unreachable(getattr(fs, "_location", ""))
  if unreachable:  # fail in a second, not after the client's ~35 s of connection retries
    raise StorageError(f"{what} {path}: cannot reach {root}: {unreachable}")
  try:
    fs.ls(bucket, detail=False)
  except FileNotFoundError:
    raise StorageError(f"{what} {path}: bucket {root} does not exist (typo?)") from None
  except PermissionError as e:
    raise StorageError(f"{what} {path}: no access to {root} ({_first_line(e)}); check the "
                       "credentials (gcloud auth application-default login, or "
                       "GOOGLE_APPLICATION_CREDENTIALS)") from None
  except Exception as e:  # pylint: disable=broad-except  (network, auth libraries, HTTP errors)
    raise StorageError(f"{what} {path}: cannot reach {root}: {type(e).__name__}: "
                       f"{_first_line(e)}") from None


def _unreachable(endpoint: str, timeout: float = 10.0) -> str:
  """Why a TCP connection to the storage endpoint (an http(s) URL) fails, or "" if it opens (or
  the endpoint is unknown, or a proxy is configured)."""
  import socket  # pylint: disable=g-import-not-at-top
  import urllib.parse  # pylint: disable=g-import-not-at-top

  url = urllib.parse.urlparse(endpoint or "")
  if url.scheme not in ("http", "https") or not url.hostname:
    return ""
  if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                     "ALL_PROXY", "all_proxy")):
    return ""  # through a proxy a direct connection may fail where the client's succeeds
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    socket.create_connection((url.hostname, port), timeout=timeout).close()
  except OSError as e:
    return f"no connection to {url.hostname}:{port} ({e.strerror or type(e).__name__})"
  return ""


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0][:300]


def append_text(path: str, text: str) -> None:
  """Appends to a file. Object stores cannot append: the object is read and rewritten, which is
  fine for the small, rarely written files this is for (evaluation rows); logs written every few
  steps use `WorkingCopy` instead."""
  if not is_url(path):
    os.makedirs(os.path.dirname(os.path.abspath(_local(path))), exist_ok=True)
    with builtins.open(_local(path), "a") as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ""
  write_text(path, old + text)


class WorkingCopy:
  """A local folder standing in for a remote one, for files that grow (metrics.jsonl,
  TensorBoard event files): they are written locally and `sync()` uploads the files that changed
  since the last sync. For a local directory the copy is the directory itself (sync: no-op)."""

  def __init__(self, directory: str):
    self.remote = is_url(directory)
    self.directory = abspath(directory)
    if self.remote:
      import tempfile  # pylint: disable=g-import-not-at-top
      self.local = tempfile.mkdtemp(prefix="mtjax-working-copy-")
    else:
      self.local = self.directory
      os.makedirs(self.local, exist_ok=True)
    self._synced: dict[str, tuple[int, int]] = {}

  def path(self, relative: str) -> str:
    """The local path of `relative`, where it is written and read."""
    return os.path.join(self.local, relative)

  def pull(self, relative: str) -> bool:
    """Downloads `relative` from the remote folder if it exists there; True if it did."""
    if not self.remote:
      return os.path.exists(self.path(relative))
    url = join(self.directory, relative)
    if not exists(url):
      return False
    target = self.path(relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs, p = _fs(url)
    fs.get_file(p, target)
    self._synced[relative] = _signature(target)
    return True

  def sync(self) -> None:
    """Uploads every local file that is new or changed since the last sync."""
    if not self.remote:
      return
    for root, _, names in os.walk(self.local):
      for name in names:
        local = os.path.join(root, name)
        rel = os.path.relpath(local, self.local).replace(os.sep, "/")
        sig = _signature(local)
        if self._synced.get(rel) != sig:
          fs, p = _fs(join(self.directory, rel))
          fs.put_file(local, p)
          self._synced[rel] = sig

  def close(self) -> None:
    self.sync()
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


def _signature(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def local_dir_to_read(path: str):
  """Yields a local directory holding the files under `path`: `path` itself when local, else a
  temporary download (removed afterwards). For readers that need real files (safetensors,
  ArrayRecord, memory maps)."""
  if not is_url(path):
    yield _local(path)
    return
  import tempfile  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="mtjax-download-")
  try:
    download_tree(path, tmp)
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_dir_to_write(path: str, last: tuple[str, ...] = ()):
  """Yields a local directory whose files end up under `path`: `path` itself when local
  (created), else a temporary folder uploaded when the block ends without an error (`last`: see
  `upload_tree`)."""
  if not is_url(path):
    os.makedirs(_local(path), exist_ok=True)
    yield _local(path)
    return
  import tempfile  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="mtjax-upload-")
  try:
    yield tmp
    upload_tree(tmp, path, last=last)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def forget_listings(path: str) -> None:
  """Drops what this process's fsspec client remembers of the listings of `path` and its parents
  (it caches listings, and takes a file's size from them): files another process wrote or
  replaced there are then seen as they are. Local paths: no-op."""
  if is_url(path):
    fs, p = _fs(path)
    fs.invalidate_cache(p)
    # Orbax reaches the bucket through etils.epath, which may hold its own client of the same
    # class (other constructor arguments), and a folder's own cached listing (not only its
    # parents') makes it "exist": those clients forget everything.
    for other in list(type(fs)._cache.values()):  # pylint: disable=protected-access
      other.invalidate_cache()
