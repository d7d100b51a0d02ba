"""Does the input pipeline stall training? The same train step fed by the real pipeline vs by
the same batches held in memory (the peer: a pipeline that costs nothing).

    python scripts/bench_input_stall.py                       # quickstart config, CPU
    python scripts/bench_input_stall.py --set model.preset=llama_270m data.feature_converter=decoder_only ...

Both loops run `--steps` steps after `--warmup` with the config's mesh, step function and batch
shapes, alternating in short rounds so machine noise hits both. Prints the median step time of
each and the median of the round-by-round ratios (1.00 = the pipeline is free; the issue-8 bar
is within 5%). The pipeline's own
workers run on the same cores as the step here, so a CPU run is a harder test than a GPU one.

A remote cache (`--cache_dir=gs://...`, or `--emulator`: a GCS API server on 127.0.0.1 started in
this process, cache at gs://<new bucket>/cache): the cache is built and uploaded if missing, then
staged into an empty staging folder, as on a fresh host, and that one-time cost is reported
(`staging_s`, `staging_mb`); the steps then read the staged copy. `input_ms_per_batch` is the
pipeline alone (one thread, no step), for comparing a local with a remote cache:

    python scripts/bench_input_stall.py                       # local cache
    python scripts/bench_input_stall.py --emulator            # same, cache on (emulated) GCS
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mtjax.config import python_config  # noqa: E402
from mtjax.parallel import arrays  # noqa: E402
from mtjax.train import setup as setup_lib  # noqa: E402
from mtjax.train import step as step_lib  # noqa: E402


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/quickstart.py")
  p.add_argument("--set", nargs="*", default=[])
  p.add_argument("--steps", type=int, default=10, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=12)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--cache_dir", default=None, help="data.cache_dir (a local folder or gs://...)")
  p.add_argument("--emulator", action="store_true",
                 help="serve gs:// from a GCS API server on 127.0.0.1 started here")
  p.add_argument("--input_batches", type=int, default=200,
                 help="batches timed for input_ms_per_batch (pipeline only)")
  args = p.parse_args()
  with contextlib.ExitStack() as stack:
    cache_dir = args.cache_dir
    if args.emulator:
      from tests import gcs_emulator  # pylint: disable=g-import-not-at-top

      stack.enter_context(gcs_emulator.running())
      cache_dir = cache_dir or f"gs://{gcs_emulator.new_bucket('bench')}/cache"
    return bench(args, cache_dir)


def _stage(cfg, spec) -> dict:
  """A fresh host's one-time staging of a remote cache's train splits: seconds and MB."""
  from mtjax.data import cache, staging  # pylint: disable=g-import-not-at-top

  os.environ["MTJAX_STAGING_DIR"] = tempfile.mkdtemp(prefix="bench_staging_")
  staging.forget()
  t0 = time.perf_counter()
  for task in spec.task_names:
    cache.read_manifest(cfg.data.cache_dir, task, "train")
  seconds = time.perf_counter() - t0
  size = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(os.environ["MTJAX_STAGING_DIR"]) for f in files)
  return {"staging_s": round(seconds, 3), "staging_mb": round(size / 2**20, 2),
          "staging_splits": len(spec.task_names)}


def _input_ms(setup, n: int, cache_dir: str | None = None, rounds: int = 1) -> list[float]:
  """The pipeline alone: ms per host batch over `n` batches, one thread, no train step; each of
  `rounds` rounds on a fresh stream."""
  from mtjax.data import pipeline  # pylint: disable=g-import-not-at-top

  cfg = setup.cfg
  options = pipeline.PipelineOptions(
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      batch_size=cfg.data.batch_size, pack=cfg.data.pack, packer=cfg.data.packer,
      packing_bins=cfg.data.packing_bins, seed=cfg.data.seed + 1,  # not the steps' stream
      feature_converter=cfg.data.feature_converter, prefetch=0)
  out = []
  for _ in range(rounds):
    it = iter(pipeline.train_batches(setup.spec, cache_dir or cfg.data.cache_dir, options))
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
      next(it)
    out.append((time.perf_counter() - t0) / n * 1e3)
  return out


def _input_remote_vs_local(setup, n: int, rounds: int = 6) -> dict:
  """Input pipeline from the remote cache (its staged copy) vs from a local cache of the same
  mixture (the config's default cache dir, built if missing), in alternating rounds."""
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top

  local = schema.DataConfig.cache_dir  # the default local cache dir
  cache.ensure_cached(setup.cfg.data.mixture, local, splits=("train",))
  times = {"remote": [], "local": []}
  for _ in range(rounds):
    times["remote"] += _input_ms(setup, n // rounds)
    times["local"] += _input_ms(setup, n // rounds, cache_dir=local)
  return {"input_ms_per_batch": round(float(np.median(times["remote"])), 2),
          "input_ms_per_batch_local_cache": round(float(np.median(times["local"])), 2),
          "input_rounds_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
          "local_cache_dir": local}


def bench(args, cache_dir: str | None) -> int:
  run_dir = tempfile.mkdtemp(prefix="bench_input_stall_")
  extra = [f"data.cache_dir={cache_dir}"] if cache_dir else []
  cfg = python_config.load(args.config, [f"run_dir={run_dir}", *extra, *args.set])
  setup = setup_lib.build(cfg)  # builds (and uploads) the cache if it is missing
  from mtjax import fs  # pylint: disable=g-import-not-at-top

  staged = _stage(cfg, setup.spec) if fs.is_url(cfg.data.cache_dir) else {}
  data = setup_lib.data_iterator(setup)
  step_fn = step_lib.make_train_step(setup.graphdef, setup.tx,
                                     num_tasks=len(setup.spec.task_names))
  params, opt_state = setup.params, setup.opt_state
  held = [next(data) for _ in range(args.steps)]  # the in-memory peer's batches (host arrays)
  times = {"pipeline": [], "in_memory": []}
  step = 0
  with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
    def run(source, n):
      nonlocal params, opt_state, step
      t0 = time.perf_counter()
      for i in range(n):
        local = next(data) if source == "pipeline" else held[i % len(held)]
        params, opt_state, m = step_fn(params, opt_state,
                                       arrays.global_batch(local, setup.mesh, setup.rules), step)
        step += 1
      jax.block_until_ready(m["loss"])
      return (time.perf_counter() - t0) / n

    run("pipeline", args.warmup)
    run("in_memory", args.warmup)
    for _ in range(args.rounds):
      for source in ("pipeline", "in_memory"):
        times[source].append(run(source, args.steps))
  # Machine noise drifts slowly: compare each pipeline round with the in-memory round next to
  # it, and report the median of those ratios (and the median step times).
  med = {k: float(np.median(v)) for k, v in times.items()}
  paired = [p / m for p, m in zip(times["pipeline"], times["in_memory"])]
  row = {"config": args.config, "set": args.set, "device": jax.devices()[0].device_kind,
         "cache_dir": cfg.data.cache_dir, **staged,
         **(_input_remote_vs_local(setup, args.input_batches) if staged else
            {"input_ms_per_batch": round(_input_ms(setup, args.input_batches)[0], 2)}),
         "step_ms_pipeline": round(med["pipeline"] * 1e3, 2),
         "step_ms_in_memory": round(med["in_memory"] * 1e3, 2),
         "ratio_pipeline_over_in_memory": round(float(np.median(paired)), 3),
         "paired_ratios": [round(r, 3) for r in paired],
         "all_rounds_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()}}
  print(json.dumps(row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
