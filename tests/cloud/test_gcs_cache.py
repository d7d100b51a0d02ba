"""`data.cache_dir` on GCS (a real GCS API server on 127.0.0.1): the cache is written to the bucket
with the manifest last, read through a local staging copy per host, and gives the same batches
as a local cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

from mtjax import fs
from mtjax.data import cache, mixing, pipeline, staging

LENGTHS = {"inputs": 32, "targets": 8}


@pytest.fixture(autouse=True)
def staging_dir(tmp_path, monkeypatch):
  """Each test stages into its own folder and starts with nothing remembered."""
  monkeypatch.setenv("MTJAX_STAGING_DIR", str(tmp_path / "staging"))
  staging.forget()
  yield str(tmp_path / "staging")
  staging.forget()


@pytest.fixture
def synthetic_tasks():
  """Registers the built-in synthetic tasks (their module is moving from mixtures/ into mtjax/)."""
  import importlib  # pylint: disable=g-import-not-at-top

  try:
    importlib.import_module("mtjax.mixtures.synthetic")
  except ImportError:
    importlib.import_module("mixtures.synthetic")


def _objects(url):
  import gcsfs  # pylint: disable=g-import-not-at-top

  gcs = gcsfs.GCSFileSystem()
  gcs.invalidate_cache()
  root = url.split("://", 1)[1]
  return {o["name"][len(root) + 1:]: o for o in gcs.find(root, detail=True).values()}


def _count(monkeypatch, module, name):
  calls = []
  real = getattr(module, name)
  monkeypatch.setattr(module, name, lambda *a, **k: (calls.append(a), real(*a, **k))[1])
  return calls


def _batches(spec, cache_dir, n=3):
  options = pipeline.PipelineOptions(LENGTHS, batch_size=4, seed=5, prefetch=0)
  it = iter(pipeline.train_batches(spec, cache_dir, options))
  return [next(it) for _ in range(n)]


def test_cache_mixture_on_gcs_is_uploaded_once_and_reads_like_a_local_cache(
    gcs_bucket, synthetic_cache, synthetic_tasks, staging_dir, monkeypatch):
  url = f"{gcs_bucket}/cache"
  spec = cache.cache_mixture("synthetic", url)
  objects = _objects(url)
  for task in spec.task_names:
    for split in ("train", "validation"):
      prefix = f"{task}/{split}/"
      for name in ("manifest.json", "data.array_record-00000-of-00001", "inputs.tokens.npy",
                   "inputs.offsets.npy", "targets.tokens.npy", "targets.offsets.npy"):
        assert prefix + name in objects, (prefix + name, sorted(objects)[:20])
  assert "mixtures/synthetic.json" in objects
  assert mixing.read_spec("synthetic", url) == spec

  # Cached again (a fresh process: nothing remembered): nothing is built or uploaded.
  staging.forget()
  uploads = _count(monkeypatch, fs, "upload_tree")
  assert cache.cache_mixture("synthetic", url) == spec
  assert not uploads
  again = _objects(url)
  for key in objects:
    if key.endswith("manifest.json"):
      assert again[key]["generation"] == objects[key]["generation"], key

  # Read in a fresh process on another host (empty staging dir): the same batches, bit for bit,
  # as from a local cache of the same mixture.
  monkeypatch.setenv("MTJAX_STAGING_DIR", staging_dir + "-host2")
  staging.forget()
  downloads = _count(monkeypatch, fs, "download_tree")
  remote, local = _batches(spec, url), _batches(spec, synthetic_cache)
  for a, b in zip(remote, local):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert len(downloads) == len(spec.task_names)  # the train splits, once each
  folder = cache.split_dir(url, spec.task_names[0], "train")
  assert folder.startswith(staging_dir + "-host2") and os.path.isfile(
      os.path.join(folder, "inputs.tokens.npy"))

  # A second process on that host reuses the staged copy: no download.
  staging.forget()
  downloads.clear()
  _batches(spec, url, n=1)
  assert not downloads


@pytest.fixture
def copy_task(synthetic_tasks):
  return seqio.get_mixture_or_task("synthetic_copy")


def test_changed_remote_manifest_is_downloaded_again(gcs_bucket, copy_task, monkeypatch):
  url = f"{gcs_bucket}/cache"
  cache.cache_task_split(copy_task, "validation", url)
  monkeypatch.setenv("MTJAX_STAGING_DIR", os.environ["MTJAX_STAGING_DIR"] + "-reader")
  staging.forget()
  downloads = _count(monkeypatch, fs, "download_tree")
  first = pipeline.require_manifest(url, "synthetic_copy", "validation")
  assert len(downloads) == 1
  staging.forget()
  assert pipeline.require_manifest(url, "synthetic_copy", "validation") == first
  assert len(downloads) == 1  # same fingerprint: the staged copy is reused

  changed = dict(first, fingerprint="0" * 64, num_examples=first["num_examples"] - 1)
  fs.write_json(f"{url}/synthetic_copy/validation/manifest.json", changed)
  staging.forget()
  got = pipeline.require_manifest(url, "synthetic_copy", "validation")
  assert len(downloads) == 2 and got == changed
  with open(os.path.join(cache.split_dir(url, "synthetic_copy", "validation"),
                         "manifest.json")) as f:
    assert json.load(f) == changed
  folder = os.path.dirname(cache.split_dir(url, "synthetic_copy", "validation"))
  assert os.listdir(folder) == ["validation"]  # no temporary or stale folders left


def test_split_without_manifest_is_neither_read_nor_reused(gcs_bucket, copy_task, tmp_path,
                                                           monkeypatch):
  url = f"{gcs_bucket}/cache"
  local = str(tmp_path / "local")
  cache.cache_task_split(copy_task, "validation", local)
  # A writer died after uploading the data files, before the manifest.
  split = os.path.join(local, "synthetic_copy", "validation")
  os.rename(os.path.join(split, "manifest.json"), str(tmp_path / "manifest.json"))
  fs.upload_tree(split, f"{url}/synthetic_copy/validation")
  os.rename(str(tmp_path / "manifest.json"), os.path.join(split, "manifest.json"))
  with pytest.raises(FileNotFoundError, match=f"under {url}"):
    pipeline.require_manifest(url, "synthetic_copy", "validation")
  assert not os.path.exists(cache.split_dir(url, "synthetic_copy", "validation"))

  uploads = _count(monkeypatch, fs, "upload_tree")
  manifest = cache.cache_task_split(copy_task, "validation", url)  # rebuilt and published
  assert len(uploads) == 1
  assert fs.read_json(f"{url}/synthetic_copy/validation/manifest.json") == manifest
  for a, b in zip(pipeline.read_examples(url, "synthetic_copy", "validation", limit=2),
                  pipeline.read_examples(local, "synthetic_copy", "validation", limit=2)):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_cache_command_names_a_missing_bucket_in_one_line(gcs_server, tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run(
      [sys.executable, "-m", "mtjax.cli", "cache", "--mixture_or_task=synthetic",
       "--cache_dir=gs://nosuchbucket-x/c"],
      capture_output=True, text=True, timeout=120, cwd=root,
      env={**os.environ, "MTJAX_STAGING_DIR": str(tmp_path)})
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert "gs://nosuchbucket-x/c" in lines[0] and "data.cache_dir" in lines[0]
  assert "Traceback" not in proc.stderr


def test_concurrent_stagers_on_one_host_leave_one_complete_copy(gcs_bucket, copy_task):
  import threading
  url = f"{gcs_bucket}/cache"
  remote = cache.cache_task_split(copy_task, "validation", url)
  final = os.path.join(os.environ["MTJAX_STAGING_DIR"] + "-host", "synthetic_copy", "validation")
  results, errors = [], []

  def stage():
    try:
      results.append(staging._download(f"{url}/synthetic_copy/validation", final, remote))  # pylint: disable=protected-access
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=stage) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  assert len(results) == 4 and all(r == remote for r in results)
  assert os.listdir(os.path.dirname(final)) == ["validation"]
  assert sorted(os.listdir(final)) == sorted(_objects(f"{url}/synthetic_copy/validation"))
