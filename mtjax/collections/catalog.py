"""`mtjax tasks`: what is registered, and what a task's examples look like.

Which collection module registers a name is known here without importing any of them
(`COLLECTIONS`), so `mtjax tasks --mixture t0_train` imports the T0 collection and nothing
else. Listing reads metadata only (recorded sizes, the cache's manifests); it never downloads
or renders a split. `--show` renders the first examples of one split and stops there.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import json
import sys
from typing import Any, Iterable, Sequence

from mtjax import errors
from mtjax.collections import hf_tasks


@dataclasses.dataclass(frozen=True)
class CollectionInfo:
  module: str
  about: str
  names: tuple[str, ...]  # mixture (and task) names or fnmatch patterns it registers


COLLECTIONS = {
    "t0": CollectionInfo(
        "mtjax.collections.t0", "P3 / T0: PromptSource templates over T0's datasets",
        ("t0_train", "t0+_train", "t0++_train", "t0_eval_score_eval", "t0_train_score_eval",
         "t0_train_one_og_prompt", "t0_train_all_og_prompts", "bias_fairness_eval_score_eval")),
    "glue": CollectionInfo(
        "mtjax.collections.glue", "GLUE and SuperGLUE the T5 way",
        ("glue_v002_proportional", "super_glue_v102_proportional", "glue_*_v002*",
         "super_glue_*_v102*", "dpr_v001_simple")),
    "flan2022": CollectionInfo(
        "mtjax.collections.flan2022", "Flan 2022's pre-rendered submixes",
        ("flan2022*", "flan2021_*", "t0_submix*", "niv2_*", "cot_*", "dialog_*")),
    "xp3": CollectionInfo(
        "mtjax.collections.xp3", "xP3 (mT0 / BLOOMZ) and the mT0 held-out suite",
        ("xp3*", "mt0_*", "xnli_*", "xcopa_*", "xstory_cloze_*", "xwinograd_*")),
}


def _import(module: str):
  """Imports a registering module; a collection that could not register raises its error."""
  from mtjax.data import modules  # pylint: disable=g-import-not-at-top

  imported = importlib.import_module(module)
  modules.check_registered(imported)
  return imported


def collection_of(name: str) -> str | None:
  """The collection whose module registers `name` (a mixture or task name), if any."""
  for key, info in COLLECTIONS.items():
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in info.names):
      return key
  return None


def ensure_registered(name: str, modules: Iterable[str] = ()) -> Any:
  """The SeqIO mixture or task `name`, importing `modules` and, if needed, its collection."""
  import seqio  # pylint: disable=g-import-not-at-top

  for module in modules:
    _import(module)
  if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  key = collection_of(name)
  if key is not None:
    _import(COLLECTIONS[key].module)
  else:  # a task of a collection (T0's names are its datasets' and templates'): look in each
    for info in COLLECTIONS.values():
      try:
        _import(info.module)
      except errors.UserError:  # that collection's data or templates are not here
        continue
      if name in seqio.TaskRegistry.names():
        break
  if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  for info in COLLECTIONS.values():  # a collection that registered only what it found
    missing = getattr(sys.modules.get(info.module), "MISSING", None) or {}
    if name in missing:
      raise errors.MissingError(f"{name}: {missing[name]}")
  mixtures = sorted(seqio.MixtureRegistry.names())
  raise errors.DataError(
      f"no mixture or task {name!r} is registered"
      + (f" (collection {key} imported)" if key else "")
      + f"; mixtures: {', '.join(mixtures[:30]) or 'none'}"
      + (" ..." if len(mixtures) > 30 else ""),
      hint="name the module that registers it with --module (as data.modules)")


def _rate(mixture, task) -> float | None:
  """A task's rate in a mixture as SeqIO gives it (through nested mixtures too); None for a
  rate computed from example counts (listing never counts)."""
  rate = mixture._task_to_rate.get(task.name)  # pylint: disable=protected-access
  if callable(rate):
    return None
  try:
    return float(mixture.get_rate(task))
  except Exception:  # pylint: disable=broad-except  (a nested rate function that would count)
    return None


def _cached(cache_dir: str | None, task: str, splits: Sequence[str]) -> tuple[list[str], Any]:
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top

  if not cache_dir:
    return [], None
  have, train = [], None
  for split in splits:
    manifest = cache.read_manifest(cache_dir, task, split)
    if manifest is not None:
      have.append(split)
      if split == "train":
        train = manifest.get("num_examples")
  return have, train


def _declared_splits(task) -> tuple[str, ...]:
  return tuple(getattr(task.source, "_splits", None) or task.splits)


def mixture_rows(name: str, cache_dir: str | None = None) -> list[dict[str, Any]]:
  """One row per task of a mixture (or the task itself): rate, share, cached splits, and the
  train examples: the cache's count, else the collection's recorded size, else the dataset
  files' row count where they are on this machine (parquet / arrow metadata; nothing is
  downloaded or rendered)."""
  import seqio  # pylint: disable=g-import-not-at-top

  provider = seqio.get_mixture_or_task(name)
  tasks = list(getattr(provider, "tasks", None) or [provider])
  rates = {t.name: _rate(provider, t) for t in tasks} if isinstance(provider, seqio.Mixture) \
      else {}
  known = [r for r in rates.values() if r is not None]
  total = sum(known) if rates and len(known) == len(rates) and sum(known) > 0 else None
  rows = []
  for task in sorted(tasks, key=lambda t: t.name):
    source = hf_tasks.hf_source(task)
    splits = _declared_splits(task)
    cached, cached_train = _cached(cache_dir, task.name, splits)
    recorded = source.recorded.get("train") if source is not None else None
    local = None
    if source is not None and cached_train is None and not recorded and "train" in splits:
      local = source.local_rows("train")
    rows.append({
        "task": task.name,
        "rate": ("by size" if rates[task.name] is None else f"{rates[task.name]:g}")
                if rates else "",
        "share": 100.0 * rates[task.name] / total if total else None,
        "train_examples": next((n for n in (cached_train, recorded, local) if n), None),
        "examples_from": ("cache" if cached_train is not None else "recorded" if recorded
                          else "data files" if local else ""),
        "dataset": source.dataset.label if source is not None else type(task.source).__name__,
        "splits": list(splits),
        "cached": cached,
    })
  return rows


def format_rows(name: str, rows: list[dict[str, Any]]) -> str:
  width = max([len(r["task"]) for r in rows] + [4])
  lines = [f"{name}: {len(rows)} task(s)",
           f"{'task':<{width}}  {'rate':>9}  {'share':>7}  {'train examples':>22}  "
           f"{'cached':<20}  dataset"]
  for r in rows:
    share = f"{r['share']:.3f}%" if r["share"] is not None else ""
    n = r["train_examples"]
    count = f"{n:,} ({r['examples_from']})" if n is not None else "unknown"
    lines.append(f"{r['task']:<{width}}  {r['rate']:>9}  {share:>7}  {count:>22}  "
                 f"{','.join(r['cached']) or '-':<20}  {r['dataset']}")
  return "\n".join(lines)


def show(task_name: str, split: str = "train", n: int = 3) -> list[dict[str, Any]]:
  """The first `n` examples of a task split as text: inputs, targets, answer choices (or the
  rank-classification rows). Hugging Face tasks render from the dataset directly; other tasks
  run their SeqIO source and pre-cache preprocessors (no cache needed either way)."""
  import seqio  # pylint: disable=g-import-not-at-top

  task = seqio.get_mixture_or_task(task_name)
  if isinstance(task, seqio.Mixture):
    raise errors.DataError(f"{task_name!r} is a mixture; --show takes one of its tasks, e.g. "
                           f"{sorted(t.name for t in task.tasks)[0]}")
  if split not in _declared_splits(task):
    raise errors.DataError(f"task {task_name!r} has no split {split!r}; it has "
                           f"{', '.join(_declared_splits(task))}")
  source = hf_tasks.hf_source(task)
  if source is not None:
    return source.first(split, n)
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top

  out = []
  for ex in cache._numpy_examples(cache._pre_cache_dataset(task, split, seed=0, stop=n)):  # pylint: disable=protected-access
    row = {}
    for key in ("inputs", "targets"):
      text = ex.get(f"{key}_pretokenized")
      row[key] = (text.decode() if isinstance(text, bytes) else str(text)) if text is not None \
          else task.output_features[key].vocabulary.decode([int(t) for t in ex[key]])
    if "answer_choices" in ex:
      row["answer_choices"] = [c.decode() if isinstance(c, bytes) else str(c)
                               for c in ex["answer_choices"]]
    out.append(row)
  return out


def format_examples(task_name: str, split: str, examples: list) -> str:
  lines = []
  for i, made in enumerate(examples):
    rows = made if isinstance(made, list) else [made]
    lines.append(f"--- {task_name} [{split}] example {i}")
    if len(rows) > 1 or "is_correct" in rows[0]:  # rank-classification rows
      lines.append(f"inputs:  {rows[0]['inputs']}")
      for r in rows:
        mark = "*" if r.get("is_correct") else " "
        lines.append(f"  {mark} {r['targets']}")
      continue
    ex = rows[0]
    lines.append(f"inputs:  {ex['inputs']}")
    lines.append(f"targets: {ex['targets']}")
    if ex.get("answer_choices"):
      lines.append(f"answer_choices: {json.dumps(list(ex['answer_choices']), ensure_ascii=False)}")
  return "\n".join(lines)


def overview(modules: Iterable[str] = ()) -> str:
  """The collections mtjax ships and what the given modules registered."""
  import seqio  # pylint: disable=g-import-not-at-top

  for module in modules:
    _import(module)
  lines = ["collections (data.modules=mtjax.collections.<name>):"]
  for key, info in COLLECTIONS.items():
    mixtures = [n for n in info.names if "*" not in n]
    lines.append(f"  {key:<9} {info.about}" + (f"; mixtures: {', '.join(mixtures)}"
                                               if mixtures else ""))
  names = sorted(seqio.MixtureRegistry.names())
  if modules:
    lines.append(f"registered mixtures ({len(names)}): {', '.join(names)}")
    lines.append(f"registered tasks: {len(seqio.TaskRegistry.names())}")
  return "\n".join(lines)
