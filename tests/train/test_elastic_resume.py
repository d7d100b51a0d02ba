"""Resuming on another number of processes: the data state converts, the run continues exactly.

In process (fast): data iterator states written by 2 hosts restore on 1 and 4 hosts (then 1 on
2, 4 on 1) through `DataIterHandler`, the process count faked by patching `data_state._process`,
and the global batches continue as the uninterrupted single-host stream's, for the window packer
(with staged rates and a prefetch thread) and the unpacked stream; streams that depend on the
host count fail with one line naming the option.

End to end (`mtjax.cli train` subprocesses): an uninterrupted 4-step run on 1 process x 2 fake
devices is the reference, and its step-2 checkpoint the start of the elastic run (what a
separate 1-process run of steps 0-2 writes: the same program); steps 2-4 run on 2 processes x 1
device. Losses and final parameters equal the reference's. (The way back, 2 -> 1, and 2 -> 4,
4 -> 1 are covered in process through the same handler; a third phase cost ~50 s of CI.)
Two devices in all rather than 4 (e.g. 2 x 2 -> 1 x 4 -> 4 x 1), and three process starts in
two phases: on a 2-core CI machine four gloo processes compiling at once (or a third process
next to a gloo pair) can fall behind gloo's fixed 30 s collective timeout (see
tests/parallel/test_distributed.py), and each process start costs ~30 s of CPU (imports,
compile); the 4-host conversion and 4 -> 1 are covered in process.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from mtjax import errors
from mtjax.data import mixing, packing, pipeline
from mtjax.train import checkpoint as ckpt_lib
from mtjax.train import data_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENGTHS = {"inputs": 32, "targets": 8}
GLOBAL = 8
LATE = {"synthetic_copy": 1.0, "synthetic_add": 3.0}
CASES = {
    "window": {},
    "window_staged_prefetch": {"prefetch": 2, "rate_stages": ((4, LATE),)},
    "unpacked": {"pack": False},
}


def _streams(spec, cache_dir, hosts, **kw):
  kw = {"seed": 3, "packing_bins": 48, "prefetch": 0, **kw}
  return [iter(pipeline.train_batches(spec, cache_dir, pipeline.PipelineOptions(
      LENGTHS, batch_size=GLOBAL // hosts, shard_index=h, num_shards=hosts, **kw)))
          for h in range(hosts)]


def _next_global(its):
  parts = [next(it) for it in its]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _same(got, want):
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _save(monkeypatch, directory, its):
  directory.mkdir(parents=True, exist_ok=True)
  for h, it in enumerate(its):
    monkeypatch.setattr(data_state, "_process", lambda h=h: (h, len(its)))
    data_state.DataIterHandler().save(directory, args=data_state.DataIterSave(it))


def _restore(monkeypatch, directory, its):
  for h, it in enumerate(its):
    monkeypatch.setattr(data_state, "_process", lambda h=h: (h, len(its)))
    data_state.DataIterHandler().restore(directory, args=data_state.DataIterRestore(it))


@pytest.mark.parametrize("case", sorted(CASES))
def test_data_state_restores_on_another_host_count(synthetic_cache, tmp_path, monkeypatch,
                                                   case):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  kw = CASES[case]
  one = _streams(spec, synthetic_cache, 1, **kw)[0]
  want = [next(one) for _ in range(9)]
  at = lambda name: epath.Path(tmp_path / name / "data_iter")

  two = _streams(spec, synthetic_cache, 2, **kw)
  for b in range(3):
    _same(_next_global(two), want[b])  # the global batches do not depend on the host count
  _save(monkeypatch, at("3"), two)
  assert sorted(os.listdir(at("3"))) == ["process_0-of-2.json", "process_1-of-2.json"]
  opened = [one] + two
  # 2 -> 1 and 2 -> 4 processes (with staged rates: across the stage boundary at step 4), then
  # those 1 -> 2 and 4 -> 1.
  for hosts, then in ((1, 2), (4, 1)):
    its = _streams(spec, synthetic_cache, hosts, **kw)
    _restore(monkeypatch, at("3"), its)
    for b in range(3, 6):
      _same(_next_global(its), want[b])
    _save(monkeypatch, at(f"6-{hosts}"), its)
    again = _streams(spec, synthetic_cache, then, **kw)
    _restore(monkeypatch, at(f"6-{hosts}"), again)
    for b in range(6, 9):
      _same(_next_global(again), want[b])
    opened += its + again
  for it in opened:
    it.close()


def test_host_dependent_streams_fail_with_one_line_naming_the_option(synthetic_cache, tmp_path,
                                                                     monkeypatch):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  two = _streams(spec, synthetic_cache, 2, packer="best_fit")
  _next_global(two)
  directory = epath.Path(tmp_path / "40" / "data_iter")
  _save(monkeypatch, directory, two)
  with pytest.raises(errors.ConfigError) as e:
    _restore(monkeypatch, directory, _streams(spec, synthetic_cache, 1, packer="best_fit"))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("checkpoint step 40 was written by 2 processes, this run has 1: "
                            "data.packer=best_fit")
  assert "resume on 2 processes" in message

  # Worker processes (Grain's mp_prefetch state) and states written before this change.
  mp_state = {"next_index_in_cycle": 0, "next_index_in_datasets": 1,
              "iterators_in_use_indices": [0], "iterators_in_use_states": [{"window": 0}],
              "exhausted": [0], "future_states": {}}
  assert "data.worker_count" in data_state.host_dependence(mp_state)
  old_window = {"window": 0, "row": 8, "rows_before": 0}
  old_unpacked = {"next_index": 8}
  for old in (old_window, old_unpacked):
    assert "before" in data_state.host_dependence(old)
    assert data_state.host_dependence({"stage": 0, "step": 2, "inner": old}) == \
        data_state.host_dependence(old)
  assert data_state.host_dependence(
      {"stage": 1, "step": 5, "inner": _advanced(spec, synthetic_cache, 1)}) is None

  # A state without layout keys still restores on the same process count.
  one = _streams(spec, synthetic_cache, 1)[0]
  want = [next(one) for _ in range(5)]
  (tmp_path / "old" / "data_iter").mkdir(parents=True)
  (tmp_path / "old" / "data_iter" / "process_0-of-1.json").write_text(json.dumps(
      {k: v for k, v in _advanced(spec, synthetic_cache, 3).items()
       if k in ("window", "row", "rows_before")}))
  resumed = _streams(spec, synthetic_cache, 1)
  _restore(monkeypatch, epath.Path(tmp_path / "old" / "data_iter"), resumed)
  for b in range(3, 5):
    _same(_next_global(resumed), want[b])
  # ... and on another count is the one-line error.
  with pytest.raises(errors.ConfigError, match="before process-count changes"):
    _restore(monkeypatch, epath.Path(tmp_path / "old" / "data_iter"),
             _streams(spec, synthetic_cache, 2))


def _advanced(spec, cache_dir, batches):
  it = _streams(spec, cache_dir, 1)[0]
  for _ in range(batches):
    next(it)
  return it.get_state()


def test_mid_batch_states_do_not_convert():
  state = {"window": 0, "row": 5, "rows_before": 0, "global_batch": 8, "num_shards": 2,
           "shard_index": 1}  # host 1 (rows 4-7) has delivered row 4 only
  with pytest.raises(ValueError, match="inside global batch 0"):
    packing.batches_done(state)
  assert packing.batches_done(dict(state, row=8)) == 1
  assert packing.batches_done(dict(state, row=4, shard_index=0)) == 1
  assert packing.batches_done(dict(state, row=16)) == 2  # the last host sits at the boundary


def test_checkpointer_error_is_raised_not_set_aside_and_grain_checkpoints_restore(
    synthetic_cache, tmp_path, monkeypatch):
  """Through `Checkpointer`: a checkpoint written with Grain's own handler (before this change)
  restores; a host-count error is raised as is and the checkpoint stays in place."""
  spec = mixing.read_spec("synthetic", synthetic_cache)
  params = {"w": np.arange(3.0, dtype=np.float32)}
  it = _streams(spec, synthetic_cache, 1)[0]
  want = [next(it) for _ in range(4)]
  old = ocp.CheckpointManager(str(tmp_path / "grain"), item_handlers={
      "params": ocp.StandardCheckpointHandler(), "data_iter": grain.checkpoint.CheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler()})
  it = _streams(spec, synthetic_cache, 1)[0]
  next(it), next(it)
  old.save(2, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                      data_iter=grain.checkpoint.CheckpointSave(it),
                                      meta=ocp.args.JsonSave({"step": 2})))
  old.close()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "grain"), save_every=1, keep=2)
  resumed = _streams(spec, synthetic_cache, 1)[0]
  step, _, _, meta = ckpt.restore_latest(params, {}, resumed)
  assert (step, meta["step"]) == (2, 2)
  _same(next(resumed), want[2])
  ckpt.close()

  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "best_fit"), save_every=1, keep=2)
  it = _streams(spec, synthetic_cache, 1, packer="best_fit")[0]
  next(it)
  ckpt.save(1, params, {}, it, {"step": 1})
  ckpt.wait()
  monkeypatch.setattr(data_state, "_process", lambda: (1, 2))
  with pytest.raises(errors.ConfigError, match="data.packer=best_fit"):
    ckpt.restore_latest(params, {}, _streams(spec, synthetic_cache, 2, packer="best_fit")[1])
  ckpt.close()
  assert ckpt_lib.Checkpointer(str(tmp_path / "best_fit"), save_every=1, keep=2).all_steps() == [1]


# End to end ---------------------------------------------------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(run_dir, cache_dir, steps, processes, *extra):
  """`processes` processes with 2 // processes fake devices each, training to `steps`."""
  port = _free_port()
  procs = []
  for pid in range(processes):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(f"--xla_force_host_platform_device_count={2 // processes}"
                          " --xla_backend_optimization_level=0"),
               JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(run_dir), "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
      env.pop(k, None)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(pid))
    args = ["--config", os.path.join(ROOT, "configs", "quickstart.py"), "--no_progress",
            "--set", f"run_dir={run_dir}", f"data.cache_dir={cache_dir}", "model.preset=t5_test",
            "data.batch_size=4", "data.inputs_length=32", "data.targets_length=8",
            f"train.steps={steps}", "train.log_every=1", "train.checkpoint_every=2",
            "eval.at_end=False", *extra]
    procs.append(subprocess.Popen([sys.executable, "-m", "mtjax.cli", "train", *args], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  return procs


def _finish(procs):
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return logs


def _losses(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _params(run_dir, step):
  path = os.path.join(run_dir, "checkpoints", str(step), "params")
  checkpointer = ocp.StandardCheckpointer()
  meta = ckpt_lib._to_dict(checkpointer.metadata(path))  # pylint: disable=protected-access
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                        meta, is_leaf=lambda x: hasattr(x, "shape"))
  return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path, target))]


def test_run_resumes_on_other_process_counts_like_an_uninterrupted_run(synthetic_cache,
                                                                        tmp_path):
  elastic, full = str(tmp_path / "elastic"), str(tmp_path / "full")
  _finish(_start(full, synthetic_cache, 4, 1, "train.keep_checkpoints=3"))
  # Steps 0-2 on 1 process: the uninterrupted run's own checkpoint (same program, same bits).
  shutil.copytree(os.path.join(full, "checkpoints", "2"), os.path.join(elastic, "checkpoints", "2"))
  logs = _finish(_start(elastic, synthetic_cache, 4, 2))
  assert "from step 2" in logs[0] and "restored on process 0 of 2" in logs[0]
  assert "restored on process 1 of 2" in logs[1]
  assert sorted(f for f in os.listdir(os.path.join(elastic, "checkpoints", "4", "data_iter"))
                if f.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]

  got, want = _losses(elastic), _losses(full)
  assert [s for s, _ in want] == list(range(1, 5)) and [s for s, _ in got] == [3, 4]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want[2:]], rtol=0, atol=1e-5)
  # Cross-process reductions (gloo) may sum in another order than one process's: not bitwise.
  for a, b in zip(_params(elastic, 4), _params(full, 4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
