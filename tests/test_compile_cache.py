"""The persistent compilation cache every model-running command turns on (and how to turn it off)."""

import os
import subprocess
import sys

import pytest

from mtjax import errors
from mtjax.parallel import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import jax, jax.numpy as jnp
from mtjax.parallel import distributed
distributed.initialize()
jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.ones(7)).block_until_ready()
print("dir=" + (jax.config.jax_compilation_cache_dir or ""))
"""


def _run(env_updates, tmp_path):
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV,
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu", **env_updates)
  out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=True)
  return out.stdout.strip().splitlines()[-1].removeprefix("dir=")


def test_on_by_default_in_the_user_cache_folder(tmp_path):
  folder = _run({}, tmp_path)
  assert folder == str(tmp_path / "xdg" / "mtjax" / "jax_cache")
  assert os.listdir(folder)  # the small program above was written (no 1 s threshold)


def test_a_chosen_folder_or_none(tmp_path):
  chosen = tmp_path / "mine"
  assert _run({compile_cache.ENV: str(chosen)}, tmp_path) == str(chosen)
  assert os.listdir(chosen)
  assert _run({compile_cache.ENV: "none"}, tmp_path) == ""
  assert not (tmp_path / "xdg").exists()


def test_jax_own_variable_and_urls():
  assert compile_cache.chosen_dir({"JAX_COMPILATION_CACHE_DIR": "/x"}) is None
  with pytest.raises(errors.ConfigError, match="MTJAX_COMPILATION_CACHE=gs://b/c: .*local"):
    compile_cache.chosen_dir({compile_cache.ENV: "gs://b/c"})
