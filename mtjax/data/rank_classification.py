"""Rank classification as T5 defines it (`t5.data.preprocessors.rank_classification`).

SeqIO 0.0.x does not ship this preprocessor and `t5` is a heavy dependency, so this is a
re-implementation with the same output: each input example becomes one row per answer choice,

    {"idx": [example_index, choice_index], "inputs": ..., "targets": <choice>,
     "is_correct": bool, "weight": float (if weight_fn)}

in `eval` mode (all choices, in order), only the correct rows in `train` mode, and one row per
example holding all its choices in `fewshot_eval` mode. `example_index` is the position in the
dataset this preprocessor sees, as in T5. Use it before `seqio.CacheDatasetPlaceholder()`; the
cache then holds the expanded rows and evaluation scores each row's targets.
"""

from __future__ import annotations

from typing import Callable, Sequence

MODES = ("train", "eval", "fewshot_eval")


def rank_classification(ds, inputs_fn: Callable, targets_fn: Callable, is_correct_fn: Callable,
                        weight_fn: Callable | None = None, mode: str = "eval",
                        passthrough_feature_keys: Sequence[str] | None = None):
  """tf.data preprocessor: expands each example into its (inputs, choice) rows."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (cache-time only)

  if mode not in MODES:
    raise ValueError(f"rank_classification mode must be one of {MODES}, got {mode!r}")

  def expand(index, ex):
    inputs, targets = inputs_fn(ex), targets_fn(ex)
    is_correct = tf.cast(is_correct_fn(ex), tf.bool)
    tf.debugging.assert_equal(
        tf.size(is_correct), [tf.size(inputs), tf.size(targets)],
        "inputs_fn, targets_fn and is_correct_fn must return tensors of the same size")
    n = tf.size(is_correct)
    out = {"idx": tf.stack([tf.fill([n], tf.cast(index, tf.int32)), tf.range(n)], axis=1),
           "inputs": inputs, "targets": targets, "is_correct": is_correct}
    for key in passthrough_feature_keys or ():
      value = tf.expand_dims(ex[key], 0)
      out[key] = tf.tile(value, tf.concat([[n], tf.ones([tf.rank(ex[key])], tf.int32)], 0))
    if weight_fn is not None:
      out["weight"] = tf.cast(tf.fill(tf.shape(is_correct), weight_fn(ex)), tf.float32)
    return out

  ds = ds.enumerate().map(expand, num_parallel_calls=tf.data.AUTOTUNE)
  if mode != "fewshot_eval":
    ds = ds.unbatch()
  if mode == "train":
    ds = ds.filter(lambda ex: ex["is_correct"])
  return ds
