"""Two real JAX CPU processes for multi-host tests: each runs a worker script with JAX's
multi-process environment (a coordinator on 127.0.0.1, 2 fake devices per process)."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(script: str, *args: str, timeout: float = 300) -> list[str]:
  """Runs `python script *args` as processes 0 and 1 of one JAX job; returns their logs and
  fails the test (with the log's end) when either exits non-zero."""
  port, procs = free_port(), []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=("--xla_force_host_platform_device_count=2"
                          " --xla_backend_optimization_level=0"),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, script, *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  for p in procs:
    logs.append(p.communicate(timeout=timeout)[0])
    assert p.returncode == 0, logs[-1][-3000:]
  return logs
