"""Rate helpers against their formulas; 100k draws of a nested capped, tempered mixture."""

import collections

import numpy as np
import pytest
import seqio

import mtjax.mixtures.synthetic as synthetic
from mtjax.data import mixing, pipeline, rates

SIZES = {f"synthetic_{k}": v[1] for k, v in synthetic.TASKS.items()}  # train examples per task


def test_rate_formulas():
  copy, sort = (seqio.get_mixture_or_task(n) for n in ("synthetic_copy", "synthetic_sort"))
  assert rates.t5_examples_proportional(5000, 2.0)(sort) == pytest.approx(5000 ** 0.5)
  assert rates.t5_examples_proportional(5000, 2.0)(copy) == pytest.approx(4000 ** 0.5)
  assert rates.flan_examples_proportional()(sort) == 3000
  assert rates.t0_examples_proportional(num_templates=4, cap=6000)(sort) == 6000 / 4
  assert rates.t0_examples_proportional(num_templates=4, cap=6000)(copy) == 4000


def test_nested_capped_tempered_mixture_over_100k_draws(synthetic_cache):
  rate = rates.t5_examples_proportional(maximum=5000, temperature=2.0)
  for name in ("test_rates_strings", "test_rates_top"):
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(
      "test_rates_strings", ["synthetic_copy", "synthetic_reverse", "synthetic_sort"],
      default_rate=rate)
  seqio.MixtureRegistry.add(
      "test_rates_top", [("test_rates_strings", 2.0), ("synthetic_add", rate),
                         ("synthetic_compare", rate)])
  # By hand: inner rates min(n, 5000) ** 0.5, normalised within the sub-mixture, times 2.0.
  inner = {t: min(SIZES[t], 5000) ** 0.5 for t in
           ("synthetic_copy", "synthetic_reverse", "synthetic_sort")}
  want = {t: 2.0 * r / sum(inner.values()) for t, r in inner.items()}
  want.update({t: min(SIZES[t], 5000) ** 0.5 for t in ("synthetic_add", "synthetic_compare")})
  total = sum(want.values())

  spec = mixing.from_seqio("test_rates_top")
  for t in spec.tasks:
    assert t.rate == pytest.approx(want[t.name])
  ds = pipeline.mixed_examples(spec, synthetic_cache,
                               pipeline.PipelineOptions({"inputs": 8, "targets": 4}, 1))
  n = 100_000
  counts = collections.Counter(int(ds[i]["task_ids"][0]) for i in range(n))
  for i, t in enumerate(spec.task_names):
    share = counts[i] / n
    assert share == pytest.approx(want[t] / total, rel=0.01), t


def test_staged_rates_switch_at_the_start_step_and_resume_across_it(synthetic_cache):
  spec = mixing.read_spec("synthetic", synthetic_cache)
  late = {"synthetic_copy": 1.0, "synthetic_add": 3.0}
  opts = pipeline.PipelineOptions({"inputs": 64, "targets": 16}, batch_size=100, pack=False,
                                  prefetch=0, rate_stages=((40, late),))
  it = iter(pipeline.train_batches(spec, synthetic_cache, opts))
  counts = [collections.Counter(), collections.Counter()]
  for step in range(80):
    counts[step >= 40].update(next(it)["task_ids"][:, 0].tolist())
  late_w = {i: late.get(t, 0.0) / 4.0 for i, t in enumerate(spec.task_names)}
  for i, w in enumerate(spec.weights):  # 4000 draws per stage; Grain's mix is near-exact
    assert counts[0][i] / 4000 == pytest.approx(w, rel=0.01)
    assert counts[1][i] / 4000 == pytest.approx(late_w[i], rel=0.01)

  # Window-packed stream with prefetch: restore at points on both sides of the boundary.
  staged = pipeline.PipelineOptions({"inputs": 64, "targets": 16}, batch_size=4, seed=5,
                                    packing_bins=48, rate_stages=((6, late),))
  make = lambda: iter(pipeline.train_batches(spec, synthetic_cache, staged))
  it = make()
  states, stream = [], []
  for _ in range(12):
    states.append(it.get_state())
    stream.append(next(it))
  assert set(np.unique(np.concatenate([b["task_ids"][b["decoder_loss_weights"] > 0]
                                       for b in stream[6:]]))) == \
      {spec.task_names.index(t) for t in late}
  for point in (2, 5, 6, 7, 10):
    resumed = make()
    resumed.set_state(states[point])
    for want in stream[point:point + 2]:
      got = next(resumed)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_opt_iml_rates_cap_per_task_then_split_by_benchmark():
  groups = {"strings": ["synthetic_copy", "synthetic_reverse", "synthetic_sort"],
            "math": ["synthetic_add", "synthetic_compare"]}
  rate = rates.opt_iml_examples_proportional(groups, {"strings": 0.25, "math": 0.75},
                                             maximum=5000)
  # By hand: capped counts strings 4000/5000/5000 (sum 14000), math 5000/4000 (sum 9000).
  want = {"synthetic_copy": 0.25 * 4000 / 14000, "synthetic_reverse": 0.25 * 5000 / 14000,
          "synthetic_sort": 0.25 * 5000 / 14000, "synthetic_add": 0.75 * 5000 / 9000,
          "synthetic_compare": 0.75 * 4000 / 9000}
  for name, r in want.items():
    assert rate(seqio.get_mixture_or_task(name)) == pytest.approx(r)
  seqio.MixtureRegistry.remove("test_opt_iml")
  seqio.MixtureRegistry.add("test_opt_iml", sorted(want), default_rate=rate)
  spec = mixing.from_seqio("test_opt_iml")
  shares = dict(zip(spec.task_names, spec.weights))
  assert sum(shares[t] for t in groups["math"]) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="in no OPT-IML group"):
    rates.opt_iml_examples_proportional({"math": ["synthetic_add"]}, {"math": 1.0}, 10)(
        seqio.get_mixture_or_task("synthetic_copy"))
