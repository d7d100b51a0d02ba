"""The training loop: build everything from a RunConfig, resume if possible, train, evaluate.

Order of events: register tasks -> cache (first use) -> mesh -> sharded model init -> optimizer
-> data iterator -> restore the latest checkpoint of the run dir, if any -> steps (metrics every
`log_every`, checkpoints every `checkpoint_every`) -> final checkpoint -> evaluation.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from mtjax.config import schema
from mtjax.data import cache, pipeline
from mtjax.models import registry
from mtjax.parallel import arrays, mesh as mesh_lib, rules as rules_lib
from mtjax.train import checkpoint as ckpt_lib
from mtjax.train import metrics as metrics_lib
from mtjax.train import optimizers, step as step_lib

log = logging.getLogger(__name__)


def import_modules(modules) -> None:
  """Imports the modules that register the config's SeqIO tasks and mixtures.

  The working directory is importable, as with `python -m`, so `data.modules=my_tasks` finds a
  `my_tasks.py` next to where `mtjax` runs.
  """
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      if getattr(e, "name", None) in ("seqio", "tensorflow"):
        log.warning("cannot import %s without %s; using the existing cache", name, e.name)
        continue
      raise ImportError(f"data.modules: cannot import {name!r}: {e}") from e


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
  opt_state: Any


def build(cfg: schema.RunConfig, *, devices=None) -> Setup:
  import_modules(cfg.data.modules)
  spec = cache.ensure_cached(cfg.data.mixture, cfg.data.cache_dir,
                             splits=("train", cfg.eval.split))
  mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
  rules = rules_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = registry.create(cfg.model, seed=cfg.train.seed, mesh=mesh, rules=rules)
    graphdef, state = nnx.split(model)
    params = state.to_pure_dict()
    lr = optimizers.schedule(cfg.optimizer.schedule, cfg.optimizer.learning_rate,
                             cfg.train.steps, cfg.optimizer.warmup_steps)
    tx = optimizers.make(cfg.optimizer.name, lr, cfg.optimizer.weight_decay,
                         cfg.optimizer.clip_norm)
    opt_state = jax.jit(tx.init)(params)
  return Setup(cfg, mesh, rules, spec, graphdef, params, tx, opt_state)


def data_iterator(setup: Setup):
  """This host's share of the global batch, as a checkpointable Grain iterator."""
  cfg = setup.cfg
  n_hosts, parallel = jax.process_count(), (setup.mesh.shape["data"] * setup.mesh.shape["fsdp"])
  if cfg.data.batch_size % parallel or cfg.data.batch_size % n_hosts:
    raise ValueError(f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                     f"data x fsdp mesh size ({parallel}) and the number of hosts ({n_hosts})")
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
  os.makedirs(cfg.run_dir, exist_ok=True)
  with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
    json.dump(schema.to_dict(cfg), f, indent=1)
  shapes = jax.tree_util.tree_flatten_with_path(setup.params)[0]
  summary = {
      "num_params": int(sum(np.prod(x.shape) for _, x in shapes)),
      "params": {jax.tree_util.keystr(p): {"shape": list(x.shape), "dtype": str(x.dtype),
                                           "sharding": str(x.sharding.spec)}
                 for p, x in shapes},
      "mesh": dict(setup.mesh.shape),
      "tasks": list(setup.spec.task_names),
  }
  with open(os.path.join(cfg.run_dir, "model_summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


def train(cfg: schema.RunConfig, *, progress: bool = True) -> dict:
  """Runs (or resumes) training to `train.steps`, then evaluates. Returns a summary dict."""
  t_start = time.perf_counter()
  setup = build(cfg)
  _save_config(cfg, setup)
  data = data_iterator(setup)
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(cfg.run_dir, "checkpoints"), save_every=cfg.train.checkpoint_every,
      keep=cfg.train.keep_checkpoints)
  params, opt_state, start = setup.params, setup.opt_state, 0
  latest = checkpointer.latest_step()
  if latest is not None:
    params, opt_state, meta = checkpointer.restore(latest, params, opt_state, data)
    start = int(meta["step"])
    log.info("resumed %s from step %d", cfg.run_dir, start)
  num_tasks = len(setup.spec.task_names)
  step_fn = step_lib.make_train_step(
      setup.graphdef, setup.tx, num_tasks=num_tasks, label_smoothing=cfg.train.label_smoothing,
      z_loss=cfg.train.z_loss, dropout_seed=cfg.train.seed)
  writer = metrics_lib.MetricWriter(cfg.run_dir)
  meta = {"mixture": cfg.data.mixture, "tasks": list(setup.spec.task_names),
          "config": schema.to_dict(cfg)}
  bar = tqdm(total=cfg.train.steps, initial=start, disable=not progress, dynamic_ncols=True,
             desc="train")
  sums, last, window_start = None, {}, start
  t0 = time.perf_counter()
  with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
    for step in range(start, cfg.train.steps):
      batch = arrays.global_batch(next(data), setup.mesh, setup.rules)
      params, opt_state, m = step_fn(params, opt_state, batch, step)
      sums = m if sums is None else jax.tree.map(jax.numpy.add, sums, m)
      done = step + 1
      if done % cfg.train.log_every == 0 or done == cfg.train.steps:
        last = _log(writer, bar, jax.device_get(sums), done, done - window_start,
                    time.perf_counter() - t0, setup.spec.task_names, checkpointer.directory)
        sums, window_start, t0 = None, done, time.perf_counter()
      final = done == cfg.train.steps
      if final or checkpointer.should_save(done):
        _check_finite(float(m["loss"]), done, checkpointer.directory)  # never save a NaN state
        checkpointer.save(done, params, opt_state, data, dict(meta, step=done), force=final)
      bar.update(1)
  bar.close()
  checkpointer.close()
  writer.close()
  log.info("trained %d steps in %.1fs (setup and compilation included)", cfg.train.steps - start,
           time.perf_counter() - t_start)
  summary = {"run_dir": cfg.run_dir, "steps": cfg.train.steps, "resumed_from": start,
             "final_metrics": last}
  if cfg.eval.at_end:
    t_eval = time.perf_counter()
    summary["eval"] = evaluate(setup, params)
    log.info("evaluated in %.1fs", time.perf_counter() - t_eval)
  return summary


def _log(writer, bar, sums, step, num_steps, elapsed, task_names, ckpt_dir) -> dict:
  """Writes one metrics row for the steps since the last log; stops the run on NaN/Inf."""
  row = metrics_lib.summarize(sums, task_names)
  _check_finite(row["loss"], step, ckpt_dir)
  row["grad_norm"] = float(sums["grad_norm"]) / num_steps  # mean over the window
  row["steps_per_s"] = num_steps / max(elapsed, 1e-9)
  row["target_tokens_per_s"] = float(sums["token_sum"]) / max(elapsed, 1e-9)
  writer.write(step, row)
  bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}",
                  tok_s=f"{row['target_tokens_per_s']:.0f}")
  return row


def _check_finite(loss: float, step: int, ckpt_dir: str) -> None:
  if not np.isfinite(loss):
    raise FloatingPointError(f"loss is {loss} at step {step}; stopping. The last good "
                             f"checkpoint in {ckpt_dir} is untouched.")


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
