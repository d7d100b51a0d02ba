"""Exact resume (SIGKILL, SIGTERM), NaN stop, and half-written checkpoints, in subprocesses.

A 20-step run is the reference. A run killed with SIGKILL after step 11 (checkpoints every 5
steps) and resumed, and a run stopped with SIGTERM after step 7 (which saves step 7) and resumed,
must both end with bit-identical parameters and identical per-step losses. The runs use two fake
devices (faster to compile) and start in parallel.
"""

import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(run_dir, cache_dir, *extra, fault=None):
  # The resumed runs reuse the first runs' compiled programs from a persistent cache.
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=("--xla_force_host_platform_device_count=2"
                          " --xla_backend_optimization_level=0"),
             JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(run_dir), "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("MTJAX_FAULT_AT_STEP", None)
  if fault:
    env["MTJAX_FAULT_AT_STEP"] = fault
  args = ["--config", os.path.join(ROOT, "configs", "quickstart.py"), "--no_progress", "--set",
          f"run_dir={run_dir}", f"data.cache_dir={cache_dir}", "model.preset=t5_test",
          "data.batch_size=4", "data.inputs_length=32", "data.targets_length=8",
          "train.steps=20", "train.log_every=1", "train.checkpoint_every=5",
          "train.keep_checkpoints=3", "eval.at_end=False", *extra]
  return subprocess.Popen([sys.executable, "-m", "mtjax.cli", "train", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def _losses(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _params(run_dir, step):
  path = os.path.join(run_dir, "checkpoints", str(step), "params")
  return ocp.StandardCheckpointer().restore(path)


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_cache):
  base = tmp_path_factory.mktemp("resume")
  dirs = {name: str(base / name) for name in ("full", "kill", "term", "nan")}
  procs = {"full": _start(dirs["full"], synthetic_cache),
           "kill": _start(dirs["kill"], synthetic_cache, fault="11:SIGKILL"),
           "term": _start(dirs["term"], synthetic_cache, fault="7:SIGTERM"),
           "nan": _start(dirs["nan"], synthetic_cache, fault="13:nan")}
  first = {name: _finish(p) for name, p in procs.items()}
  # Half-written step dir (what a kill during a save leaves): must be ignored on resume.
  os.makedirs(os.path.join(dirs["kill"], "checkpoints", "12.orbax-checkpoint-tmp-1", "params"))
  resumed = {name: _start(dirs[name], synthetic_cache) for name in ("kill", "term")}
  second = {name: _finish(p) for name, p in resumed.items()}
  return dirs, first, second


def test_sigkill_then_resume_is_bit_identical(runs):
  dirs, first, second = runs
  assert first["full"][0] == 0, first["full"][1][-3000:]
  assert first["kill"][0] == -9, first["kill"][1][-3000:]
  assert second["kill"][0] == 0, second["kill"][1][-3000:]
  assert "resumed" in second["kill"][1]
  assert _losses(dirs["kill"]) == _losses(dirs["full"])
  assert [s for s, _ in _losses(dirs["full"])] == list(range(1, 21))
  for a, b in zip(_leaves(_params(dirs["full"], 20)), _leaves(_params(dirs["kill"], 20))):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_the_current_step_exits_0_and_resumes_exactly(runs):
  dirs, first, second = runs
  code, log = first["term"]
  assert code == 0, log[-3000:]
  assert "SIGTERM: saved a checkpoint at step 7" in log
  assert '"steps": 7' in log and '"preempted": true' in log
  assert second["term"][0] == 0, second["term"][1][-3000:]
  assert "from step 7" in second["term"][1]  # the checkpoint SIGTERM wrote
  assert _losses(dirs["term"]) == _losses(dirs["full"])
  for a, b in zip(_leaves(_params(dirs["full"], 20)), _leaves(_params(dirs["term"], 20))):
    np.testing.assert_array_equal(a, b)


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(runs):
  dirs, first, _ = runs
  code, log = first["nan"]
  assert code != 0
  assert "NaN/Inf at step 13" in log
  steps = sorted(int(d) for d in os.listdir(os.path.join(dirs["nan"], "checkpoints"))
                 if d.isdigit())
  assert steps == [5, 10]
  assert all(np.isfinite(x).all() for x in _leaves(_params(dirs["nan"], 10)))
