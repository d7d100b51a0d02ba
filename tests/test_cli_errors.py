"""A mistake of the user's is one `error:` line and exit status 2, never a traceback.

Each bad input runs the real CLI in its own process (all of them at once: every one fails before
training starts). `--debug` / `MTJAX_DEBUG=1` bring the traceback back, and an exception that is
not a user error (a bug) keeps its traceback.
"""

import os
import subprocess
import sys

import pytest

from mtjax import cli, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.py")

TEMPLATE = 'Template("t", "{q}", "{%s}")'
# data.modules the file-task cases import: each registers one file task over the files below.
MODULES = {
    "ft_missing": {"train": "nothere.jsonl"},
    "ft_malformed": {"train": "bad.jsonl"},
    "ft_empty": {"train": "ok.jsonl", "validation": "empty.jsonl"},
    "ft_field": {"train": "ok.jsonl", "validation": "ok.jsonl"},
    "ft_ok": {"train": "ok.jsonl", "validation": "ok.jsonl"},  # a good task, cached in no time
}


def _write_file_tasks(folder):
  (folder / "ok.jsonl").write_text('{"q": "a", "r": "b"}\n{"q": "c", "r": "d"}\n')
  (folder / "bad.jsonl").write_text('{"q": "a", "r": "b"}\n\n{"q": "c",}\n')
  (folder / "empty.jsonl").write_text("\n")
  for name, files in MODULES.items():
    paths = {split: str(folder / f) for split, f in files.items()}
    field = "answer" if name == "ft_field" else "r"
    (folder / f"{name}.py").write_text(
        "from mtjax.data import file_tasks\n"
        "from mtjax.data.templates import Template\n"
        f"file_tasks.register_file_task({name!r}, {paths!r}, [{TEMPLATE % field}])\n")


def _env(devices=2, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices}"
                        " --xla_backend_optimization_level=0"))
  env.pop("MTJAX_DEBUG", None)
  env.update(extra)
  return env


def _train(tmp, cache_dir, *sets, devices=2, debug_env=False, extra_path=""):
  args = ["--config", QUICKSTART, "--no_progress", "--set", f"run_dir={tmp / 'run'}",
          f"data.cache_dir={cache_dir}", "model.preset=t5_test", "data.batch_size=4",
          "data.inputs_length=32", "data.targets_length=8", "train.steps=2",
          "eval.at_end=False", *sets]
  env = _env(devices, PYTHONPATH=os.pathsep.join(p for p in (ROOT, extra_path) if p),
             **({"MTJAX_DEBUG": "1"} if debug_env else {}))
  return [sys.executable, "-m", "mtjax.cli", "train", *args], env


def _eval(*args):
  return [sys.executable, "-m", "mtjax.cli", "eval", *args], _env(PYTHONPATH=ROOT)


def _run_all(commands):
  """Starts every command, then waits for all; returns {name: (returncode, stdout, stderr)}."""
  procs = {name: subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, (argv, env) in commands.items()}
  results = {}
  for name, p in procs.items():
    out, err = p.communicate(timeout=600)
    results[name] = (p.returncode, out, err)
  return results


def _last_line(text):
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _no_checkpoints_run(tmp_path):
  run_dir = tmp_path / "runs" / "3"  # a digit name once made eval look for runs/config.json
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text("{}")
  return run_dir


def test_user_errors_are_one_line_and_exit_2(tmp_path):
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  _write_file_tasks(tasks)
  empty_cache = str(tmp_path / "cache")
  run_dir = _no_checkpoints_run(tmp_path)
  ok_task = ("data.modules=ft_ok", "data.mixture=ft_ok")
  cases = {
      # name: (command, substrings the error line must contain)
      "mixture": (_train(tmp_path / "m", empty_cache, "data.mixture=synthetc"),
                  ["'synthetc'", "'synthetic'", "data.modules"]),
      # The model is built after the mixture is cached: a two-example file task, not the
      # synthetic mixture (caching that, and importing SeqIO here, would double this test's time).
      "preset": (_train(tmp_path / "p", tmp_path / "p" / "cache", "model.preset=t5_tset",
                        *ok_task, extra_path=str(tasks)),
                 ["model.preset", "'t5_tset'", "t5_test"]),
      "config_key": (_train(tmp_path / "k", empty_cache, "train.stpes=3"),
                     ["'train.stpes'"]),
      "missing_file": (_train(tmp_path / "f1", empty_cache, "data.modules=ft_missing",
                              "data.mixture=ft_missing", extra_path=str(tasks)),
                       ["'ft_missing'", "nothere.jsonl", "does not exist"]),
      "malformed_line": (_train(tmp_path / "f2", empty_cache, "data.modules=ft_malformed",
                                "data.mixture=ft_malformed", extra_path=str(tasks)),
                         ["bad.jsonl:3:", "invalid JSON"]),
      "empty_split": (_train(tmp_path / "f3", empty_cache, "data.modules=ft_empty",
                             "data.mixture=ft_empty", extra_path=str(tasks)),
                      ["'ft_empty'", "'validation'", "empty.jsonl", "is empty"]),
      "template_field": (_train(tmp_path / "f4", empty_cache, "data.modules=ft_field",
                                "data.mixture=ft_field", extra_path=str(tasks)),
                         ["ok.jsonl:1:", "template 't'", "'answer'"]),
      # These two raise in mtjax/train/loop.py.
      "unknown_module": (_train(tmp_path / "u", empty_cache, "data.modules=no_such_tasks_mod"),
                         ["data.modules", "'no_such_tasks_mod'"]),
      "batch_vs_mesh": (_train(tmp_path / "b", tmp_path / "b" / "cache", "data.batch_size=6",
                               *ok_task, devices=8, extra_path=str(tasks)),
                        ["data.batch_size=6", "mesh"]),
      "eval_no_checkpoints": (_eval("--run_dir", str(run_dir)),
                              [f"--run_dir {run_dir} has no checkpoints"]),
  }
  results = _run_all({name: command for name, (command, _) in cases.items()})
  failures = []
  for name, (_, wanted) in cases.items():
    code, out, err = results[name]
    line = _last_line(err)
    problems = []
    if code != 2:
      problems.append(f"exit status {code}, not 2")
    if not line.startswith("error: "):
      problems.append("the last stderr line is not an `error:` line")
    problems += [f"{w!r} not in the error line" for w in wanted if w not in line]
    if "Traceback" in out + err:
      problems.append("a traceback was printed")
    if problems:
      failures.append(f"{name}: {'; '.join(problems)}\n    last line: {line}\n"
                      f"    stderr tail: {err[-1500:]}")
  assert not failures, "\n".join(failures)


def test_debug_flag_and_env_show_the_traceback(tmp_path):
  run_dir = _no_checkpoints_run(tmp_path)
  flag_argv, flag_env = _eval("--run_dir", str(run_dir), "--debug")
  env_argv, env_env = _eval("--run_dir", str(run_dir))
  env_env["MTJAX_DEBUG"] = "1"
  key_argv, key_env = _train(tmp_path, str(tmp_path / "cache"), "train.stpes=3", debug_env=True)
  results = _run_all({"flag": (flag_argv, flag_env), "env": (env_argv, env_env),
                      "config_key": (key_argv, key_env)})
  for name, (code, out, err) in results.items():
    assert code not in (0, 2), (name, code, err[-2000:])
    assert "Traceback" in err, (name, err[-2000:])
  assert "mtjax.errors.MissingError" in results["flag"][2]
  assert "has no checkpoints" in _last_line(results["env"][2])
  assert "mtjax.errors.ConfigKeyError" in results["config_key"][2]


def test_a_bug_keeps_its_traceback(monkeypatch):
  def buggy(argv):
    raise RuntimeError("a bug in mtjax")

  monkeypatch.delenv("MTJAX_DEBUG", raising=False)
  monkeypatch.setattr(cli, "_cmd_train", buggy)
  with pytest.raises(RuntimeError, match="a bug in mtjax"):
    cli.main(["train"])


def test_user_error_in_process_prints_message_and_hint(monkeypatch, capsys):
  def wrong(argv):
    raise errors.DataError("task 'x': no records", hint="check the files")

  monkeypatch.delenv("MTJAX_DEBUG", raising=False)
  monkeypatch.setattr(cli, "_cmd_train", wrong)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.splitlines() == ["error: task 'x': no records",
                                                  "hint: check the files"]
  with pytest.raises(errors.DataError):  # --debug anywhere on the line: the exception itself
    cli.main(["--debug", "train"])
  monkeypatch.setenv("MTJAX_DEBUG", "1")
  with pytest.raises(errors.DataError):
    cli.main(["train"])


def test_cli_usage_errors_exit_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["trian"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip().startswith("error: unknown command 'trian'")
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--config", QUICKSTART, "--gin_file", "x.gin"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip() == "error: use either --gin_file or --config, not both"


def test_a_mesh_that_does_not_fit_names_its_keys():
  from mtjax.parallel import mesh

  with pytest.raises(errors.ConfigError, match=r"mesh.data=-1 mesh.fsdp=3 .*does not fit 8"):
    mesh.resolve_shape(-1, 3, 1, num_devices=8)
  with pytest.raises(ValueError, match="at most one axis"):  # still a ValueError for old callers
    mesh.resolve_shape(-1, -1, 1, num_devices=8)
