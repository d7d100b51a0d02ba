"""mtjax as a user's `pip install` gives it, for the packaging and notebook tests, without network.

`build_wheel` builds a wheel from a copy of this checkout's package sources (once per test
session: the xdist workers share it through a lock file). `fresh_venv` makes a new virtual
environment in which mtjax is *not* installed but every other package of the test venv is
importable: its site-packages gets a `.pth` line naming a folder of links to the test venv's
site-packages entries, minus mtjax's own (its dist-info and editable-install hooks). The wheel is
then installed into it for real (not editable), and `mtjax` there is the wheel's copy.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a build reads: the package sources and the files pyproject.toml names.
SOURCES = ("pyproject.toml", "README.md", "mtjax", "mixtures", "configs")


def build_wheel(shared_dir: str) -> str:
  """The path of an mtjax wheel built from this checkout (built on first call, then reused)."""
  os.makedirs(shared_dir, exist_ok=True)
  with open(os.path.join(shared_dir, "lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    dist = os.path.join(shared_dir, "dist")
    wheels = glob.glob(os.path.join(dist, "mtjax-*.whl"))
    if wheels:
      return wheels[0]
    # A copy, so the build's build/ and egg-info folders never land in (or race in) the checkout.
    src = os.path.join(shared_dir, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
      path = os.path.join(ROOT, name)
      if os.path.isdir(path):
        shutil.copytree(path, os.path.join(src, name), ignore=ignore)
      else:
        shutil.copy(path, src)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", dist, src], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return glob.glob(os.path.join(dist, "mtjax-*.whl"))[0]


def session_wheel(tmp_path_factory) -> str:
  """`build_wheel` in a folder all xdist workers of this test session share."""
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  return build_wheel(str(shared / "mtjax_wheel"))


def _is_mtjax(entry: str) -> bool:
  return entry.startswith(("mtjax", "__editable__")) or entry == "__pycache__"


def fresh_venv(path: str) -> str:
  """A new venv at `path` that sees the test venv's packages but not mtjax; its python."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=120)
  python = os.path.join(path, "bin", "python")
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  deps = os.path.join(path, "deps")
  os.makedirs(deps)
  ours = sysconfig.get_paths()["purelib"]
  for entry in os.listdir(ours):
    if not _is_mtjax(entry) and not entry.endswith(".pth"):
      os.symlink(os.path.join(ours, entry), os.path.join(deps, entry))
  with open(os.path.join(site, "test_venv_packages.pth"), "w") as f:
    f.write(deps + "\n")
  return python


def clean_env(**extra: str) -> dict:
  """This process's environment without what would put the checkout on a child's path."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env.update(extra)
  return env
