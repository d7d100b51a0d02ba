"""The documentation site (mkdocs.yml, docs/): it builds in strict mode, every config key has a
doc, and every `mtjax ...` command line in the docs and the README names a real command, real
flags and real config keys.

The strict build needs the `docs` extra (in the `test` extra too); it runs offline: nothing is
downloaded while building.
"""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import docs_reference  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _pages():
  paths = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
  return paths + [os.path.join(ROOT, "README.md")]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strictly(tmp_path):
  """A broken link or anchor, a page missing from the nav's targets, a module the API pages name
  that does not exist, or an undocumented config key fails this build."""
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                        "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  for page in ("index.html", "reference/cli.html", "reference/config.html",
               "reference/api/mtjax.data.file_tasks.html", "results/promot_repro.html"):
    assert os.path.exists(tmp_path / "site" / page), page
  config = (tmp_path / "site" / "reference" / "config.html").read_text()
  assert "train.steps" in config and "DataConfig.mixture" in config
  api = (tmp_path / "site" / "reference" / "api" / "mtjax.data.file_tasks.html").read_text()
  assert "register_file_task" in api


def test_every_config_key_is_documented():
  keys = docs_reference.config_keys()
  assert {"run_dir", "train.steps", "eval.lm_eval_tasks", "promot.methods"} <= {
      k.name for k in keys}
  assert all(k.doc for k in keys)


def test_an_undocumented_key_is_an_error(tmp_path):
  source = tmp_path / "schema.py"
  source.write_text("class A:\n  # above\n  x: int = 1\n  y: int = 2  # after\n  #   more\n"
                    "  z: int = 3\n")
  docs = docs_reference._field_comments(str(source))  # pylint: disable=protected-access
  assert docs == {("A", "x"): "above", ("A", "y"): "after more"}


def test_the_cli_reference_has_every_command_and_flag():
  page = docs_reference.cli_page()
  for command in ("train", "eval", "infer", "lm-eval", "cache", "convert", "export", "ablate",
                  "promot", "merge", "tasks"):
    assert f"## mtjax {command}\n" in page
  assert "`--mixture_or_task MIXTURE_OR_TASK`" in page and "`--progress=MODE`" in page


def test_documented_commands_exist():
  problems = []
  for path in _pages():
    with open(path, encoding="utf-8") as f:
      problems += docs_reference.command_problems(f.read(), os.path.relpath(path, ROOT))
  assert problems == []


def test_the_command_check_finds_mistakes():
  text = ("```bash\nmtjax train --config=quickstart --set train.stepz=5 \\\n    --no_such_flag\n"
          "mtjax evaluate --run_dir=x\nmtjax eval --run_dir=runs/x  # fine\n```\n")
  problems = docs_reference.command_problems(text, "page")
  assert len(problems) == 3, problems
  assert "train.stepz" in problems[0] and "--no_such_flag" in problems[1]
  assert "'evaluate'" in problems[2]
