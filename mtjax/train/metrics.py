"""Where training metrics go: a JSONL file, TensorBoard event files, and the progress bar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

import numpy as np

from mtjax import fs

# A remote run dir receives the growing files (metrics.jsonl, TensorBoard events) by upload at
# most this often, and at every checkpoint save and at close.
SYNC_SECONDS = 30.0


class MetricWriter:
  """Appends one JSON object per log step to `metrics.jsonl`; mirrors scalars to TensorBoard."""

  def __init__(self, run_dir: str, tensorboard: bool = True, resume_step: int | None = None,
               enabled: bool = True):
    """`resume_step`: rows after it (written by a run that died before its next checkpoint) are
    dropped, so the file holds each step once and matches an uninterrupted run. `enabled=False`
    (hosts other than process 0) writes nothing. A URL run dir is written through a local
    working copy (fs.WorkingCopy) that is uploaded every SYNC_SECONDS, on `sync()` and on
    `close()`; a killed process loses at most the rows since the last sync, which the resumed run
    rewrites from its checkpoint anyway."""
    self.enabled = enabled
    if not enabled:
      return
    self._copy = fs.WorkingCopy(run_dir)
    self._last_sync = time.monotonic()
    self.path = self._copy.path("metrics.jsonl")
    self._copy.pull("metrics.jsonl")
    if resume_step is not None and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [line for line in f if _step(line) is not None and _step(line) <= resume_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(rows)
      os.replace(self.path + ".tmp", self.path)
    self._file = open(self.path, "a")  # noqa: SIM115  (kept open for the run)
    self._tb = None
    if tensorboard:
      SummaryWriter = _summary_writer_class()  # pylint: disable=invalid-name
      # A resumed run starts a new event file whose first record tells TensorBoard to drop the
      # points after the checkpoint that an earlier (killed) process wrote; those steps are
      # written again. Every row is flushed (below), so a kill loses no point on disk.
      purge = resume_step + 1 if resume_step else None
      self._tb = SummaryWriter(self._copy.path("tensorboard"), purge_step=purge)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()  # tensorboardX queues events and writes them every 2 minutes otherwise
    if self._copy.remote and time.monotonic() - self._last_sync > SYNC_SECONDS:
      self.sync()

  def sync(self) -> None:
    """Flushes and, for a remote run dir, uploads what changed."""
    if not self.enabled:
      return
    self._file.flush()
    if self._tb is not None:
      self._tb.flush()
    self._copy.sync()
    self._last_sync = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    self._copy.close()


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch unless torch is already loaded:
  tensorboardX imports torch only to accept torch tensors (we log floats), and that import costs
  ~13 s of CPU at every start where torch is installed."""
  import sys  # pylint: disable=g-import-not-at-top

  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a line cut short by a kill


def summarize(sums: Mapping[str, np.ndarray], task_names: tuple[str, ...]) -> dict[str, float]:
  """Turns summed step metrics into per-token loss/accuracy, overall and per task."""
  tokens = max(float(sums["token_sum"]), 1.0)
  out = {"loss": float(sums["loss_sum"]) / tokens,
         "accuracy": float(sums["correct_sum"]) / tokens}
  if "task_token_sum" in sums:
    for i, name in enumerate(task_names):
      n = float(sums["task_token_sum"][i])
      if n > 0:
        out[f"loss/{name}"] = float(sums["task_loss_sum"][i]) / n
        out[f"accuracy/{name}"] = float(sums["task_correct_sum"][i]) / n
  return out
