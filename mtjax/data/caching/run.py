"""Runs a build plan: this process's share of the units on N local workers, then assembly.

    manifests = run.build(jobs, cache_dir, num_workers=4)

`jobs` (one per task split still to build, from `mtjax.data.cache.plan_mixture`) name their units
and how a unit's examples are produced: `producer(payload, split, start, stop)` returns
(examples, prepared, auto_idx) (see `fast.py`); the producer is a module-level function, so
spawned workers find it by name, and the payload travels pickled once per worker.

Units already in the ledger are skipped (a restarted build redoes only unfinished ones); a unit
another builder finished meanwhile is skipped too. Each host assembles the splits assigned to it
from their units in order as they finish (`assemble.SplitWriter`: the shards are compressed
while later units are built) and publishes each once all its units are in, then every host waits until every split of the plan is
published, so the command returns on every host with the whole cache in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

from mtjax import fs
from mtjax.data import staging
from mtjax.data.caching import assemble, hosts, layout, progress, units

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitJob:
  task: str
  split: str
  fingerprint: str
  build: str  # layout.build_id: where its units live
  units: list[units.Unit]
  producer: Callable
  payload: Any
  num_shards: int
  token_features: tuple[str, ...]
  manifest_base: Mapping[str, Any]
  empty_message: str

  @property
  def key(self) -> tuple[str, str]:
    return self.task, self.split


def published(cache_dir: str, task: str, split: str, fp: str) -> dict | None:
  """The split's manifest if a cache of this fingerprint is in place, else None."""
  if fs.is_url(cache_dir):
    manifest = staging.current_manifest(cache_dir, task, split)
  else:
    manifest = layout.read_local_manifest(os.path.join(cache_dir, task, split))
  return manifest if manifest and manifest.get("fingerprint") == fp else None


# --- workers ----------------------------------------------------------------------------------

_PAYLOADS: dict[tuple[str, str], Any] = {}
_RAW: dict[tuple[str, str], bytes] = {}
_BLOBS: dict[str, Any] = {}
BLOB_SIZE = 1 << 16  # bytes / str values this large travel to the workers once, by content


def dumps(payload, blobs: dict) -> bytes:
  """cloudpickle of a job's payload, its large bytes and str values (a SentencePiece model, a
  tokenizer's JSON) kept aside in `blobs` by content: a mixture's hundreds of task splits share
  one vocabulary, which would otherwise reach every worker once per split (T0's 313 tasks with
  T5's 0.8 MB SentencePiece model: half a gigabyte per worker)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top

  import cloudpickle  # pylint: disable=g-import-not-at-top

  class Pickler(cloudpickle.CloudPickler):

    def persistent_id(self, obj):  # pylint: disable=invalid-name
      if type(obj) in (bytes, str) and len(obj) >= BLOB_SIZE:
        data = obj if isinstance(obj, bytes) else obj.encode("utf-8", "surrogatepass")
        key = f"{type(obj).__name__}:{hashlib.sha256(data).hexdigest()}"
        blobs.setdefault(key, obj)
        return key
      return None

  buffer = io.BytesIO()
  Pickler(buffer).dump(payload)
  return buffer.getvalue()


def loads(raw: bytes, blobs: dict | None = None):
  """The payload `dumps` pickled, its large values from `blobs` (this worker's by default)."""
  import io  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top

  table = _BLOBS if blobs is None else blobs

  class Unpickler(pickle.Unpickler):

    def persistent_load(self, pid):  # pylint: disable=invalid-name
      return table[pid]

  return Unpickler(io.BytesIO(raw)).load()


def _init_worker(raw: dict, blobs: dict) -> None:
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker
  _RAW.update(raw)
  _BLOBS.update(blobs)


def _run_unit(unit: units.Unit, job_producer, payload, token_features, cache_dir: str,
              shared: bool) -> int:
  ledger = units.Ledger(cache_dir, shared)
  if ledger.has(unit):
    return -1  # another builder finished it meanwhile
  examples, prepared, auto = job_producer(payload, unit.split, unit.start, unit.stop)
  return ledger.write(unit, examples, token_features, prepared, auto)


def _work(args) -> tuple[units.Unit, int]:
  key, unit, producer, token_features, cache_dir, shared = args
  if key not in _PAYLOADS:
    _PAYLOADS.clear()  # one split's payload at a time: memory stays bounded
    _PAYLOADS[key] = loads(_RAW[key])
  return unit, _run_unit(unit, producer, _PAYLOADS[key], token_features, cache_dir, shared)


# --- the build --------------------------------------------------------------------------------

def build(jobs: Sequence[SplitJob], cache_dir: str, num_workers: int = 1,
          num_processes: int | None = None, process_id: int | None = None,
          progress_every: float | None = None, poll_s: float = 2.0,
          wait_timeout_s: float = 24 * 3600.0, stream=None,
          summary: bool = False) -> dict[tuple[str, str], dict]:
  """Builds every job's split into `cache_dir`; returns {(task, split): manifest}.

  `summary`: end with a line of totals (else the display is cleared from a terminal and, off
  one, only the periodic lines were printed)."""
  count, me = hosts.process_share(num_processes, process_id)
  ledger = units.Ledger(cache_dir, shared=count > 1)
  every = [u for job in jobs for u in job.units]
  mine_by_unit = {(u.key, u.index) for u in every
                  if hosts.unit_owner(u.task, u.split, u.index, count) == me}
  assembler = {job.key: hosts.assembler(job.task, job.split, count) == me for job in jobs}
  by_key = {job.key: job for job in jobs}
  manifests: dict[tuple[str, str], dict] = {}
  writers: dict[tuple[str, str], assemble.SplitWriter] = {}  # this host's splits being assembled

  # index -> ledger entry (None: not read yet) of each split's finished units
  done = {job.key: dict(ledger.done(job.task, job.split, job.build)) for job in jobs}
  todo = [u for u in every if (u.key, u.index) in mine_by_unit and u.index not in done[u.key]]
  bar = progress.Progress(len(every), sum(u.rows for u in every), every=progress_every,
                          stream=stream, summary=summary,
                          desc=f"caching ({count} hosts, process {me})" if count > 1 else "caching")
  counted = {job.key: set() for job in jobs}  # units shown as done

  def credit(key, indices, examples: int = 0) -> None:
    new = set(indices) - counted[key]
    counted[key] |= new
    bar.update(units=len(new), rows=sum(by_key[key].units[i].rows for i in new),
               examples=examples)

  for key, indices in done.items():
    credit(key, indices)

  def adopt(key, manifest: dict) -> None:
    """A concurrent build published the split first: drop this host's assembly of it."""
    writer = writers.pop(key, None)
    if writer is not None:
      writer.abort()
      job = by_key[key]
      ledger.clear(job.task, job.split, job.build)
    manifests[key] = manifest

  pool = []  # the worker pool while it runs
  lead = []  # the split this process assembles while the pool runs (the first to start)
  offloaded: dict = {}  # key -> the pool's assembly of that split (AsyncResult)

  def feed(key) -> None:
    """Adds the split's finished units, in order, to its assembly (if it is this host's to
    assemble), so the shards are written while later units are built; publishes the split
    once every unit is in. While workers run, this process assembles the first split to start
    (so a one-split build overlaps its assembly with its units); every other split is
    assembled by a worker once its units are finished (assembly is a serial copy with
    compression, ~45 us per example: on a many-core host one process could not keep up)."""
    job = by_key[key]
    if key in manifests or key in offloaded or not assembler[key]:
      return
    try:
      writer = writers.get(key)
      if writer is None and pool and (writers or lead):
        if len(done[key]) == len(job.units):
          job._offloaded = True  # pylint: disable=protected-access  (for the log line)
          offloaded[key] = pool[0].apply_async(
              _assemble_in_worker,
              (dataclasses.replace(job, producer=None, payload=None), cache_dir, ledger.remote))
        return
      if writer is None:
        if 0 not in done[key]:
          return
        existing = published(cache_dir, job.task, job.split, job.fingerprint)
        if existing is not None:
          return adopt(key, existing)
        if pool:
          lead.append(key)
        writer = writers[key] = assemble.SplitWriter(
            ledger, job.task, job.split, job.fingerprint, job.build, len(job.units),
            job.num_shards, job.token_features, job.manifest_base, job.empty_message)
      while writer.next in done[key]:
        index = writer.next
        if done[key][index] is None:
          done[key][index] = ledger.entry(job.task, job.split, job.build, index)
        writer.add(done[key][index])
      if writer.next < len(job.units):
        return
      existing = published(cache_dir, job.task, job.split, job.fingerprint)
      if existing is not None:
        return adopt(key, existing)
      del writers[key]
      manifests[key] = writer.finish()
    except Exception:  # pylint: disable=broad-except  (units removed under a concurrent build)
      existing = published(cache_dir, job.task, job.split, job.fingerprint)
      if existing is None:
        raise
      adopt(key, existing)

  def on_unit(unit: units.Unit, n: int) -> None:
    done[unit.key].setdefault(unit.index, None)
    credit(unit.key, {unit.index}, max(n, 0))
    feed(unit.key)

  try:
    for job in jobs:
      if job.key in manifests:
        continue
      manifest = published(cache_dir, job.task, job.split, job.fingerprint)
      if manifest is not None:
        manifests[job.key] = manifest
        credit(job.key, range(len(job.units)))
    todo = [u for u in todo if u.key not in manifests]
    for key in list(by_key):
      feed(key)
    def collect(block: bool) -> bool:
      """Takes the manifests of the splits the workers assembled (only the finished ones unless
      `block`); whether any was taken."""
      taken = False
      for key, result in list(offloaded.items()):
        if not block and not result.ready():
          continue
        try:
          manifest = result.get()
        except Exception:  # pylint: disable=broad-except
          job = by_key[key]
          manifest = published(cache_dir, job.task, job.split, job.fingerprint)
          if manifest is None:
            raise
        manifests[key] = manifest
        del offloaded[key]
        credit(key, range(len(by_key[key].units)))
        taken = True
      return taken

    def settle() -> None:
      """Units of other hosts (or of a concurrent build), the splits the workers assemble, then
      the splits other hosts assemble: returns once every split of the plan is published."""
      deadline = time.monotonic() + wait_timeout_s
      while len(manifests) < len(jobs):
        progressed = collect(block=False)
        for job in jobs:
          if job.key in manifests or job.key in offloaded:
            continue
          manifest = published(cache_dir, job.task, job.split, job.fingerprint)
          if manifest is None and assembler[job.key]:
            for index, entry in ledger.done(job.task, job.split, job.build).items():
              done[job.key].setdefault(index, entry)
            credit(job.key, done[job.key])
            feed(job.key)
            manifest = manifests.get(job.key)
            progressed = progressed or job.key in offloaded
          if manifest is not None:
            if job.key not in manifests:
              adopt(job.key, manifest)
            credit(job.key, range(len(job.units)))
            progressed = True
        if len(manifests) < len(jobs):
          if time.monotonic() > deadline:
            raise RuntimeError(
                f"cache build: {len(jobs) - len(manifests)} splits still unfinished after "
                f"{wait_timeout_s:.0f} s (are all {count} processes running, and is the cache "
                "dir shared by all of them?)")
          if not progressed:
            if offloaded:  # a worker's assembly: wait for it rather than for the poll
              next(iter(offloaded.values())).wait(poll_s)
            else:
              bar.update(note=f"waiting for {len(jobs) - len(manifests)} splits of other hosts")
              time.sleep(poll_s)

    if todo and num_workers > 1 and len(todo) > 1:
      # The pool stays up until every split is published: splits whose units finish here or
      # on other hosts meanwhile are assembled by its workers.
      with _pool(todo, by_key, cache_dir, ledger.remote, num_workers) as (workers, args):
        pool.append(workers)
        try:
          for unit, n in workers.imap_unordered(_work, args):
            on_unit(unit, n)
          settle()
          collect(block=True)
        finally:
          pool.clear()
      log.info("cache build: %d of %d splits assembled by workers",
               sum(1 for job in jobs if getattr(job, "_offloaded", False)), len(jobs))
    else:
      for unit in todo:
        job = by_key[unit.key]
        on_unit(unit, _run_unit(unit, job.producer, job.payload, job.token_features,
                                cache_dir, ledger.remote))
    settle()
  finally:
    for writer in writers.values():
      writer.abort()
  bar.update(note="")
  bar.close()
  for job in jobs:  # units a concurrent builder wrote after another one published the split
    if os.path.isdir(ledger.local_dir(job.task, job.split, job.build)):
      ledger.clear(job.task, job.split, job.build)
  return manifests


def _assemble(ledger: units.Ledger, job: SplitJob) -> dict:
  existing = published(ledger.cache_dir, job.task, job.split, job.fingerprint)
  if existing is not None:  # a concurrent build published it first
    ledger.clear(job.task, job.split, job.build)
    return existing
  try:
    return assemble.assemble(ledger, job.task, job.split, job.fingerprint, job.build,
                             len(job.units),
                             job.num_shards, job.token_features, job.manifest_base,
                             job.empty_message)
  except Exception:  # pylint: disable=broad-except  (units removed under a concurrent assembly)
    existing = published(ledger.cache_dir, job.task, job.split, job.fingerprint)
    if existing is None:
      raise
    ledger.clear(job.task, job.split, job.build)
    return existing


def _assemble_in_worker(job: SplitJob, cache_dir: str, shared: bool) -> dict:
  return _assemble(units.Ledger(cache_dir, shared), job)


@contextlib.contextmanager
def _pool(todo, by_key, cache_dir: str, shared: bool, num_workers: int):
  """A pool of spawned workers holding the payloads of `todo`'s splits, and the unit tasks."""
  import multiprocessing  # pylint: disable=g-import-not-at-top

  keys = {u.key for u in todo}
  blobs: dict = {}
  raw = {k: dumps(by_key[k].payload, blobs) for k in keys}
  args = [(u.key, u, by_key[u.key].producer, by_key[u.key].token_features, cache_dir, shared)
          for u in todo]
  # spawn: TensorFlow (loaded by SeqIO in this process) is not fork-safe
  with multiprocessing.get_context("spawn").Pool(min(num_workers, len(todo)), _init_worker,
                                                 (raw, blobs)) as workers:
    yield workers, args
