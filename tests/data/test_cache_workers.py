"""Caching with several processes gives the same cache as one; bad input gets clear errors."""

import os

import numpy as np
import pytest
import seqio

from mtjax.data import cache, file_tasks, mixing, pipeline
from mtjax.data.templates import Template


def _cache_contents(cache_dir, task, split):
  manifest = cache.read_manifest(cache_dir, task, split)
  folder = cache.split_dir(cache_dir, task, split)
  arrays = {name: np.load(os.path.join(folder, f)) for name in manifest["token_arrays"]
            for f in manifest["token_arrays"][name].values()}
  source = pipeline.task_source(cache_dir, task, split)
  return manifest, arrays, [source[i] for i in range(len(source))]


def test_one_and_two_worker_processes_write_the_same_cache(tmp_path):
  import mtjax.mixtures.synthetic  # noqa: F401  (registers the task)

  task = seqio.get_mixture_or_task("synthetic_copy")
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  cache.cache_task_split(task, "validation", one, num_shards=2)
  cache.cache_task_split(task, "validation", two, num_shards=2, num_workers=2, block_size=64)
  m1, a1, r1 = _cache_contents(one, task.name, "validation")
  m2, a2, r2 = _cache_contents(two, task.name, "validation")
  assert m1 == m2 and len(r1) == 200
  assert r1 == r2
  for name in a1:
    np.testing.assert_array_equal(a1[name], a2[name], err_msg=name)
  assert not [f for f in os.listdir(cache.split_dir(two, task.name, "validation"))
              if f.startswith(".block")]


def test_malformed_lines_are_skipped_and_counted_when_asked(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text('{"q": "a", "a": "b"}\n{broken\n[1, 2]\n{"q": "c", "a": "d"}\n')
  template = Template("qa", "{q}", "{a}")
  with pytest.raises(ValueError, match=r"train.jsonl:2: invalid JSON"):
    file_tasks.register_file_task("test_skip", {"train": str(path)}, [template])
  task = file_tasks.register_file_task("test_skip", {"train": str(path)}, [template],
                                       skip_malformed=True)
  manifest = cache.cache_task_split(task, "train", str(tmp_path / "c"))
  assert manifest["num_examples"] == 2
  assert manifest["skipped_records"]["count"] == 2
  assert manifest["skipped_records"]["first"][0].endswith("train.jsonl:2: invalid JSON "
                                                          "(Expecting property name enclosed in "
                                                          "double quotes at column 2)")
  assert "expected a JSON object" in manifest["skipped_records"]["first"][1]
  csv = tmp_path / "bad.csv"
  csv.write_text("q,a\nx,y\nonly_one\n")
  task = file_tasks.register_file_task("test_skip_csv", {"train": str(csv)}, [template],
                                       skip_malformed=True)
  manifest = cache.cache_task_split(task, "train", str(tmp_path / "c"))
  assert (manifest["num_examples"], manifest["skipped_records"]["count"]) == (1, 1)


def test_empty_split_is_named(tmp_path):
  empty, ok = tmp_path / "empty.jsonl", tmp_path / "ok.jsonl"
  empty.write_text("\n")
  ok.write_text('{"q": "a", "a": "b"}\n')
  with pytest.raises(ValueError, match=r"task 'test_empty' split 'validation' is empty"):
    file_tasks.register_file_task(
        "test_empty", {"train": str(ok), "validation": str(empty)},
        [Template("t", "{q}", "{a}")])
  # A source whose preprocessors drop every example.
  import tensorflow as tf

  seqio.TaskRegistry.remove("test_all_filtered")
  task = seqio.TaskRegistry.add(
      "test_all_filtered",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["a", "b"], "targets": ["c", "d"]}), splits=("train",)),
      preprocessors=[lambda ds: ds.filter(lambda ex: False), seqio.preprocessors.tokenize],
      output_features={k: seqio.Feature(seqio.ByteVocabulary()) for k in ("inputs", "targets")})
  with pytest.raises(ValueError, match=r"task 'test_all_filtered' split 'train' is empty"):
    cache.cache_task_split(task, "train", str(tmp_path / "c"))


def test_missing_vocabulary_is_named(tmp_path):
  seqio.TaskRegistry.remove("test_no_vocab")
  vocab = seqio.SentencePieceVocabulary(str(tmp_path / "nope.model"))
  task = seqio.TaskRegistry.add(
      "test_no_vocab",
      source=seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: None,
                                      splits=("train",)),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={k: seqio.Feature(vocab) for k in ("inputs", "targets")})
  with pytest.raises(FileNotFoundError, match=r"test_no_vocab.*'inputs'.*nope.model"):
    cache.cache_task_split(task, "train", str(tmp_path / "c"))


def test_unknown_task_suggests_close_names(synthetic_cache):
  import mtjax.mixtures.synthetic  # noqa: F401

  with pytest.raises(ValueError, match=r"Did you mean 'synthetic_sort'"):
    mixing.from_seqio("synthetic_srot")
  with pytest.raises(ValueError, match="no split 'test'"):
    cache.cache_task_split(seqio.get_mixture_or_task("synthetic_sort"), "test", "/nonexistent")
  with pytest.raises(FileNotFoundError, match=r"Cached close matches: synthetic_sort/validation"):
    pipeline.TokenSource(synthetic_cache, "synthetic_srot", "validation")
