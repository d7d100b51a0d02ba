"""`mtjax ablate`: a grid of mixture variants x seeds, each an ordinary resumable run, one table.

    mtjax ablate --config=configs/quickstart.py --sweep=configs/sweeps/synthetic_mixtures.yaml

Steps: register the base config's tasks and cache the mixtures (once, before any member starts,
so parallel members never race to build a cache) -> expand the sweep into members
(`mtjax.recipes.sweep`) -> keep this machine's shard (`--shard_index i --num_shards n`: members
i, i+n, ...) -> skip members whose `ablate_result.json` matches their config -> run the rest, in
this process one after another or as `--parallel N` worker processes -> write the report of every
member found finished under `--out` (all shards, if they share the folder): `results.csv`,
`results.md`, `metrics.png`, `mixture_weights.png` (`mtjax.recipes.report`).

Killing a sweep and running it again redoes nothing that finished: finished members are skipped
and an interrupted one resumes from its newest checkpoint.

`--out` and `--sweep` may be URLs (`gs://bucket/...`, through `mtjax.fs`): the members' run dirs
and the report then live in the bucket. Two things stay on this machine: the JAX compilation
cache (default `<out>/jax_cache` only for a local `--out`, else `$XDG_CACHE_HOME/mtjax/jax_cache`,
i.e. `~/.cache/mtjax/jax_cache`) and a `--parallel` worker's log while it runs (copied to
`<member>/ablate.log` in the bucket when the worker exits).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time

from mtjax import fs
from mtjax.config import schema
from mtjax.data import vocabularies
from mtjax.recipes import members as members_lib
from mtjax.recipes import report
from mtjax.recipes import sweep as sweep_lib

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--sweep", required=True,
                      help="sweep file (.yaml or .py with get_sweep()): variants and seeds; a "
                           "local path or a URL (gs://...)")
  parser.add_argument("--out", help="sweep folder, a local path or a URL (gs://bucket/...) "
                                    "(default runs/ablate/<sweep name>)")
  parser.add_argument("--parallel", type=int, default=1,
                      help="members run at once, each in its own process (default 1: in this "
                           "process, one after another)")
  parser.add_argument("--devices_per_member", type=int, default=0,
                      help="with --parallel on a multi-GPU machine: give each worker this many "
                           "GPUs of its own (CUDA_VISIBLE_DEVICES); 0 = all workers share them")
  parser.add_argument("--shard_index", type=int, default=0, help="this machine's shard")
  parser.add_argument("--num_shards", type=int, default=1, help="machines splitting the sweep")
  parser.add_argument("--sample_batches", type=int, default=members_lib.DEFAULT_SAMPLE_BATCHES,
                      help="batches replayed per member to count the sampled mixture")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the members, their rates and status; run nothing")
  parser.add_argument("--report_only", action="store_true",
                      help="run nothing; write the report from the finished members")
  parser.add_argument("--no_plots", action="store_true", help="CSV and Markdown only")
  parser.add_argument("--compilation_cache_dir",
                      help="JAX persistent compilation cache shared by the members (members "
                           "that differ only in their mixture compile the same programs), a "
                           "local folder; default <out>/jax_cache, or "
                           "~/.cache/mtjax/jax_cache ($XDG_CACHE_HOME) when --out is a URL; "
                           "'none' to disable")


def plan(base: schema.RunConfig, sweep_path: str, out: str | None = None):
  """(sweep, out dir, members): registers the tasks and caches each variant's mixture."""
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top
  from mtjax.data import modules  # pylint: disable=g-import-not-at-top

  sweep = sweep_lib.load(sweep_path)
  out = out or os.path.join("runs", "ablate", sweep.name)
  modules.import_modules(base.data.modules, vocabularies.for_run(base),
                         options=modules.run_options(base.data))
  specs = {}

  def spec(name: str):
    if name not in specs:
      specs[name] = cache.ensure_cached(name, base.data.cache_dir,
                                        splits=("train", base.eval.split),
                                        sequence_length=base.data.sequence_length)
    return specs[name]

  return sweep, out, sweep_lib.members(sweep, base, out, spec)


def _status(member) -> str:
  if members_lib.is_finished(member):
    return "done"
  if members_lib.read_result(member.run_dir) is not None:
    return "stale (config changed)"
  from mtjax.recipes import promot  # pylint: disable=g-import-not-at-top

  steps = promot.saved_steps(member.run_dir)
  return f"resumes at step {steps[-1]}" if steps else "pending"


def local_cache_root() -> str:
  """This machine's cache folder: `$XDG_CACHE_HOME/mtjax`, else `~/.cache/mtjax`."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mtjax")


def compilation_cache_dir(flag: str | None, out: str) -> str | None:
  """The JAX compilation cache folder for `--compilation_cache_dir` (None: no cache). It is
  always local: `<out>/jax_cache` when `out` is, else `local_cache_root()/jax_cache`."""
  if flag and flag.lower() == "none":
    return None
  if flag:
    if fs.is_url(flag):
      raise ValueError(f"--compilation_cache_dir {flag}: must be a local folder (the JAX "
                       "compilation cache is read and written by every worker process)")
    return flag
  if fs.is_url(out):
    return os.path.join(local_cache_root(), "jax_cache")
  return os.path.join(out, "jax_cache")


@contextlib.contextmanager
def compilation_cache(path: str | None):
  """JAX's persistent compilation cache in `path` while the members run in this process; the
  previous setting is restored afterwards (JAX decides at its first compile whether to use a
  cache, hence the resets)."""
  if not path:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top

  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
  cc.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
    cc.reset_cache()


def _worker_env(slot: int, devices_per_member: int, parallel: int,
                cache_dir: str | None = None) -> dict:
  env = dict(os.environ)
  if cache_dir:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache_dir)
  if parallel > 1:
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # workers share an accelerator
  if devices_per_member > 0:
    first = slot * devices_per_member
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(devices_per_member))
  return env


class _WorkerLog:
  """A worker's `<run_dir>/ablate.log`, appended to. For a URL run dir the worker writes a
  local temporary file, appended to the log in the bucket when it exits (object stores cannot
  append to an object while it is written)."""

  LOG = "ablate.log"

  def __init__(self, run_dir: str):
    self.target = os.path.join(run_dir, self.LOG)
    if fs.is_url(run_dir):
      fd, self.local = tempfile.mkstemp(prefix="mtjax-ablate-", suffix=".log")
      self.file = os.fdopen(fd, "a")
    else:
      self.local = self.target
      self.file = open(self.target, "a")  # noqa: SIM115

  def where(self) -> str:
    if self.local == self.target:
      return self.target
    return f"{self.local}, copied to {self.target} when it ends"

  def close(self) -> None:
    self.file.close()
    if self.local != self.target:
      with open(self.local) as f:
        text = f.read()
      try:
        fs.append_text(self.target, text)
      except Exception as e:  # pylint: disable=broad-except  (keep the local copy)
        log.warning("could not copy %s to %s: %s", self.local, self.target, e)
        return
      os.remove(self.local)


def _run_parallel(todo, parallel: int, devices_per_member: int, cache_dir: str | None
                  ) -> list[str]:
  """Runs members as worker processes, `parallel` at a time; returns the failed ones' names."""
  waiting, running, failed = list(todo), {}, []
  free = list(range(parallel))
  try:
    while waiting or running:
      while waiting and free:
        member, slot = waiting.pop(0), free.pop(0)
        logfile = _WorkerLog(member.run_dir)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mtjax.recipes.members", member.run_dir],
            stdout=logfile.file, stderr=subprocess.STDOUT,
            env=_worker_env(slot, devices_per_member, parallel, cache_dir))
        running[proc] = (member, slot, logfile, time.perf_counter())
        print(f"[ablate] started {member.name} (pid {proc.pid}, log {logfile.where()})",
              flush=True)
      time.sleep(0.5)
      for proc in [p for p in running if p.poll() is not None]:
        member, slot, logfile, start = running.pop(proc)
        logfile.close()
        free.append(slot)
        took = time.perf_counter() - start
        if proc.returncode == 0:
          print(f"[ablate] finished {member.name} in {took:.0f}s", flush=True)
        elif proc.returncode == 3:
          print(f"[ablate] {member.name} was preempted; rerun the sweep to resume it", flush=True)
        else:
          failed.append(member.name)
          print(f"[ablate] FAILED {member.name} (exit {proc.returncode}); see "
                f"{os.path.join(member.run_dir, 'ablate.log')}", flush=True)
  except KeyboardInterrupt:
    for proc in running:
      proc.terminate()  # SIGTERM: each worker checkpoints its current step and exits
    for proc, (_, _, logfile, _) in running.items():
      proc.wait()
      logfile.close()
    raise
  return failed


def _run_here(todo, progress: bool) -> list[str]:
  failed = []
  for member in todo:
    start = time.perf_counter()
    print(f"[ablate] running {member.name}", flush=True)
    try:
      result = members_lib.run_member_dir(member.run_dir, progress=progress)
    except Exception:  # pylint: disable=broad-except
      log.exception("member %s failed", member.name)
      failed.append(member.name)
      continue
    if result is None:
      print(f"[ablate] {member.name} was preempted; rerun the sweep to resume it", flush=True)
      break  # SIGTERM: stop the sweep as the signal asked
    print(f"[ablate] finished {member.name} in {time.perf_counter() - start:.0f}s", flush=True)
  return failed


def run(base: schema.RunConfig, args: argparse.Namespace, *, progress: bool = False) -> int:
  """The whole sweep as the arguments say; returns the exit code (1 if a member failed)."""
  t0 = time.perf_counter()
  if args.out:
    fs.check_usable(args.out, "--out")
  compilation_cache_dir(args.compilation_cache_dir, args.out or "")  # a URL flag fails now
  sweep, out, everyone = plan(base, args.sweep, args.out)
  mine = sweep_lib.shard(everyone, args.shard_index, args.num_shards)
  print(f"[ablate] sweep {sweep.name!r}: {len(sweep.variants)} variant(s) x "
        f"{len(sweep.seeds)} seed(s) = {len(everyone)} member(s); this shard "
        f"({args.shard_index}/{args.num_shards}) has {len(mine)}; folder {out}", flush=True)
  for m in mine:
    trained = {t: round(r, 4) for t, r in m.rates.items() if r > 0}
    print(f"  {m.name:<28} {_status(m):<22} {trained}", flush=True)
  if args.dry_run:
    return 0
  failed = []
  if not args.report_only:
    todo = [m for m in mine if not members_lib.is_finished(m)]
    skipped = len(mine) - len(todo)
    if skipped:
      print(f"[ablate] {skipped} member(s) already finished: skipped", flush=True)
    for m in todo:
      members_lib.write_member(m, args.sample_batches)
    cache_dir = compilation_cache_dir(args.compilation_cache_dir, out)
    if args.parallel > 1 and todo:
      failed = _run_parallel(todo, args.parallel, args.devices_per_member, cache_dir)
    elif todo:
      with compilation_cache(cache_dir):
        failed = _run_here(todo, progress)
  results = {m.name: members_lib.read_result(m.run_dir) for m in everyone
             if members_lib.is_finished(m)}
  missing = [m.name for m in everyone if m.name not in results]
  first = everyone[0].config if everyone else base
  notes = [(f"members' config: data.mixture={first.data.mixture}, "
            f"model.preset={first.model.preset}, train.steps={first.train.steps}, "
            f"data.batch_size={first.data.batch_size} (per-variant `set` may differ)"),
           f"members finished: {len(results)} of {len(everyone)}"
           + (f" (missing: {', '.join(missing)})" if missing else ""),
           ("sampled share: examples per task in each member's first "
            f"{min(args.sample_batches, first.train.steps)} training batches (replayed), "
            "averaged over seeds")]
  paths = report.write(everyone, results, out, title=f"Ablation: {sweep.name}", notes=notes,
                       plots=not args.no_plots)
  print(f"[ablate] report: {', '.join(paths.values())} ({time.perf_counter() - t0:.0f}s)",
        flush=True)
  print(fs.read_text(paths["markdown"]), flush=True)
  if failed:
    print(f"[ablate] failed members: {', '.join(failed)}", flush=True)
    return 1
  return 0
