"""Test setup: 8 fake CPU devices (set before JAX is imported) and a shared synthetic cache."""

import os

# LLVM optimisation level 0: tiny test models compile ~35% faster; results stay within every
# test's tolerance (bit-identity tests compare runs under the same flags).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# JAX's persistent compilation cache, shared by this session's xdist workers and every process
# the tests start: the suite compiles the same tiny models and steps in dozens of processes
# (each `mtjax train` paid ~10-20 s of compiles on the 2-core CI machine). A compiled
# executable is the same program, so results are unchanged. Kept between runs (keyed by jax,
# XLA flags and the program); set JAX_COMPILATION_CACHE_DIR to choose another folder.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax_test_compiles"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory):
  """The built-in synthetic mixture materialised once per test session; returns the cache dir."""
  import mtjax.mixtures.synthetic  # noqa: F401  (registers the tasks)
  from mtjax.data import cache

  cache_dir = str(tmp_path_factory.mktemp("cache"))
  cache.cache_mixture("synthetic", cache_dir)
  return cache_dir


@pytest.fixture(scope="session")
def gcs_server():
  """A GCS API server on 127.0.0.1 for this test process (tests/gcs_emulator.py); its URL."""
  from tests import gcs_emulator

  with gcs_emulator.running() as url:
    yield url


@pytest.fixture
def gcs_bucket(gcs_server):
  """A new, empty bucket on the test process's GCS server: returns 'gs://<bucket>'."""
  from tests import gcs_emulator

  return f"gs://{gcs_emulator.new_bucket()}"


@pytest.fixture(autouse=True)
def _progress_settings_do_not_leak():
  """`mtjax.cli.main` run in-process writes `--progress` / `--no_progress` into the environment
  (so child processes inherit them); a test must not pass them on to the next test's commands."""
  names = ("MTJAX_PROGRESS", "MTJAX_PROGRESS_EVERY")
  saved = {k: os.environ.get(k) for k in names}
  for k in names:
    os.environ.pop(k, None)
  yield
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
