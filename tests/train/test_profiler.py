"""`train.profile_steps`: parsing (one ConfigError naming the key, before anything is built) and
the trace of a window, locally and on gs:// (traced locally, uploaded when it stops). The trace
of a real training run is checked in test_metrics (its module-scoped run profiles steps 2-3)."""

import os

import jax
import jax.numpy as jnp
import pytest

from mtjax import errors, fs
from mtjax.config import schema
from mtjax.recipes import train as train_recipe
from mtjax.train import profiler


def test_parse():
  assert profiler.parse("") is None
  assert profiler.parse("3:5") == (3, 5)
  assert profiler.parse(" 2:2 ") == (2, 2)
  for bad in ("5", "5:3", "0:2", "a:b", "1:2:3", "-1:2"):
    with pytest.raises(errors.ConfigError, match="train.profile_steps"):
      profiler.parse(bad)


def test_a_bad_window_fails_before_the_run_starts(tmp_path):
  cfg = schema.RunConfig(run_dir=str(tmp_path / "run"),
                         train=schema.TrainConfig(profile_steps="10"))
  with pytest.raises(errors.ConfigError, match="train.profile_steps='10'"):
    train_recipe.run(cfg, progress=False)
  assert not os.path.exists(tmp_path / "run")


def _run_window(run_dir, first_step=1):
  prof = profiler.StepProfiler("2:3", run_dir, first_step=first_step)
  x = jnp.ones((64, 64))
  for step in range(first_step, 5):
    prof.before(step)
    x = jax.jit(lambda a: a @ a / 64)(x)
    prof.after(step, x)
    assert prof.active == (step == 2)
  prof.close()


def test_the_window_is_traced_and_a_resume_past_it_is_not(tmp_path):
  _run_window(str(tmp_path / "a"))
  found = [f for _, _, fs_ in os.walk(tmp_path / "a") for f in fs_ if f.endswith(".xplane.pb")]
  assert len(found) == 1
  _run_window(str(tmp_path / "b"), first_step=3)
  assert not os.path.exists(tmp_path / "b")


def test_a_gs_run_dir_gets_the_trace_uploaded(gcs_bucket):
  run_dir = f"{gcs_bucket}/run"
  _run_window(run_dir)
  fs.forget_listings(run_dir)
  import gcsfs  # pylint: disable=g-import-not-at-top
  gcs = gcsfs.GCSFileSystem()
  gcs.invalidate_cache()
  files = gcs.find(f"{run_dir[5:]}/profile")
  assert any(f.endswith(".xplane.pb") for f in files), files
