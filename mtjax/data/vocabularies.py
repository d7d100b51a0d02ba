"""The default vocabulary of tasks registered for a run.

A file task (`register_file_task`) or a user's SeqIO task can leave its vocabulary to the run:
`vocabularies.default()` is the tokenizer of `data.tokenizer`, else of `model.hf_checkpoint`
when that dir has one, else SeqIO's `ByteVocabulary`. The run makes it the default while it
imports `data.modules` (`defaulting_to`), so a module registering tasks at import time sees the
run's tokenizer; the cache fingerprint names the vocabulary, so switching tokenizers rebuilds.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

_stack: list[Any] = []


def default():
  """The vocabulary tasks registered now should use when they name none."""
  if _stack:
    return _stack[-1]
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio.ByteVocabulary()


@contextlib.contextmanager
def defaulting_to(vocabulary) -> Iterator[None]:
  """`default()` is `vocabulary` inside the block (None: leaves the default as it is)."""
  if vocabulary is None:
    yield
    return
  _stack.append(vocabulary)
  try:
    yield
  finally:
    _stack.pop()


def tokenizer_dir(cfg) -> str:
  """The HF tokenizer dir a run's tasks default to ("" = none): `data.tokenizer`, else
  `model.hf_checkpoint` when it holds tokenizer files."""
  if cfg.data.tokenizer:
    return cfg.data.tokenizer
  if cfg.model.hf_checkpoint:
    from mtjax.data import hf_vocab  # pylint: disable=g-import-not-at-top

    if hf_vocab.has_tokenizer(cfg.model.hf_checkpoint):
      return cfg.model.hf_checkpoint
  return ""


def for_run(cfg):
  """The run's default vocabulary object (None: SeqIO's ByteVocabulary stays the default)."""
  path = tokenizer_dir(cfg)
  if not path:
    return None
  from mtjax.data import hf_vocab  # pylint: disable=g-import-not-at-top

  return hf_vocab.HFVocabulary.from_dir(path)


def check_fits(spec, cache_dir: str, model_vocab_size: int, model_name: str,
               split: str = "train") -> None:
  """Every task's token ids must index the model's embedding table: a task vocabulary larger
  than the table would gather past its end (NaN or garbage at step 1), so it is refused here,
  before the model is built. A smaller vocabulary is fine (unused rows stay untrained)."""
  from mtjax import errors  # pylint: disable=g-import-not-at-top
  from mtjax.data import cache  # pylint: disable=g-import-not-at-top

  for task in spec.task_names:
    manifest = cache.read_manifest(cache_dir, task, split) or {}
    for feature, info in sorted((manifest.get("output_features") or {}).items()):
      size = int(info.get("vocab_size", 0))
      if size > model_vocab_size:
        raise errors.ConfigError(
            f"task {task!r} feature {feature!r}: its vocabulary has {size} ids, but the model "
            f"({model_name}) has {model_vocab_size} embedding rows",
            hint="use the model's own tokenizer (data.tokenizer, or model.hf_checkpoint's), or "
                 "a model whose vocab_size is at least the tokenizer's")
