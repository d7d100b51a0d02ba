"""A real GCS JSON API server on 127.0.0.1 for tests: `gcp-storage-emulator` (PyPI), in memory.

One server per test process (gcsfs caches its file-system objects, so the endpoint must not
change within a process); every test gets its own bucket. Child processes (the `mtjax` command
lines a test runs) reach the same server through the environment set here.

Two patches make the emulator (2026.7) behave as real GCS where mtjax depends on it:
- media downloads carry `x-goog-generation` / `x-goog-metageneration` (`_send_generation_headers`);
- uploads (media, multipart, resumable: checked when the session starts and when it finishes)
  and deletes honour `ifGenerationMatch`: 412 Precondition Failed unless the live object has that
  generation, 0 meaning "no live object" (`_honour_generation_preconditions`; a delete of a
  missing object stays 404). The emulator ignores preconditions otherwise; mtjax's run lock
  (mtjax/train/runlock.py) relies on them on gs://.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.parse
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


# upload_id of a resumable upload started with ifGenerationMatch -> (bucket, object, generation)
_RESUMABLE_PRECONDITIONS: dict[str, tuple[str, str, str]] = {}


def _honour_generation_preconditions() -> None:
  """Real GCS refuses an upload or a delete whose `ifGenerationMatch` does not hold with 412
  Precondition Failed (`0`: there must be no live object); gcp-storage-emulator ignores the
  parameter. Wraps its insert (media / multipart / resumable start), resumable finish and delete
  handlers. The emulator serves one request at a time, so check-then-write is atomic."""
  from http import HTTPStatus  # pylint: disable=g-import-not-at-top

  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top

  def holds(storage, bucket, name, expected):
    live = storage.objects.get(bucket, {}).get(name)
    return live is None if expected == "0" else (
        live is not None and str(live.get("generation")) == expected)

  def refuse(response):
    message = "At least one of the pre-conditions you specified did not hold."
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": message, "errors": [
        {"domain": "global", "reason": "conditionNotMet", "message": message,
         "locationType": "header", "location": "If-Match"}]}})

  def expected_of(request):
    values = request.query.get("ifGenerationMatch")
    return values[0] if values else None

  original_insert = getattr(objects.insert, "mtjax_original", objects.insert)
  finalize_ = objects._finalize_resumable_object  # pylint: disable=protected-access
  original_finalize = getattr(finalize_, "mtjax_original", finalize_)
  original_delete = getattr(objects.delete, "mtjax_original", objects.delete)

  def insert(request, response, storage, *args, **kwargs):
    expected = expected_of(request)
    kind = (request.query.get("uploadType") or [""])[0]
    if expected is None or "upload_id" in request.query:  # (a resumable chunk: finalize checks)
      return original_insert(request, response, storage, *args, **kwargs)
    data = request.data if isinstance(request.data, dict) else {}
    name = (request.query.get("name") or [None])[0] or (
        data.get("meta", {}).get("name") if kind == "multipart" else data.get("name"))
    bucket = request.params["bucket_name"]
    if not holds(storage, bucket, name, expected):
      return refuse(response)
    original_insert(request, response, storage, *args, **kwargs)
    if kind == "resumable":
      try:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(response["Location"]).query)
        _RESUMABLE_PRECONDITIONS[query["upload_id"][0]] = (bucket, name, expected)
      except KeyError:
        pass

  def finalize(response, storage, obj, data, upload_id):
    pending = _RESUMABLE_PRECONDITIONS.pop(upload_id, None)
    if pending is not None and not holds(storage, *pending):
      return refuse(response)
    return original_finalize(response, storage, obj, data, upload_id)

  def delete(request, response, storage, *args, **kwargs):
    expected = expected_of(request)
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    if (expected is not None and name in storage.objects.get(bucket, {})
        and not holds(storage, bucket, name, expected)):
      return refuse(response)
    return original_delete(request, response, storage, *args, **kwargs)

  for wrapper, original in ((insert, original_insert), (finalize, original_finalize),
                            (delete, original_delete)):
    wrapper.mtjax_original = original
  objects.insert, objects.delete = insert, delete  # the router's fallback calls objects.insert
  objects._finalize_resumable_object = finalize  # pylint: disable=protected-access
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      unwrapped = getattr(handler, "mtjax_original", handler)
      if unwrapped is original_insert:
        handlers[method] = insert
      elif unwrapped is original_delete:
        handlers[method] = delete


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
  _honour_generation_preconditions()
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
