"""Eval batches: cache order, each example once, features equal SeqIO's unpacked output."""

import numpy as np
import pytest
import seqio

from mtjax.data import eval_data

LENGTHS = {"inputs": 64, "targets": 16}
TASK = "synthetic_copy"


@pytest.fixture(scope="module")
def seqio_encdec(synthetic_cache):
  ds = seqio.get_dataset(TASK, LENGTHS, seqio.EncDecFeatureConverter(pack=False),
                         dataset_split="validation", shuffle=False)
  return list(ds.as_numpy_iterator())


def test_eval_batches_equal_seqio_in_order_with_the_original_examples(synthetic_cache,
                                                                     seqio_encdec):
  batches = list(eval_data.task_batches(synthetic_cache, TASK, "validation", LENGTHS,
                                        batch_size=64, task_id=3))
  assert [int(b.mask.sum()) for b in batches] == [64, 64, 64, 8]
  rows = [{k: v[r] for k, v in b.features.items()} for b in batches for r in np.where(b.mask)[0]]
  assert len(rows) == len(seqio_encdec) == 200
  for got, want in zip(rows, seqio_encdec):
    for k, v in want.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert (got["task_ids"][got["decoder_target_tokens"] > 0] == 3).all()
  # Padding rows are empty; examples carry the strings for postprocessors and metrics.
  last = batches[-1]
  assert not last.features["encoder_input_tokens"][~last.mask].any()
  assert len(last.examples) == 8 and list(last.indices) == list(range(192, 200))
  ex = batches[0].examples[0]
  vocab = seqio.ByteVocabulary()
  assert ex["inputs_pretokenized"].startswith("Copy the text: ")
  assert vocab.decode(list(seqio_encdec[0]["encoder_input_tokens"])) == ex["inputs_pretokenized"]
  assert ex["targets_pretokenized"] == ex["text"]  # raw fields are kept too
  assert ex["idx"] == 0


def test_eval_shards_cover_the_split_once_and_limit(synthetic_cache):
  seen = []
  for h in range(3):
    for b in eval_data.task_batches(synthetic_cache, TASK, "validation", LENGTHS, batch_size=16,
                                    shard_index=h, num_shards=3, limit=50):
      seen += list(b.indices)
  assert sorted(seen) == list(range(50))
  both = eval_data.mixture_batches(["synthetic_copy", "synthetic_add"], synthetic_cache,
                                   "validation", LENGTHS, 8, limit=8)
  add = next(both["synthetic_add"])
  assert (add.features["task_ids"][add.features["decoder_target_tokens"] > 0] == 1).all()
  assert add.examples[0]["targets_pretokenized"] == add.examples[0]["answer"]
