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
  # The emulator logs every request (and clients' dropped keep-alive sockets) at INFO.
  logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
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
