"""The run lock on gs:// (a GCS API server on 127.0.0.1 that honours ifGenerationMatch, as GCS
does): exclusive create, heartbeat, takeover of stale locks by exactly one contender."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from mtjax import errors, fs
from mtjax.train import runlock
from tests.train.test_runlock import race

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _release_locks_left_by_a_failing_test(monkeypatch):
  """(Their heartbeat threads would otherwise keep calling the server after the test.)"""
  taken, acquire = [], runlock.acquire

  def tracking(*args, **kwargs):
    taken.append(acquire(*args, **kwargs))
    return taken[-1]

  monkeypatch.setattr(runlock, "acquire", tracking)
  yield
  for lock in taken:
    lock.release()


def _gcs(url):
  f, p = fs._fs(url)  # pylint: disable=protected-access
  bucket, key, _ = f.split_path(p)
  return f, p, bucket, key


def _generation(url):
  f, p, _, _ = _gcs(url)
  f.invalidate_cache(p)
  return f.info(p)["generation"]


def _killed_holder(run_dir):
  """A child process that took the lock and was killed with SIGKILL; returns its pid."""
  child = subprocess.Popen(
      [sys.executable, "-c",
       "import time; from mtjax.train import runlock; "
       f"runlock.acquire({run_dir!r}, command='mtjax train'); print('held', flush=True); "
       "time.sleep(60)"],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held"
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  return child.pid


def test_the_server_refuses_uploads_and_deletes_whose_generation_does_not_match(gcs_bucket):
  url = f"{gcs_bucket}/obj"
  f, p, bucket, key = _gcs(url)
  f.pipe_file(p, b"1", mode="create")
  with pytest.raises(FileExistsError):  # 412: ifGenerationMatch=0 on an existing object
    f.pipe_file(p, b"2", mode="create")
  first = _generation(url)
  upload = f"{f._location}/upload/storage/v1/b/{bucket}/o"  # pylint: disable=protected-access
  with pytest.raises(FileExistsError):
    f.call("POST", upload, uploadType="media", name=key, data=b"3",
           ifGenerationMatch=str(int(first) + 1))
  f.call("POST", upload, uploadType="media", name=key, data=b"4", ifGenerationMatch=first)
  second = _generation(url)
  assert second != first and f.cat_file(p) == b"4"
  with pytest.raises(FileExistsError):
    f.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=first)
  assert f.cat_file(p) == b"4"
  # A resumable upload is checked when it starts and again when it finishes.
  with pytest.raises(FileExistsError):
    f.call("POST", upload, uploadType="resumable", json={"name": key}, ifGenerationMatch="0")
  f.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=second)
  headers, _ = f.call("POST", upload, uploadType="resumable", json={"name": key},
                      ifGenerationMatch="0")
  f.pipe_file(p, b"5")  # someone else creates the object before the session finishes
  with pytest.raises(FileExistsError):
    f.call("PUT", headers["Location"], data=b"6", headers={"Content-Range": "bytes 0-0/1"})
  assert f.cat_file(p) == b"5"


def test_second_acquire_is_refused_and_release_frees_the_run_dir(gcs_bucket):
  run_dir = f"{gcs_bucket}/run"
  lock = runlock.acquire(run_dir, command="mtjax train")
  with pytest.raises(errors.RunDirError) as e:
    runlock.acquire(run_dir, command="mtjax promot")
  message = str(e.value)
  assert "\n" not in message and f"pid {os.getpid()} on host" in message
  assert message.startswith(f"run_dir {run_dir} is in use by mtjax train (pid ")
  assert "last heartbeat" in message and message.endswith(f"(lock file {run_dir}/run.lock)")
  holder = json.loads(fs.read_text(f"{run_dir}/run.lock"))
  assert holder["pid"] == os.getpid() and holder["command"] == "mtjax train"
  lock.release()
  lock.release()
  fs.forget_listings(run_dir)
  assert not fs.exists(f"{run_dir}/run.lock")
  with runlock.acquire(run_dir, command="mtjax ablate member") as again:
    again.check()


def test_a_holder_killed_on_this_host_is_taken_over_at_once(gcs_bucket, caplog):
  run_dir = f"{gcs_bucket}/run"
  pid = _killed_holder(run_dir)
  with caplog.at_level(logging.WARNING, logger="mtjax.train.runlock"):
    lock = runlock.acquire(run_dir)
  lock.release()
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and f"pid {pid} on host" in warnings[0], warnings
  assert "process is gone" in warnings[0]


def test_a_lock_with_an_old_heartbeat_is_taken_over(gcs_bucket, monkeypatch, caplog):
  run_dir = f"{gcs_bucket}/run"
  monkeypatch.setenv("MTJAX_LOCK_STALE_SECONDS", "1")
  monkeypatch.setenv("MTJAX_LOCK_HEARTBEAT_SECONDS", "3600")  # the holder stops beating
  old = runlock.acquire(run_dir, command="mtjax train")
  monkeypatch.setattr(runlock, "_PID_NS", "another machine")  # judged by its heartbeat alone
  with pytest.raises(errors.RunDirError, match="is in use by mtjax train"):
    runlock.acquire(run_dir)
  time.sleep(2.2)  # (the server's Date header has whole seconds)
  with caplog.at_level(logging.WARNING, logger="mtjax.train.runlock"):
    new = runlock.acquire(run_dir, command="mtjax promot")
  assert "last heartbeat is" in caplog.text
  old.release()  # deletes only its own generation: the new holder's lock stays
  fs.forget_listings(run_dir)
  assert json.loads(fs.read_text(f"{run_dir}/run.lock"))["command"] == "mtjax promot"
  new.release()


def test_two_racing_takeovers_of_a_dead_holder_exactly_one_wins(gcs_bucket):
  for round_ in range(2):
    run_dir = f"{gcs_bucket}/run{round_}"
    _killed_holder(run_dir)
    won, refused = race(run_dir, 6)
    assert len(won) == 1 and refused == 5, (len(won), refused)
    won[0].release()


def test_heartbeat_keeps_the_lock_fresh_and_a_failed_precondition_marks_it_lost(
    gcs_bucket, monkeypatch, caplog):
  run_dir = f"{gcs_bucket}/run"
  url = f"{run_dir}/run.lock"
  monkeypatch.setenv("MTJAX_LOCK_STALE_SECONDS", "1.5")
  monkeypatch.setenv("MTJAX_LOCK_HEARTBEAT_SECONDS", "0.2")
  lock = runlock.acquire(run_dir)
  first = _generation(url)
  monkeypatch.setattr(runlock, "_PID_NS", "another machine")
  time.sleep(2.5)
  with pytest.raises(errors.RunDirError, match="is in use"):  # fresh: the heartbeat rewrote it
    runlock.acquire(run_dir)
  assert _generation(url) != first
  lock.check()
  f, p, _, _ = _gcs(url)
  f.pipe_file(p, b"{}")  # another writer replaces the object
  deadline = time.time() + 10
  with caplog.at_level(logging.ERROR, logger="mtjax.train.runlock"):
    while time.time() < deadline:
      try:
        lock.check()
      except errors.RunDirError as e:
        assert "lost its lock file" in str(e)
        break
      time.sleep(0.05)
    else:
      pytest.fail("check() did not notice that the lock was taken")
  assert "lost its lock file" in caplog.text
  lock.release()  # leaves the other writer's object alone
  assert f.cat_file(p) == b"{}"
