"""`mtjax eval` on any checkpoint: find its run, build the model, restore, evaluate, report.

A checkpoint is named by a run directory (its latest checkpoint), a run's `checkpoints/`
directory, or one step's directory (`.../checkpoints/600`). The configuration is the run's own
`config.json` unless a gin / python config is given; either way, `eval.*` options and the
mixture or task to evaluate can be overridden, so a checkpoint trained on one mixture can be
evaluated on another (held-out tasks, T0 style) with any decoding method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from mtjax import errors, fs
from mtjax.config import schema

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  run_dir: str
  checkpoints_dir: str
  step: int | None  # None: the latest


def locate(path: str, flag: str = "--checkpoint") -> CheckpointRef:
  """Resolves a run dir, a `checkpoints/` dir or a step dir to (run dir, checkpoints dir, step).

  `flag` names the option the path came from in errors; with `--run_dir` the path must be a run
  directory (or, as before, a checkpoints/ or step directory of one).
  """
  path = fs.abspath(path)
  if not fs.isdir(path):
    raise errors.MissingError(f"{flag} {path} does not exist")
  name, parent = os.path.basename(path), os.path.dirname(path)
  if fs.isdir(os.path.join(path, "checkpoints")):
    ref = CheckpointRef(path, os.path.join(path, "checkpoints"), None)
  elif name == "checkpoints":
    ref = CheckpointRef(parent, path, None)
  elif name.isdigit() and (os.path.basename(parent) == "checkpoints"
                           or fs.isdir(os.path.join(path, "params"))):
    return CheckpointRef(os.path.dirname(parent), parent, int(name))
  elif flag == "--run_dir":
    raise errors.MissingError(
        f"--run_dir {path} has no checkpoints ({os.path.join(path, 'checkpoints')} does not "
        "exist): give the directory of a run that mtjax train has checkpointed, or a step's "
        "directory with --checkpoint")
  else:
    raise errors.MissingError(
        f"{flag} {path} holds no checkpoints: give a run directory written by mtjax train, its "
        "checkpoints/ directory or one step's directory")
  if not any(n.isdigit() for n in fs.listdir(ref.checkpoints_dir)):
    raise errors.MissingError(f"{flag} {path}: {ref.checkpoints_dir} holds no checkpoint yet "
                              "(mtjax train saves one every train.checkpoint_every steps)")
  return ref


def run_config(ref: CheckpointRef) -> schema.RunConfig:
  path = os.path.join(ref.run_dir, "config.json")
  if not fs.exists(path):
    raise errors.MissingError(
        f"{path} not found (the run directory of {ref.checkpoints_dir}): give the run's config "
        "with --config or --gin_file, or point at a run directory written by mtjax train")
  return schema.from_dict(fs.read_json(path))


def with_overrides(cfg: schema.RunConfig, *, mixture_or_task: str | None = None,
                   modules: tuple[str, ...] = (), eval_fields: Mapping[str, Any] | None = None
                   ) -> schema.RunConfig:
  data = cfg.data
  if mixture_or_task:
    data = dataclasses.replace(data, mixture=mixture_or_task)
  if modules:
    data = dataclasses.replace(data, modules=tuple(dict.fromkeys(data.modules + tuple(modules))))
  known = {f.name for f in dataclasses.fields(schema.EvalConfig)}
  unknown = set(eval_fields or {}) - known
  if unknown:
    raise KeyError(f"unknown eval option(s) {sorted(unknown)}; known: {sorted(known)}")
  ev = dataclasses.replace(cfg.eval, **(eval_fields or {}))
  return dataclasses.replace(cfg, data=data, eval=ev)


def evaluate_config(graphdef, params, task_names, cfg: schema.RunConfig, *, mesh=None,
                    rules=None, adapter_tasks=None) -> list[dict]:
  """Everything `cfg.eval` asks for: each task of the mixture, then its k-shot variants, then
  `eval.other_tasks` zero-shot and k-shot.

  With a soft prompt attached, each mixture task is evaluated with its own prompt row (tasks
  without one, and every other task, with the prompt removed), as ProMoT's inference does.
  Task-routed adapters (model.adapter=poly/mhr/mtlora) evaluate each task with its index among
  `adapter_tasks` (the tasks they were trained on; default `task_names`), a task they have no
  row for with model.adapter_default_task's; without one, such a task is an error before
  anything is evaluated (`mtjax.peft.adapters.task_index`).
  """
  # (imported here: finding a checkpoint, and the errors of a wrong path, need no JAX)
  import jax  # pylint: disable=g-import-not-at-top

  from mtjax import progress as progress_lib  # pylint: disable=g-import-not-at-top
  from mtjax.eval import evaluate, few_shot  # pylint: disable=g-import-not-at-top
  from mtjax.peft import adapters, prompt_setup, prompts  # pylint: disable=g-import-not-at-top

  kwargs = evaluate.config_kwargs(cfg)
  trained = task_names if adapter_tasks is None else adapter_tasks
  other_tasks = list(cfg.eval.other_tasks)
  routed = adapters.task_routed(graphdef, params)
  if routed:  # a task the adapters cannot route fails here, before any evaluation
    for t in other_tasks:
      adapters.task_index(graphdef, params, t, trained)
  ks = sorted({0, *cfg.eval.few_shot})
  total = (len(task_names) * (1 + sum(k != 0 for k in cfg.eval.few_shot))  # as evaluated below
           + len(cfg.eval.other_tasks) * len(ks))
  by_task, shots = {}, []
  with progress_lib.Progress(total, desc="eval", unit="tasks", leave=False,
                             enabled=jax.process_index() == 0) as bar:

    def done(r: dict) -> None:  # one (task, k) evaluated: the progress report moves on
      bar.set_postfix(task=r["task"], examples=str(r.get("num_examples", "?")))
      bar.update(1)

    for g, p, tasks in prompt_setup.by_row(graphdef, params, cfg.model.prompt_tasks,
                                           task_names, trained):
      for name in tasks:
        by_task[name] = evaluate.evaluate_task(g, p, name, mesh=mesh, rules=rules, **kwargs)
        done(by_task[name])
      if cfg.eval.few_shot:
        plain = {("", t): by_task[t] for t in tasks}
        shots += few_shot.evaluate_few_shot(g, {"": p}, tasks, cfg.eval.few_shot, mesh=mesh,
                                            rules=rules, reuse=plain, on_result=done, **kwargs)
    order = {t: i for i, t in enumerate(task_names)}
    results = [by_task[t] for t in task_names]
    results += sorted(shots, key=lambda r: (r["k"], order[r["base_task"]]))
    if other_tasks:
      g, p = prompts.detach(graphdef, params)
      # task-routed adapters: each task with its own index (a training task's, else the default)
      groups = ([adapters.for_task(g, p, t, trained) + ([t],) for t in other_tasks] if routed
                else [(g, p, other_tasks)])
      for g, p, tasks in groups:
        results += few_shot.evaluate_few_shot(g, {"": p}, tasks, ks, mesh=mesh, rules=rules,
                                              on_result=done, **kwargs)
  return results


def evaluate_checkpoint(cfg: schema.RunConfig, ref: CheckpointRef,
                        output_dir: str | None = None) -> dict:
  """Restores the checkpoint's parameters into the config's model and evaluates them."""
  from mtjax.parallel import compile_cache  # pylint: disable=g-import-not-at-top
  from mtjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from mtjax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top

  from mtjax.models import store  # pylint: disable=g-import-not-at-top

  compile_cache.enable()
  # task-routed adapters have one row per task of the run's training mixture, whatever is
  # evaluated now (model_summary.json records those tasks)
  setup = setup_lib.build(cfg, optimizer=False, adapter_tasks=store.run_task_names(ref.run_dir))
  checkpointer = ckpt_lib.Checkpointer(ref.checkpoints_dir, save_every=1,
                                       keep=cfg.train.keep_checkpoints)
  step = checkpointer.latest_step() if ref.step is None else ref.step
  if step is None:
    raise errors.MissingError(f"no checkpoint in {ref.checkpoints_dir}")
  params = checkpointer.restore_params(step, setup.params)
  checkpointer.close()
  output_dir = output_dir or ref.run_dir
  print(f"evaluating {ref.run_dir} at step {step} on {cfg.data.mixture}", flush=True)
  results = evaluate_setup(setup, params, step=step, output_dir=output_dir)
  return {"step": step, "output_dir": output_dir, "results": results}


def evaluate_setup(setup, params, step: int | None = None, output_dir: str | None = None
                   ) -> list[dict]:
  """Evaluates `params` of a built run (`mtjax.train.setup.Setup`) as `cfg.eval` says
  (`evaluate_config`), then writes eval_results.json / eval_metrics.jsonl / TensorBoard to
  `output_dir` (the run dir) and prints the per-task table. `step` labels the metrics (default:
  the final training step). Training's full evaluation is this (`mtjax.recipes.train`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from mtjax.eval import evaluate  # pylint: disable=g-import-not-at-top

  cfg = setup.cfg
  try:
    import seqio  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    log.warning("seqio is not installed: skipping metric evaluation (it needs the tasks' "
                "postprocessors and metric functions)")
    return []
  from mtjax.data import cache, registration  # pylint: disable=g-import-not-at-top

  from mtjax.eval import batching  # pylint: disable=g-import-not-at-top

  registration.ensure_registered()  # (a fast start-up put it off: `mtjax.data.startup`)
  tasks = cache.eval_task_names(cfg.data.mixture, cfg.eval.split, setup.spec.task_names)
  shapes, batches, start = len(batching.SHAPES), batching.SHAPES.batches, time.perf_counter()
  with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
    results = evaluate_config(setup.graphdef, params, tasks, cfg, mesh=setup.mesh,
                              rules=setup.rules, adapter_tasks=setup.adapter_tasks)
  # What the evaluation ran: batches, and how many of their shapes were new (each new shape is
  # one compilation; buckets keep this small whatever the tasks' sizes).
  print(f"evaluated {len(results)} task results in {time.perf_counter() - start:.1f}s: "
        f"{batching.SHAPES.batches - batches} batches, {len(batching.SHAPES) - shapes} new "
        f"batch shapes compiled", flush=True)
  evaluate.report(results, output_dir or cfg.run_dir, cfg.train.steps if step is None else step)
  return results
