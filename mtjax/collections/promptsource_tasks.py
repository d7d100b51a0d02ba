"""PromptSource templates as tasks, the way T0 renders them: shared by the collections that
prompt Hugging Face datasets with PromptSource templates (`t0`, `xp3`'s held-out suite).

Importing this module registers nothing.

- `templates_dir` / `load_templates`: PromptSource's templates folder (`data.promptsource_dir`,
  $MTJAX_PROMPTSOURCE_DIR, or the installed `promptsource` package's) and a dataset's templates
  in PromptSource's `all_template_names` order.
- `task_name`: T0's task-name rule.
- `apply_template` / `score_eval_rows`: T0's `apply_template` and its rank-classification rows.
- `strip_postprocessor` / `class_id_postprocessor`: T0's postprocessors.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from typing import Any, Mapping

from mtjax import errors
from mtjax.data import modules
from mtjax.data import promptsource as ps

NO_LABEL = "<NO LABEL>"


def task_name(dataset: str, subset: str | None, template: str) -> str:
  """T0's task name: `{dataset}_{subset}_{template}` with runs of other characters as `_`."""
  text = dataset + (f"_{subset}_" if subset is not None else "_") + template
  return re.sub(r"[^\w\d\._]+", "_", text)


# ---- templates ------------------------------------------------------------------------------------


def templates_dir(explicit: str | None = None) -> str:
  """PromptSource's templates folder: `explicit`, `data.promptsource_dir` /
  $MTJAX_PROMPTSOURCE_DIR, else the installed promptsource package's (not imported: it pulls
  in a web UI's dependencies)."""
  path = explicit or modules.option("promptsource_dir")
  if not path:
    spec = importlib.util.find_spec("promptsource")
    if spec is not None and spec.submodule_search_locations:
      path = os.path.join(list(spec.submodule_search_locations)[0], "templates")
  if not path or not os.path.isdir(path):
    where = f"{path!r} is not a folder" if path else "no templates folder is set"
    raise errors.MissingError(
        f"the T0 collection needs PromptSource's templates: {where}",
        hint="set data.promptsource_dir (or $MTJAX_PROMPTSOURCE_DIR) to the `templates` folder "
             "of PromptSource v0.1.0, the version T0 used: `git clone --branch v0.1.0 "
             "https://github.com/bigscience-workshop/promptsource` and use its "
             "promptsource/templates, or `pip install promptsource==0.1.0`")
  return path


def _templates_file(root: str, dataset: str, subset: str | None) -> str:
  return os.path.join(root, dataset, *([subset] if subset else []), "templates.yaml")


@functools.lru_cache(maxsize=512)
def load_templates(root: str, dataset: str, subset: str | None) -> tuple[ps.PromptTemplate, ...]:
  """A dataset's templates in PromptSource's `all_template_names` order (sorted by name); ()
  when it has no templates file (T0 then skips the dataset)."""
  path = _templates_file(root, dataset, subset)
  if not os.path.isfile(path):
    return ()
  return tuple(sorted(ps.load(path), key=lambda t: t.name))


# ---- rendering (T0's apply_template) --------------------------------------------------------------


def remove_hyphens(record: Mapping[str, Any]) -> dict[str, Any]:
  """PromptSource's `removeHyphen`: field names with `-` renamed with `_` (Jinja names)."""
  return {k.replace("-", "_"): v for k, v in record.items()}


def apply_template(record: dict, *, template: ps.PromptTemplate) -> dict | None:
  """One training/evaluation example as T0 renders it, or None when T0 drops it."""
  parts, choices = template.parts(remove_hyphens(record))
  if len(parts) != 2 or not parts[0]:
    return None
  return {"inputs": parts[0], "targets": parts[1] or NO_LABEL,
          "answer_choices": list(choices or [])}


def score_eval_rows(record: dict, *, template: ps.PromptTemplate) -> list[dict] | None:
  """The rank-classification rows of one example (T5's `rank_classification`, eval mode, as T0
  applies it): the input once per answer choice, `is_correct = choice == strip(target)`."""
  example = apply_template(record, template=template)
  if example is None or not example["answer_choices"]:
    return None
  target = example["targets"].strip()
  return [{"inputs": example["inputs"], "targets": choice, "is_correct": int(choice == target)}
          for choice in example["answer_choices"]]


def strip_postprocessor(text, example=None, is_target=False):
  """T0's postprocessor for free-text templates: targets carry a leading space when cached."""
  del example, is_target
  return text.strip()


def class_id_postprocessor(text, example=None, is_target=False, *, label_classes=()):
  """T0's postprocessor for fixed-choice templates: the stripped text's index in the choices
  (T5's `string_label_to_class_id`), -1 when it is none of them."""
  del example, is_target
  text = text.strip()
  return label_classes.index(text) if text in label_classes else -1
