"""The cache holds exactly what SeqIO's own pipeline produces, and is rebuilt when stale."""

import os

import numpy as np
import seqio

from mtjax.data import cache, pipeline
from mtjax.data.templates import Template


def test_cached_examples_equal_seqio_pipeline(synthetic_cache):
  lengths = {"inputs": 24, "targets": 6}  # short enough that some examples get trimmed
  for name in ("synthetic_sort", "synthetic_compare"):
    task = seqio.get_mixture_or_task(name)
    expected = list(task.get_dataset(lengths, split="validation", shuffle=False)
                    .take(50).as_numpy_iterator())
    manifest = cache.read_manifest(synthetic_cache, name, "validation")
    got = pipeline.read_examples(synthetic_cache, name, "validation", limit=50)
    assert len(got) == len(expected) == 50
    for ours, theirs in zip(got, expected):
      ours = pipeline.post_cache(ours, manifest["post_cache_ops"], manifest["output_features"],
                                 lengths)
      for key in ("inputs", "targets"):
        np.testing.assert_array_equal(ours[key], theirs[key])
      assert ours["targets_pretokenized"] == theirs["targets_pretokenized"].decode()


def test_manifest_records_post_cache_ops_and_counts(synthetic_cache):
  manifest = cache.read_manifest(synthetic_cache, "synthetic_copy", "train")
  assert manifest["post_cache_ops"] == ["append_eos_after_trim"]
  assert manifest["num_examples"] == 4000
  assert manifest["output_features"]["targets"]["eos_id"] == 1


def _one_template_task(name, inputs_template):
  import mtjax.mixtures.synthetic as synthetic
  from mtjax.data.templates import apply_templates
  import functools

  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(functools.partial(synthetic._dataset_fn, task="copy"),
                                      splits=("validation",)),
      preprocessors=[apply_templates([Template("t", inputs_template, "{answer}")]),
                     seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=synthetic.OUTPUT_FEATURES)


def test_changed_task_definition_rebuilds_the_cache(tmp_path):
  task = _one_template_task("test_cache_stale", "Copy: {text}")
  first = cache.cache_task_split(task, "validation", str(tmp_path))
  again = cache.cache_task_split(task, "validation", str(tmp_path))
  assert again["fingerprint"] == first["fingerprint"]
  task = _one_template_task("test_cache_stale", "Please copy: {text}")
  rebuilt = cache.cache_task_split(task, "validation", str(tmp_path))
  assert rebuilt["fingerprint"] != first["fingerprint"]
  example = pipeline.read_examples(str(tmp_path), "test_cache_stale", "validation", limit=1)[0]
  assert example["inputs_pretokenized"].startswith("Please copy: ")
  # No temporary folders are left behind.
  assert sorted(os.listdir(tmp_path / "test_cache_stale")) == ["validation"]


def test_unsupported_post_cache_preprocessor_is_named(tmp_path):
  import mtjax.mixtures.synthetic as synthetic
  import functools
  import pytest

  def my_augment(ds):
    return ds

  seqio.TaskRegistry.remove("test_cache_bad_post")
  task = seqio.TaskRegistry.add(
      "test_cache_bad_post",
      source=seqio.FunctionDataSource(functools.partial(synthetic._dataset_fn, task="copy"),
                                      splits=("validation",)),
      preprocessors=[seqio.CacheDatasetPlaceholder(), my_augment],
      output_features=synthetic.OUTPUT_FEATURES)
  with pytest.raises(ValueError, match="test_cache_bad_post.*my_augment"):
    cache.cache_task_split(task, "validation", str(tmp_path))


def test_records_round_trip_arrays_and_text():
  from mtjax.data import records
  example = {"inputs": np.array([3, 4, 1], np.int32), "text": b"caf\xc3\xa9", "n": np.int64(7),
             "words": np.array([b"a", b"b"]), "mat": np.ones((2, 3), np.float32)}
  back = records.decode(records.encode(example))
  np.testing.assert_array_equal(back["inputs"], example["inputs"])
  assert back["inputs"].dtype == np.int32
  assert back["text"] == "café" and back["words"] == ["a", "b"]
  assert int(back["n"]) == 7 and back["mat"].shape == (2, 3)


def test_trimmed_examples_are_counted_exactly(synthetic_cache):
  from mtjax.data import mixing
  lengths = {"inputs": 30, "targets": 8}
  spec = mixing.read_spec("synthetic", synthetic_cache)
  report = pipeline.report_trimming(spec, synthetic_cache, lengths)
  for task in spec.task_names:
    examples = pipeline.read_examples(synthetic_cache, task, "train")
    for name, length in lengths.items():
      # Tokens plus the EOS that append_eos_after_trim adds must fit.
      want = sum(len(ex[name]) + 1 > length for ex in examples)
      assert report.get(task, {}).get(name, 0) == want, (task, name)
  assert report["synthetic_sort"]["inputs"] > 0  # the long template does get trimmed at 30


def test_unknown_mixture_suggests_close_names():
  import pytest
  from mtjax.data import mixing
  with pytest.raises(ValueError, match="synthetic_copy"):
    mixing.from_seqio("synthetic_cpoy")
