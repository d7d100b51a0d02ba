"""Other SeqIO sources (text lines, TFRecord tf.Examples, a function) and T5's rank
classification go through the cache unchanged: cached and streamed features equal SeqIO's."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mtjax.data import cache, eval_data, mixing, pipeline
from mtjax.data.rank_classification import rank_classification

LENGTHS = {"inputs": 24, "targets": 8}
VOCAB = seqio.ByteVocabulary()
FEATURES = {k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")}
PAIRS = [(f"question {i}: {'x' * (i % 7)}", f"answer {i}") for i in range(40)]
TAIL = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
        seqio.preprocessors.append_eos_after_trim]


def _parse_tsv(ds):
  return ds.map(lambda line: dict(zip(("inputs", "targets"), tf.io.decode_csv(
      line, ["", ""], field_delim="\t", use_quote_delim=False))))


def _function_source(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices({"inputs": [p[0] for p in PAIRS],
                                             "targets": [p[1] for p in PAIRS]})


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sources")
  lines = folder / "train.tsv"
  lines.write_text("".join(f"{q}\t{a}\n" for q, a in PAIRS))
  record = str(folder / "train.tfrecord")
  with tf.io.TFRecordWriter(record) as w:
    for q, a in PAIRS:
      w.write(tf.train.Example(features=tf.train.Features(feature={
          "question": tf.train.Feature(bytes_list=tf.train.BytesList(value=[q.encode()])),
          "answer": tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.encode()])),
      })).SerializeToString())
  definitions = {
      "src_text_lines": (seqio.TextLineDataSource({"train": str(lines)}), [_parse_tsv]),
      "src_tf_example": (seqio.TFExampleDataSource(
          {"train": record}, {k: tf.io.FixedLenFeature([], tf.string)
                              for k in ("question", "answer")}),
                         [functools.partial(seqio.preprocessors.rekey,
                                            key_map={"inputs": "question",
                                                     "targets": "answer"})]),
      "src_function": (seqio.FunctionDataSource(_function_source, splits=("train",)), []),
  }
  for name, (source, preps) in definitions.items():
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=source, preprocessors=preps + TAIL,
                           output_features=FEATURES)
  cache_dir = str(folder / "cache")
  for name in definitions:
    cache.cache_task_split(seqio.get_mixture_or_task(name), "train", cache_dir)
  return cache_dir, list(definitions)


def _seqio_rows(task):
  ds = seqio.get_dataset(task, LENGTHS, seqio.EncDecFeatureConverter(pack=False),
                         dataset_split="train", shuffle=False)
  return list(ds.as_numpy_iterator())


def test_each_source_caches_and_streams_what_seqio_produces(tasks):
  cache_dir, names = tasks
  for name in names:
    want = _seqio_rows(name)
    assert len(want) == len(PAIRS), name
    got = [{k: v[r] for k, v in b.features.items()}
           for b in eval_data.task_batches(cache_dir, name, "train", LENGTHS, 40)
           for r in range(40)]
    for g, w in zip(got, want):
      for k, v in w.items():
        np.testing.assert_array_equal(g[k], v, err_msg=f"{name}:{k}")
    # The shuffled training stream (padded) yields exactly those rows, each once per epoch.
    spec = mixing.MixtureSpec(name, (mixing.TaskRate(name, 1.0),))
    opts = pipeline.PipelineOptions(LENGTHS, batch_size=40, pack=False, prefetch=0)
    batch = next(iter(pipeline.train_batches(spec, cache_dir, opts)))
    assert sorted(map(tuple, batch["encoder_input_tokens"])) == \
        sorted(tuple(w["encoder_input_tokens"]) for w in want)
  # The text-line source's cache is invalidated when its file changes.
  task = seqio.get_mixture_or_task("src_text_lines")
  before = cache.fingerprint(task, "train")
  path = task.source._split_to_filepattern["train"]
  with open(path, "a") as f:
    f.write("one more\tline\n")
  assert cache.fingerprint(task, "train") != before


CHOICES = [("The sky is", ["blue", "green", "red"], 0), ("Two plus two is", ["five", "four"], 1)]


def _choices_source(split, shuffle_files=False, seed=None):
  del split, shuffle_files, seed
  return tf.data.Dataset.from_generator(
      lambda: iter([{"premise": p, "options": o, "label": y} for p, o, y in CHOICES]),
      output_signature={"premise": tf.TensorSpec([], tf.string),
                        "options": tf.TensorSpec([None], tf.string),
                        "label": tf.TensorSpec([], tf.int32)})


def _rank_prep(ds, mode):
  return rank_classification(
      ds, inputs_fn=lambda ex: tf.fill(tf.shape(ex["options"]), ex["premise"]),
      targets_fn=lambda ex: ex["options"],
      is_correct_fn=lambda ex: tf.equal(tf.range(tf.size(ex["options"])), ex["label"]),
      mode=mode)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_rank_classification_rows_go_through_the_cache(tmp_path, mode):
  name = f"src_rank_{mode}"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(_choices_source, splits=("train",)),
      preprocessors=[functools.partial(_rank_prep, mode=mode)] + TAIL, output_features=FEATURES)
  cache.cache_task_split(seqio.get_mixture_or_task(name), "train", str(tmp_path))
  rows = pipeline.read_examples(str(tmp_path), name, "train")
  # By hand (T5's definition): one row per choice, idx = [example, choice].
  want = [([0, 0], "The sky is", "blue", True), ([0, 1], "The sky is", "green", False),
          ([0, 2], "The sky is", "red", False), ([1, 0], "Two plus two is", "five", False),
          ([1, 1], "Two plus two is", "four", True)]
  if mode == "train":
    want = [w for w in want if w[3]]
  got = [(list(r["idx"]), r["inputs_pretokenized"], r["targets_pretokenized"],
          bool(r["is_correct"])) for r in rows]
  assert got == want
  batch = next(eval_data.task_batches(str(tmp_path), name, "train", LENGTHS, 8))
  seqio_rows = _seqio_rows(name)
  for r, w in enumerate(seqio_rows):
    for k, v in w.items():
      np.testing.assert_array_equal(batch.features[k][r], v, err_msg=k)
  assert [bool(ex["is_correct"]) for ex in batch.examples] == [w[3] for w in want]
