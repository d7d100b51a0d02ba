"""Progress reports (mtjax.progress): a bar on a terminal, plain lines in a log, nothing on request.

The terminal is a real pseudo-terminal (`os.openpty`) and the log a real pipe, each on the stderr
of a child process that runs a loop through `mtjax.progress` in the default (`auto`) mode.
"""

import fcntl
import io
import os
import struct
import subprocess
import sys
import termios

import pytest

from mtjax import errors, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A loop as the trainer runs one: a total, a resumed start, a postfix set along the way.
CHILD = """
import time
from mtjax import progress
with progress.Progress(8, initial=2, desc="train", unit="step") as p:
  for i in range(6):
    time.sleep(0.01)
    p.set_postfix(loss=f"{1.0 / (i + 1):.3f}", tok_s="1234")
    p.update(1)
for _ in progress.wrap(range(3), total=3, desc="caching t/train", unit="examples"):
  pass
"""


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("MTJAX_PROGRESS")}
  return dict(env, PYTHONPATH=ROOT, **extra)


def test_a_terminal_gets_the_redrawn_bar():
  main, child = os.openpty()
  fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0x0
  try:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stderr=child, stdout=subprocess.DEVNULL,
                            env=_env(), cwd=ROOT)
    os.close(child)
    out = b""
    while True:
      try:
        chunk = os.read(main, 4096)
      except OSError:  # EIO: the child closed the terminal
        break
      if not chunk:
        break
      out += chunk
    assert proc.wait(timeout=60) == 0, out.decode(errors="replace")
  finally:
    os.close(main)
  text = out.decode(errors="replace")
  assert "\r" in text and "train:" in text and "8/8" in text, text  # tqdm's bar, redrawn
  assert "loss=0.167" in text
  assert " | elapsed " not in text  # no plain lines on a terminal


def test_a_pipe_gets_plain_lines():
  out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                       env=_env(MTJAX_PROGRESS_EVERY="0"), cwd=ROOT, timeout=60)
  assert out.returncode == 0, out.stderr
  assert "\r" not in out.stderr and "\x1b" not in out.stderr
  lines = out.stderr.splitlines()
  train = [x for x in lines if x.startswith("train ")]
  # every update is a line with every=0; the count starts after the resumed steps
  assert [x.split()[1] for x in train] == [f"{n}/8" for n in range(3, 9)]
  assert train[0].startswith("train 3/8 step (37%) loss=1.000 tok_s=1234 | elapsed ")
  assert "ETA ?" in train[0]  # the first line has no rate yet
  assert "step/s" in train[1] and "ETA " in train[1] and "elapsed 0:00:00" in train[1]
  assert "ETA" not in train[-1]  # done
  assert [x.split()[2] for x in lines if x.startswith("caching")] == ["1/3", "2/3", "3/3"]


def test_lines_are_spaced_by_the_interval_and_the_last_one_is_printed():
  now = [0.0]
  stream = io.StringIO()
  p = progress.Progress(100, desc="train", unit="step", mode="lines", every=30, stream=stream,
                        clock=lambda: now[0])
  for _ in range(100):
    now[0] += 1.0  # one step a second
    p.update(1)
  p.close()
  lines = stream.getvalue().splitlines()
  # the first update, then every 30 s, then the end
  assert [x.split()[1] for x in lines] == ["1/100", "31/100", "61/100", "91/100", "100/100"]
  assert lines[1] == ("train 31/100 step (31%) | 1 step/s | elapsed 0:00:31 | ETA 0:01:09")
  assert lines[-1] == "train 100/100 step (100%) | 1 step/s | elapsed 0:01:40"


def test_slow_units_unknown_totals_and_durations():
  now = [0.0]
  stream = io.StringIO()
  p = progress.Progress(None, desc="eval", unit="tasks", mode="lines", every=0, stream=stream,
                        clock=lambda: now[0])
  now[0] = 4.0
  p.update(1)
  now[0] = 12.0
  p.update(2)
  assert stream.getvalue() == ("eval 1 tasks | elapsed 0:00:04\n"  # no rate yet: start-up
                               "eval 3 tasks | 4 s/tasks | elapsed 0:00:12\n")
  assert progress.duration(90061) == "1 day, 1:01:01"
  assert progress.duration(float("inf")) == "?"


def test_none_and_disabled_report_nothing():
  stream = io.StringIO()
  for kwargs in ({"mode": "none"}, {"mode": "lines", "enabled": False}):
    with progress.Progress(3, stream=stream, every=0, **kwargs) as p:
      p.update(3)
  assert stream.getvalue() == ""


def test_the_mode_comes_from_the_environment(monkeypatch):
  class Tty(io.StringIO):
    def isatty(self):
      return True

  monkeypatch.delenv("MTJAX_PROGRESS", raising=False)
  assert progress.resolve(stream=Tty()) == "bar"
  assert progress.resolve(stream=io.StringIO()) == "lines"
  monkeypatch.setenv("MTJAX_PROGRESS", "lines")
  assert progress.resolve(stream=Tty()) == "lines"
  monkeypatch.setenv("MTJAX_PROGRESS", "bars")
  with pytest.raises(errors.ConfigError, match="'bars'.*auto, bar, lines, none"):
    progress.resolve()
  monkeypatch.setenv("MTJAX_PROGRESS_EVERY", "soon")
  with pytest.raises(errors.ConfigError, match="'soon'"):
    progress.every_seconds()


def test_the_cache_build_display_follows_the_same_settings(monkeypatch):
  """`mtjax cache`'s display (mtjax.data.caching.progress) takes mode and interval from here."""
  from mtjax.data.caching import progress as cache_progress

  def shown(**env):
    for k, v in env.items():
      monkeypatch.setenv(k, v)
    out = io.StringIO()  # not a terminal: `auto` is lines
    bar = cache_progress.Progress(4, 100, stream=out)
    for _ in range(4):
      bar.update(units=1, rows=25, examples=25)
    bar.close()
    return out.getvalue()

  assert shown(MTJAX_PROGRESS="none") == ""
  lines = shown(MTJAX_PROGRESS="lines", MTJAX_PROGRESS_EVERY="0")
  assert "\r" not in lines and len(lines.splitlines()) == 5  # every update, then the totals
  assert lines.splitlines()[-1].startswith("caching: 4/4 units, 100/100 rows (100%)")
  assert "\r" in shown(MTJAX_PROGRESS="bar")
  assert len(shown(MTJAX_PROGRESS="auto", MTJAX_PROGRESS_EVERY="3600").splitlines()) == 1
