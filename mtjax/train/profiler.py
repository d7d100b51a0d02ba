"""`train.profile_steps=START:END`: a `jax.profiler` trace of training steps START..END.

The trace goes to `<run_dir>/profile/plugins/profile/<time>/<host>.xplane.pb` (and a
`.trace.json.gz`), the layout TensorBoard's profile plugin and XProf read:
`tensorboard --logdir <run_dir>/profile` or `xprof --logdir <run_dir>/profile`. Only process 0
traces (SPMD hosts run the same program; one host's trace is the one to read, and the others'
would double the upload). A URL run dir is traced into a local folder and uploaded when the trace
stops (fs.WorkingCopy). Steps are numbered as the metrics rows number them: step N is the update
whose row says `"step": N`, so `1:1` traces the first step (its compilation included).
"""

from __future__ import annotations

import logging

from mtjax import errors, fs

log = logging.getLogger(__name__)

KEY = "train.profile_steps"


def parse(value: str) -> tuple[int, int] | None:
  """(START, END) from "START:END" (1 <= START <= END); None for "" (no profile). Anything else
  is one errors.ConfigError naming the key."""
  if value is None or not str(value).strip():
    return None
  text = str(value).strip()
  try:
    start, end = (int(x) for x in text.split(":"))
  except ValueError:
    start = end = None
  if start is None or not 1 <= start <= end:
    raise errors.ConfigError(f"{KEY}={value!r}: expected START:END, two steps with "
                             "1 <= START <= END (e.g. 10:15 traces steps 10 to 15)")
  return start, end


class StepProfiler:
  """Starts the trace before step START and stops it after END; `before(step)` and
  `after(step, *outputs)` are called around each step (1-based), `close()` at the end."""

  def __init__(self, value: str, run_dir: str, *, first_step: int, enabled: bool = True):
    """`first_step`: the first step this process runs (a resumed run skips a window it passed)."""
    self.window = parse(value) if enabled else None
    self.run_dir = run_dir
    self._copy = None
    if self.window is not None and self.window[0] < first_step:
      log.info("%s=%s: this run starts at step %d, after START; no trace", KEY, value,
               first_step)
      self.window = None

  @property
  def active(self) -> bool:
    return self._copy is not None

  def before(self, step: int) -> None:
    if self.window is not None and step == self.window[0] and not self.active:
      import jax  # pylint: disable=g-import-not-at-top

      self._copy = fs.WorkingCopy(fs.join(self.run_dir, "profile"))
      jax.profiler.start_trace(self._copy.local)
      log.info("profiling steps %d to %d into %s", *self.window, fs.join(self.run_dir, "profile"))

  def after(self, step: int, *outputs) -> None:
    """Stops after END, once `outputs` (the step's results) are computed, so the trace holds
    the device work of every step in the window."""
    if self.active and step >= self.window[1]:
      import jax  # pylint: disable=g-import-not-at-top

      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops an active trace (a run that ends or fails inside the window keeps what it traced)."""
    if not self.active:
      return
    import jax  # pylint: disable=g-import-not-at-top

    copy, self._copy = self._copy, None
    try:
      jax.profiler.stop_trace()
    finally:
      copy.close()  # uploads a URL run dir's trace
    log.info("wrote the profile to %s (open: tensorboard --logdir %s)",
             fs.join(self.run_dir, "profile"), fs.join(self.run_dir, "profile"))
