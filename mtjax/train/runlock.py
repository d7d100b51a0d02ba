"""One writer per run directory: `<run_dir>/run.lock`.

    with runlock.acquire(run_dir, command="mtjax train") as lock:
      ...
      lock.check()  # now and then (gs://): raises RunDirError if another writer took the lock over

`acquire` raises `errors.RunDirError` (one line naming the holder's command, pid, host, start
time and the lock file) while another live writer holds the lock. The lock file is JSON: host,
pid, command, started, heartbeat (UTC ISO), a random token and `pid_ns` (boot id and pid
namespace: which pids the pid belongs to). Only process 0 of a multi-process run takes it.

Local or shared (NFS) file system: `fcntl.flock` on a descriptor kept open for the run.
  Guaranteed: a second holder is refused, whether in another process, on another host sharing
  the file system over NFS, or in another thread of the same process; the kernel drops the lock
  when the holder dies however it dies, so a dead holder never blocks. A lock file still present
  when the lock is free was left by a holder that died: the taker logs one warning naming it.
  Not guaranteed: on NFS Linux emulates flock with POSIX locks, which belong to the process, so
  a second `acquire` inside the holder's own process is not refused there, and closing any other
  descriptor of run.lock in that process drops the lock. A file system without locks (some FUSE
  mounts) gets a warning and no protection. A child forked by the holder (not spawned) keeps the
  lock alive after the holder dies.

gs:// (no locks in object stores): the lock object is created with `ifGenerationMatch=0` (only if
  absent) and rewritten every HEARTBEAT_SECONDS by a daemon thread with `ifGenerationMatch=<its
  generation>`. A lock is stale when its last heartbeat is older than STALE_SECONDS, or at once
  when its holder ran on this machine (same boot and pid namespace) and its pid is gone; a stale
  lock is taken over by deleting that generation and creating anew (`ifGenerationMatch=0`), so of
  two contenders exactly one wins. A holder whose heartbeat finds another generation has lost the
  lock: `check()` raises. Heartbeat ages are measured on the server's clock (the object's
  `updated` time against the `Date` header of the same response, 1 s resolution), so the hosts'
  clocks do not matter.
  Not guaranteed: a holder paused (SIGSTOP, suspended VM, network partition) for longer than
  STALE_SECONDS is taken over although alive; it learns so at its next heartbeat and `check()`
  raises, but it may write between waking up and that check. A holder that cannot reach the
  server keeps running unaware until a heartbeat gets through. A holder that dies without
  `release` (SIGKILL, preemption) blocks other hosts for up to STALE_SECONDS.

Other URL schemes: a warning and no lock.
"""

from __future__ import annotations

import atexit
import datetime
import email.utils
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from typing import Any

from mtjax import errors, fs

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
# gs:// only; the environment variables override them (tests).
HEARTBEAT_SECONDS = 60.0  # a holder rewrites its lock this often (MTJAX_LOCK_HEARTBEAT_SECONDS)
STALE_SECONDS = 600.0  # a lock with an older heartbeat is taken over (MTJAX_LOCK_STALE_SECONDS)


def acquire(run_dir: str, command: str = "mtjax train") -> RunLock:
  """Takes `<run_dir>/run.lock` for `command`; raises errors.RunDirError while a live writer
  holds it. Returns the lock: `release()` it (or use it as a context manager)."""
  run_dir = fs.abspath(run_dir)
  if not fs.is_url(run_dir):
    return _LocalLock(run_dir, command)
  if run_dir.startswith("gs://"):
    return _GcsLock(run_dir, command)
  log.warning("run_dir %s: no run lock on %s:// (local paths and gs:// only); nothing stops a "
              "second writer", run_dir, run_dir.split("://", 1)[0])
  return RunLock(run_dir, command)


def hold(run_dir: str, command: str):
  """`acquire` on process 0, before anything is written to the run dir; every process raises the
  refusal (errors.RunDirError), shared through the coordinator so all of them stop. Returns the
  lock (None on other processes)."""
  from mtjax.parallel import distributed  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  lock, message = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(run_dir, command)
    except errors.RunDirError as e:
      message = str(e)
  message = distributed.share_error("run_lock", message)
  if message is not None:
    raise errors.RunDirError(message)
  return lock


class RunLock:
  """A held lock (this base class: one that protects nothing)."""

  def __init__(self, run_dir: str, command: str):
    self.run_dir = run_dir
    self.path = fs.join(run_dir, LOCK_NAME)
    now = _utc()
    self.info = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                 "started": now, "heartbeat": now, "token": secrets.token_hex(16),
                 "pid_ns": _PID_NS}
    self._released = False

  def check(self) -> None:
    """Raises errors.RunDirError if this process no longer holds the lock."""

  def release(self) -> None:
    """Gives the lock up (idempotent)."""
    if not self._released:
      self._released = True
      atexit.unregister(self.release)
      if os.getpid() == self.info["pid"]:  # not in a forked child: the parent still holds it
        self._release()

  def _release(self) -> None:
    pass

  def _hold_until_exit(self) -> None:
    atexit.register(self.release)

  def __enter__(self) -> RunLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _refusal(self, holder: dict[str, Any], extra: str = "") -> errors.RunDirError:
    if not holder:
      return errors.RunDirError(f"run_dir {self.run_dir} is in use by another process; wait for "
                                "it to finish, stop it, or use another run_dir (lock file "
                                f"{self.path})")
    return errors.RunDirError(
        f"run_dir {self.run_dir} is in use by {holder.get('command', '?')} (pid "
        f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
        f"{holder.get('started', '?')}{extra}); wait for it to finish, stop it, or use another "
        f"run_dir (lock file {self.path})")

  def _warn_takeover(self, holder: dict[str, Any], why: str) -> None:
    log.warning("run_dir %s: taking over lock file %s from %s (pid %s on host %s, since %s), %s",
                self.run_dir, self.path, holder.get("command", "?"), holder.get("pid", "?"),
                holder.get("host", "?"), holder.get("started", "?"), why)

  def _lost(self, holder: dict[str, Any] | None) -> errors.RunDirError:
    by = (f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')}, since {holder.get('started', '?')})" if holder
          else "another writer or a deletion")
    return errors.RunDirError(f"run_dir {self.run_dir}: this run lost its lock file {self.path} to "
                              f"{by}; stopping so as not to write over it")


class _LocalLock(RunLock):
  """`fcntl.flock` on `run.lock`; the file is deleted at release (while still locked)."""

  def __init__(self, run_dir: str, command: str):
    super().__init__(run_dir, command)
    os.makedirs(run_dir, exist_ok=True)
    self._fd = None
    for _ in range(100):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise self._refusal(_read_local(self.path)) from None
      except OSError as e:  # ENOLCK, EOPNOTSUPP, ENOSYS: a file system without locks
        os.close(fd)
        log.warning("run_dir %s: cannot lock %s (%s); nothing stops a second writer",
                    run_dir, self.path, os.strerror(e.errno or errno.ENOLCK))
        self._hold_until_exit()
        return
      if _same_file(self.path, fd):
        break
      os.close(fd)  # the holder deleted the file between our open and our lock: again
    else:
      raise errors.RunDirError(f"run_dir {run_dir}: could not lock {self.path} (it keeps being "
                               "replaced)")
    self._fd = fd
    old = _parse(os.pread(fd, 1 << 16, 0))
    if old:
      self._warn_takeover(old, "which ended without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(self.info, indent=1) + "\n").encode(), 0)
    self._hold_until_exit()

  def check(self) -> None:
    if self._fd is not None and not self._released and not _same_file(self.path, self._fd):
      raise self._lost(_read_local(self.path))

  def _release(self) -> None:
    if self._fd is None:
      return
    if _same_file(self.path, self._fd):
      os.unlink(self.path)
    os.close(self._fd)
    self._fd = None


def _same_file(path: str, fd: int) -> bool:
  try:
    return os.stat(path).st_ino == os.fstat(fd).st_ino
  except FileNotFoundError:
    return False


def _read_local(path: str) -> dict[str, Any]:
  """The holder's JSON; a few tries, since a new holder may be writing it right now."""
  for _ in range(20):
    try:
      with open(path, "rb") as f:
        holder = _parse(f.read())
    except FileNotFoundError:
      return {}
    if holder:
      return holder
    time.sleep(0.01)
  return {}


class _GcsLock(RunLock):
  """An object created only if absent and kept fresh by a heartbeat thread."""

  def __init__(self, run_dir: str, command: str):
    super().__init__(run_dir, command)
    from gcsfs.core import quote  # pylint: disable=g-import-not-at-top

    self._fs, self._p = fs._fs(self.path)  # pylint: disable=protected-access
    bucket, self._key, _ = self._fs.split_path(self._p)
    location = self._fs._location  # pylint: disable=protected-access
    self._upload_url = f"{location}/upload/storage/v1/b/{quote(bucket)}/o"
    self._bucket = bucket
    self._heartbeat_s = _seconds("MTJAX_LOCK_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS)
    self._stale_s = _seconds("MTJAX_LOCK_STALE_SECONDS", STALE_SECONDS)
    self._mutex = threading.Lock()  # one request at a time: heartbeat vs. release
    self._stop = threading.Event()
    self._lost_to: dict[str, Any] | None = None
    self._generation = self._take()
    self._hold_until_exit()
    self._thread = threading.Thread(target=self._beat, daemon=True, name=f"run.lock {run_dir}")
    self._thread.start()

  def _take(self) -> str:
    for _ in range(5):
      try:
        return self._write(0)
      except FileExistsError:  # 412: the object exists
        pass
      held = self._stat()
      if held is None:
        continue  # released in the meantime
      holder, generation, age = held
      if holder.get("token") == self.info["token"]:
        return generation  # our create landed; the client retried it after a lost reply
      why = self._stale(holder, age)
      if why is None:
        raise self._refusal(holder, f", last heartbeat {age:.0f} s ago")
      self._warn_takeover(holder, why)
      self._delete(generation)  # only that generation; then create again (one contender wins)
    raise errors.RunDirError(f"run_dir {self.run_dir}: could not take {self.path}: other "
                             "processes keep taking it")

  def _stale(self, holder: dict[str, Any], age: float) -> str | None:
    if age > self._stale_s:
      return f"whose last heartbeat is {age:.0f} s old (stale after {self._stale_s:g} s)"
    if holder.get("pid_ns") and holder["pid_ns"] == _PID_NS and not _pid_alive(holder.get("pid")):
      return "whose process is gone"
    return None

  def _write(self, if_generation_match: int | str) -> str:
    """Uploads the lock object if its generation is `if_generation_match` (0: absent); returns the
    new generation. A 412 surfaces from gcsfs as FileExistsError."""
    body = (json.dumps(self.info, indent=1) + "\n").encode()
    meta = json.dumps({"name": self._key, "contentType": "application/json",
                       "metadata": {"mtjax_lock": json.dumps(self.info)}})
    data = (b"--==0==\nContent-Type: application/json; charset=UTF-8\n\n" + meta.encode() +
            b"\n--==0==\nContent-Type: application/json\n\n" + body + b"\n--==0==--")
    out = self._fs.call("POST", self._upload_url, uploadType="multipart", data=data,
                        headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                        ifGenerationMatch=str(if_generation_match), json_out=True)
    self._fs.invalidate_cache(self._p)
    return str(out["generation"])

  def _delete(self, generation: str) -> bool:
    try:
      self._fs.call("DELETE", "b/{}/o/{}", self._bucket, self._key,
                    ifGenerationMatch=str(generation))
      return True
    except (FileNotFoundError, FileExistsError):  # gone, or another generation (412)
      return False
    finally:
      self._fs.invalidate_cache(self._p)

  def _stat(self) -> tuple[dict[str, Any], str, float] | None:
    """(holder JSON, generation, heartbeat age in s by the server's clock), or None if absent."""
    try:
      headers, body = self._fs.call("GET", "b/{}/o/{}", self._bucket, self._key)
    except FileNotFoundError:
      return None
    obj = json.loads(body)
    holder = _parse((obj.get("metadata") or {}).get("mtjax_lock", "").encode())
    try:
      now = email.utils.parsedate_to_datetime(headers["Date"]).timestamp()
    except (KeyError, TypeError, ValueError):
      now = time.time()  # no Date header: this host's clock
    updated = datetime.datetime.fromisoformat(obj["updated"].replace("Z", "+00:00")).timestamp()
    return holder, str(obj["generation"]), max(0.0, now - updated)  # (Date: whole seconds)

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      with self._mutex:
        if self._stop.is_set():
          return
        self.info["heartbeat"] = _utc()
        try:
          self._generation = self._write(self._generation)
        except FileExistsError:  # 412: the object is no longer ours, unless our retry wrote it
          try:
            held = self._stat()
          except Exception:  # pylint: disable=broad-except
            continue
          if held and held[0].get("token") == self.info["token"]:
            self._generation = held[1]
            continue
          self._lost_to = held[0] if held else {}
          log.error("%s", self._lost(self._lost_to))
          return
        except Exception as e:  # pylint: disable=broad-except  (network: try again next beat)
          log.warning("run_dir %s: heartbeat of %s failed (%s: %s); retrying in %g s",
                      self.run_dir, self.path, type(e).__name__, e, self._heartbeat_s)

  def check(self) -> None:
    if self._lost_to is not None:
      raise self._lost(self._lost_to)

  def _release(self) -> None:
    self._stop.set()
    with self._mutex:
      if self._lost_to is None:
        self._delete(self._generation)


def _utc(t: float | None = None) -> str:
  return datetime.datetime.fromtimestamp(time.time() if t is None else t,
                                         datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(data: bytes) -> dict[str, Any]:
  try:
    holder = json.loads(data.decode())
  except (UnicodeDecodeError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _seconds(env: str, default: float) -> float:
  value = os.environ.get(env)
  return float(value) if value else default


def _pid_namespace() -> str:
  """Boot id and pid namespace: a pid means the same process only where these match."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f"{f.read().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
  except OSError:
    return ""


_PID_NS = _pid_namespace()


def _pid_alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True  # someone else's process, or no pid to judge: assume alive
  try:
    with open(f"/proc/{int(pid)}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
  except (OSError, IndexError):
    return True
