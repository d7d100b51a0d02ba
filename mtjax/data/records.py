"""Serialisation of one example (a flat dict of numpy arrays and strings) to bytes and back.

The cache stores examples in ArrayRecord. We use msgpack instead of tf.train.Example so that
reading the cache never needs TensorFlow.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgpack
import numpy as np

_ND = "__nd__"


def _pack(value: Any) -> Any:
  if isinstance(value, bytes):  # tf.string scalars arrive as bytes: store text as str
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return value
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  array = np.asarray(value)
  if array.dtype.kind in ("S", "O"):  # tf strings arrive as bytes objects
    if array.ndim == 0:
      item = array.item()
      return item.decode("utf-8") if isinstance(item, bytes) else item
    return [x.decode("utf-8") if isinstance(x, bytes) else x for x in array.tolist()]
  return {_ND: [array.dtype.str, list(array.shape), array.tobytes()]}


def _unpack(value: Any) -> Any:
  if isinstance(value, dict) and _ND in value:
    dtype, shape, raw = value[_ND]
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
  return value


def encode(example: Mapping[str, Any]) -> bytes:
  """Encodes a flat feature dict (numpy arrays, scalars, strings) as bytes."""
  return msgpack.packb({k: _pack(v) for k, v in example.items()}, use_bin_type=True)


def decode(record: bytes) -> dict[str, Any]:
  """Inverse of `encode`; arrays come back as read-only numpy views of the record."""
  raw = msgpack.unpackb(record, raw=False)
  return {k: _unpack(v) for k, v in raw.items()}
