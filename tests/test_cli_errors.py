"""A mistake of the user's is one `error:` line and exit status 2, never a traceback.

Each bad input runs the real CLI (`cli.main`) in this process, one also in its own process.
`--debug` / `MTJAX_DEBUG=1` bring the traceback back, and an exception that is not a user error
(a bug) keeps its traceback.
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
  paths = {split: str(folder / "ok.jsonl") for split in ("train", "validation")}
  (folder / "ft_big_vocab.py").write_text(
      "import seqio\n"
      "from mtjax.data import file_tasks\n"
      "from mtjax.data.templates import Template\n"
      f"file_tasks.register_file_task('ft_big_vocab', {paths!r}, [{TEMPLATE % 'r'}],\n"
      "                              vocabulary=seqio.ByteVocabulary(extra_ids=200))\n")


def _env(devices=2, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices}"
                        " --xla_backend_optimization_level=0"))
  env.pop("MTJAX_DEBUG", None)
  env.update(extra)
  return env


def _train_args(tmp, cache_dir, *sets):
  return ["train", "--config", QUICKSTART, "--no_progress", "--set", f"run_dir={tmp / 'run'}",
          f"data.cache_dir={cache_dir}", "model.preset=t5_test", "data.batch_size=4",
          "data.inputs_length=32", "data.targets_length=8", "train.steps=2",
          "eval.at_end=False", *sets]


def _train(tmp, cache_dir, *sets, devices=2, debug_env=False, extra_path=""):
  """The `mtjax train` command line in its own process: (argv, env)."""
  env = _env(devices, PYTHONPATH=os.pathsep.join(p for p in (ROOT, extra_path) if p),
             **({"MTJAX_DEBUG": "1"} if debug_env else {}))
  return [sys.executable, "-m", "mtjax.cli", *_train_args(tmp, cache_dir, *sets)], env


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


def _run_in_process(argv, capfd):
  """`cli.main(argv)` in this process (as its own process would run it, minus the start-up
  cost): (exit status, stdout, stderr)."""
  capfd.readouterr()
  try:
    cli.main(argv)
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
  except BaseException as e:  # pylint: disable=broad-except  (a bug: reported as a failure)
    import traceback  # pylint: disable=g-import-not-at-top
    code, tb = 1, "".join(traceback.format_exception(e))
    out, err = capfd.readouterr()
    return code, out, err + tb
  out, err = capfd.readouterr()
  return code, out, err


def _last_line(text):
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


def _no_checkpoints_run(tmp_path):
  run_dir = tmp_path / "runs" / "3"  # a digit name once made eval look for runs/config.json
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text("{}")
  return run_dir


def _error_line(err):
  """The `error:` line: the last line, or the one before a closing `hint:` line."""
  lines = [line for line in err.splitlines() if line.strip()]
  if len(lines) >= 2 and lines[-1].startswith("hint: "):
    return lines[-2]
  return lines[-1] if lines else ""


def _problems(code, out, err, wanted):
  line = _error_line(err)
  problems = []
  if code != 2:
    problems.append(f"exit status {code}, not 2")
  if not line.startswith("error: "):
    problems.append("the last stderr line is not an `error:` line")
  problems += [f"{w!r} not in the error line" for w in wanted if w not in line]
  if "Traceback" in out + err:
    problems.append("a traceback was printed")
  return [f"{'; '.join(problems)}\n    last line: {line}\n    stderr tail: {err[-1500:]}"
          ] if problems else []


def test_user_errors_are_one_line_and_exit_2(tmp_path, capfd, monkeypatch):
  """Each bad input through `cli.main` in this process (a process each cost ~75 s of this
  2-core machine's time); `test_a_user_error_in_its_own_process` checks a real process."""
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  _write_file_tasks(tasks)
  monkeypatch.syspath_prepend(str(tasks))
  monkeypatch.delenv("MTJAX_DEBUG", raising=False)
  empty_cache = str(tmp_path / "cache")
  run_dir = _no_checkpoints_run(tmp_path)
  ok_task = ("data.modules=ft_ok", "data.mixture=ft_ok")
  cases = {
      # name: (argv, substrings the error line must contain)
      "mixture": (_train_args(tmp_path / "m", empty_cache, "data.mixture=synthetc"),
                  ["'synthetc'", "'synthetic'", "data.modules"]),
      # The model is built after the mixture is cached: a two-example file task, not the
      # synthetic mixture.
      "preset": (_train_args(tmp_path / "p", tmp_path / "p" / "cache", "model.preset=t5_tset",
                             *ok_task),
                 ["model.preset", "'t5_tset'", "t5_test"]),
      "config_key": (_train_args(tmp_path / "k", empty_cache, "train.stpes=3"),
                     ["'train.stpes'"]),
      "missing_file": (_train_args(tmp_path / "f1", empty_cache, "data.modules=ft_missing",
                                   "data.mixture=ft_missing"),
                       ["'ft_missing'", "nothere.jsonl", "does not exist"]),
      "malformed_line": (_train_args(tmp_path / "f2", empty_cache, "data.modules=ft_malformed",
                                     "data.mixture=ft_malformed"),
                         ["bad.jsonl:3:", "invalid JSON"]),
      "empty_split": (_train_args(tmp_path / "f3", empty_cache, "data.modules=ft_empty",
                                  "data.mixture=ft_empty"),
                      ["'ft_empty'", "'validation'", "empty.jsonl", "is empty"]),
      "template_field": (_train_args(tmp_path / "f4", empty_cache, "data.modules=ft_field",
                                     "data.mixture=ft_field"),
                         ["ok.jsonl:1:", "template 't'", "'answer'"]),
      # These two raise in mtjax/train/loop.py.
      "unknown_module": (_train_args(tmp_path / "u", empty_cache,
                                     "data.modules=no_such_tasks_mod"),
                         ["data.modules", "'no_such_tasks_mod'"]),
      "batch_vs_mesh": (_train_args(tmp_path / "b", tmp_path / "b" / "cache",
                                    "data.batch_size=6", *ok_task),  # this process: 8 devices
                        ["data.batch_size=6", "mesh"]),
      # A task vocabulary larger than the model's embedding table (ByteVocabulary with 200
      # extra ids: 459 > t5_test's 384 rows) is refused before the first step, not NaN.
      "vocab_vs_model": (_train_args(tmp_path / "v", tmp_path / "v" / "cache",
                                     "data.modules=ft_big_vocab", "data.mixture=ft_big_vocab"),
                         ["'ft_big_vocab'", "459", "384"]),
      "eval_no_checkpoints": (["eval", "--run_dir", str(run_dir)],
                              [f"--run_dir {run_dir} has no checkpoints"]),
  }
  failures = []
  for name, (argv, wanted) in cases.items():
    failures += [f"{name}: {p}" for p in _problems(*_run_in_process(argv, capfd), wanted)]
  assert not failures, "\n".join(failures)


def test_a_user_error_in_its_own_process(tmp_path):
  """The real thing once: a process, exit status 2, the `error:` line last, no traceback."""
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  _write_file_tasks(tasks)
  argv, env = _train(tmp_path / "m", tmp_path / "cache", "data.modules=ft_malformed",
                     "data.mixture=ft_malformed", extra_path=str(tasks))
  (code, out, err), = _run_all({"malformed_line": (argv, env)}).values()
  assert not _problems(code, out, err, ["bad.jsonl:3:", "invalid JSON"]), err[-2000:]


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
  run_dir = _no_checkpoints_run(tmp_path)
  monkeypatch.delenv("MTJAX_DEBUG", raising=False)
  with pytest.raises(errors.MissingError, match="has no checkpoints"):  # --debug: the exception
    cli.main(["eval", "--run_dir", str(run_dir), "--debug"])
  monkeypatch.setenv("MTJAX_DEBUG", "1")
  with pytest.raises(errors.MissingError, match="has no checkpoints"):
    cli.main(["eval", "--run_dir", str(run_dir)])
  # ... and a real process prints it as a traceback.
  argv, env = _train(tmp_path, str(tmp_path / "cache"), "train.stpes=3", debug_env=True)
  (code, _, err), = _run_all({"config_key": (argv, env)}).values()
  assert code not in (0, 2), (code, err[-2000:])
  assert "Traceback" in err and "mtjax.errors.ConfigKeyError" in err, err[-2000:]


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
