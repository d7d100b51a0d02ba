"""A pip install is enough: the wheel built from this checkout, installed (not editable) into a
fresh venv, trains the packaged quickstart from an empty folder, next to a user folder named
`mixtures/` that must not shadow the built-in mixtures (tests/wheel_env.py)."""

import json
import os
import subprocess
import zipfile

import pytest
import setuptools

from tests import wheel_env

ROOT = wheel_env.ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  return wheel_env.session_wheel(tmp_path_factory)


def test_wheel_holds_every_package_the_configs_and_the_extras(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  folders = {os.path.dirname(n) for n in names}
  for package in setuptools.find_packages(ROOT, include=["mtjax*"]):
    assert package.replace(".", "/") in folders, (
        f"{package} is missing from the wheel: add it to [tool.setuptools] packages")
  for name in ("mtjax/configs/quickstart.py", "mtjax/configs/quickstart.gin",
               "mtjax/configs/experiments/t0.py", "mtjax/configs/experiments/t0.gin",
               "mtjax/configs/sweeps/synthetic_mixtures.yaml",
               "mtjax/configs/sweeps/synthetic_rates.py", "mtjax/mixtures/synthetic.py",
               "mtjax/mixtures/synthetic_icl.py"):
    assert name in names, name
  assert not [n for n in names if n.startswith(("mixtures/", "configs/"))]  # nothing top-level
  lines = metadata.splitlines()
  for extra, jax_extra in (("tpu", "tpu"), ("cuda", "cuda12"), ("recipes", None), ("test", None),
                           ("hf", None)):
    assert f"Provides-Extra: {extra}" in lines
    if jax_extra:
      assert any(line.startswith(f"Requires-Dist: jax[{jax_extra}]") and f'extra == "{extra}"'
                 in line for line in lines), extra
  assert "Requires-Python: <3.13,>=3.11" in lines


def _mtjax(venv, *args, cwd, env, timeout=400):
  return subprocess.run([os.path.join(venv, "bin", "mtjax"), *args], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=timeout, check=False)


def test_pip_installed_mtjax_runs_packaged_configs_from_an_empty_folder(
    wheel, tmp_path, synthetic_cache):
  venv = str(tmp_path / "venv")
  python = wheel_env.fresh_venv(venv)
  env = wheel_env.clean_env(
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2", PIP_NO_INDEX="1")
  subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, env=env,
                 timeout=300)

  # An empty folder but for the user's own `mixtures/` package: its synthetic.py must never be
  # imported (the built-in is mtjax.mixtures.synthetic), its own module must.
  work = tmp_path / "work"
  (work / "mixtures").mkdir(parents=True)
  (work / "mixtures" / "__init__.py").write_text("")
  (work / "mixtures" / "synthetic.py").write_text(
      "raise RuntimeError('the user folder mixtures/ shadowed the built-in mixtures')\n")
  (work / "mixtures" / "mine.py").write_text(
      "import pathlib\npathlib.Path('mine_was_imported').write_text('yes')\n")
  where = subprocess.run([python, "-c", "import mtjax, mtjax.mixtures, mtjax.configs; "
                          "print(mtjax.__file__); print(mtjax.mixtures.__file__)"],
                         capture_output=True, text=True, cwd=work, env=env, check=True)
  assert all(line.startswith(venv) for line in where.stdout.split()), where.stdout

  tiny = [f"data.cache_dir={synthetic_cache}", "model.preset=t5_test", "data.batch_size=8",
          "train.log_every=1", "eval.max_examples=8", "eval.batch_size=8"]
  run_dir = str(tmp_path / "run_py")
  # `mixtures.synthetic` is the name older configs use: it still means the built-in.
  out = _mtjax(venv, "train", "--config=quickstart", "--no_progress", "--set", "train.steps=2",
               f"run_dir={run_dir}", "data.modules=mixtures.synthetic,mixtures.mine", *tiny,
               cwd=work, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["steps"] == 2
  assert (work / "mine_was_imported").exists()
  results = json.load(open(os.path.join(run_dir, "eval_results.json")))
  assert {r["task"] for r in results} == {f"synthetic_{t}" for t in
                                          ("add", "compare", "copy", "reverse", "sort")}

  # The collections are packaged: `mtjax tasks` lists them and a registered mixture's tasks
  # (GLUE's registration reads no data) from the empty folder.
  out = _mtjax(venv, "tasks", "--mixture", "glue_v002_proportional", cwd=work, env=env,
               timeout=200)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "glue_v002_proportional: 11 task(s)" in out.stdout and "392702" in out.stdout

  # Gin, T5X style: a user file in a search-path folder includes the packaged quickstart.gin.
  (work / "gin").mkdir()
  (work / "gin" / "mine.gin").write_text(
      "include 'quickstart.gin'\nTrainConfig.log_every = 1\nEvalConfig.at_end = False\n")
  gin_run = str(tmp_path / "run_gin")
  out = _mtjax(venv, "train", "--gin_search_paths=gin", "--gin_file=mine.gin", "--no_progress",
               "--gin.TRAIN_STEPS=2", f"--gin.RUN_DIR='{gin_run}'",
               f"--gin.DataConfig.cache_dir='{synthetic_cache}'",
               "--gin.ModelConfig.preset='t5_test'", "--gin.DataConfig.batch_size=8",
               cwd=work, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["steps"] == 2
  assert json.load(open(os.path.join(gin_run, "config.json")))["data"]["modules"] == [
      "mtjax.mixtures.synthetic"]

  # A config that is neither a file nor packaged: one error line that lists the packaged ones.
  out = _mtjax(venv, "train", "--config=nosuch", cwd=work, env=env, timeout=120)
  assert out.returncode != 0
  assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: "), out.stderr
  assert "quickstart" in out.stderr and "experiments/t0" in out.stderr
