"""A run's soft prompt, from its config: checked, attached, re-initialised, split per task.

`mtjax.peft.prompts` is the mechanism (the hook module, its table, init, detach / select, prompt
files); this module is the one place that reads a `RunConfig`'s prompt options and applies them,
for every command that builds a prompted model: training and `mtjax eval` (`mtjax.train.setup`),
`mtjax infer` (`attach_row`), the ProMoT recipe and evaluation (`by_row`, `per_task`). Keeping it
here means a new prompt option changes one file, not the trainer, the evaluator and the recipe.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mtjax import errors
from mtjax.peft import adapters, prompts


def check_config(cfg) -> None:
  """Prompt options that cannot work together, before anything is built."""
  m = cfg.model
  if m.prompt_length > 0 and m.lora_rank > 0 and getattr(m, "adapter", "lora") != "lora":
    raise errors.ConfigError(f"model.adapter={m.adapter!r} does not combine with a soft prompt "
                             "(model.prompt_length > 0): use model.adapter=lora or no prompt")
  if m.prompt_length <= 0:
    if m.prompt_tasks or cfg.train.init_prompt_from:
      raise errors.ConfigError("model.prompt_tasks / train.init_prompt_from need a soft prompt: "
                               "set model.prompt_length")
    return
  if cfg.data.pack:
    raise errors.ConfigError("a soft prompt (model.prompt_length > 0) needs one example per row: "
                             "set data.pack=False")


def targets_vocabulary(task_names: Sequence[str]):
  """The targets vocabulary of the mixture (class-label prompt init tokenises label words)."""
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio.get_mixture_or_task(task_names[0]).output_features["targets"].vocabulary


def _init_vocabulary(cfg, task_names):
  return targets_vocabulary(task_names) if cfg.model.prompt_init == "class_labels" else None


def attach(cfg, model, task_names: Sequence[str]) -> np.ndarray | None:
  """Attaches the soft prompt `cfg.model` asks for to `model` (its `embed_hook`); returns each
  mixture task's prompt row (`prompts.task_rows`), or None without a prompt."""
  m = cfg.model
  check_config(cfg)
  if m.prompt_length <= 0:
    return None
  rows = prompts.task_rows(m.prompt_tasks, task_names)
  if not (rows >= 0).any():
    raise errors.ConfigError(f"model.prompt_tasks={list(m.prompt_tasks)} names no task of the "
                             f"mixture {list(task_names)}")
  model.embed_hook = prompts.create(model, m, num_prompts=max(len(m.prompt_tasks), 1),
                                    seed=cfg.train.seed, vocab=_init_vocabulary(cfg, task_names))
  return rows


def reinit_after_init_from(cfg, params, model_cfg, task_names: Sequence[str],
                           fresh: Sequence[str]):
  """After `train.init_from` restored the base model: a prompt the source lacked (among the
  `fresh` paths) is initialised again from the restored embeddings, so its `vocab` /
  `class_labels` init means the pretrained model's words, not the random init's."""
  if not prompts.has_prompt(params) or not any(prompts.HOOK in f for f in fresh):
    return params
  table = prompts.table_for(params, cfg.model, model_cfg,
                            num_prompts=prompts.table(params).shape[0], seed=cfg.train.seed,
                            vocab=_init_vocabulary(cfg, task_names))
  return prompts.with_table(params, table)


def by_row(graphdef, params, prompt_tasks: Sequence[str], task_names: Sequence[str],
           adapter_tasks: Sequence[str] | None = None) -> Iterator[tuple[Any, Any, list[str]]]:
  """(graphdef, params, tasks) per prompt row, in mixture order: each mixture task is evaluated
  with its own row; tasks without one (and every task when no prompt is attached) together,
  with the prompt removed, as ProMoT's inference does. Task-routed adapters (Poly/MHR, MTLoRA:
  `mtjax.peft.adapters`) evaluate each task on its own, with its index among `adapter_tasks`
  (the tasks they were trained on; default `task_names`) fixed (`adapters.task_index`: a task
  they have no row for takes `model.adapter_default_task`'s, else is an error, raised before
  anything is evaluated)."""
  if adapters.task_routed(graphdef, params):  # (no soft prompt: check_config refuses both)
    names = task_names if adapter_tasks is None else adapter_tasks
    indices = [adapters.task_index(graphdef, params, t, names) for t in task_names]
    for task, i in zip(task_names, indices):
      g, p = adapters.select_task(graphdef, params, i)
      yield g, p, [task]
    return
  groups: dict[int, list[str]] = {}
  for task, row in zip(task_names, prompts.task_rows(prompt_tasks, task_names)):
    groups.setdefault(int(row) if prompts.has_prompt(params) else -1, []).append(task)
  for row, tasks in groups.items():
    g, p = prompts.select(graphdef, params, row)
    yield g, p, tasks


def per_task(graphdef, params, prompt_tasks: Sequence[str], task_names: Sequence[str]
             ) -> Iterator[tuple[str, Any, Any]]:
  """(task, graphdef, params) for each mixture task, with its own prompt row (-1: detached), and
  its task fixed on task-routed adapters (`mtjax.peft.adapters.select_task`)."""
  routed = adapters.task_routed(graphdef, params)
  for i, (task, row) in enumerate(zip(task_names, prompts.task_rows(prompt_tasks, task_names))):
    g, p = prompts.select(graphdef, params, int(row))
    if routed:
      g, p = adapters.select_task(g, p, i)
    yield task, g, p


def attach_row(model, table: np.ndarray, prompt_tasks: Sequence[str], placement: str,
               task: str) -> bool:
  """One row of a trained prompt table on `model`, as `mtjax eval` would use it for `task`: the
  shared prompt always; with `prompt_tasks`, the row of `task`. Returns False (nothing attached)
  when `task` has no row."""
  tasks = list(prompt_tasks)
  row = 0 if not tasks else (tasks.index(task) if task in tasks else -1)
  if row < 0:
    return False
  model.embed_hook = prompts.SoftPrompt(table[row:row + 1], placement)
  return True
