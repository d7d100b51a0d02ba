"""PromptSource (P3) template files: load their YAML and render their Jinja2 templates.

A PromptSource template is Jinja2 text where `|||` separates the input from the target, plus an
optional `answer_choices` template (choices separated by `|||`) exposed to the main template as
the list `answer_choices`. Rendering follows PromptSource: each part is stripped; an empty
target (e.g. `label == -1` on test splits) yields "". PromptSource's `choice` helper draws at
random; here it draws from a generator seeded by the example, so caches are reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any, Mapping

import jinja2
import yaml

from mtjax import errors

SEPARATOR = "|||"


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """One PromptSource template; `render(example)` -> inputs, targets, answer_choices."""

  name: str
  jinja: str
  answer_choices: str | None = None
  id: str = ""
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def choices(self, example: Mapping[str, Any]) -> list[str]:
    """The rendered answer choices (empty if the template has none)."""
    if not self.answer_choices:
      return []
    try:
      text = _environment(example).from_string(self.answer_choices).render(**example)
    except jinja2.TemplateError as e:
      raise errors.DataError(f"PromptSource template {self.name!r}, answer_choices: {e}") from e
    return [c.strip() for c in text.split(SEPARATOR)]

  def render(self, example: Mapping[str, Any]) -> dict[str, Any]:
    choices = self.choices(example)
    context = dict(example, answer_choices=choices) if self.answer_choices else dict(example)
    try:
      text = _environment(example).from_string(self.jinja).render(**context)
    except jinja2.TemplateError as e:
      raise errors.DataError(f"PromptSource template {self.name!r}: {e}") from e
    parts = [p.strip() for p in text.split(SEPARATOR)]
    if len(parts) > 2:
      raise errors.DataError(f"PromptSource template {self.name!r} rendered {len(parts)} parts; "
                       f"expected input {SEPARATOR} target")
    return {"inputs": parts[0], "targets": parts[1] if len(parts) == 2 else "",
            "answer_choices": choices}


def _environment(example: Mapping[str, Any]) -> jinja2.Environment:
  seed = hashlib.sha256(json.dumps(example, sort_keys=True, default=str).encode()).digest()
  rng = random.Random(seed)
  env = jinja2.Environment(undefined=jinja2.StrictUndefined)
  env.globals.update(zip=zip, choice=rng.choice)
  return env


class _Loader(yaml.SafeLoader):
  """Reads PromptSource's `!Template` / `!TemplateMetadata` tags as plain mappings."""


for _tag in ("!Template", "!TemplateMetadata"):
  _Loader.add_constructor(_tag, lambda loader, node: loader.construct_mapping(node, deep=True))


def load(path: str) -> list[PromptTemplate]:
  """All templates of a PromptSource `templates.yaml`, in file order."""
  try:
    f = open(path)  # pylint: disable=consider-using-with
  except FileNotFoundError:
    raise errors.MissingError(f"PromptSource template file {path!r} does not exist") from None
  with f:
    try:
      raw = yaml.load(f, Loader=_Loader)  # noqa: S506  (SafeLoader subclass)
    except yaml.YAMLError as e:
      reason = " ".join(str(e).split())  # PyYAML's message spans lines
      raise errors.DataError(f"{path}: not a PromptSource template file: {reason}") from e
  if not isinstance(raw, dict) or "templates" not in raw:
    raise errors.DataError(f"{path}: no 'templates' mapping (is it a PromptSource templates.yaml?)")
  out = []
  for key, t in raw["templates"].items():
    if "jinja" not in t:
      raise errors.DataError(f"{path}: template {key} has no 'jinja' field")
    out.append(PromptTemplate(name=t.get("name", str(key)), jinja=t["jinja"],
                              answer_choices=t.get("answer_choices"), id=t.get("id", str(key)),
                              metadata=dict(t.get("metadata") or {})))
  return out
