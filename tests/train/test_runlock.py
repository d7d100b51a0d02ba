"""The run lock on a local file system: one writer per run dir; a dead holder does not block."""

import logging
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from mtjax import errors
from mtjax.train import runlock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_second_acquire_is_refused_with_one_line_naming_the_holder(tmp_path):
  run_dir = str(tmp_path / "run")
  with runlock.acquire(run_dir, command="mtjax train") as lock:
    lock.check()
    with pytest.raises(errors.RunDirError) as e:
      runlock.acquire(run_dir, command="mtjax promot")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"run_dir {run_dir} is in use by mtjax train (pid {os.getpid()} "
                              f"on host {socket.gethostname()}, since ")
    assert message.endswith("wait for it to finish, stop it, or use another run_dir "
                            f"(lock file {run_dir}/run.lock)")
    lock.check()  # the refused attempt did not disturb the holder


def test_release_frees_the_run_dir_and_is_idempotent(tmp_path):
  run_dir = str(tmp_path / "run")
  lock = runlock.acquire(run_dir)
  assert os.path.exists(os.path.join(run_dir, "run.lock"))
  lock.release()
  lock.release()
  assert not os.path.exists(os.path.join(run_dir, "run.lock"))
  with runlock.acquire(run_dir, command="mtjax ablate member"):
    pass


def test_a_holder_killed_with_sigkill_does_not_block_and_is_named(tmp_path, caplog):
  run_dir = str(tmp_path / "run")
  child = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time; from mtjax.train import runlock; "
       f"runlock.acquire({run_dir!r}, command='mtjax train'); print('held', flush=True); "
       "time.sleep(60)"],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(errors.RunDirError, match=f"pid {child.pid} on host"):
      runlock.acquire(run_dir)
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait()
  with caplog.at_level(logging.WARNING, logger="mtjax.train.runlock"):
    lock = runlock.acquire(run_dir, command="mtjax train")
  lock.release()
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and f"pid {child.pid} on host" in warnings[0], warnings


def race(run_dir, n):
  """`n` threads call `runlock.acquire(run_dir)` at once: (locks won, number refused)."""
  barrier = threading.Barrier(n)
  won, refused = [], []

  def contend():
    barrier.wait()
    try:
      won.append(runlock.acquire(run_dir))
    except errors.RunDirError:
      refused.append(1)

  threads = [threading.Thread(target=contend) for _ in range(n)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return won, len(refused)


def test_threads_racing_for_a_fresh_lock_exactly_one_wins(tmp_path):
  for round_ in range(10):
    won, refused = race(str(tmp_path / f"run{round_}"), 8)
    assert len(won) == 1 and refused == 7, (len(won), refused)
    won[0].release()


def test_processes_racing_for_a_fresh_lock_exactly_one_wins(tmp_path):
  run_dir = str(tmp_path / "run")
  go, done = tmp_path / "go", tmp_path / "done"
  code = ("import os, time; from mtjax import errors; from mtjax.train import runlock\n"
          "print('ready', flush=True)\n"
          f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
          "try:\n"
          f"  lock = runlock.acquire({run_dir!r}); print('won', flush=True)\n"
          f"  while not os.path.exists({str(done)!r}): time.sleep(0.001)\n"
          "except errors.RunDirError:\n"
          "  print('refused', flush=True)\n")
  children = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
  try:
    assert [child.stdout.readline().strip() for child in children] == ["ready"] * 4
    go.touch()
    outcomes = sorted(child.stdout.readline().strip() for child in children)
  finally:
    done.touch()
    for child in children:
      child.communicate(timeout=30)
  assert outcomes == ["refused"] * 3 + ["won"], outcomes


def test_check_raises_once_the_lock_file_is_replaced(tmp_path):
  run_dir = str(tmp_path / "run")
  lock = runlock.acquire(run_dir)
  os.remove(os.path.join(run_dir, "run.lock"))  # e.g. someone cleaned the run dir...
  other = runlock.acquire(run_dir, command="mtjax promot")  # ...and started another writer
  with pytest.raises(errors.RunDirError, match="lost its lock file .* to mtjax promot"):
    lock.check()
  lock.release()  # leaves the other writer's file alone
  assert os.path.exists(os.path.join(run_dir, "run.lock"))
  other.check()
  other.release()
