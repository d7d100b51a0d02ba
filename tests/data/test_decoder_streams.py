"""Decoder-only and prefix-LM streams: unpacked rows equal SeqIO's converters token for token;
packed segments unpack to those rows."""

import numpy as np
import pytest
import seqio

from mtjax.data import eval_data, mixing, pipeline

LENGTHS = {"inputs": 32, "targets": 16}
TASK = "synthetic_add"  # short examples: several per packed row
SPEC = mixing.MixtureSpec("add_only", (mixing.TaskRate(TASK, 1.0),))


@pytest.fixture(scope="module")
def seqio_prefix_lm(synthetic_cache):
  """SeqIO's decoder-only output for the validation split, in order (inputs: prefix LM)."""
  ds = seqio.get_dataset(TASK, LENGTHS, seqio.DecoderFeatureConverter(pack=False),
                         dataset_split="validation", shuffle=False)
  return list(ds.as_numpy_iterator())


def _without_causal(row):
  return {k: v for k, v in row.items() if k != "decoder_causal_attention"}


@pytest.mark.parametrize("kind", ["prefix_lm", "decoder_only"])
def test_unpacked_decoder_rows_equal_seqio(synthetic_cache, seqio_prefix_lm, kind):
  want_rows = seqio_prefix_lm if kind == "prefix_lm" else [_without_causal(w)
                                                           for w in seqio_prefix_lm]
  got = [{k: v[r] for k, v in b.features.items()}
         for b in eval_data.task_batches(synthetic_cache, TASK, "validation", LENGTHS, 50,
                                         feature_converter=kind)
         for r in range(50)]
  assert len(got) == len(want_rows) == 200
  for g, w in zip(got, want_rows):
    assert set(g) == set(w) | {"task_ids"}
    for k, v in w.items():
      np.testing.assert_array_equal(g[k], v, err_msg=k)
  # The training stream (padded, shuffled) yields the same rows.
  opts = pipeline.PipelineOptions(LENGTHS, batch_size=8, pack=False, feature_converter=kind,
                                  prefetch=0)
  batch = next(iter(pipeline.train_batches(SPEC, synthetic_cache, opts, split="validation")))
  by_tokens = {tuple(w["decoder_target_tokens"]): w for w in want_rows}
  for r in range(8):
    want = by_tokens[tuple(batch["decoder_target_tokens"][r])]
    for k, v in want.items():
      np.testing.assert_array_equal(batch[k][r], v, err_msg=k)


@pytest.mark.parametrize("packer", ["window", "best_fit"])
def test_packed_prefix_lm_segments_unpack_to_seqio_rows(synthetic_cache, seqio_prefix_lm,
                                                        packer):
  by_tokens = {}
  for w in seqio_prefix_lm:
    n = int((w["decoder_target_tokens"] > 0).sum())
    by_tokens[tuple(w["decoder_target_tokens"][:n])] = {k: v[:n] for k, v in w.items()}
  opts = pipeline.PipelineOptions(LENGTHS, batch_size=4, pack=True, packer=packer,
                                  packing_bins=64 if packer == "window" else 0,
                                  feature_converter="prefix_lm", prefetch=0)
  batch = next(iter(pipeline.train_batches(SPEC, synthetic_cache, opts, split="validation")))
  assert batch["decoder_target_tokens"].shape == (4, 48)
  segments = 0
  for r in range(4):
    seg = batch["decoder_segment_ids"][r]
    for s in range(1, seg.max() + 1):
      at = seg == s
      want = by_tokens[tuple(batch["decoder_target_tokens"][r][at])]
      for k in ("decoder_input_tokens", "decoder_loss_weights", "decoder_causal_attention"):
        np.testing.assert_array_equal(batch[k][r][at], want[k], err_msg=k)
      np.testing.assert_array_equal(batch["decoder_positions"][r][at], np.arange(at.sum()))
      assert (batch["task_ids"][r][at] == 0).all()
      segments += 1
  assert segments > 4
