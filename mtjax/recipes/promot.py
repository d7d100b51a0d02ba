"""ProMoT (Wang et al., "Two-stage LLM fine-tuning with less specialization and more
generalization"): prompt tuning, then model tuning with that prompt attached and frozen.

`mtjax promot --config=...` takes one run config: `data.mixture` is the target task (or a
mixture of target tasks), `train.init_from` the pretrained model, `eval.other_tasks`,
`eval.few_shot` and `eval.label_set` what to measure afterwards, `promot.*` the recipe. Each
method is one or two ordinary, resumable run dirs under `run_dir`; their `config.json` is a
plain run config (`mtjax train --config` of it continues that stage):

  prompt_tuning/          stage 1: only the prompt trains (Adafactor, constant lr 0.3, decay 0.8,
                          no parameter scaling, weight decay 1e-5); `best_prompt/` is the
                          prompt-only checkpoint of its best step on the target task
  promot/                 stage 2: base model + that prompt (frozen); everything else trains
                          (Adafactor lr 1e-3, dropout 0.1, label smoothing 0.1)
  finetune/               baseline: plain model tuning with stage 2's recipe, no prompt
  joint/                  baseline: prompt and model trained together from the start
  promot_1shot/...        ProMoT on the 1-shot variant of the target task (a demonstration
                          between the prompt and the input)
  report.json, report.md  each method on the target task (its prompt attached) and on
                          `eval.other_tasks` (prompt removed), zero- and k-shot, with the
                          format-specialisation rate against `eval.label_set`

Rows are not packed in any stage (a prompt needs one example per row; the baselines match).
Each stage evaluates the target task every `promot.eval_every` steps and the best step (max of
`promot.metric`) is the one used. A stage whose run dir reached its steps is not trained again
and each method's evaluation is kept (`<stage>/report_eval.json`, keyed by checkpoint step and
evaluation settings; `report/predictions/` beside it holds every example's prediction), so
rerunning the command resumes where it stopped.

`run_dir` may be a URL (`gs://bucket/runs/promot`): the stages, the best prompts, the kept
evaluations and the report are then read and written there (through `mtjax.fs`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from mtjax import fs
from mtjax.config import overrides, schema
from mtjax.data import vocabularies
from mtjax.peft import prompts

log = logging.getLogger(__name__)

METHODS = ("pretrained", "finetune", "prompt_tuning", "promot", "joint", "promot_1shot")
# method -> the stages it trains (in order); the last one is evaluated. `pretrained` evaluates
# the base model with the finetuning stage's config.
STAGES = {
    "pretrained": (),
    "finetune": ("finetune",),
    "prompt_tuning": ("prompt_tuning",),
    "promot": ("prompt_tuning", "promot"),
    "joint": ("joint",),
    "promot_1shot": ("promot_1shot/prompt_tuning", "promot_1shot/promot"),
}
REPORT_JSON, REPORT_MD, EVAL_FILE, BEST_PROMPT = ("report.json", "report.md", "report_eval.json",
                                                  "best_prompt")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  cfg: schema.RunConfig
  tasks: tuple[str, ...]  # the target tasks this stage trains on (its mixture's tasks)


# --- stage configs ----------------------------------------------------------------------------

def mixture_tasks(name: str) -> tuple[str, ...]:
  """The leaf tasks of a registered task or mixture (in SeqIO's order)."""
  import seqio  # pylint: disable=g-import-not-at-top

  from mtjax.data import modules  # pylint: disable=g-import-not-at-top

  modules.ensure_shot_task(name)
  item = seqio.get_mixture_or_task(name)
  if isinstance(item, seqio.Task):
    return (item.name,)
  return tuple(t.name for t in item.tasks)


def best_metric_key(tasks, metric: str) -> str:
  """The `flat_metrics` key that ranks a stage's checkpoints."""
  return f"{tasks[0]}/{metric}" if len(tasks) == 1 else f"average/{metric}"


def _stage_base(cfg: schema.RunConfig, name: str, mixture: str, tasks, inputs_length: int
                ) -> schema.RunConfig:
  pc = cfg.promot
  every = max(pc.eval_every, 0)
  return dataclasses.replace(
      cfg, run_dir=os.path.join(cfg.run_dir, name),
      data=dataclasses.replace(cfg.data, mixture=mixture, pack=False,
                               inputs_length=inputs_length),
      train=dataclasses.replace(cfg.train, best_metric=best_metric_key(tasks, pc.metric),
                                best_mode="max", keep_checkpoints=1, init_prompt_from=""),
      eval=dataclasses.replace(cfg.eval, every=every, at_end=True, few_shot=(), other_tasks=()))


def _prompt_fields(cfg: schema.RunConfig, tasks, length: int) -> schema.ModelConfig:
  return dataclasses.replace(cfg.model, prompt_length=length,
                             prompt_tasks=tuple(tasks) if cfg.promot.per_task_prompts else ())


def prompt_stage(cfg, name: str, mixture: str, tasks, inputs_length: int) -> schema.RunConfig:
  """Stage 1: the soft prompt alone trains."""
  pc = cfg.promot
  base = _stage_base(cfg, name, mixture, tasks, inputs_length)
  steps = pc.prompt_steps
  run = dataclasses.replace(
      base, model=_prompt_fields(cfg, tasks, pc.prompt_length),
      optimizer=dataclasses.replace(cfg.optimizer, name="adafactor",
                                    learning_rate=pc.prompt_learning_rate, schedule="constant",
                                    warmup_steps=0, weight_decay=pc.prompt_weight_decay,
                                    decay_rate=0.8, parameter_scale=False),
      train=dataclasses.replace(base.train, steps=steps, trainable=("prompt",),
                                checkpoint_every=_save_every(pc, steps)))
  return overrides.apply_all(run, list(pc.prompt_set))


def model_stage(cfg, name: str, mixture: str, tasks, inputs_length: int, *, prompt: bool,
                trainable: tuple[str, ...], init_prompt_from: str = "") -> schema.RunConfig:
  """Stage 2 (`all_but_prompt` with a prompt from stage 1), plain finetuning (no prompt) or
  joint tuning (`all`, with a fresh prompt)."""
  pc = cfg.promot
  base = _stage_base(cfg, name, mixture, tasks, inputs_length)
  steps = pc.model_steps
  model = (_prompt_fields(cfg, tasks, pc.prompt_length) if prompt else
           dataclasses.replace(cfg.model, prompt_length=0, prompt_tasks=()))
  run = dataclasses.replace(
      base, model=dataclasses.replace(model, dropout_rate=pc.model_dropout),
      optimizer=dataclasses.replace(cfg.optimizer, name="adafactor",
                                    learning_rate=pc.model_learning_rate, schedule="constant",
                                    warmup_steps=0, decay_rate=0.8, parameter_scale=True),
      train=dataclasses.replace(base.train, steps=steps, trainable=trainable,
                                label_smoothing=pc.model_label_smoothing,
                                checkpoint_every=_save_every(pc, steps),
                                init_prompt_from=init_prompt_from))
  return overrides.apply_all(run, list(pc.model_set))


def _save_every(pc: schema.PromotConfig, steps: int) -> int:
  return pc.eval_every if pc.eval_every > 0 else steps


def plan(cfg: schema.RunConfig) -> dict[str, Stage]:
  """Every stage the configured methods need, by name, in training order."""
  unknown = sorted(set(cfg.promot.methods) - set(METHODS))
  if unknown:
    raise ValueError(f"promot.methods: unknown {unknown}; known: {list(METHODS)}")
  if cfg.promot.prompt_length < 1:
    raise ValueError(f"promot.prompt_length must be >= 1, got {cfg.promot.prompt_length}")
  mixture, tasks = cfg.data.mixture, mixture_tasks(cfg.data.mixture)
  length = cfg.data.inputs_length
  root = lambda *parts: os.path.join(cfg.run_dir, *parts)
  stages = {
      "finetune": model_stage(cfg, "finetune", mixture, tasks, length, prompt=False,
                              trainable=("all",)),
      "prompt_tuning": prompt_stage(cfg, "prompt_tuning", mixture, tasks, length),
      "promot": model_stage(cfg, "promot", mixture, tasks, length, prompt=True,
                            trainable=("all_but_prompt",),
                            init_prompt_from=root("prompt_tuning", BEST_PROMPT)),
      "joint": model_stage(cfg, "joint", mixture, tasks, length, prompt=True, trainable=("all",)),
  }
  out = {name: Stage(name, c, tasks) for name, c in stages.items()}
  if "promot_1shot" in cfg.promot.methods:
    if len(tasks) != 1:
      raise ValueError("promot.methods: promot_1shot needs data.mixture to be one task, got "
                       f"{len(tasks)} tasks")
    from mtjax.eval import few_shot  # pylint: disable=g-import-not-at-top

    shot = few_shot.shot_task(tasks[0], 1)
    length2 = 2 * length  # a demonstration plus the input
    out["promot_1shot/prompt_tuning"] = Stage(
        "promot_1shot/prompt_tuning",
        prompt_stage(cfg, "promot_1shot/prompt_tuning", shot, (shot,), length2), (shot,))
    out["promot_1shot/promot"] = Stage(
        "promot_1shot/promot",
        model_stage(cfg, "promot_1shot/promot", shot, (shot,), length2, prompt=True,
                    trainable=("all_but_prompt",),
                    init_prompt_from=root("promot_1shot", "prompt_tuning", BEST_PROMPT)), (shot,))
  needed = [s for m in cfg.promot.methods for s in STAGES[m]]
  if "pretrained" in cfg.promot.methods:
    needed.append("finetune")  # its config describes the base model (not trained for this)
  return {name: out[name] for name in dict.fromkeys(needed)}


# --- running ----------------------------------------------------------------------------------

def saved_steps(run_dir: str) -> list[int]:
  """The run's complete checkpoint steps, ascending. Locally Orbax renames a finished step into
  place; in a bucket the step folder exists while it is written and counts only once Orbax's
  `commit_success.txt` is in it (a kill during an upload leaves a step without it)."""
  folder = os.path.join(run_dir, "checkpoints")
  steps = sorted(int(d) for d in fs.listdir(folder) if d.isdigit()) if fs.isdir(folder) else []
  if fs.is_url(folder):
    steps = [s for s in steps if fs.exists(os.path.join(folder, str(s), "commit_success.txt"))]
  return steps


def _steps_done(run_dir: str) -> int:
  return max(saved_steps(run_dir), default=0)


def best_step(cfg: schema.RunConfig) -> int:
  """The stage's checkpoint with the best target metric (the newest if none was scored)."""
  from mtjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  checkpointer = ckpt_lib.Checkpointer(os.path.join(cfg.run_dir, "checkpoints"), save_every=1,
                                       keep=1, best_metric=cfg.train.best_metric, best_mode="max")
  try:
    step = checkpointer.best_step()
    if step is None:
      step = checkpointer.latest_step()
      log.warning("%s: no checkpoint scored %s (promot.eval_every?); using the newest, step %s",
                  cfg.run_dir, cfg.train.best_metric, step)
    return step
  finally:
    checkpointer.close()


def run_stage(stage: Stage, *, progress: bool = True) -> int:
  """Trains (or resumes, or skips if finished) one stage; returns its best step. A prompt stage
  also writes the prompt-only checkpoint of that step (`best_prompt/`)."""
  from mtjax.recipes import train as train_recipe  # pylint: disable=g-import-not-at-top

  cfg = stage.cfg
  if _steps_done(cfg.run_dir) < cfg.train.steps:
    log.info("promot: training %s (%d steps)", stage.name, cfg.train.steps)
    summary = train_recipe.run(cfg, progress=progress, command=f"mtjax promot ({stage.name})")
    if summary.get("preempted"):
      raise SystemExit(f"promot: {stage.name} was preempted at step {summary['steps']}; "
                       "rerun the command to resume")
  else:
    log.info("promot: %s already trained (%d steps)", stage.name, cfg.train.steps)
  step = best_step(cfg)
  if tuple(cfg.train.trainable) == ("prompt",):
    export_best_prompt(cfg, step)
  return step


def export_best_prompt(cfg: schema.RunConfig, step: int) -> str:
  from mtjax.train import pretrained  # pylint: disable=g-import-not-at-top

  out = os.path.join(cfg.run_dir, BEST_PROMPT)
  meta_path = os.path.join(out, prompts.META_FILE)
  if fs.exists(meta_path) and fs.read_json(meta_path).get("step") == step:
    return out
  step_dir = os.path.join(cfg.run_dir, "checkpoints", str(step))
  table, _ = pretrained.load_prompt(step_dir)
  prompts.save(out, table, {
      "step": step, "source": step_dir, "metric": cfg.train.best_metric,
      "tasks": list(cfg.model.prompt_tasks), "placement": cfg.model.prompt_placement,
      "base": cfg.train.init_from or f"{cfg.model.preset} (seed {cfg.train.seed})"})
  log.info("promot: best prompt of %s (step %d) -> %s", cfg.run_dir, step, out)
  return out


# --- evaluation -------------------------------------------------------------------------------

def infer_label_set(cfg: schema.RunConfig, tasks) -> tuple[str, ...]:
  """`eval.label_set`, else the distinct targets of the target tasks' eval split (<= 10)."""
  if cfg.eval.label_set:
    return tuple(cfg.eval.label_set)
  import seqio  # pylint: disable=g-import-not-at-top

  from mtjax.data import cache  # pylint: disable=g-import-not-at-top
  from mtjax.eval import evaluate  # pylint: disable=g-import-not-at-top

  labels = set()
  lengths = {"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length}
  for task in tasks:
    cache.ensure_cached(task, cfg.data.cache_dir, splits=("train", cfg.eval.split),
                        sequence_length=cfg.data.sequence_length)
    examples = evaluate.load_examples(cfg.data.cache_dir, task, cfg.eval.split, lengths,
                                      cfg.eval.max_examples)
    labels |= set(map(str, evaluate.postprocessed_targets(seqio.get_mixture_or_task(task),
                                                          examples)))
  if len(labels) > 10:
    raise ValueError(f"the target tasks have {len(labels)} distinct targets: not a label set; "
                     "set eval.label_set (the labels whose share in other tasks' outputs is the "
                     "format-specialisation rate)")
  return tuple(sorted(labels))


def _eval_key(cfg: schema.RunConfig, step, label_set) -> dict:
  e = cfg.eval
  return {"step": step, "label_set": list(label_set), "other_tasks": list(e.other_tasks),
          "few_shot": list(e.few_shot), "max_examples": e.max_examples, "split": e.split,
          "decode": e.decode, "inputs_length": cfg.data.inputs_length}


def evaluate_method(method: str, stage: Stage, step: int | None, base_cfg: schema.RunConfig,
                    label_set, *, other_results: dict | None = None) -> dict:
  """Target tasks with their prompts, other tasks (prompt removed) at k in {0} + eval.few_shot.

  `step=None` evaluates the base model (`train.init_from`, or the fresh init). Results are kept
  in `<stage run dir>/report_eval.json` (or the root's for `pretrained`) and reused when the
  checkpoint step and evaluation settings have not changed. `other_results` are reused as the
  other-task results (prompt tuning leaves the model untouched: prompt removed, it is the base).
  """
  from mtjax.eval import evaluate, few_shot  # pylint: disable=g-import-not-at-top
  from mtjax.peft import prompt_setup  # pylint: disable=g-import-not-at-top
  from mtjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from mtjax.train import pretrained  # pylint: disable=g-import-not-at-top
  from mtjax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top

  cfg = stage.cfg
  folder = os.path.join(base_cfg.run_dir, "pretrained") if step is None else cfg.run_dir
  path = os.path.join(folder, EVAL_FILE)
  key = _eval_key(base_cfg, step, label_set)
  if fs.exists(path):
    kept = fs.read_json(path)
    if kept.get("key") == key and (other_results is None or kept.get("other") == other_results):
      return kept
  if step is None:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prompt_length=0,
                                                             prompt_tasks=()))
  setup = setup_lib.build(cfg, optimizer=False)
  params = setup.params
  if step is None:
    if cfg.train.init_from:
      params = pretrained.init_from(setup, params, cfg.train.init_from)
  else:
    checkpointer = ckpt_lib.Checkpointer(os.path.join(cfg.run_dir, "checkpoints"), save_every=1,
                                         keep=1)
    try:
      params = checkpointer.restore_params(step, params)
    finally:
      checkpointer.close()
  with_labels = lambda c: dataclasses.replace(c, eval=dataclasses.replace(c.eval,
                                                                          label_set=label_set))
  target_kwargs = evaluate.config_kwargs(with_labels(cfg))
  other_kwargs = evaluate.config_kwargs(with_labels(base_cfg))
  out = {"method": method, "key": key, "run_dir": None if step is None else cfg.run_dir,
         "step": step, "target": {}, "other": {}}
  results = []
  with jax.set_mesh(setup.mesh), nnx.logical_axis_rules(setup.rules):
    for task, g, p in prompt_setup.per_task(setup.graphdef, params, cfg.model.prompt_tasks,
                                            setup.spec.task_names):
      r = evaluate.evaluate_task(g, p, task, mesh=setup.mesh, rules=setup.rules, **target_kwargs)
      out["target"][task] = r["metrics"]
      results.append(r)
    if other_results is not None:
      out["other"] = other_results
    elif base_cfg.eval.other_tasks:
      g, p = prompts.detach(setup.graphdef, params)
      ks = sorted({0, *base_cfg.eval.few_shot})
      for r in few_shot.evaluate_few_shot(g, {"": p}, list(base_cfg.eval.other_tasks), ks,
                                          mesh=setup.mesh, rules=setup.rules, **other_kwargs):
        out["other"].setdefault(r["base_task"], {})[str(r["k"])] = r["metrics"]
        results.append(r)
  fs.makedirs(folder)
  if jax.process_index() == 0:  # every example's input, prediction and target, per task
    evaluate.write_predictions(results, os.path.join(folder, "report"), step or 0)
  fs.write_json(path, out, indent=1)
  return out


# --- the report ---------------------------------------------------------------------------------

# Per-task detail, not a headline: the format rate has its own columns; per-template accuracy
# and its spread over templates (median / IQR) are in the per-task table.
_DETAIL = ("format_rate", "rank_accuracy_median", "rank_accuracy_iqr")


def headline(metrics: dict) -> dict[str, float]:
  """The metrics a report compares across tasks (each only ever with itself)."""
  return {k: v for k, v in metrics.items() if k not in _DETAIL and "/" not in k}


def _by_metric(per_task: list[dict]) -> dict[str, list[float]]:
  """Metric name -> its values over the tasks that report it, in first-seen order."""
  out: dict[str, list[float]] = {}
  for m in per_task:
    for name, value in headline(m).items():
      out.setdefault(name, []).append(float(value))
  return out


def summarize(evals: dict[str, dict], ks, metric: str) -> dict[str, dict]:
  """Per method (flat, JSON-able): `target`, the target `metric` averaged over the target tasks
  (None unless all report it); `target/<name>` for every headline metric of the target tasks
  (classification targets, those with answer choices, add `target/rank_accuracy`); per k,
  `<k>shot/<name>` the other tasks' mean of that metric with `<k>shot/<name>/tasks` how many
  tasks it covers, never a mean across different metrics; and the mean and max format rate."""
  out = {}
  for method, ev in evals.items():
    target = [m.get(metric) for m in ev["target"].values()]
    row: dict[str, Any] = {"target": float(np.mean(target)) if target and None not in target
                           else None}
    for name, values in _by_metric(list(ev["target"].values())).items():
      row[f"target/{name}"] = float(np.mean(values))
    for k in ks:
      per_task = [per_k[str(k)] for per_k in ev["other"].values() if per_k.get(str(k))]
      for name, values in _by_metric(per_task).items():
        row[f"{k}shot/{name}"] = float(np.mean(values))
        row[f"{k}shot/{name}/tasks"] = len(values)
      rates = [m["format_rate"] for m in per_task if "format_rate" in m]
      row[f"{k}shot_format_rate"] = float(np.mean(rates)) if rates else None
      row[f"{k}shot_format_rate_max"] = float(np.max(rates)) if rates else None
    out[method] = row
  return out


def _fmt(x) -> str:
  return "-" if x is None else f"{x:.1f}"


def _columns(summary: dict, prefix: str) -> list[str]:
  """Metric names with a `<prefix>/<name>` entry in any method's row, in first-seen order."""
  names = []
  for row in summary.values():
    for key in row:
      if key.startswith(prefix + "/") and not key.endswith("/tasks"):
        names.append(key[len(prefix) + 1:])
  return list(dict.fromkeys(names))


def markdown(report: dict) -> str:
  ks, summary = report["ks"], report["summary"]
  metric = report["metric"]
  extra_target = [n for n in _columns(summary, "target")
                  if n == "rank_accuracy" and metric != "rank_accuracy"]
  cap = report.get("max_examples", 0)
  coverage = (f"the first {cap} examples of each task's `{report.get('split', 'validation')}` "
              "split (eval.max_examples)" if cap else
              f"each task's whole `{report.get('split', 'validation')}` split")
  lines = [f"# ProMoT report: {', '.join(report['target_tasks'])}", "",
           (f"Target metric: `{metric}` (each target task with its prompt; with "
            f"`{report['best_metric']}` picking each stage's checkpoint)"
            + ("; classification targets also by rank accuracy (answer choices scored)"
               if extra_target else "") + ". Other tasks: "
            f"{', '.join(report['other_tasks']) or 'none'}, prompt removed; each column "
            "averages one metric over the other tasks that report it (the task count in "
            "brackets), never different metrics; format rate = % of outputs in the label set "
            f"{report['label_set']}. Evaluated on {coverage}."), ""]
  head = ["method", "step", f"target {metric}"] + [f"target {n}" for n in extra_target]
  other_columns = {}
  for k in ks:
    other_columns[k] = _columns(summary, f"{k}shot")
    for name in other_columns[k]:
      tasks = max(row.get(f"{k}shot/{name}/tasks", 0) for row in summary.values())
      head.append(f"others {k}-shot {name} ({tasks} task{'s' * (tasks != 1)})")
    head.append(f"format rate {k}-shot (mean / max)")
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for method, row in summary.items():
    ev = report["methods"][method]
    cells = [method, "-" if ev["step"] is None else str(ev["step"]), _fmt(row["target"])]
    cells += [_fmt(row.get(f"target/{n}")) for n in extra_target]
    for k in ks:
      cells += [_fmt(row.get(f"{k}shot/{name}")) for name in other_columns[k]]
      cells.append(f"{_fmt(row[f'{k}shot_format_rate'])} / "
                   f"{_fmt(row[f'{k}shot_format_rate_max'])}")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Per task:", "", "| method | task | k | metrics |", "|---|---|---|---|"]
  for method, ev in report["methods"].items():
    for task, m in ev["target"].items():
      lines.append(f"| {method} | {task} (target) | 0 | {_metrics_cell(m)} |")
    for task, per_k in ev["other"].items():
      for k, m in sorted(per_k.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {method} | {task} | {k} | {_metrics_cell(m)} |")
  return "\n".join(lines) + "\n"


def _metrics_cell(m: dict) -> str:
  return ", ".join(f"{k} {v:.1f}" for k, v in m.items() if "/" not in k)


def run(cfg: schema.RunConfig, *, progress: bool = True) -> dict:
  """Trains every stage the methods need (resuming), evaluates each method, writes the report."""
  from mtjax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from mtjax.train import runlock  # pylint: disable=g-import-not-at-top

  fs.check_usable(cfg.run_dir, "run_dir")
  distributed.initialize()
  lock = runlock.hold(cfg.run_dir, "mtjax promot")  # one ProMoT per run dir (its report)
  try:
    return _run(cfg, progress)
  finally:
    if lock is not None:
      lock.release()


def _run(cfg: schema.RunConfig, progress: bool) -> dict:
  from mtjax.data import modules  # pylint: disable=g-import-not-at-top

  modules.import_modules(cfg.data.modules, vocabularies.for_run(cfg),
                         options=modules.run_options(cfg.data))
  if not cfg.train.init_from:
    log.warning("promot: train.init_from is empty, so the 'pretrained' model is %s's fresh "
                "init (seed %d)", cfg.model.preset, cfg.train.seed)
  stages = plan(cfg)
  steps = {name: run_stage(stage, progress=progress) for name, stage in stages.items()
           if not (name == "finetune" and "finetune" not in cfg.promot.methods)}
  tasks = mixture_tasks(cfg.data.mixture)
  label_set = infer_label_set(cfg, tasks)
  evals = {}
  for method in cfg.promot.methods:
    if method == "pretrained":
      evals[method] = evaluate_method(method, stages["finetune"], None, cfg, label_set)
      continue
    last = STAGES[method][-1]
    reuse = None
    if method == "prompt_tuning" and "pretrained" in evals:
      reuse = evals["pretrained"]["other"]
    evals[method] = evaluate_method(method, stages[last], steps[last], cfg, label_set,
                                    other_results=reuse)
  ks = sorted({0, *cfg.eval.few_shot}) if cfg.eval.other_tasks else []
  report = {
      "target_tasks": list(tasks), "metric": cfg.promot.metric,
      "best_metric": stages[next(iter(stages))].cfg.train.best_metric,
      "other_tasks": list(cfg.eval.other_tasks), "ks": ks, "label_set": list(label_set),
      "split": cfg.eval.split, "max_examples": cfg.eval.max_examples,
      "methods": evals, "summary": summarize(evals, ks, cfg.promot.metric),
      "stages": {name: {"run_dir": s.cfg.run_dir, "best_step": steps.get(name)}
                 for name, s in stages.items()},
  }
  if jax.process_index() == 0:
    fs.makedirs(cfg.run_dir)
    fs.write_json(os.path.join(cfg.run_dir, REPORT_JSON), report, indent=1)
    fs.write_text(os.path.join(cfg.run_dir, REPORT_MD), markdown(report))
  print(markdown(report), flush=True)
  return report
