"""Multi-host: when to join, and two localhost processes assembling the one-host global batch."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mtjax.data import mixing, pipeline
from mtjax.parallel import distributed

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


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_assemble_the_single_host_global_batch(tmp_path, synthetic_cache):
  port, out = _free_port(), str(tmp_path / "global.npz")
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(HERE, "two_hosts_worker.py"), synthetic_cache, out, "8"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  for p in procs:
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log[-3000:]
  gathered = np.load(out)
  spec = mixing.read_spec("synthetic", synthetic_cache)
  one_host = next(iter(pipeline.train_batches(
      spec, synthetic_cache,
      pipeline.PipelineOptions({"inputs": 32, "targets": 8}, batch_size=8, prefetch=0))))
  for key, value in one_host.items():
    np.testing.assert_array_equal(gathered[key], value, err_msg=key)
  assert int(gathered["tokens"]) == int(one_host["decoder_loss_weights"].sum())
