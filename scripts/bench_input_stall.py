"""Does the input pipeline stall training? The same train step fed by the real pipeline vs by
the same batches held in memory (the peer: a pipeline that costs nothing).

    python scripts/bench_input_stall.py                       # quickstart config, CPU
    python scripts/bench_input_stall.py --set model.preset=llama_270m data.feature_converter=decoder_only ...

Both loops run `--steps` steps after `--warmup` with the config's mesh, step function and batch
shapes, alternating in short rounds so machine noise hits both. Prints the median step time of
each and the median of the round-by-round ratios (1.00 = the pipeline is free; the issue-8 bar
is within 5%). The pipeline's own
workers run on the same cores as the step here, so a CPU run is a harder test than a GPU one.
"""

from __future__ import annotations

import argparse
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
from mtjax.train import loop  # noqa: E402
from mtjax.train import step as step_lib  # noqa: E402


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/quickstart.py")
  p.add_argument("--set", nargs="*", default=[])
  p.add_argument("--steps", type=int, default=10, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=12)
  p.add_argument("--warmup", type=int, default=3)
  args = p.parse_args()
  run_dir = tempfile.mkdtemp(prefix="bench_input_stall_")
  cfg = python_config.load(args.config, [f"run_dir={run_dir}", *args.set])
  setup = loop.build(cfg)
  data = loop.data_iterator(setup)
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
         "step_ms_pipeline": round(med["pipeline"] * 1e3, 2),
         "step_ms_in_memory": round(med["in_memory"] * 1e3, 2),
         "ratio_pipeline_over_in_memory": round(float(np.median(paired)), 3),
         "paired_ratios": [round(r, 3) for r in paired],
         "all_rounds_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()}}
  print(json.dumps(row))
  return 0


if __name__ == "__main__":
  sys.exit(main())
