"""Decoder-only and prefix-LM streams: unpacked rows equal SeqIO's converters token for token;
packed segments unpack to those rows."""

import numpy as np
import pytest
import seqio

from mtjax.data import cache, eval_data, mixing, pipeline

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


def _lm_source(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  import tensorflow as tf

  return tf.data.Dataset.from_tensor_slices(
      {"targets": [f"document {i} " + "ab" * (i % 9) for i in range(30)]})


def test_targets_only_lm_task_equals_seqio_lm_converter(tmp_path):
  """A SeqIO LM task (no `inputs`): decoder_only rows equal LMFeatureConverter's; packed too."""
  seqio.TaskRegistry.remove("test_lm_only")
  seqio.TaskRegistry.add(
      "test_lm_only", source=seqio.FunctionDataSource(_lm_source, splits=("train",)),
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)})
  cache_dir = str(tmp_path)
  cache.cache_task_split(seqio.get_mixture_or_task("test_lm_only"), "train", cache_dir)
  want = list(seqio.get_dataset("test_lm_only", {"targets": 24},
                                seqio.DecoderFeatureConverter(pack=False),
                                shuffle=False).as_numpy_iterator())
  lengths = {"inputs": 0, "targets": 24}
  (batch,) = eval_data.task_batches(cache_dir, "test_lm_only", "train", lengths, 30,
                                    feature_converter="decoder_only")
  for r, w in enumerate(want):
    for k, v in w.items():
      np.testing.assert_array_equal(batch.features[k][r], v, err_msg=k)
  spec = mixing.MixtureSpec("lm", (mixing.TaskRate("test_lm_only", 1.0),))
  opts = pipeline.PipelineOptions(lengths, batch_size=2, packing_bins=32,
                                  feature_converter="decoder_only", prefetch=0)
  packed = next(iter(pipeline.train_batches(spec, cache_dir, opts)))
  rows = {tuple(w["decoder_target_tokens"][w["decoder_target_tokens"] > 0]): w for w in want}
  for r in range(2):
    seg = packed["decoder_segment_ids"][r]
    for s in range(1, seg.max() + 1):
      w = rows[tuple(packed["decoder_target_tokens"][r][seg == s])]
      n = int((seg == s).sum())
      np.testing.assert_array_equal(packed["decoder_input_tokens"][r][seg == s],
                                    w["decoder_input_tokens"][:n])
      assert packed["decoder_loss_weights"][r][seg == s].all()
