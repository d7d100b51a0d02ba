"""Gin and python front ends agree; misspelled keys fail with the key's name."""

import os
import subprocess
import sys

import pytest

from mtjax.config import gin_config, python_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = os.path.join(ROOT, "configs", "quickstart.gin")
PY = os.path.join(ROOT, "configs", "quickstart.py")


def test_gin_and_python_configs_resolve_to_the_same_run_config():
  assert gin_config.load([GIN]) == python_config.load(PY)
  with_gin = gin_config.load([GIN], ["TRAIN_STEPS=50", "DataConfig.batch_size=16"])
  with_py = python_config.load(PY, ["train.steps=50", "data.batch_size=16"])
  assert with_gin == with_py
  assert with_gin.train.steps == 50 and with_gin.data.batch_size == 16


def test_misspelled_python_key_is_named():
  with pytest.raises(KeyError, match="train.stpes"):
    python_config.load(PY, ["train.stpes=50"])
  with pytest.raises(KeyError, match="trian"):
    python_config.load(PY, ["trian.steps=50"])
  with pytest.raises(ValueError, match="train.steps.*int"):
    python_config.load(PY, ["train.steps=fifty"])


def test_misspelled_gin_keys_are_named():
  with pytest.raises(KeyError, match="TRAIN_STPES"):
    gin_config.load([GIN], ["TRAIN_STPES=50"])
  with pytest.raises(ValueError, match="stpes"):
    gin_config.load([GIN], ["TrainConfig.stpes=50"])


def test_cli_reports_unknown_key_and_lists_commands():
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *a: subprocess.run([sys.executable, "-m", "mtjax.cli", *a], capture_output=True,
                                  text=True, cwd=ROOT, env=env, timeout=120)
  out = run("--help")
  assert out.returncode == 0 and "train" in out.stdout and "cache" in out.stdout
  out = run("train", "--config", PY, "--set", "train.stpes=5")
  assert out.returncode != 0 and "train.stpes" in out.stderr
  out = run("train", "--gin_file", GIN, "--gin.TRAIN_STPES=5")
  assert out.returncode != 0 and "TRAIN_STPES" in out.stderr


def test_gin_bindings_do_not_leak_into_later_configs():
  from mtjax.config import schema
  gin_config.load([GIN], ["TRAIN_STEPS=7"])
  assert schema.TrainConfig().steps == 1000
  assert schema.OptimizerConfig().warmup_steps == 0
