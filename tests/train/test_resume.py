"""Exact resume (SIGKILL, SIGTERM), NaN stop, half-written and corrupted checkpoints, a refused
resume, and TensorBoard after a kill, in subprocesses.

A 20-step run is the reference. A run killed with SIGKILL after step 11 (checkpoints every 5
steps) and resumed, and a run stopped with SIGTERM after step 7 (which saves step 7) and resumed,
must both end with bit-identical parameters and identical per-step losses. Two copies of the
finished reference, each with its two newest checkpoints damaged (four kinds of damage in all),
must set both aside, retrain from step 10, save steps 15 and 20 again and end bit-identical to
the reference; restarting one again is a no-op resume. A copy resumed with another preset and LoRA rank is refused with both
differences named, and leaves config.json and model_summary.json byte-identical. The runs use two
fake devices (faster to compile) and start in parallel, phase by phase.
"""

import glob
import hashlib
import json
import os
import shutil
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
  args = ["--config", os.path.join(ROOT, "configs", "quickstart.py"), "--no_progress", "--set",
          f"run_dir={run_dir}", f"data.cache_dir={cache_dir}", "model.preset=t5_test",
          "data.batch_size=4", "data.inputs_length=32", "data.targets_length=8",
          "train.steps=20", "train.log_every=1", "train.checkpoint_every=5",
          "train.keep_checkpoints=3", "eval.at_end=False", *extra]
  # A fault (STEP:KIND) is injected by a loop hook of the test's own worker (fault_worker.py).
  entry = ["tests.train.fault_worker", fault] if fault else ["mtjax.cli"]
  return subprocess.Popen([sys.executable, "-m", *entry, "train", *args], cwd=ROOT, env=env,
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
  for name in tuple(DAMAGED) + ("refused",):
    dirs[name] = str(base / name)
    shutil.copytree(dirs["full"], dirs[name])
  for name, (newest, previous) in DAMAGED.items():
    _corrupt(os.path.join(dirs[name], "checkpoints", "20"), newest)
    _corrupt(os.path.join(dirs[name], "checkpoints", "15"), previous)
  dirs["refused_md5"] = _md5s(dirs["refused"])
  resumed = {name: _start(dirs[name], synthetic_cache) for name in ("kill", "term", *DAMAGED)}
  resumed["refused"] = _start(dirs["refused"], synthetic_cache, "model.preset=t5_quickstart",
                              "model.lora_rank=4")
  # A second writer on the killed run's dir, started at the same time: one of the two must be
  # refused by the run-dir lock (the other resumes; the killed holder's lock does not block).
  resumed["twin"] = _start(dirs["kill"], synthetic_cache)
  second = {name: _finish(p) for name, p in resumed.items()}
  if second["kill"][0] != 0:  # the twin took the lock first: it is the resumed run
    second["kill"], second["twin"] = second["twin"], second["kill"]
  second["again"] = _finish(_start(dirs["damaged_a"], synthetic_cache))  # a second restart
  return dirs, first, second


# Four ways a checkpoint gets damaged (disk errors, interrupted copies, manual edits): per run
# dir, (step 20's damage, step 15's damage). Each is the newest checkpoint when it is found.
DAMAGED = {"damaged_a": ("truncated", "no_opt_state"),
           "damaged_b": ("no_params_metadata", "garbled_meta")}


def _corrupt(step_dir, how):
  if how == "truncated":  # one array file of the parameters cut short
    path = sorted(glob.glob(os.path.join(step_dir, "params", "d", "*")))[0]
    with open(path, "r+b") as f:
      f.truncate(5)
  elif how == "no_opt_state":  # the optimizer state's array files are gone
    for path in glob.glob(os.path.join(step_dir, "opt_state", "d", "*")):
      os.remove(path)
  elif how == "no_params_metadata":
    os.remove(os.path.join(step_dir, "params", "_METADATA"))
  elif how == "garbled_meta":
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
      f.write("{garbled")


def _md5s(run_dir):
  return {name: hashlib.md5(open(os.path.join(run_dir, name), "rb").read()).hexdigest()
          for name in ("config.json", "model_summary.json")}


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


def test_a_second_writer_on_the_run_dir_is_refused_while_the_first_resumes(runs):
  _, _, second = runs
  code, log = second["twin"]
  assert code == 2, log[-3000:]
  errors = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "is in use by mtjax train (pid" in errors[0], log[-3000:]
  assert "Traceback" not in log
  # The SIGKILLed first run left its lock file; the resumed run took it over with a warning.
  assert "ended without releasing it" in second["kill"][1]


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


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_corrupted_newest_checkpoints_are_set_aside_and_the_run_finishes(runs, name):
  dirs, _, second = runs
  code, log = second[name]
  assert code == 0, log[-3000:]
  assert log.count("cannot be restored") == 2 and log.count("moved it aside") == 2
  assert "resumed" in log and "from step 10" in log
  assert "Traceback" not in log  # no TensorStore/asyncio noise from the failed reads
  ckpts = os.listdir(os.path.join(dirs[name], "checkpoints"))
  assert {"15", "20"} <= set(ckpts)  # saved again over the set-aside step numbers
  for step in (15, 20):  # kept, renamed, never deleted
    assert len([d for d in ckpts if d.startswith(f"{step}.corrupt-")]) == 1
  for a, b in zip(_leaves(_params(dirs["full"], 20)), _leaves(_params(dirs[name], 20))):
    np.testing.assert_array_equal(a, b)
  assert _losses(dirs[name]) == _losses(dirs["full"])


def test_restarting_after_the_recovery_is_a_no_op_resume(runs):
  dirs, _, second = runs
  code, log = second["again"]
  assert code == 0, log[-3000:]
  assert "from step 20" in log and "cannot be restored" not in log
  ckpts = os.listdir(os.path.join(dirs["damaged_a"], "checkpoints"))
  assert len([d for d in ckpts if ".corrupt-" in d]) == 2


def test_a_refused_resume_names_each_difference_and_writes_nothing(runs):
  dirs, _, second = runs
  code, log = second["refused"]
  assert code == 2, log[-3000:]
  last = [line for line in log.splitlines() if line.startswith("error:")]
  assert len(last) == 1, log[-3000:]
  assert "model.preset: checkpoint 't5_test', config 't5_quickstart'" in last[0]
  assert "model.lora_rank: checkpoint 0, config 4" in last[0]
  assert "Traceback" not in log and "move them away" not in log
  assert _md5s(dirs["refused"]) == dirs["refused_md5"]
  assert not [d for d in os.listdir(os.path.join(dirs["refused"], "checkpoints"))
              if ".corrupt-" in d]


def _tensorboard_scalars(run_dir, tag="loss"):
  """{step: value} as TensorBoard shows it: event files in order, and a `SessionLog.START` at
  step s (a restarted writer's purge_step) drops the earlier files' points at steps >= s."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  points = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.*"))):
    with open(path, "rb") as f:
      data = f.read()
    at = 0
    while at + 12 <= len(data):
      n = int.from_bytes(data[at:at + 8], "little")
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
      at += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        points = {k: v for k, v in points.items() if k < event.step}
      for value in event.summary.value:
        if value.tag == tag:
          points[event.step] = value.simple_value
  return points


def test_tensorboard_keeps_every_step_after_a_kill(runs):
  dirs, _, _ = runs
  files = sorted(glob.glob(os.path.join(dirs["kill"], "tensorboard", "events.*")))
  assert len(files) == 2 and all(os.path.getsize(f) > 100 for f in files)  # killed one too
  shown = _tensorboard_scalars(dirs["kill"])
  assert sorted(shown) == list(range(1, 21))
  for step, loss in _losses(dirs["kill"]):
    assert shown[step] == pytest.approx(loss, rel=1e-6)
