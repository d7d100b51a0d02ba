"""Decoder-only and prefix-LM conversion equal SeqIO's converters, padded and packed."""

import numpy as np
import seqio
import tensorflow as tf

from mtjax.data import feature_converters as fc

EXAMPLES = [{"inputs": np.array([7, 8, 5, 1], np.int32), "targets": np.array([3, 9, 1], np.int32)},
            {"inputs": np.array([8, 4, 9, 3, 1], np.int32), "targets": np.array([4, 1], np.int32)}]


def _seqio(converter, keys, lengths, examples=EXAMPLES):
  ds = tf.data.Dataset.from_generator(
      lambda: iter([{k: ex[k] for k in keys} for ex in examples]),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys})
  return list(converter(ds, lengths).as_numpy_iterator())


def _pack(sequences, extra, length):
  """Hand-packs 1-D sequences (and aligned extra features) into one row of `length`."""
  row = {"targets": [], "targets_segment_ids": [], "targets_positions": []}
  row.update({k: [] for k in extra})
  for i, seq in enumerate(sequences, start=1):
    row["targets"] += list(seq["targets"])
    row["targets_segment_ids"] += [i] * len(seq["targets"])
    row["targets_positions"] += list(range(len(seq["targets"])))
    for k in extra:
      row[k] += list(seq[k])
  return {k: fc.pad_to(np.array(v, np.int32), length) for k, v in row.items()}


def _assert_equal(got, want):
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_decoder_only_padded_and_packed_equal_seqio():
  for ex, want in zip(EXAMPLES, _seqio(seqio.LMFeatureConverter(pack=False), ["targets"],
                                       {"targets": 6})):
    _assert_equal(fc.decoder_only({"targets": fc.pad_to(ex["targets"], 6)}, packed=False), want)
  (want,) = _seqio(seqio.LMFeatureConverter(pack=True), ["targets"], {"targets": 6})
  _assert_equal(fc.decoder_only(_pack(EXAMPLES, [], 6), packed=True), want)


def test_prefix_lm_padded_and_packed_equal_seqio():
  lengths = {"inputs": 7, "targets": 8}
  wants = _seqio(seqio.PrefixLMFeatureConverter(pack=False), ["inputs", "targets"], lengths)
  for ex, want in zip(EXAMPLES, wants):
    concat = fc.concat_for_prefix_lm(ex)
    padded = {k: fc.pad_to(v, 15) for k, v in concat.items()}
    _assert_equal(fc.prefix_lm(padded, packed=False), want)
  (want,) = _seqio(seqio.PrefixLMFeatureConverter(pack=True), ["inputs", "targets"], lengths)
  # SeqIO's own docstring example: both examples packed into one row of 15.
  assert list(want["decoder_causal_attention"]) == [1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
  row = _pack([fc.concat_for_prefix_lm(ex) for ex in EXAMPLES], ["inputs_mask"], 15)
  _assert_equal(fc.prefix_lm(row, packed=True), want)
