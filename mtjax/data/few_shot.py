"""Few-shot variants of a task: k demonstrations from its train split, drawn deterministically.

A k-shot example is the task's own prompt template applied to k train examples and to the
example itself, joined as (FLAN's exemplar format):

    <demo 1 inputs><answer_separator><demo 1 targets><separator>...<separator><example inputs>

with the example's targets unchanged. Demonstrations use the template the example gets (the
task's `i % len(templates)` rule), so the prompt is consistent. Draws are seeded by (seed,
example index): the same example always gets the same demonstrations, on any machine, and an
example of the train split never demonstrates itself.

FLAN-style mixing (`zero_shot_prob=p`): each example is rendered zero-shot with probability p,
else k-shot, decided by its own seeded draw, so the cache stays reproducible.

`register_few_shot_task("my_task", k=3)` registers `my_task_3shot` (or `my_task_3shot_mixed` with
mixing) from a task whose templates are visible in Python: a file task (`file_tasks`) or a task
whose first preprocessor is `templates.apply_templates` over raw fields.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mtjax import errors
from mtjax.data import file_tasks, registration

SEPARATOR = "\n\n"  # between demonstrations, and before the example
ANSWER_SEPARATOR = "\n"  # between a demonstration's inputs and targets


def draw_demonstrations(index: int, pool_size: int, k: int, seed: int = 0,
                        exclude: int | None = None) -> list[int]:
  """k distinct positions in a pool of `pool_size`, never `exclude`, fixed by (seed, index)."""
  available = pool_size - (exclude is not None and 0 <= exclude < pool_size)
  if k > available:
    raise errors.DataError(f"cannot draw {k} demonstrations from {available} train examples")
  picks = np.random.default_rng([seed, index, 0]).choice(available, size=k, replace=False)
  if exclude is not None:
    picks = np.where(picks >= exclude, picks + 1, picks)  # skip the example itself
  return [int(p) for p in picks]


def is_zero_shot(index: int, zero_shot_prob: float, seed: int = 0) -> bool:
  """The example's own draw for FLAN-style zero-/few-shot mixing."""
  if zero_shot_prob <= 0:
    return False
  return bool(np.random.default_rng([seed, index, 1]).random() < zero_shot_prob)


def build_prompt(example: Mapping[str, Any], demonstrations: Sequence[Mapping[str, Any]],
                 separator: str = SEPARATOR,
                 answer_separator: str = ANSWER_SEPARATOR) -> dict[str, Any]:
  """A rendered example (`inputs`, `targets`, ...) with rendered demonstrations prepended."""
  shots = [f"{d['inputs']}{answer_separator}{d['targets']}" for d in demonstrations]
  return dict(example, inputs=separator.join(shots + [example["inputs"]]))


def render_few_shot(records: Sequence[Mapping[str, Any]], templates: Sequence, k: int, *,
                    train_records: Sequence[Mapping[str, Any]] | None = None, seed: int = 0,
                    separator: str = SEPARATOR, answer_separator: str = ANSWER_SEPARATOR,
                    zero_shot_prob: float = 0.0,
                    fits: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
  """Renders raw records k-shot. `train_records=None` means the records are the train split
  (demonstrations then exclude the example itself). `fits(inputs)` false: the first (farthest)
  demonstration is dropped until the prompt fits or none is left, so trimming to the inputs
  length never cuts the example itself off the end of its prompt."""
  pool = records if train_records is None else train_records
  out = []
  for i, record in enumerate(records):
    template_id = i % len(templates)
    template = templates[template_id]
    base = file_tasks.render(template, record)
    demo_ids = [] if is_zero_shot(i, zero_shot_prob, seed) else draw_demonstrations(
        i, len(pool), k, seed, exclude=i if train_records is None else None)
    demos = [file_tasks.render(template, pool[j]) for j in demo_ids]
    example = build_prompt(base, demos, separator, answer_separator)
    while fits is not None and demos and not fits(example["inputs"]):
      demo_ids, demos = demo_ids[1:], demos[1:]
      example = build_prompt(base, demos, separator, answer_separator)
    example.update(idx=i, template_id=template_id, num_shots=len(demo_ids), demo_ids=demo_ids,
                   example_json=json.dumps(record, sort_keys=True, ensure_ascii=False,
                                           default=str))
    out.append(example)
  return out


def _python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_python(v) for v in value.tolist()]
  if isinstance(value, np.generic):
    return value.item()
  return value


def raw_split(task, split: str) -> tuple[list[dict], tuple, list]:
  """(raw records, templates, preprocessors that follow the templating) of a templated task."""
  fn = getattr(task.source, "_dataset_fn", None)
  keywords = getattr(fn, "keywords", {}) or {}
  if "files" in keywords and "templates" in keywords:  # a file_tasks task renders in its source
    records = file_tasks.task_records(keywords, split)  # parsed, mapped, labelled as the task
    return records, tuple(keywords["templates"]), list(task.preprocessors)
  preps = list(task.preprocessors)
  if not preps or not hasattr(preps[0], "templates"):
    raise errors.DataError(f"task {task.name!r}: few-shot variants need templates visible in "
                           "Python (a file task, or apply_templates as the first preprocessor)")
  dataset = task.source.get_dataset(split=split, shuffle=False)
  records = [{k: _python(v) for k, v in ex.items()} for ex in dataset.as_numpy_iterator()]
  return records, tuple(preps[0].templates), preps[1:]


def token_budget(task, max_input_tokens: int) -> Callable[[str], bool]:
  """`fits(text)`: the text's `inputs` tokens (the task's vocabulary), plus the EOS the task
  appends, are at most `max_input_tokens`."""
  feature = task.output_features["inputs"]
  room = max_input_tokens - (1 if feature.add_eos else 0)
  return lambda text: len(feature.vocabulary.encode(text)) <= room


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, base: str, k: int,
                draw_seed: int, separator: str, answer_separator: str, zero_shot_prob: float,
                base_fingerprint: str, max_input_tokens: int | None = None):
  del shuffle_files, seed, base_fingerprint  # the fingerprint only invalidates caches
  import seqio  # pylint: disable=g-import-not-at-top

  task = seqio.get_mixture_or_task(base)
  records, templates, _ = raw_split(task, split)
  train = None if split == "train" else raw_split(task, "train")[0]
  examples = render_few_shot(records, templates, k, train_records=train, seed=draw_seed,
                             separator=separator, answer_separator=answer_separator,
                             zero_shot_prob=zero_shot_prob,
                             fits=token_budget(task, max_input_tokens) if max_input_tokens
                             else None)
  return file_tasks.to_dataset(examples)


def register_few_shot_task(task_name: str, k: int, *, name: str | None = None, seed: int = 0,
                           separator: str = SEPARATOR, answer_separator: str = ANSWER_SEPARATOR,
                           zero_shot_prob: float = 0.0, max_input_tokens: int | None = None):
  """Registers (replacing) `<task>_<k>shot` (`..._mixed` if `zero_shot_prob` > 0); returns it.

  Same splits, vocabulary, postprocessor and metrics as the base task; demonstrations always
  come from the base task's train split. `max_input_tokens` (e.g. the run's inputs length):
  a prompt longer than that keeps fewer demonstrations (the example's `num_shots` says how
  many), instead of losing its own input to trimming.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  from mtjax.data import cache  # pylint: disable=g-import-not-at-top  (imports seqio)

  registration.ensure_registered()  # the base task (a fast start-up put it off: `startup`)
  if k < 1:
    raise errors.ConfigError(f"k must be at least 1, got {k}")
  if not 0.0 <= zero_shot_prob < 1.0:
    raise errors.ConfigError(f"zero_shot_prob must be in [0, 1), got {zero_shot_prob}")
  base = seqio.get_mixture_or_task(task_name)
  if "train" not in base.splits:
    raise errors.DataError(f"task {task_name!r} has no train split to draw demonstrations "
                           "from")
  name = name or f"{task_name}_{k}shot" + ("_mixed" if zero_shot_prob > 0 else "")
  fn = functools.partial(
      _dataset_fn, base=task_name, k=k, draw_seed=seed, separator=separator,
      answer_separator=answer_separator, zero_shot_prob=zero_shot_prob,
      max_input_tokens=max_input_tokens, base_fingerprint=":".join(cache.fingerprint(base, s) for s in sorted(base.splits)))
  base_fn = getattr(base.source, "_dataset_fn", None)
  fn.data_files = list(getattr(base_fn, "data_files", ()))  # fingerprinted by size and mtime
  fn.required_tasks = (base,)  # registered in cache worker processes (cache._cache_block)
  preps = list(base.preprocessors)
  if preps and hasattr(preps[0], "templates"):
    preps = preps[1:]  # the few-shot source renders the templates itself
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          fn, splits=tuple(base.splits),
          num_input_examples={s: base.num_input_examples(s) for s in base.splits}),
      preprocessors=preps,
      output_features=base.output_features,
      postprocess_fn=base.postprocess_fn,
      metric_fns=list(base.metric_fns))
