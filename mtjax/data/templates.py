"""Prompt templates: turn a task's raw fields into `inputs` / `targets` text.

A template is two format strings with `{field}` placeholders. The same parsed template renders
plain Python strings (for evaluation and few-shot prompts) and TensorFlow string tensors (as a
SeqIO preprocessor, at cache time). A task may carry several templates (T0 / FLAN style); each
example gets one, chosen deterministically from its index so the cache is reproducible.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Any, Callable, Mapping, Sequence

from mtjax import errors


def _parse(fmt: str) -> list[tuple[str, str | None]]:
  """Splits a format string into (literal, field-or-None) parts; rejects format specs."""
  parts = []
  for literal, field, spec, conversion in string.Formatter().parse(fmt):
    if spec or conversion:
      raise errors.DataError(f"template {fmt!r}: format specs/conversions are not supported "
                             f"({field})")
    if field is not None and not field.isidentifier():
      raise errors.DataError(f"template {fmt!r}: placeholder {{{field}}} must be a plain field "
                             "name")
    parts.append((literal, field))
  return parts


@dataclasses.dataclass(frozen=True)
class Template:
  """One prompt: `inputs` and `targets` format strings over the raw example fields."""

  name: str
  inputs: str
  targets: str

  def __post_init__(self):
    _parse(self.inputs)
    _parse(self.targets)

  @property
  def fields(self) -> tuple[str, ...]:
    names = [f for fmt in (self.inputs, self.targets) for _, f in _parse(fmt) if f]
    return tuple(dict.fromkeys(names))

  def render(self, example: Mapping[str, Any]) -> dict[str, str]:
    """Renders plain strings; missing fields raise a KeyError naming the template."""
    missing = [f for f in self.fields if f not in example]
    if missing:
      raise KeyError(f"template {self.name!r} needs fields {missing}; example has {sorted(example)}")
    values = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in example.items()}
    return {"inputs": self.inputs.format(**values), "targets": self.targets.format(**values)}

  def render_tf(self, example: Mapping[str, Any]) -> dict[str, Any]:
    """Renders scalar tf.string tensors (used inside tf.data at cache time)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (cache-time only)

    def join(fmt):
      pieces = []
      for literal, field in _parse(fmt):
        if literal:
          pieces.append(tf.constant(literal))
        if field:
          value = example[field]
          pieces.append(value if value.dtype == tf.string else tf.strings.as_string(value))
      return tf.strings.join(pieces) if pieces else tf.constant("")

    return {"inputs": join(self.inputs), "targets": join(self.targets)}


def apply_templates(templates: Sequence[Template], index_field: str = "idx") -> Callable:
  """A SeqIO preprocessor: example `i` gets template `i % len(templates)`.

  Adds `inputs`, `targets` (strings) and `template_id` (int32); keeps the raw fields.
  """
  if not templates:
    raise errors.DataError("apply_templates needs at least one template")
  templates = tuple(templates)

  def preprocess(dataset):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    # Checked here, not inside the traced map (tf.data would turn the error into a staging error).
    have = sorted(dataset.element_spec) if isinstance(dataset.element_spec, Mapping) else []
    for t in templates:
      missing = [f for f in t.fields if f not in have]
      if missing:
        raise errors.DataError(f"template {t.name!r} needs fields {missing}; the examples have "
                               f"{have}")
    if index_field not in have:
      raise errors.DataError(f"apply_templates picks a template by the field {index_field!r}; "
                             f"the examples have {have}")

    def fn(ex):
      rendered = [t.render_tf(ex) for t in templates]
      choice = tf.cast(ex[index_field] % len(templates), tf.int32)
      out = dict(ex)
      for key in ("inputs", "targets"):
        out[key] = tf.gather(tf.stack([r[key] for r in rendered]), choice)
      out["template_id"] = choice
      return out

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  preprocess.__name__ = "apply_templates"
  preprocess.__qualname__ = "apply_templates"
  preprocess.templates = templates  # read by the cache fingerprint
  return preprocess
