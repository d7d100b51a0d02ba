"""Progress of long loops (training steps, caching examples, evaluating tasks) on stderr.

Three modes:
- `bar`: a tqdm bar redrawn in place (carriage returns), for a person at a terminal;
- `lines`: one plain line every `MTJAX_PROGRESS_EVERY` seconds (default 30), after the first
  update and when the loop ends, for logs of unattended runs (nohup, SLURM, CI, a file), e.g.
  `train 120/600 step (20%) loss=2.345 tok_s=12345 | 4.12 step/s | elapsed 0:00:29 | ETA 0:01:57`;
- `none`: nothing.

The mode comes from the `mode` argument, else `MTJAX_PROGRESS` (`auto`, `bar`, `lines`, `none`;
the CLI's `--progress=MODE` sets it), else `auto`: `bar` when stderr is a terminal, `lines`
otherwise. A loop builds one `Progress` (`update`, `set_postfix`, `close`) or wraps an iterable
with `wrap`; every caller (`mtjax.train.loop`, `mtjax.eval.run`, `mtjax.data.cache`) goes
through this module, so all three behave alike. Only process 0 of a multi-host run should
report: callers pass `enabled=jax.process_index() == 0`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, TypeVar

from mtjax import errors

MODES = ("auto", "bar", "lines", "none")
ENV_MODE = "MTJAX_PROGRESS"
ENV_EVERY = "MTJAX_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0  # seconds between two lines in `lines` mode

T = TypeVar("T")


def _stderr():
  return sys.stderr  # looked up at each write: tests and the CLI may replace it


def requested_mode() -> str:
  """`MTJAX_PROGRESS` (default `auto`), checked."""
  value = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
  if value not in MODES:
    raise errors.ConfigError(f"progress mode {value!r} (--progress / {ENV_MODE}): use one of "
                             f"{', '.join(MODES)}")
  return value


def every_seconds() -> float:
  """Seconds between two progress lines: `MTJAX_PROGRESS_EVERY` (default 30; 0: every update)."""
  raw = os.environ.get(ENV_EVERY, "").strip()
  if not raw:
    return DEFAULT_EVERY
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not value >= 0:
    raise errors.ConfigError(f"progress interval {raw!r} (--progress_every / {ENV_EVERY}): "
                             "give a number of seconds >= 0")
  return value


def resolve(mode: str | None = None, stream=None) -> str:
  """The mode a loop uses now: `mode` or `MTJAX_PROGRESS`; `auto` is `bar` on a terminal (the
  stream's, stderr by default) and `lines` elsewhere."""
  mode = requested_mode() if mode is None else mode
  if mode not in MODES:
    raise errors.ConfigError(f"progress mode {mode!r}; use one of {', '.join(MODES)}")
  if mode != "auto":
    return mode
  stream = _stderr() if stream is None else stream
  try:
    tty = stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    tty = False
  return "bar" if tty else "lines"


def duration(seconds: float) -> str:
  """`H:MM:SS` (`D days, H:MM:SS` past a day), or `?` when unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  days, s = divmod(s, 86400)
  text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
  return f"{days} day{'s' if days > 1 else ''}, {text}" if days else text


def _number(x: float) -> str:
  return f"{x:.3g}" if x < 100 else f"{x:.0f}"


class Progress:
  """Progress of one loop: `update(n)` after each unit of work, `set_postfix(loss=...)` for the
  latest values shown next to the count, `close()` at the end (or use it as a context manager).

  `total`: the number of units (None: unknown, no percentage or ETA); `initial`: units already
  done (a resumed run), which count neither for the rate nor for the ETA; `unit`: the name of a
  unit (`step`, `examples`, `tasks`); `leave`: whether a bar stays on screen when closed;
  `enabled=False` reports nothing; `mode`, `every` and `stream` override the environment and
  stderr; `clock` is injected by tests.
  """

  def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it",
               initial: int = 0, leave: bool = True, enabled: bool = True,
               mode: str | None = None, every: float | None = None, stream=None,
               clock: Callable[[], float] = time.monotonic):
    self.total, self.desc, self.unit = total, desc, unit
    self.n = initial
    self.mode = resolve(mode, stream) if enabled else "none"
    self._stream = stream
    self._every = every_seconds() if every is None else every
    self._clock = clock
    self._postfix: dict[str, str] = {}
    self._bar = None
    self._closed = False
    now = clock()
    self._start, self._start_n = now, initial
    self._last_line, self._last_n = None, initial  # time and count at the last line printed
    if self.mode == "bar":
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top

      self._bar = tqdm(total=total, initial=initial, desc=desc or None, unit=f" {unit}",
                       dynamic_ncols=True, leave=leave,
                       file=_stderr() if stream is None else stream)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def set_postfix(self, values: Mapping[str, Any] | None = None, **kwargs) -> None:
    """Values shown after the count (`loss=2.31`), kept until replaced; strings as they are,
    numbers formatted by the caller or with 4 significant digits."""
    values = {**(values or {}), **kwargs}
    self._postfix = {k: v if isinstance(v, str) else f"{v:.4g}" for k, v in values.items()}
    if self._bar is not None:
      self._bar.set_postfix(self._postfix, refresh=False)

  def update(self, n: int = 1) -> None:
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
    elif self.mode == "lines":
      now = self._clock()
      if self._last_line is None or now - self._last_line >= self._every:
        self._print(now)

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
    elif self.mode == "lines" and self.n != self._last_n:
      self._print(self._clock())

  def line(self, now: float | None = None) -> str:
    """The line `lines` mode prints now: count, percentage, postfix, rate, elapsed time, ETA."""
    now = self._clock() if now is None else now
    head = f"{self.desc} " if self.desc else ""
    if self.total:
      head += f"{self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%)"  # 99.5: 99
    else:
      head += f"{self.n} {self.unit}"
    if self._postfix:
      head += " " + " ".join(f"{k}={v}" for k, v in self._postfix.items())
    # The rate since the last line: the recent pace, so an evaluation in between fades out.
    # The first line has none: its time is mostly start-up (a first step that compiles).
    rate = None
    if self._last_line is not None and now > self._last_line and self.n > self._last_n:
      rate = (self.n - self._last_n) / (now - self._last_line)
    parts = [head]
    if rate is not None:
      parts.append(f"{_number(rate)} {self.unit}/s" if rate >= 1 else
                   f"{_number(1 / rate)} s/{self.unit}")
    parts.append(f"elapsed {duration(now - self._start)}")
    if self.total and self.n < self.total:
      parts.append(f"ETA {duration((self.total - self.n) / rate) if rate else '?'}")
    return " | ".join(parts)

  def _print(self, now: float) -> None:
    stream = _stderr() if self._stream is None else self._stream
    print(self.line(now), file=stream, flush=True)
    self._last_line, self._last_n = now, self.n


def wrap(iterable: Iterable[T], total: int | None = None, *, desc: str = "",
         unit: str = "it", leave: bool = False, enabled: bool = True,
         mode: str | None = None) -> Iterator[T]:
  """Yields `iterable`'s items, reporting one unit per item (`Progress`'s arguments); closes the
  report when the iterable ends or the loop stops early."""
  with Progress(total, desc=desc, unit=unit, leave=leave, enabled=enabled, mode=mode) as p:
    for item in iterable:
      yield item
      p.update(1)
