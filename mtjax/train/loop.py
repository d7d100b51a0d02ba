"""The training loop: resume or start, step, and act on the step events.

`train(cfg, evaluation=..., hooks=...)`: join other hosts (if any) -> lock the run dir -> the run
setup (`mtjax.train.setup.build`: tasks, cache, mesh, model, prompt, trainable set, optimizer)
-> data iterator -> restore the newest restorable checkpoint of the run dir (config checked),
else `train.init_from` and `train.init_prompt_from` (`mtjax.train.pretrained`) -> config.json,
model_summary.json, trainable.json -> steps -> final checkpoint -> evaluation.

Events of each step, in order: hooks' `before_step`; the step (soft-prompt ids from task ids
when a prompt is attached); metrics every `log_every` with the learning rate and the cumulative
`seen/*` counts, which checkpoints keep; a jax.profiler trace of `train.profile_steps`;
teacher-forced eval loss every `eval.loss_every` (`mtjax.train.eval_loss`); full evaluation
every `eval.every` through the `Evaluation` handed in (`mtjax.train.hooks`; its decoded samples
to the trackers); each `PeriodicEvaluation` handed in that is due (lm-eval tasks); hooks'
`after_step`; a checkpoint every `checkpoint_every`. SIGTERM ends the
loop after the current step with a checkpoint; a non-finite loss or gradient stops it before
anything is saved.

This module never imports `mtjax.eval` (the layer above): `mtjax.recipes.train.run` is
`mtjax train`, this loop with `mtjax.eval`'s evaluation.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence

import jax
from flax import nnx

from mtjax import progress as progress_lib
from mtjax.config import schema, storage
from mtjax.parallel import arrays, distributed
from mtjax.train import checkpoint as ckpt_lib
from mtjax.train import eval_loss as eval_loss_lib
from mtjax.train import flops as flops_lib
from mtjax.train import hooks as hooks_lib
from mtjax.train import metrics as metrics_lib
from mtjax.train import pretrained
from mtjax.train import profiler as profiler_lib
from mtjax.train import runlock
from mtjax.train import setup as setup_lib
from mtjax.train import step as step_lib
from mtjax.train import trackers as trackers_lib

log = logging.getLogger(__name__)

Setup = setup_lib.Setup


def train(cfg: schema.RunConfig, *, progress: bool = True, command: str = "mtjax train",
          evaluation: hooks_lib.Evaluation | None = None,
          hooks: Sequence[hooks_lib.LoopHook] = (),
          evaluations: Sequence[hooks_lib.PeriodicEvaluation] = ()) -> dict:
  """Runs (or resumes) training to `train.steps`, then evaluates. Returns a summary dict.

  `evaluation`: the full evaluation of `eval.every` / `eval.at_end` (None: none; the composition
  root `mtjax.recipes.train.run` passes `mtjax.eval`'s). `hooks`: step hooks for this run, after
  those `hooks_lib.install`ed for the process. `evaluations`: other evaluations on their own
  schedules (`eval.lm_eval_*`, passed by `mtjax.recipes.train.run`).

  One writer per run dir: a second `train` on the same run dir while this one runs raises
  errors.RunDirError naming this one (`command`, pid, host), before it writes anything.

  SIGTERM (preemption) saves a checkpoint at the current step and returns with
  `summary["preempted"] = True`; a NaN/Inf loss or gradient raises `FloatingPointError` naming the
  step, after in-flight saves of earlier (finite) states complete.
  """
  t_start = time.perf_counter()
  storage.check(cfg)  # a bad bucket is one line now, not a traceback after compiling
  profiler_lib.parse(cfg.train.profile_steps)  # and a bad profile window or tracker
  trackers_lib.check(cfg.train.trackers)
  distributed.initialize()
  lock = runlock.hold(cfg.run_dir, command)
  try:
    return _train(cfg, progress, lock, t_start, evaluation,
                  hooks_lib.installed() + tuple(hooks), tuple(evaluations))
  finally:
    if lock is not None:
      lock.release()


def _train(cfg: schema.RunConfig, progress: bool, lock, t_start: float,
           evaluation: hooks_lib.Evaluation | None, hooks: Sequence[hooks_lib.LoopHook],
           evaluations: Sequence[hooks_lib.PeriodicEvaluation] = ()) -> dict:
  setup = setup_lib.build(cfg)
  setup_lib.check_microbatches(setup)
  k = max(cfg.train.microbatches, 1)
  data = setup_lib.data_iterator(setup)
  distributed.barrier("setup")  # before Orbax's first cross-process collective
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(cfg.run_dir, "checkpoints"), save_every=cfg.train.checkpoint_every,
      keep=cfg.train.keep_checkpoints, best_metric=cfg.train.best_metric,
      best_mode=cfg.train.best_mode)
  try:
    params, opt_state, start, saved_meta = _start_state(setup, checkpointer, data)
    setup_lib.write_run_files(setup)  # only once the run dir's checkpoints accept this config
  except BaseException:
    checkpointer.close()
    raise
  num_tasks = len(setup.spec.task_names)
  step_fn = step_lib.make_train_step(
      setup.graphdef, setup.tx, num_tasks=num_tasks, dropout_seed=cfg.train.seed,
      trainable=setup.trainable, microbatches=k,
      loss_options=step_lib.LossOptions(
          label_smoothing=cfg.train.label_smoothing, z_loss=cfg.train.z_loss,
          normalization=cfg.train.loss_normalization,
          normalizing_factor=cfg.train.loss_normalizing_factor,
          focal_gamma=cfg.train.focal_gamma, logits_chunk=cfg.train.logits_chunk))
  eval_step = step_lib.make_eval_step(setup.graphdef, num_tasks=num_tasks)
  eval_batches = eval_loss_lib.eval_batches(setup) if cfg.eval.loss_every > 0 else None
  try:  # a tracker that cannot start (W&B refusing a key) must not leave saves unfinished
    writer = metrics_lib.MetricWriter(cfg.run_dir, resume_step=start,
                                      enabled=jax.process_index() == 0,
                                      trackers=cfg.train.trackers, config=schema.to_dict(cfg))
  except BaseException:
    checkpointer.close()
    raise
  seen = metrics_lib.Seen(setup.spec.task_names, (saved_meta or {}).get("seen"))
  if start and "seen" not in (saved_meta or {}):
    log.warning("the checkpoint of step %d has no seen/* counts (an older mtjax): they count "
                "from this resume on", start)
  learning_rate = metrics_lib.learning_rate(cfg.optimizer, cfg.train.steps)
  profile = profiler_lib.StepProfiler(cfg.train.profile_steps, cfg.run_dir, first_step=start + 1,
                                      enabled=jax.process_index() == 0)
  meta = {"mixture": cfg.data.mixture, "tasks": list(setup.spec.task_names),
          "config": schema.to_dict(cfg)}
  perf = _Perf(setup)
  bar = progress_lib.Progress(cfg.train.steps, initial=start, desc="train", unit="step",
                             enabled=progress and jax.process_index() == 0)
  if evaluation is None and (cfg.eval.every > 0 or cfg.eval.at_end):
    log.warning("no evaluation was handed to the loop: eval.every / eval.at_end are skipped "
                "(mtjax.recipes.train.run trains with mtjax.eval's)")
  stop = {"signal": None}
  previous = _catch_sigterm(stop)
  track = jax.jit(lambda bad, m, done: jax.numpy.where(
      (bad == 0) & ~(jax.numpy.isfinite(m["loss"]) & jax.numpy.isfinite(m["grad_norm"])),
      done, bad))
  bad = jax.numpy.zeros((), jax.numpy.int32)  # the first step whose loss or gradient was not finite
  sums, last, last_eval, window_start, done = None, {}, {}, start, start
  final_results = None  # the full evaluation of the final step, when `eval.every` ran it
  t0 = time.perf_counter()
  try:
    with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
      for step in range(start, cfg.train.steps):
        profile.before(step + 1)
        for hook in hooks:
          params = hook.before_step(step + 1, params)
        batch = arrays.global_batch(setup_lib.local_batch(setup, next(data)), setup.mesh,
                                    setup.rules)
        seen.add(batch)
        params, opt_state, m = step_fn(params, opt_state, batch, step)
        done = step + 1
        profile.after(done, params, m)
        bad = track(bad, m, done)
        sums = m if sums is None else jax.tree.map(jax.numpy.add, sums, m)
        final = done == cfg.train.steps
        if done % cfg.train.log_every == 0 or final or stop["signal"]:
          _check_finite(int(bad), checkpointer.directory)
          last = _log(writer, bar, jax.device_get(sums), done, done - window_start,
                      time.perf_counter() - t0, setup.spec.task_names, perf,
                      {"learning_rate": learning_rate(done), **seen.row()})
          sums, window_start, t0 = None, done, time.perf_counter()
        if eval_batches and (done % cfg.eval.loss_every == 0 or final):
          last_eval = eval_loss_lib.eval_loss(setup, params, eval_batches, eval_step)
          writer.write(done, last_eval)
          t0 = time.perf_counter()  # eval time is not training throughput
        full_eval = evaluation is not None and cfg.eval.every > 0 and (
            done % cfg.eval.every == 0 or (final and cfg.eval.at_end))
        if full_eval:
          _check_finite(int(bad), checkpointer.directory)
          results = evaluation.run(setup, params, done)
          flat = evaluation.metrics(results)
          writer.write_eval(done, results, flat)  # its samples; its metrics to other trackers
          final_results = results if final else None
          last_eval = {**last_eval, **flat}
          t0 = time.perf_counter()
        ranked = False  # another evaluation produced the metric that ranks checkpoints
        for extra in evaluations:
          if stop["signal"] or not extra.due(done, final):
            continue
          _check_finite(int(bad), checkpointer.directory)
          results = extra.run(setup, params, done)
          flat = extra.metrics(results)
          writer.write_eval(done, results, flat)
          last_eval = {**last_eval, **flat}
          ranked = ranked or cfg.train.best_metric in flat
          t0 = time.perf_counter()
        for hook in hooks:
          hook.after_step(done)  # a SIGTERM raised here is handled here: this step saves
        # An evaluated step is also saved when checkpoints are ranked, so the best is on disk.
        if (final or stop["signal"] or checkpointer.should_save(done)
            or (full_eval and cfg.train.best_metric) or ranked):
          _check_finite(int(bad), checkpointer.directory)  # never save a NaN state
          if lock is not None:
            lock.check()  # another writer took the run dir over (a gs:// lock gone stale)
          checkpointer.save(done, params, opt_state, data,
                            dict(meta, step=done, seen=seen.state()),
                            metrics={**last, **last_eval})
          writer.sync()  # a remote run dir gets its logs up to the saved step
        bar.update(1)
        if stop["signal"]:
          log.warning("%s: saved a checkpoint at step %d in %s; exiting", stop["signal"], done,
                      checkpointer.directory)
          break
  except BaseException:
    writer.close()  # (the normal path closes it after the final evaluation, which it logs)
    raise
  finally:
    profile.close()  # a window past the last step ends here
    _restore_sigterm(previous)
    bar.close()
    checkpointer.close()  # waits for in-flight async saves (all of finite states)
  try:
    log.info("trained %d steps in %.1fs (setup and compilation included)", done - start,
             time.perf_counter() - t_start)
    summary = {"run_dir": cfg.run_dir, "steps": done, "resumed_from": start,
               "final_metrics": last, "preempted": bool(stop["signal"])}
    if last_eval:
      summary["eval_loss"] = last_eval
    if evaluation is not None and cfg.eval.at_end and not stop["signal"]:
      t_eval = time.perf_counter()
      summary["eval"] = final_results
      if final_results is None:
        summary["eval"] = evaluation.run(setup, params, None)
        writer.write_eval(cfg.train.steps, summary["eval"], evaluation.metrics(summary["eval"]))
      log.info("evaluated in %.1fs", time.perf_counter() - t_eval)
  finally:
    writer.close()
  return summary


def _start_state(setup: Setup, checkpointer: ckpt_lib.Checkpointer, data):
  """(params, opt_state, first step, its checkpoint's metadata or None): the newest good
  checkpoint of the run dir (its config checked first: Checkpointer.resume), else the fresh init
  plus `train.init_from` / `train.init_prompt_from`."""
  cfg = setup.cfg
  params, opt_state = setup.params, setup.opt_state
  restored = checkpointer.resume(params, opt_state, data, schema.to_dict(cfg))
  if restored is not None:
    _, params, opt_state, saved_meta = restored
    start = int(saved_meta["step"])
    log.info("resumed %s from step %d", cfg.run_dir, start)
    return params, opt_state, start, saved_meta
  if cfg.train.init_from:
    params = pretrained.init_from(setup, params, cfg.train.init_from)
  if cfg.train.init_prompt_from:
    with jax.set_mesh(setup.mesh):
      params = pretrained.merge_prompt(params, cfg.train.init_prompt_from)
    log.info("soft prompt from %s", cfg.train.init_prompt_from)
  return params, opt_state, 0, None


def _catch_sigterm(stop: dict):
  """SIGTERM sets `stop["signal"]`; the loop saves and exits after the current step. Returns the
  previous handler (None off the main thread, where handlers cannot be set)."""
  if threading.current_thread() is not threading.main_thread():
    return None
  return signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal="SIGTERM"))


def _restore_sigterm(previous) -> None:
  if previous is not None:
    signal.signal(signal.SIGTERM, previous)


class _Perf:
  """Model FLOPs per step and the device peak, for MFU in the logs (None on unknown devices)."""

  def __init__(self, setup: Setup):
    cfg = setup.cfg
    self.flops = flops_lib.step_flops(setup.params, setup.model_cfg, cfg.data.batch_size,
                                      cfg.data.inputs_length, cfg.data.targets_length)
    self.peak = flops_lib.device_peak_flops()
    self.devices = setup.mesh.size

  def mfu(self, steps_per_s: float) -> float | None:
    return flops_lib.mfu(self.flops, steps_per_s, self.devices, self.peak)


def _log(writer, bar, sums, step, num_steps, elapsed, task_names, perf: _Perf,
         extra: dict) -> dict:
  """Writes one metrics row for the steps since the last log (`extra`: the learning rate and the
  cumulative `seen/*` counts)."""
  row = metrics_lib.summarize(sums, task_names)
  row["grad_norm"] = float(sums["grad_norm"]) / num_steps  # mean over the window
  row["steps_per_s"] = num_steps / max(elapsed, 1e-9)
  row["target_tokens_per_s"] = float(sums["token_sum"]) / max(elapsed, 1e-9)
  mfu = perf.mfu(row["steps_per_s"])
  if mfu is not None:
    row["mfu"] = mfu
  row.update(extra)
  writer.write(step, row)
  postfix = {"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.3f}",
             "tok_s": f"{row['target_tokens_per_s']:.0f}"}
  if mfu is not None:
    postfix["mfu"] = f"{mfu:.1%}"
  bar.set_postfix(postfix)
  return row


def _check_finite(bad_step: int, ckpt_dir: str) -> None:
  if bad_step:
    raise FloatingPointError(
        f"the loss or gradient is NaN/Inf at step {bad_step}; stopping. The last good "
        f"checkpoint in {ckpt_dir} is untouched (lower the learning rate, enable "
        "optimizer.clip_norm, or check the data of that step).")
