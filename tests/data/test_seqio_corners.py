"""SeqIO's data-side corners: `sequence_length` for tasks without a cache placeholder, an
unreadable TFDS source, and mixing rates that differ by less than Grain's integer rounding."""

import collections
import functools
import sys

import grain
import numpy as np
import pytest
import seqio

import mtjax.mixtures.synthetic as synthetic
from mtjax import errors
from mtjax.data import cache, mixing, pipeline
from mtjax.data.templates import Template, apply_templates


def trim_inputs(dataset, sequence_length):
  """A user preprocessor that reads the run's lengths (as T5's span corruption does)."""
  return dataset.map(lambda ex: {**ex, "inputs": ex["inputs"][:sequence_length["inputs"] - 1]})


def _task(name, preprocessors):
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(functools.partial(synthetic._dataset_fn, task="copy"),
                                      splits=("validation",)),
      preprocessors=[apply_templates([Template("t", "Copy the text: {text}", "{answer}")]),
                     seqio.preprocessors.tokenize, *preprocessors,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=synthetic.OUTPUT_FEATURES)


def _as_seqio(cache_dir, task, lengths, n=40):
  """The first `n` cached examples finished as the pipeline does, next to SeqIO's own."""
  manifest = cache.read_manifest(cache_dir, task.name, "validation")
  ours = [pipeline.post_cache(ex, manifest["post_cache_ops"], manifest["output_features"],
                              lengths)
          for ex in pipeline.read_examples(cache_dir, task.name, "validation", limit=n)]
  theirs = list(task.get_dataset(lengths, split="validation", shuffle=False).take(n)
                .as_numpy_iterator())
  return ours, theirs


def test_placeholderless_task_gets_the_runs_sequence_length_as_in_seqio(tmp_path):
  task = _task("test_corner_lengths", [trim_inputs])
  short, long_ = {"inputs": 8, "targets": 6}, {"inputs": 12, "targets": 6}
  first = cache.cache_task_split(task, "validation", str(tmp_path), sequence_length=short)
  assert first["sequence_length"] == short
  assert first["token_lengths"]["inputs"]["max"] == short["inputs"] - 1
  ours, theirs = _as_seqio(str(tmp_path), task, short)
  assert len(ours) == len(theirs) == 40
  for a, b in zip(ours, theirs):
    for key in ("inputs", "targets"):
      np.testing.assert_array_equal(a[key], b[key])
  # Another run's lengths are another cache (the fingerprint holds them): rebuilt, as SeqIO.
  second = cache.cache_task_split(task, "validation", str(tmp_path), sequence_length=long_)
  assert second["fingerprint"] != first["fingerprint"]
  assert second["token_lengths"]["inputs"]["max"] == long_["inputs"] - 1
  ours, theirs = _as_seqio(str(tmp_path), task, long_)
  for a, b in zip(ours, theirs):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_without_seqio_a_cache_for_other_lengths_is_an_error(tmp_path, monkeypatch):
  task = _task("test_corner_lengths_no_tf", [trim_inputs])
  lengths = {"inputs": 8, "targets": 6}
  cache.cache_task_split(task, "validation", str(tmp_path), sequence_length=lengths)
  spec = mixing.MixtureSpec(task.name, (mixing.TaskRate(task.name, 1.0),))
  mixing.write_spec(spec, str(tmp_path))
  monkeypatch.setitem(sys.modules, "seqio", None)  # `import seqio` fails: a TF-free machine
  assert cache.ensure_cached(task.name, str(tmp_path), splits=("validation",),
                             sequence_length=lengths) == spec
  with pytest.raises(errors.DataError, match=r"test_corner_lengths_no_tf.*cached for "
                                             r"sequence_length"):
    cache.ensure_cached(task.name, str(tmp_path), splits=("validation",),
                        sequence_length={"inputs": 12, "targets": 6})


def test_placeholderless_task_without_lengths_names_the_preprocessor(tmp_path):
  task = _task("test_corner_no_lengths", [trim_inputs])
  with pytest.raises(errors.DataError, match=r"test_corner_no_lengths.*'trim_inputs'.*"
                                             r"sequence_length.*CacheDatasetPlaceholder"):
    cache.cache_task_split(task, "validation", str(tmp_path))


def test_lengths_do_not_touch_the_fingerprint_of_tasks_that_ignore_them():
  """Existing caches of tasks that never read `sequence_length` are not rebuilt."""
  plain = _task("test_corner_plain", [])
  assert cache.length_dependent(plain) == []
  assert cache.fingerprint(plain, "validation") == cache.fingerprint(
      plain, "validation", {"inputs": 8, "targets": 6})
  placeholder = _task("test_corner_placeholder", [seqio.CacheDatasetPlaceholder()])
  assert cache.length_dependent(placeholder) == []


def _tfds_task(name, data_dir, tfds_name="glue/rte:2.0.0", splits=None):
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=seqio.TfdsDataSource(tfds_name, tfds_data_dir=data_dir, splits=splits),
      preprocessors=[], output_features={})


@pytest.mark.parametrize("splits", [None, ("train", "validation")])
def test_unreadable_tfds_source_names_task_dataset_and_dir(tmp_path, splits):
  """No network: TFDS looks for the prepared dataset in the data dir and finds none there."""
  missing = str(tmp_path / "no_such_dir")
  task = _tfds_task("test_corner_tfds", missing, splits=splits)
  pattern = r"'test_corner_tfds'.*'glue/rte:2\.0\.0'.*no_such_dir'.*does not exist"
  with pytest.raises(errors.MissingError, match=pattern):
    cache.cache_task_split(task, "train", str(tmp_path / "cache"))
  with pytest.raises(errors.MissingError, match=pattern):  # the mixture path reads splits first
    cache.cache_mixture("test_corner_tfds", str(tmp_path / "cache"))


def test_tfds_source_in_an_empty_dir_or_of_an_unknown_name(tmp_path):
  task = _tfds_task("test_corner_tfds_empty", str(tmp_path))
  with pytest.raises(errors.MissingError, match=r"'glue/rte:2\.0\.0'.*not prepared there.*"
                                                r"dataset_info\.json"):
    cache.cache_task_split(task, "train", str(tmp_path / "cache"))
  task = _tfds_task("test_corner_tfds_unknown", str(tmp_path),
                    tfds_name="no_such_dataset_xyz:1.0.0")
  with pytest.raises(errors.MissingError, match=r"'no_such_dataset_xyz:1\.0\.0'.*"
                                                r"DatasetNotFoundError"):
    cache.cache_task_split(task, "train", str(tmp_path / "cache"))


def test_prepared_tfds_source_caches_and_its_version_is_in_the_fingerprint(tmp_path):
  """A TFDS dataset prepared locally (no download) passes the check and caches."""
  import tensorflow_datasets as tfds

  class TinyCornerDs(tfds.core.GeneratorBasedBuilder):
    # A one-part module name: for a builder inside a package TFDS resolves its code path through
    # `importlib_resources`, which this environment does not install.
    __module__ = "tiny_corner_ds"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(5)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"text": f"example {i}"}

  TinyCornerDs(data_dir=str(tmp_path)).download_and_prepare()
  task = _tfds_task("test_corner_tfds_ok", str(tmp_path), tfds_name="tiny_corner_ds:1.0.0")
  assert cache._tfds_identity(task, "train") == "tfds:tiny_corner_ds/1.0.0:train:5"
  manifest = cache.cache_task_split(task, "train", str(tmp_path / "cache"))
  assert manifest["num_examples"] == 5
  texts = [ex["text"] for ex in pipeline.read_examples(str(tmp_path / "cache"),
                                                      "test_corner_tfds_ok", "train")]
  assert sorted(texts) == [f"example {i}" for i in range(5)]


RATES = (1.0, 1.0099, 2.0199)  # the first two differ by under 1%: Grain's mix draws them equally


def _rate_weights(spec):
  return RATES + (0.0,) * (len(spec.tasks) - len(RATES))


def test_mixing_rates_within_one_percent_draw_at_their_rates(synthetic_cache):
  """100k draws at rates 1.0 / 1.0099 / 2.0199: each task's count is `n * rate / 4.0298`.

  Tolerance: the interleave is deterministic, and after `n` draws task `i` has `n * p_i` draws to
  within `i + 1` (`mixing.select`), so 3 draws. A binomial bound (4.5 standard errors, ~620
  draws at p = 1/4) would be the tolerance of a random sampler, and cannot tell 1.0 from 1.0099
  at 100k draws (they differ by 246 draws, 1.8 standard errors); Grain's integer proportions
  (100 / 100 / 201) miss the first two rates by 123 draws each.
  """
  spec = mixing.read_spec("synthetic", synthetic_cache)
  weights = _rate_weights(spec)
  options = pipeline.PipelineOptions({"inputs": 64, "targets": 16}, batch_size=1)
  n = 100_000
  plan = pipeline.mixed_plan(spec, synthetic_cache, options, weights=weights)
  drawn = np.array([plan[k]["task_ids"] for k in range(n)])
  counts = np.bincount(drawn, minlength=len(spec.tasks))[:len(RATES)]
  expected = n * np.array(RATES) / sum(RATES)
  assert np.abs(counts - expected).max() < len(RATES), (counts, expected)
  assert counts.sum() == n
  # The vectorised plan training reads draws the same tasks.
  window = pipeline.WindowPlan(spec, synthetic_cache, options, weights=weights)
  np.testing.assert_array_equal(window.read(0, n)["task_ids"], drawn)


@pytest.mark.parametrize("weights", [(1, 1, 1, 1, 1), (3, 2, 2, 3, 3), (0.5, 3, 1, 0.25, 0.5)])
def test_rates_grain_held_exactly_draw_in_grains_order(synthetic_cache, weights):
  """Equal rates and small-integer ratios (the quickstart's 3:2:2:3:3) keep Grain's order, so
  runs and their numbers do not change; only rates Grain rounded draw differently."""
  spec = mixing.read_spec("synthetic", synthetic_cache)
  options = pipeline.PipelineOptions({"inputs": 64, "targets": 16}, batch_size=1)
  plan = pipeline.mixed_plan(spec, synthetic_cache, options, weights=weights)
  ids = grain.MapDataset.mix(
      [grain.MapDataset.range(10**9).map(functools.partial(lambda i, _: i, i))
       for i in range(len(weights))], weights)
  n = 5_000
  assert [int(plan[k]["task_ids"]) for k in range(n)] == [ids[k] for k in range(n)]


def test_exact_rate_mixture_restores_from_its_state(synthetic_cache):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  options = pipeline.PipelineOptions({"inputs": 64, "targets": 16}, batch_size=1)

  def stream():
    return iter(pipeline.mixed_examples(spec, synthetic_cache, options,
                                        weights=_rate_weights(spec)).to_iter_dataset(
                                            grain.ReadOptions(num_threads=0)))

  it = stream()
  for _ in range(37):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(20)]
  again = stream()
  again.set_state(state)
  got = [next(again) for _ in range(20)]
  for a, b in zip(want, got):
    for key in ("inputs", "targets", "task_ids"):
      np.testing.assert_array_equal(a[key], b[key])


def test_int_proportions():
  assert mixing.int_proportions(RATES) == (10000, 10099, 20199)
  assert mixing.int_proportions([0.25, 0.25]) == (1, 1)
  assert mixing.int_proportions([6000 / 26000, 4000 / 26000]) == (3, 2)
  irrational = mixing.int_proportions([1.0, 2 ** 0.5, 3 ** 0.5, 1e-3])  # rounded to the budget
  assert sum(irrational) <= mixing.PROPORTION_TOTAL + 4
  assert irrational[1] / irrational[0] == pytest.approx(2 ** 0.5, rel=1e-6)
  with pytest.raises(ValueError):
    mixing.int_proportions([1.0, 0.0])
  counts = collections.Counter(mixing.select(k, (2, 12, 4, 1))[0] for k in range(19 * 50))
  assert counts == {0: 100, 1: 600, 2: 200, 3: 50}
