"""Where training metrics go (the trackers of mtjax.train.trackers: metrics.jsonl, TensorBoard,
optional others), what a row holds, and the run's cumulative counts (tokens, examples per task)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtjax import fs
from mtjax.train import trackers as trackers_lib

# A remote run dir receives the growing files (metrics.jsonl, TensorBoard events) by upload at
# most this often, and at every checkpoint save and at close.
SYNC_SECONDS = 30.0


class MetricWriter:
  """The run's trackers behind one object (mtjax.train.trackers): `metrics.jsonl` and TensorBoard
  always, plus `train.trackers`. Only process 0 writes."""

  def __init__(self, run_dir: str, tensorboard: bool = True, resume_step: int | None = None,
               enabled: bool = True, trackers: Sequence[str] = (),
               config: Mapping[str, Any] | None = None):
    """`resume_step`: rows after it (written by a run that died before its next checkpoint) are
    dropped, so the files hold each step once and match an uninterrupted run. `enabled=False`
    (hosts other than process 0) writes nothing. A URL run dir is written through a local
    working copy (fs.WorkingCopy) that is uploaded every SYNC_SECONDS, on `sync()` and on
    `close()`; a killed process loses at most the rows since the last sync, which the resumed run
    rewrites from its checkpoint anyway. `config` (the resolved run config) goes to each tracker
    once."""
    self.enabled = enabled
    self.trackers: list[trackers_lib.Tracker] = []
    if not enabled:
      return
    self._copy = fs.WorkingCopy(run_dir)
    self._last_sync = time.monotonic()
    self.path = self._copy.path("metrics.jsonl")
    self._copy.pull("metrics.jsonl")
    context = trackers_lib.Context(run_dir=run_dir, local_dir=self._copy.local,
                                   resume_step=resume_step, config=dict(config or {}))
    try:
      for name in dict.fromkeys(tuple(trackers_lib.DEFAULT) + tuple(trackers)):
        if name == "tensorboard" and not tensorboard:
          continue
        self.trackers.append(trackers_lib.resolve(name)(context))
      if config is not None:
        for t in self.trackers:
          t.log_config(config)
    except BaseException:
      self.close()
      raise

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """A training (or teacher-forced eval loss) row for `step`, to every tracker."""
    if not self.enabled:
      return
    for t in self.trackers:
      t.log(step, scalars)
    self._maybe_sync()

  def write_eval(self, step: int, results: Sequence[Mapping[str, Any]],
                 metrics: Mapping[str, float],
                 samples: int = trackers_lib.SAMPLES_PER_TASK) -> None:
    """A full evaluation's results: its `metrics` (one flat row, `mtjax.train.hooks.Evaluation`)
    as `eval/...` (to the trackers that do not already get them from the evaluator's own report)
    and `samples` decoded examples per task (TensorBoard text `samples/<task>`)."""
    if not self.enabled or not results:
      return
    row = {f"eval/{k}": v for k, v in metrics.items()}
    for t in self.trackers:
      t.log_eval(step, row)
      for r in results:
        if r.get("samples"):
          name = "/".join(x for x in (r["task"], r.get("variant") or "") if x)
          t.log_samples(step, name, list(r["samples"])[:samples])
    self._maybe_sync()

  def _maybe_sync(self) -> None:
    if self._copy.remote and time.monotonic() - self._last_sync > SYNC_SECONDS:
      self.sync()

  def sync(self) -> None:
    """Flushes and, for a remote run dir, uploads what changed."""
    if not self.enabled:
      return
    for t in self.trackers:
      t.flush()
    self._copy.sync()
    self._last_sync = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    try:
      for t in self.trackers:
        t.close()
    finally:
      self.trackers = []
      self._copy.close()


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
  for key in sums:  # routers' balancing losses (mtjax.peft.routing): mean over modules
    if key.startswith("aux_sum/"):
      name = key[len("aux_sum/"):]
      out[f"aux/{name}"] = float(sums[key]) / max(float(sums[f"aux_count/{name}"]), 1.0)
      if f"aux_task_sum/{name}" in sums:
        for i, task in enumerate(task_names):
          n = float(sums[f"aux_task_count/{name}"][i])
          if n > 0:
            out[f"aux/{name}/{task}"] = float(sums[f"aux_task_sum/{name}"][i]) / n
  return out


def batch_counts(batch: Mapping[str, Any], num_tasks: int):
  """What one (global) batch holds, as int32 `[target tokens, input tokens, examples, examples
  of task 0, ..., of task num_tasks - 1]`, computed with jnp (jit it).

  Target tokens are the loss tokens (`decoder_loss_weights > 0`). Input tokens: encoder-decoder,
  the encoder's real tokens (its segment ids when packed, else the non-zero ids: T5's pad is 0);
  decoder kinds, the real positions of the one `inputs + targets` sequence that carry no loss.
  An example is a packed segment (counted where it starts) or an unpadded row with a target
  token; its task is the task id at that position."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  w = batch["decoder_loss_weights"] > 0
  seg = batch.get("decoder_segment_ids")
  if seg is not None:
    previous = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
    starts = (seg > 0) & (seg != previous)
  else:
    starts = w & (jnp.cumsum(w, axis=1) == 1)  # the first target token of each row
  if "encoder_input_tokens" in batch:
    enc_seg = batch.get("encoder_segment_ids")
    real = enc_seg > 0 if enc_seg is not None else batch["encoder_input_tokens"] != 0
  elif seg is not None:
    real = (seg > 0) & ~w
  else:  # an unpadded row is its inputs, then its targets: the positions before the first target
    real = (jnp.cumsum(w, axis=1) == 0) & w.any(axis=1, keepdims=True)
  head = jnp.stack([w.sum(), real.sum(), starts.sum()]).astype(jnp.int32)
  task_ids = batch.get("task_ids")
  if task_ids is None or num_tasks <= 0:
    per_task = jnp.zeros((max(num_tasks, 0),), jnp.int32)
  else:
    per_task = jnp.zeros((num_tasks,), jnp.int32).at[task_ids.reshape(-1)].add(
        starts.reshape(-1).astype(jnp.int32))
  return jnp.concatenate([head, per_task])


class Seen:
  """The run's cumulative counts (`seen/target_tokens`, `seen/input_tokens`, `seen/examples`,
  `seen/examples/<task>`), for the metrics rows and the checkpoint metadata: a resumed run
  continues from its checkpoint's counts, neither from zero nor counting the replayed steps twice.

  Each step's counts are computed on the device from the global batch (so they are the run's,
  not one host's share), copied to the host asynchronously and summed there as Python integers
  (no int32 overflow in long runs). The train step is untouched: losses stay bit-identical."""

  def __init__(self, task_names: Sequence[str], saved: Mapping[str, Any] | None = None):
    """`saved`: `state()` as a checkpoint recorded it (None: a fresh run)."""
    import jax  # pylint: disable=g-import-not-at-top

    self.task_names = tuple(task_names)
    self._totals = [0] * (3 + len(self.task_names))
    if saved:
      examples = saved.get("examples_per_task") or {}
      self._totals = ([int(saved.get("target_tokens", 0)), int(saved.get("input_tokens", 0)),
                       int(saved.get("examples", 0))]
                      + [int(examples.get(t, 0)) for t in self.task_names])
    self._pending = []
    self._count = jax.jit(lambda batch: batch_counts(batch, len(self.task_names)))

  def add(self, batch: Mapping[str, Any]) -> None:
    """Counts one global batch (dispatched; nothing waits for it here)."""
    counts = self._count(batch)
    counts.copy_to_host_async()
    self._pending.append(counts)

  def _pull(self) -> list[int]:
    if self._pending:
      import jax  # pylint: disable=g-import-not-at-top

      steps = np.asarray(jax.device_get(self._pending), np.int64).sum(axis=0)
      self._totals = [a + int(b) for a, b in zip(self._totals, steps)]
      self._pending = []
    return self._totals

  def row(self) -> dict[str, float]:
    target, inputs, examples, *per_task = self._pull()
    out = {"seen/target_tokens": target, "seen/input_tokens": inputs, "seen/examples": examples}
    out.update({f"seen/examples/{t}": n for t, n in zip(self.task_names, per_task)})
    return out

  def state(self) -> dict[str, Any]:
    """JSON for the checkpoint metadata (`Seen(task_names, saved=...)` reads it back)."""
    target, inputs, examples, *per_task = self._pull()
    return {"target_tokens": target, "input_tokens": inputs, "examples": examples,
            "examples_per_task": dict(zip(self.task_names, per_task))}


def learning_rate(optimizer_cfg, total_steps: int):
  """`step -> the learning rate of the update that produced step` (optax evaluates the schedule
  at the update count before it: the row of step N shows schedule(N - 1), as T5X logs it)."""
  from mtjax.train import optimizers  # pylint: disable=g-import-not-at-top

  fn = optimizers.schedule(optimizer_cfg.schedule, optimizer_cfg.learning_rate, total_steps,
                           optimizer_cfg.warmup_steps)
  return lambda step: float(fn(max(int(step) - 1, 0)))
