"""PromptSource (P3) template files: load their YAML and render their Jinja2 templates.

A PromptSource template is Jinja2 text where `|||` separates the input from the target, plus an
optional `answer_choices` template (choices separated by `|||`) exposed to the main template as
the list `answer_choices` (None when the template has none). Rendering follows PromptSource's
`Template.apply` (promptsource/templates.py), so P3-style data made here reads as T0 saw it:

- the Jinja environment registers what PromptSource's does: the `zip` global and the filters
  `highlight`, `choice` and `most_frequent` (plus `choice` as a global function, an mtjax
  spelling kept for templates written against earlier versions);
- every `{{ ... }}` of the main template is truncated to `TEXT_VAR_LENGTH` (2048) characters
  with `| string | truncate(2048)`, as PromptSource's default `truncate=True` does (Jinja's
  `truncate`: a value longer than 2048 + 5 characters is cut at the last word boundary before
  2045 and ends with "..."); the `answer_choices` template is not truncated;
- a `|||` inside a record's string value is protected while rendering, so only the template's
  own separators split input from target;
- each part is stripped; an empty target (e.g. `label == -1` on test splits) yields "".

Two deliberate differences: PromptSource's `choice` draws from the process-global `random`;
here it draws from a generator seeded by the example (one stream per render, answer choices
first), so caches are reproducible. And an undefined variable is an error naming it (Jinja's
StrictUndefined) instead of silently rendering "", so a misspelled column cannot empty prompts.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import random
import re
from typing import Any, Mapping

import jinja2
import yaml

from mtjax import errors

SEPARATOR = "|||"
# PromptSource's per-expression truncation, in characters (its comment: ~300 words).
TEXT_VAR_LENGTH = 2048
# Stands in for a "|||" inside a record value while rendering (private-use code points: never
# in real text, and without "|" so it cannot split).
_PIPE = "\ue000mtjax-pipe\ue000"
_RNG = "__mtjax_rng__"  # the per-example generator, passed to `choice` in the render context
_EXPRESSION_END = re.compile(r"(-?)\}\}")  # "}}" and "-}}" (whitespace control)


def highlight(value: Any) -> str:
  """PromptSource's `highlight` filter: the value wrapped in the colored <span> its web UI
  shows. PromptSource's training rendering never adds it (`apply(highlight_variables=False)`);
  a template that applies it explicitly gets the markup, as there."""
  return "<span style='color: #F08080'>" + str(value) + "</span>"


@jinja2.pass_context
def choice(context, items):
  """PromptSource's `choice` (filter and, here, also a global): one item drawn at random, from
  the example's seeded generator."""
  rng = context.get(_RNG)
  return (rng or random).choice(items)


def most_frequent(items):
  """PromptSource's `most_frequent` filter: the list of the items that occur most often (ties
  in first-seen order); None for an empty input (rendered "None", as there)."""
  if not items:
    return None
  counts = collections.Counter(items).most_common()
  return [item for item, n in counts if n == counts[0][1]]


def _make_environment() -> jinja2.Environment:
  env = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined)
  env.globals.update(zip=zip, choice=choice)
  env.filters.update(highlight=highlight, choice=choice, most_frequent=most_frequent)
  return env


ENVIRONMENT = _make_environment()


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
  """Templates compile once per process, not once per example (T0 mixtures have millions)."""
  return ENVIRONMENT.from_string(source)


@functools.lru_cache(maxsize=256)
def _plain_choices(text: str) -> list[str]:
  return [c.strip() for c in text.split(SEPARATOR)]


@functools.lru_cache(maxsize=4096)
def truncated(jinja: str, length: int) -> str:
  """PromptSource's truncation rewrite: every `}}` becomes `| string | truncate(length) }}`.

  Like PromptSource it is textual, so the filters bind to the expression's last term (`{{ a +
  b }}` truncates `b`). Unlike it, `-}}` keeps its whitespace control instead of breaking.
  """
  return _EXPRESSION_END.sub(lambda m: f" | string | truncate({length}) {m.group(1)}}}}}", jinja)


def example_rng(example: Mapping[str, Any]) -> random.Random:
  """The generator `choice` draws from: seeded by the example's content."""
  seed = hashlib.sha256(json.dumps(example, sort_keys=True, default=str).encode()).digest()
  return random.Random(seed)


class _LazyRng:
  """`example_rng(example)`, made on the first draw: most templates never draw, and seeding
  hashes the whole example (a quarter of a plain template's rendering time)."""

  __slots__ = ("_example", "_rng")

  def __init__(self, example: Mapping[str, Any]):
    self._example, self._rng = example, None

  def choice(self, items):
    if self._rng is None:
      self._rng = example_rng(self._example)
    return self._rng.choice(items)


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """One PromptSource template; `render(example)` -> inputs, targets, answer_choices.

  `truncate`: the per-expression character limit (PromptSource's 2048); None renders the values
  whole. It is part of the template, so it is part of a cached task's fingerprint.
  """

  name: str
  jinja: str
  answer_choices: str | None = None
  id: str = ""
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  truncate: int | None = TEXT_VAR_LENGTH

  def _render(self, source: str, context: Mapping[str, Any], what: str) -> str:
    try:
      return _compile(source).render(**context)
    except errors.UserError:
      raise
    except Exception as e:  # the template's own code: undefined names, bad indexes, types
      raise errors.DataError(f"PromptSource template {self.name!r}{what}: "
                             f"{type(e).__name__}: {e}") from None

  def _choices(self, protected: Mapping[str, Any], rng) -> list[str] | None:
    if not self.answer_choices:
      return None
    if "{" not in self.answer_choices:  # plain text: what rendering it gives (and no draw)
      return list(_plain_choices(self.answer_choices))
    text = self._render(self.answer_choices, dict(protected, **{_RNG: rng}), ", answer_choices")
    return [c.strip().replace(_PIPE, SEPARATOR) for c in text.split(SEPARATOR)]

  def choices(self, example: Mapping[str, Any]) -> list[str]:
    """The rendered answer choices (empty if the template has none)."""
    return self._choices(_protect(example), example_rng(example)) or []

  def parts(self, example: Mapping[str, Any]) -> tuple[list[str], list[str] | None]:
    """(the rendered text split at the template's `|||`, each part stripped; the answer
    choices or None), as PromptSource's `Template.apply` and `get_answer_choices_list`: one
    part when the render has no separator (T0 drops such examples), more than two when a
    template splits wrongly."""
    if "answer_choices" in example:
      raise errors.DataError(
          f"PromptSource template {self.name!r}: the record has a field 'answer_choices', a name "
          "PromptSource reserves for the template's choices (rename it, e.g. with map_record)")
    protected = _protect(example)
    rng = _LazyRng(example)
    choices = self._choices(protected, rng)
    source = truncated(self.jinja, self.truncate) if self.truncate else self.jinja
    text = self._render(source, dict(protected, answer_choices=choices, **{_RNG: rng}), "")
    return [p.replace(_PIPE, SEPARATOR).strip() for p in text.split(SEPARATOR)], choices

  def fixed_choices(self) -> list[str] | None:
    """The answer choices when they do not depend on the example (no Jinja in them), as
    PromptSource's `get_fixed_answer_choices_list`; else None."""
    if not self.answer_choices or "{{" in self.answer_choices or "{%" in self.answer_choices:
      return None
    return [c.strip() for c in self.answer_choices.split(SEPARATOR)]

  def render(self, example: Mapping[str, Any]) -> dict[str, Any]:
    parts, choices = self.parts(example)
    if len(parts) > 2:
      raise errors.DataError(f"PromptSource template {self.name!r} rendered {len(parts)} parts; "
                             f"expected input {SEPARATOR} target")
    return {"inputs": parts[0], "targets": parts[1] if len(parts) == 2 else "",
            "answer_choices": choices or []}


def _protect(example: Mapping[str, Any]) -> dict[str, Any]:
  return {k: v.replace(SEPARATOR, _PIPE) if isinstance(v, str) else v for k, v in example.items()}


class _Loader(yaml.SafeLoader):
  """Reads PromptSource's `!Template` / `!TemplateMetadata` tags as plain mappings."""


for _tag in ("!Template", "!TemplateMetadata"):
  _Loader.add_constructor(_tag, lambda loader, node: loader.construct_mapping(node, deep=True))


def load(path: str, truncate: int | None = TEXT_VAR_LENGTH) -> list[PromptTemplate]:
  """All templates of a PromptSource `templates.yaml`, in file order.

  `truncate`: PromptSource's per-expression limit (2048 characters); None turns it off.
  """
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
  if truncate is not None and (not isinstance(truncate, int) or truncate < 3):
    raise errors.DataError(f"{path}: truncate={truncate!r}; give a length of at least 3 "
                           "characters (room for the '...'), or None for no truncation")
  out = []
  for key, t in raw["templates"].items():
    if "jinja" not in t:
      raise errors.DataError(f"{path}: template {key} has no 'jinja' field")
    choices = t.get("answer_choices")
    if isinstance(choices, list):  # early PromptSource files listed the choices in YAML
      choices = f" {SEPARATOR} ".join(str(c) for c in choices)
    out.append(PromptTemplate(name=t.get("name", str(key)), jinja=t["jinja"],
                              answer_choices=choices, id=t.get("id", str(key)),
                              metadata=dict(t.get("metadata") or {}), truncate=truncate))
  return out
