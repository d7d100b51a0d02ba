"""A real GCS JSON API server on 127.0.0.1 for tests: `gcp-storage-emulator` (PyPI), in memory.

One server per test process (gcsfs caches its file-system objects, so the endpoint must not
change within a process); every test gets its own bucket. Child processes (the `mtjax` command
lines a test runs) reach the same server through the environment set here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid


def _send_generation_headers() -> None:
  """Media downloads from real GCS carry `x-goog-generation` / `x-goog-metageneration` headers;
  gcp-storage-emulator (2026.7) omits them, and TensorStore (Orbax's array writer) then fails
  with "Malformed StorageGeneration" when it rereads an OCDBT manifest. Adds them to the
  emulator's download handler (its route table is a module-level tuple of dicts)."""
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top

  original = getattr(objects.download, "mtjax_original", objects.download)

  def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # pylint: disable=broad-except  (not found: the handler answered 404)
      return
    response["x-goog-generation"] = str(obj.get("generation", "1"))
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    response["x-goog-stored-content-length"] = str(obj.get("size", ""))

  download.mtjax_original = original
  objects.download = download  # `objects.get` (JSON API, alt=media) calls it by this name
  for _, handlers in server.HANDLERS:
    if getattr(handlers.get(server.GET), "mtjax_original", handlers.get(server.GET)) is original:
      handlers[server.GET] = download


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running():
  """Starts the emulator, points gcsfs / google-cloud-storage / TensorStore at it (the documented
  variables), yields its URL and stops it afterwards."""
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EPATH_USE_TF": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  # The emulator logs every request at INFO and every probe for a missing object at ERROR.
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  _send_generation_headers()
  server = create_server("127.0.0.1", port, in_memory=True)
  server.start()
  try:
    yield url
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def new_bucket(prefix: str = "t") -> str:
  """Creates a fresh bucket through the GCS API; returns its name."""
  import gcsfs  # pylint: disable=g-import-not-at-top

  name = f"{prefix}-{uuid.uuid4().hex[:12]}"
  gcsfs.GCSFileSystem().mkdir(name)
  return name
