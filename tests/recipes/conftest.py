"""The recipe tests' worker processes (sweeps, toy recipe runs, the notebook's kernel).

Compiling dominates these short runs, so each worker is a fresh process with one CPU device
and XLA's LLVM optimisation off, and all of them share one JAX compilation cache for the test
session: the parameter initialisers, evaluation and steps they have in common compile once.
None of this changes what the runs compute beyond floating-point rounding.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def worker_env(tmp_path_factory) -> dict:
  cache = tmp_path_factory.mktemp("jax_compilation_cache")
  return {"PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=1 "
                       "--xla_backend_optimization_level=0",
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2"}
