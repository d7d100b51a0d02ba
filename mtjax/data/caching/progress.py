"""One progress display for a whole build: units and rows done / total, rows/s, ETA.

The mode and interval are mtjax's (`mtjax.progress`: `--progress` / `MTJAX_PROGRESS`,
`--progress_every` / `MTJAX_PROGRESS_EVERY`): `bar` redraws the line in place, `lines` (a log
file, CI, a pod's captured output; `auto` off a terminal) prints a plain line every `every`
seconds and once at the end, `none` prints nothing.
"""

from __future__ import annotations

import sys
import time

from mtjax import progress as progress_lib


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:

  def __init__(self, total_units: int, total_rows: int, every: float | None = None, stream=None,
               tty: bool | None = None, desc: str = "caching", summary: bool = True):
    self.stream = stream if stream is not None else sys.stderr
    mode = progress_lib.resolve(None if tty is None else ("bar" if tty else "lines"), self.stream)
    self.silent = mode == "none"
    self.tty = mode == "bar"
    every = progress_lib.every_seconds() if every is None else every
    self.total_units, self.total_rows, self.every, self.desc = total_units, total_rows, every, desc
    self.units = self.rows = self.examples = 0
    self.start = self.last = time.monotonic()
    self.note = ""
    self.width = 0
    self.summary = summary

  def line(self) -> str:
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = self.rows / elapsed
    text = f"{self.desc}: {self.units}/{self.total_units} units"
    if self.total_rows:
      share = 100.0 * self.rows / self.total_rows
      text += f", {self.rows:,}/{self.total_rows:,} rows ({share:.0f}%)"
    text += f", {self.examples:,} examples, {rate:,.0f} rows/s"
    if self.total_rows and rate > 0 and self.rows < self.total_rows:
      text += f", ETA {_clock((self.total_rows - self.rows) / rate)}"
    text += f", {_clock(elapsed)} elapsed"
    return text + (f" ({self.note})" if self.note else "")

  def update(self, units: int = 0, rows: int = 0, examples: int = 0, note: str | None = None):
    self.units += units
    self.rows += rows
    self.examples += examples
    if note is not None:
      self.note = note
    self._show()

  def _show(self, force: bool = False) -> None:
    if self.silent:
      return
    now = time.monotonic()
    if self.tty:
      if force or now - self.last >= 0.2:
        text = self.line()
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()
        self.last = now
    elif force or now - self.last >= self.every:
      self.stream.write(self.line() + "\n")
      self.stream.flush()
      self.last = now

  def close(self) -> None:
    """Ends with a line of totals (`summary`), else clears the terminal line."""
    if self.silent:
      return
    if self.summary:
      self._show(force=True)
      if self.tty:
        self.stream.write("\n")
    elif self.tty and self.width:
      self.stream.write("\r" + " " * self.width + "\r")
    self.stream.flush()
