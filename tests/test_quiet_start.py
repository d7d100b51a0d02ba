"""Quiet start: an mtjax command prints none of TensorFlow's C++ start-up lines; --verbose does."""

import os
import subprocess
import sys

from mtjax import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("absl::InitializeLog", "cudart_stub.cc", "cuda_platform.cc", "cuInit",
         "cpu_feature_guard.cc")


def test_filter_keeps_what_is_not_startup_logging(capfd):
  with quiet.filtered_stderr():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written "
                b"to STDERR\n")
    os.write(2, b"I0000 00:00:1796107737.418019    1832 cudart_stub.cc:31] Could not find cuda "
                b"drivers on your machine, GPU will not be used.\n")
    os.write(2, b"E0000 00:00:1796107945.704586    2693 cuda_platform.cc:52] failed call to "
                b"cuInit: UNKNOWN ERROR (303)\n")
    os.write(2, b"F0000 00:00:1.0    1 fatal.cc:1] a fatal line stays\n")
    os.write(2, b"a line of the program's own\n")
  err = capfd.readouterr().err
  assert err == "F0000 00:00:1.0    1 fatal.cc:1] a fatal line stays\na line of the program's own\n"


def test_commands_start_quietly_unless_verbose(synthetic_cache):
  """`mtjax cache` imports SeqIO, so TensorFlow (one subprocess pair: TensorFlow's import is
  the slow part)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", "MTJAX_VERBOSE")}  # as a user's shell has them
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  command = [sys.executable, "-m", "mtjax.cli", "cache", "--mixture_or_task", "synthetic_copy",
             "--cache_dir", synthetic_cache, "--splits", "validation"]
  runs = {}
  for name, extra in (("quiet", []), ("verbose", ["--verbose"])):
    done = subprocess.run(command + extra, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "synthetic_copy\trate=" in done.stdout
    runs[name] = done.stderr
  assert not [line for line in runs["quiet"].splitlines() if any(n in line for n in NOISE)], (
      runs["quiet"])
  assert any(quiet.is_noise(line) for line in runs["verbose"].splitlines()), runs["verbose"]
