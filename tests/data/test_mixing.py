"""Mixture rates come from SeqIO, and the Grain stream samples tasks in those proportions."""

import collections

import numpy as np
import pytest
import seqio

import mtjax.mixtures.synthetic as synthetic
from mtjax.data import mixing, pipeline


def test_synthetic_rates_equal_seqio_rates():
  spec = mixing.from_seqio("synthetic")
  mixture = seqio.get_mixture_or_task("synthetic")
  assert sorted(spec.task_names) == sorted(t.name for t in mixture.tasks)
  for entry in spec.tasks:
    task = seqio.get_mixture_or_task(entry.name)
    assert entry.rate == pytest.approx(mixture.get_rate(task))
    # The rate function's formula: min(num_examples, cap).
    assert entry.rate == min(synthetic.TASKS[entry.name[len("synthetic_"):]][1],
                             synthetic.MIXING_CAP)


def test_nested_mixture_flattens_by_product():
  spec = mixing.from_seqio("synthetic_nested")
  rates = dict((t.name, t.rate) for t in spec.tasks)
  # synthetic_strings (rate 3) splits 1:2:2 among copy/reverse/sort; add and compare have rate 1.
  assert rates == pytest.approx({"synthetic_copy": 0.6, "synthetic_reverse": 1.2,
                                 "synthetic_sort": 1.2, "synthetic_add": 1.0,
                                 "synthetic_compare": 1.0})
  mixture = seqio.get_mixture_or_task("synthetic_nested")
  for t in mixture.tasks:
    assert rates[t.name] == pytest.approx(mixture.get_rate(t))


def test_cached_spec_equals_seqio_spec(synthetic_cache):
  assert mixing.read_spec("synthetic", synthetic_cache) == mixing.from_seqio("synthetic")


def test_stream_samples_tasks_at_the_mixture_rates(synthetic_cache):
  spec = mixing.from_seqio("synthetic")
  options = pipeline.PipelineOptions({"inputs": 64, "targets": 16}, batch_size=1)
  ds = pipeline.mixed_examples(spec, synthetic_cache, options)
  n = 10_000
  counts = collections.Counter(int(ds[i]["task_ids"][0]) for i in range(n))
  observed = np.array([counts[i] / n for i in range(len(spec.tasks))])
  np.testing.assert_allclose(observed, spec.weights, atol=0.01)
