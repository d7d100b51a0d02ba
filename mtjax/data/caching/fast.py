"""The TF-free path: a block of a source's rows rendered and tokenized in Python/numpy.

mtjax's own sources (file tasks, Hugging Face datasets, the collections) render their examples in
Python anyway; SeqIO then turns them into a `tf.data` pipeline only to run
`seqio.preprocessors.tokenize` one example at a time. Here the same examples are tokenized in
batches (SentencePiece's and `tokenizers`' batch encoders) and given the types and the key order
that the SeqIO path's records carry (`file_tasks.to_dataset` then `tokenize`), so the records are
the same bytes (tests/data/test_cache_build.py compares the two).

A source offers this path by giving its SeqIO dataset function a `rows` attribute with:

  num_rows(split) -> int                      rows the blocks are cut from
  seekable(split) -> bool                     whether a block can start anywhere cheaply
  block(split, start, stop) -> (examples, prepared, auto_idx)

`examples` are the rendered example dicts of rows [start, stop) in order; `prepared` the number of
rows that gave examples; `auto_idx` the positions whose `idx` counts examples from the block's
start (the assembler adds the examples of earlier blocks), or "all".

Which tasks qualify is decided by `mtjax.data.cache` (a `rows` source, `tokenize` as the only
pre-cache preprocessor, a vocabulary with an encoder here); this module needs no SeqIO.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A vocabulary's batch encoder, picklable without SeqIO (so worker processes skip TF).

  kind "sp": a SentencePiece model proto (SeqIO's, with its extra ids); "byte": UTF-8 bytes plus
  `offset`; "hf": an `mtjax.data.hf_vocab.HFVocabulary`."""

  kind: str
  model: Any = None
  offset: int = 0

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    if self.kind == "byte":
      return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + self.offset
              for t in texts]
    if self.kind == "sp":
      ids = _sp_processor(self.model).encode(list(texts), num_threads=1)
    else:
      ids = self.model.encode_batch(list(texts))
    return [np.asarray(row, np.int32) for row in ids]


_SP: dict[int, Any] = {}


def _sp_processor(proto: bytes):
  key = hash(proto)
  if key not in _SP:
    import sentencepiece  # pylint: disable=g-import-not-at-top

    _SP[key] = sentencepiece.SentencePieceProcessor(model_proto=proto)
  return _SP[key]


def encoder_for(vocab) -> Encoder | None:
  """The batch encoder equal to `vocab.encode_tf` for SeqIO's SentencePiece and byte
  vocabularies and mtjax's HF vocabulary; None for any other (those keep the SeqIO path)."""
  kind = type(vocab).__name__
  if kind == "HFVocabulary" and hasattr(vocab, "encode_batch"):
    return Encoder("hf", vocab)
  if kind == "SentencePieceVocabulary" and type(vocab).__module__.startswith("seqio"):
    return Encoder("sp", vocab.sp_model)
  if kind == "ByteVocabulary" and type(vocab).__module__.startswith("seqio"):
    return Encoder("byte", offset=int(vocab._num_special_tokens))  # pylint: disable=protected-access
  return None


class NotFast(ValueError):
  """A value the TF-free path cannot type as the SeqIO path would."""


def _typed(key: str, value: Any) -> Any:
  """A rendered value as `file_tasks.to_dataset` types it (and the record stores it)."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    if key == "answer_choices":  # tf.string, ragged: an object array (stored as a list)
      array = np.empty(len(value), object)
      array[:] = [str(v) for v in value]
      return array
    return np.asarray(value, np.int32)
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return np.asarray(value, np.int64 if key == "idx" else np.int32)
  raise NotFast(f"field {key!r} of type {type(value).__name__}")


def tokenized(examples: Sequence[Mapping[str, Any]],
              encoders: Mapping[str, Encoder]) -> list[dict[str, Any]]:
  """The examples as `seqio.preprocessors.tokenize` leaves them: each output feature's text as
  `<name>_pretokenized` followed by its ids, other fields unchanged, in the examples' key order."""
  ids = {}
  for name, enc in encoders.items():
    texts = [ex[name] for ex in examples if name in ex]
    if any(not isinstance(t, str) for t in texts):
      raise NotFast(f"feature {name!r} is not a string")
    ids[name] = iter(enc.encode(texts))
  out = []
  for ex in examples:
    row = {}
    for key, value in ex.items():
      if key in encoders:
        row[f"{key}_pretokenized"] = value
        row[key] = next(ids[key])
      else:
        row[key] = _typed(key, value)
    out.append(row)
  return out
