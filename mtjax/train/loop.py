"""The training loop: build everything from a RunConfig, resume if possible, train, evaluate.

Order of events: join other hosts (if any) -> register tasks -> cache (first use) -> mesh ->
sharded model init -> trainable set + optimizer -> data iterator -> restore the newest restorable
checkpoint of the run dir (config checked), else `train.init_from` and `train.init_prompt_from`
-> steps (soft-prompt ids from task ids when a prompt is attached; metrics every `log_every`
with the learning rate and the cumulative `seen/*` counts, which checkpoints keep; a jax.profiler
trace of `train.profile_steps`; teacher-forced eval loss every `eval.loss_every`; full evaluation
every `eval.every`, its decoded samples to the trackers; checkpoints every `checkpoint_every`) ->
final checkpoint -> evaluation. SIGTERM ends the loop after the current step with a checkpoint; a
non-finite loss or gradient stops it before anything is saved.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from mtjax import errors, fs
from mtjax.config import schema, storage
from mtjax.data import cache, pipeline, vocabularies
from mtjax.eval import evaluate as eval_lib
from mtjax.models import hf_meta, registry
from mtjax.parallel import arrays, distributed
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib
from mtjax.peft import filters, prompts
from mtjax.train import checkpoint as ckpt_lib
from mtjax.train import flops as flops_lib
from mtjax.train import metrics as metrics_lib
from mtjax.train import optimizers
from mtjax.train import profiler as profiler_lib
from mtjax.train import runlock
from mtjax.train import step as step_lib
from mtjax.train import trackers as trackers_lib

log = logging.getLogger(__name__)


def import_modules(modules, vocabulary=None) -> None:
  """Imports the modules that register the config's SeqIO tasks and mixtures.

  `vocabulary` (`mtjax.data.vocabularies.for_run`): the default vocabulary of tasks registered
  during the imports (None: SeqIO's ByteVocabulary).

  The working directory is importable, as with `python -m`, so `data.modules=my_tasks` finds a
  `my_tasks.py` next to where `mtjax` runs. The built-in mixtures are `mtjax.mixtures.*`; the
  name they had before they moved into the package, `mixtures.X` (in older run dirs and
  configs), still means the built-in `mtjax.mixtures.X`, so a user folder named `mixtures/`
  cannot shadow them (a module of the user's own in such a folder still imports).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top

  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for name in modules:
    if name.startswith("mixtures."):
      try:
        if importlib.util.find_spec("mtjax." + name) is not None:
          name = "mtjax." + name
      except ImportError:  # no such built-in package: the user's own
        pass
    try:
      with vocabularies.defaulting_to(vocabulary):
        importlib.import_module(name)
    except ImportError as e:
      if getattr(e, "name", None) in ("seqio", "tensorflow"):
        log.warning("cannot import %s without %s; using the existing cache", name, e.name)
        continue
      raise errors.ModuleError(f"data.modules: cannot import {name!r}: {e}") from e


def _register_few_shot(name: str) -> None:
  """A `<task>_<k>shot` mixture (e.g. a ProMoT +1-shot stage) is registered from its base."""
  try:
    from mtjax.eval import few_shot  # pylint: disable=g-import-not-at-top
    few_shot.ensure_registered(name)
  except ImportError:  # no seqio: the cache must already hold it
    pass


@dataclasses.dataclass
class Setup:
  """Everything a run needs, built once from the config (also used by tests and eval)."""
  cfg: schema.RunConfig
  mesh: Any
  rules: rules_lib.Rules
  spec: Any  # mixing.MixtureSpec
  graphdef: Any
  params: Any
  tx: Any
  opt_state: Any  # of the trainable parameters only
  trainable: frozenset | None = None  # parameter paths that train (None: all)
  model_cfg: Any = None  # the family config (t5.T5Config, decoder.DecoderConfig)
  axes: dict | None = None  # parameter path -> logical axis names
  prompt_rows: np.ndarray | None = None  # soft-prompt row of each mixture task (-1: none)


def _vocabulary(task_names):
  """The targets vocabulary of the mixture (class-label prompt init tokenises label words)."""
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio.get_mixture_or_task(task_names[0]).output_features["targets"].vocabulary


def check_prompt_config(cfg: schema.RunConfig) -> None:
  m = cfg.model
  if m.prompt_length <= 0:
    if m.prompt_tasks or cfg.train.init_prompt_from:
      raise errors.ConfigError("model.prompt_tasks / train.init_prompt_from need a soft prompt: set "
                       "model.prompt_length")
    return
  if cfg.data.pack:
    raise errors.ConfigError("a soft prompt (model.prompt_length > 0) needs one example per row: set "
                     "data.pack=False")


def attach_prompt(cfg: schema.RunConfig, model, task_names) -> np.ndarray | None:
  """Attaches the soft prompt `cfg.model` asks for (mtjax.peft.prompts); returns each mixture
  task's prompt row, or None without a prompt."""
  m = cfg.model
  check_prompt_config(cfg)
  if m.prompt_length <= 0:
    return None
  rows = prompts.task_rows(m.prompt_tasks, task_names)
  if not (rows >= 0).any():
    raise errors.ConfigError(f"model.prompt_tasks={list(m.prompt_tasks)} names no task of the mixture "
                     f"{list(task_names)}")
  vocab = _vocabulary(task_names) if m.prompt_init == "class_labels" else None
  model.embed_hook = prompts.create(model, m, num_prompts=max(len(m.prompt_tasks), 1),
                                    seed=cfg.train.seed, vocab=vocab)
  return rows


def build(cfg: schema.RunConfig, *, devices=None) -> Setup:
  check_prompt_config(cfg)
  import_modules(cfg.data.modules, vocabularies.for_run(cfg))
  _register_few_shot(cfg.data.mixture)
  spec = cache.ensure_cached(cfg.data.mixture, cfg.data.cache_dir,
                             sequence_length=cfg.data.sequence_length,
                             splits=("train", cfg.eval.split))
  vocabularies.check_fits(spec, cfg.data.cache_dir, registry.architecture(cfg.model).vocab_size,
                          cfg.model.hf_checkpoint or f"model.preset={cfg.model.preset}")
  mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
  rules = rules_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = registry.create(cfg.model, seed=cfg.train.seed, mesh=mesh, rules=rules)
    prompt_rows = attach_prompt(cfg, model, spec.task_names)
    graphdef, state = nnx.split(model)
    axes = {jax.tree_util.keystr(p): rules_lib.axis_names(v)
            for p, v in jax.tree_util.tree_flatten_with_path(
                state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
    params = state.to_pure_dict()
    lr = optimizers.schedule(cfg.optimizer.schedule, cfg.optimizer.learning_rate,
                             cfg.train.steps, cfg.optimizer.warmup_steps)
    tx = optimizers.make(cfg.optimizer.name, lr, cfg.optimizer.weight_decay,
                         cfg.optimizer.clip_norm, decay_rate=cfg.optimizer.decay_rate,
                         parameter_scale=cfg.optimizer.parameter_scale)
    trainable = None
    if tuple(cfg.train.trainable) != ("all",):
      trainable = filters.trainable_paths(params, cfg.train.trainable)
    opt_state = jax.jit(tx.init)(params if trainable is None
                                 else filters.partition(params, trainable)[0])
  return Setup(cfg, mesh, rules, spec, graphdef, params, tx, opt_state, trainable,
               getattr(model, "cfg", None), axes, prompt_rows)


def local_batch(setup: Setup, batch: dict) -> dict:
  """A host-local batch as the model takes it: plus `prompt_ids` when a prompt is attached."""
  if setup.prompt_rows is None:
    return batch
  return prompts.add_prompt_ids(batch, setup.prompt_rows)


def data_iterator(setup: Setup):
  """This host's share of the global batch, as a checkpointable Grain iterator."""
  cfg = setup.cfg
  n_hosts, parallel = jax.process_count(), (setup.mesh.shape["data"] * setup.mesh.shape["fsdp"])
  if cfg.data.batch_size % parallel or cfg.data.batch_size % n_hosts:
    raise errors.ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                             f"data x fsdp mesh size ({parallel}) and the number of hosts "
                             f"({n_hosts})")
  options = pipeline.PipelineOptions(
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      batch_size=cfg.data.batch_size // n_hosts, pack=cfg.data.pack, packer=cfg.data.packer,
      packing_bins=cfg.data.packing_bins, seed=cfg.data.seed,
      feature_converter=cfg.data.feature_converter, rate_stages=cfg.data.rate_stages,
      worker_count=cfg.data.worker_count,
      shard_index=jax.process_index(), num_shards=n_hosts)
  pipeline.report_trimming(setup.spec, cfg.data.cache_dir, options.lengths)
  return iter(pipeline.train_batches(setup.spec, cfg.data.cache_dir, options))


def _save_config(cfg: schema.RunConfig, setup: Setup) -> None:
  """The resolved config and a model summary (count, shape, dtype, logical axes, sharding of
  each parameter, and whether it trains) in the run dir."""
  fs.makedirs(cfg.run_dir)
  if jax.process_index() != 0:
    return
  fs.write_text(fs.join(cfg.run_dir, "config.json"), json.dumps(schema.to_dict(cfg), indent=1))
  leaves = jax.tree_util.tree_flatten_with_path(setup.params)[0]
  trains = lambda p: setup.trainable is None or tuple(
      getattr(k, "key", getattr(k, "idx", k)) for k in p) in setup.trainable
  axes = setup.axes or {}
  summary = {
      "num_params": int(sum(np.prod(x.shape) for _, x in leaves)),
      "num_trainable": int(sum(np.prod(x.shape) for p, x in leaves if trains(p))),
      "params": {jax.tree_util.keystr(p): {
          "shape": list(x.shape), "dtype": str(x.dtype),
          "axes": list(axes.get(jax.tree_util.keystr(p)) or ()),
          "sharding": str(getattr(x.sharding, "spec", x.sharding)), "trainable": trains(p)}
                 for p, x in leaves},
      "mesh": dict(setup.mesh.shape),
      "tasks": list(setup.spec.task_names),
  }
  fs.write_text(fs.join(cfg.run_dir, "model_summary.json"), json.dumps(summary, indent=1))
  hf_meta.record(setup, cfg.run_dir)  # tokenizer + special ids for `mtjax export`


# Testing hook: "STEP:KIND" with KIND in SIGKILL | SIGTERM (sent to this process after STEP
# completes) or nan (the parameters become NaN before STEP runs). Used by the resume tests.
FAULT_ENV = "MTJAX_FAULT_AT_STEP"


def _fault():
  raw = os.environ.get(FAULT_ENV, "")
  if not raw:
    return None, None
  step, kind = raw.split(":")
  return int(step), kind


def _is_hf_dir(path: str) -> bool:
  return (fs.exists(fs.join(path, "config.json"))
          and any(f.endswith(".safetensors") for f in fs.listdir(path)))


def init_from(setup: Setup, params, source: str):
  """Parameters from a pretrained mtjax checkpoint or HF model dir; fresh init for the rest.

  A soft prompt the source lacks is initialised from the restored embeddings (its `vocab` /
  `class_labels` init means the pretrained model's), not the random ones.
  """
  params, fresh = _init_from(setup, params, source)
  if setup.prompt_rows is not None and any(prompts.HOOK in f for f in fresh):
    m = setup.cfg.model
    vocab = _vocabulary(setup.spec.task_names) if m.prompt_init == "class_labels" else None
    table = prompts.table_for(params, m, setup.model_cfg,
                              num_prompts=prompts.table(params).shape[0],
                              seed=setup.cfg.train.seed, vocab=vocab)
    params = prompts.with_table(params, table)
  return params


def _init_from(setup: Setup, params, source: str):
  """(params, paths that kept their fresh init)."""
  if _is_hf_dir(source):
    model_cfg = dataclasses.replace(setup.cfg.model, hf_checkpoint=source)
    with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
      model = registry.create(model_cfg, seed=setup.cfg.train.seed, mesh=setup.mesh,
                              rules=setup.rules)
    flat = lambda t: {jax.tree_util.keystr(p): v
                      for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    theirs, ours = flat(nnx.split(model)[1].to_pure_dict()), flat(params)
    restored = sorted(k for k in ours if k in theirs and theirs[k].shape == ours[k].shape)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: theirs.get(jax.tree_util.keystr(p), v)
        if jax.tree_util.keystr(p) in restored else v, params)
    fresh = sorted(set(ours) - set(restored))
  else:
    with jax.set_mesh(setup.mesh):
      params, restored, fresh = ckpt_lib.init_params(source, params)
  log.info("initialised %d parameters from %s; %d keep their fresh init%s", len(restored),
           source, len(fresh), f" ({', '.join(fresh[:8])}{' ...' if len(fresh) > 8 else ''})"
           if fresh else "")
  return params, fresh


def _eval_batches(setup: Setup) -> list:
  """A fixed set of batches of the eval split for the teacher-forced loss (same every time)."""
  cfg = setup.cfg
  n_hosts = jax.process_count()
  options = pipeline.PipelineOptions(
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      batch_size=cfg.data.batch_size // n_hosts, pack=cfg.data.pack, packer=cfg.data.packer,
      packing_bins=cfg.data.packing_bins, seed=cfg.data.seed,
      feature_converter=cfg.data.feature_converter, shard_index=jax.process_index(),
      num_shards=n_hosts, prefetch=0)
  it = iter(pipeline.train_batches(setup.spec, cfg.data.cache_dir, options,
                                   split=cfg.eval.split))
  return [next(it) for _ in range(max(cfg.eval.loss_batches, 1))]


def eval_loss(setup: Setup, params, batches, eval_step) -> dict[str, float]:
  """Teacher-forced loss and token accuracy on `batches`, overall and per task (`eval/...`)."""
  sums = None
  for local in batches:
    m = eval_step(params, arrays.global_batch(local_batch(setup, local), setup.mesh,
                                              setup.rules))
    sums = m if sums is None else jax.tree.map(jax.numpy.add, sums, m)
  row = metrics_lib.summarize(jax.device_get(sums), setup.spec.task_names)
  return {f"eval/{k}": v for k, v in row.items()}


def train(cfg: schema.RunConfig, *, progress: bool = True, command: str = "mtjax train") -> dict:
  """Runs (or resumes) training to `train.steps`, then evaluates. Returns a summary dict.

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
  lock = hold_run_dir(cfg.run_dir, command)
  try:
    return _train(cfg, progress, lock, t_start)
  finally:
    if lock is not None:
      lock.release()


def hold_run_dir(run_dir: str, command: str):
  """Takes the run dir's writer lock (mtjax.train.runlock) on process 0, before anything is
  written there; every process raises the refusal (errors.RunDirError). Returns the lock (None on
  other processes)."""
  lock, message = None, None
  if jax.process_index() == 0:
    try:
      lock = runlock.acquire(run_dir, command)
    except errors.RunDirError as e:
      message = str(e)
  message = distributed.share_error("run_lock", message)
  if message is not None:
    raise errors.RunDirError(message)
  return lock


def _train(cfg: schema.RunConfig, progress: bool, lock, t_start: float) -> dict:
  setup = build(cfg)
  k = max(cfg.train.microbatches, 1)
  if cfg.data.batch_size % k or (cfg.data.batch_size // k) % (
      setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]):
    raise errors.ConfigError(
        f"data.batch_size={cfg.data.batch_size} must split into train.microbatches={k} "
        "microbatches that each divide over the data x fsdp mesh "
        f"({setup.mesh.shape['data'] * setup.mesh.shape['fsdp']} devices)")
  data = data_iterator(setup)
  distributed.barrier("setup")  # before Orbax's first cross-process collective
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(cfg.run_dir, "checkpoints"), save_every=cfg.train.checkpoint_every,
      keep=cfg.train.keep_checkpoints, best_metric=cfg.train.best_metric,
      best_mode=cfg.train.best_mode)
  try:
    params, opt_state, start, saved_meta = _start_state(setup, checkpointer, data)
    _save_config(cfg, setup)  # only once the run dir's checkpoints accept this config
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
  eval_batches = _eval_batches(setup) if cfg.eval.loss_every > 0 else None
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
  bar = tqdm(total=cfg.train.steps, initial=start, dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0,
             desc="train")
  fault_step, fault_kind = _fault()
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
        if fault_kind == "nan" and step + 1 == fault_step:
          params = jax.tree.map(lambda x: x * float("nan"), params)
        batch = arrays.global_batch(local_batch(setup, next(data)), setup.mesh, setup.rules)
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
          last_eval = eval_loss(setup, params, eval_batches, eval_step)
          writer.write(done, last_eval)
          t0 = time.perf_counter()  # eval time is not training throughput
        full_eval = cfg.eval.every > 0 and (done % cfg.eval.every == 0
                                            or (final and cfg.eval.at_end))
        if full_eval:
          _check_finite(int(bad), checkpointer.directory)
          results = evaluate(setup, params, step=done)
          writer.write_eval(done, results)  # its samples; its metrics to other trackers
          final_results = results if final else None
          last_eval = {**last_eval, **eval_lib.flat_metrics(results)}
          t0 = time.perf_counter()
        if fault_kind in ("SIGKILL", "SIGTERM") and done == fault_step:
          os.kill(os.getpid(), getattr(signal, fault_kind))  # the handler runs right here
        # An evaluated step is also saved when checkpoints are ranked, so the best is on disk.
        if (final or stop["signal"] or checkpointer.should_save(done)
            or (full_eval and cfg.train.best_metric)):
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
    if cfg.eval.at_end and not stop["signal"]:
      t_eval = time.perf_counter()
      summary["eval"] = final_results
      if final_results is None:
        summary["eval"] = evaluate(setup, params)
        writer.write_eval(cfg.train.steps, summary["eval"])
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
    params = init_from(setup, params, cfg.train.init_from)
  if cfg.train.init_prompt_from:
    with jax.set_mesh(setup.mesh):
      params = prompts.merge(params, cfg.train.init_prompt_from)
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


def evaluate(setup: Setup, params, step: int | None = None, output_dir: str | None = None
             ) -> list[dict]:
  """Evaluates each task (decoding and scoring as `cfg.eval` says; mtjax.eval.evaluate), then
  writes eval_results.json / eval_metrics.jsonl / TensorBoard to `output_dir` (the run dir) and
  prints the per-task table. `step` labels the metrics (default: the final training step)."""
  from mtjax.eval import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from mtjax.eval import run as run_lib  # pylint: disable=g-import-not-at-top

  cfg = setup.cfg
  try:
    import seqio  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    log.warning("seqio is not installed: skipping metric evaluation (it needs the tasks' "
                "postprocessors and metric functions)")
    return []
  with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
    results = run_lib.evaluate_config(setup.graphdef, params, setup.spec.task_names, cfg,
                                      mesh=setup.mesh, rules=setup.rules)
  eval_lib.report(results, output_dir or cfg.run_dir,
                  cfg.train.steps if step is None else step)
  return results
