"""Multi-host: when to join, and two localhost processes assembling the one-host global batch."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mtjax.data import mixing, pipeline
from mtjax.parallel import distributed
from tests import two_processes

HERE = os.path.dirname(os.path.abspath(__file__))


def test_settings_from_flags_and_environment():
  assert distributed.settings(env={}) is None  # one process: never wait for a coordinator
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "2"}
  assert distributed.settings(env=env) == {"coordinator_address": "10.0.0.1:1234",
                                           "num_processes": 4, "process_id": 2}
  assert distributed.settings("h:1", 2, 0, env={}) == {
      "coordinator_address": "h:1", "num_processes": 2, "process_id": 0}
  with pytest.raises(ValueError, match="number of processes"):
    distributed.settings("h:1", env={})
  assert distributed.settings(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}) == {}
  assert distributed.settings(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.settings(env={"TPU_WORKER_HOSTNAMES": "a,b"}) == {}


def test_two_processes_assemble_the_single_host_global_batch(tmp_path, synthetic_cache):
  out = str(tmp_path / "global.npz")
  two_processes.run(os.path.join(HERE, "two_hosts_worker.py"), synthetic_cache, out, "8")
  gathered = np.load(out)
  spec = mixing.read_spec("synthetic", synthetic_cache)
  one_host = next(iter(pipeline.train_batches(
      spec, synthetic_cache,
      pipeline.PipelineOptions({"inputs": 32, "targets": 8}, batch_size=8, prefetch=0))))
  for key, value in one_host.items():
    np.testing.assert_array_equal(gathered[key], value, err_msg=key)
  assert int(gathered["tokens"]) == int(one_host["decoder_loss_weights"].sum())


def _train(run_dir, cache_dir, devices, env_extra=None):
  root = os.path.dirname(os.path.dirname(HERE))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices}"
                        " --xla_backend_optimization_level=0"), **(env_extra or {}))
  args = ["--config", os.path.join(root, "configs", "quickstart.py"), "--no_progress", "--set",
          f"run_dir={run_dir}", f"data.cache_dir={cache_dir}", "model.preset=t5_test",
          "data.batch_size=8", "data.inputs_length=32", "data.targets_length=8",
          "train.steps=3", "train.log_every=1", "train.checkpoint_every=3", "eval.at_end=False"]
  return subprocess.Popen([sys.executable, "-m", "mtjax.cli", "train", *args], cwd=root,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_train_like_one(tmp_path, synthetic_cache):
  """Two localhost processes x 2 devices train together; losses equal one process x 4."""
  import json  # pylint: disable=g-import-not-at-top

  port = two_processes.free_port()
  pair = [_train(str(tmp_path / "two"), synthetic_cache, 2, {
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(pid)}) for pid in range(2)]
  # The one-process reference runs afterwards: on a 2-core CI machine a third process would
  # slow one of the pair enough to desynchronise it.
  for procs in (pair, [_train(str(tmp_path / "one"), synthetic_cache, 4)]):
    for p in procs:
      log = p.communicate(timeout=600)[0]
      assert p.returncode == 0, log[-3000:]
  losses = {}
  for name in ("one", "two"):
    with open(os.path.join(tmp_path, name, "metrics.jsonl")) as f:
      losses[name] = [json.loads(line)["loss"] for line in f]
  assert len(losses["two"]) == 3  # process 0 alone writes the metrics
  np.testing.assert_allclose(losses["two"], losses["one"], rtol=0, atol=1e-5)
  assert os.path.isdir(tmp_path / "two" / "checkpoints" / "3")
