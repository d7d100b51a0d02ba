"""Task registration that a fast start-up put off (`mtjax.data.startup`), run when first needed.

A run whose mixture is cached, with task definitions unchanged since the cache was built, starts
without importing its `data.modules` (and with them SeqIO and TensorFlow): training reads the
cache only. Whatever needs the SeqIO tasks themselves afterwards (evaluation's postprocessors and
metrics, k-shot variants, another mixture's cache) calls `ensure_registered()` first, which
registers them then, exactly as the start-up would have. Until then `recorded_vocabulary` gives
what the start-up record kept of a task's vocabulary (its ids and size), for the export metadata
written when a run starts (`mtjax.models.hf_meta`).

This module imports nothing of mtjax: every data module may use it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping

_lock = threading.RLock()
_pending: list[Callable[[], None]] = []
_vocabularies: dict[str, dict[str, dict[str, Any]]] = {}


def defer(register: Callable[[], None],
          vocabularies: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> None:
  """Puts off `register()` (which registers the run's tasks) until `ensure_registered`.
  `vocabularies`: {task: {feature: facts}} as the start-up record holds them."""
  with _lock:
    _pending.append(register)
    _vocabularies.update({t: {f: dict(v) for f, v in fs.items()}
                          for t, fs in (vocabularies or {}).items()})


def deferred() -> bool:
  """Whether a registration is still put off (the tasks are not registered in SeqIO yet)."""
  return bool(_pending)


def ensure_registered() -> None:
  """Runs the registrations put off by a fast start-up (none: nothing to do, and nothing is
  imported). Call before looking up a run's tasks in SeqIO."""
  with _lock:
    while _pending:
      register = _pending.pop(0)  # first: a lookup during the registration does not rerun it
      try:
        register()
      except BaseException:
        _pending.insert(0, register)
        raise
    _vocabularies.clear()


class RecordedVocabulary:
  """A vocabulary's ids and size as the start-up record kept them (`startup.vocabulary_facts`):
  what reading them needs, without building the vocabulary (and importing SeqIO). Attributes the
  original had not are missing here too."""

  def __init__(self, facts: Mapping[str, Any]):
    self._facts = dict(facts)

  @property
  def recorded_name(self) -> str:
    """The class name of the vocabulary it stands for."""
    return self._facts["name"]

  def __getattr__(self, name: str):
    facts = self.__dict__.get("_facts", {})
    if name in facts.get("attrs", {}):
      value = facts["attrs"][name]
      return tuple(value) if isinstance(value, list) else value
    if name == "files" and facts.get("has_files"):
      return {}
    raise AttributeError(name)


def recorded_vocabulary(task: str, feature: str = "targets") -> RecordedVocabulary | None:
  """The recorded vocabulary of a task's feature while its registration is put off; None when
  the tasks are registered (look them up in SeqIO) or the record has none for it."""
  with _lock:
    if not _pending:
      return None
    facts = _vocabularies.get(task, {}).get(feature)
  return RecordedVocabulary(facts) if facts else None
