"""Evaluation batching: length buckets, short last batches, and scoring answer choices with the
input run once, checked against the full teacher-forced forward at the configured lengths."""

import jax
import numpy as np
import pytest
from flax import nnx

from mtjax.eval import batching, prefix_sharing, scoring
from mtjax.models import decoder, t5
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib

LENGTHS = {"inputs": 40, "targets": 12}


def _pairs(seed: int, examples: int = 9):
  """Examples with 1-6 answer choices of 1-12 tokens; inputs of 1-40 tokens; one example with
  enough long choices to fill more than one row."""
  rng = np.random.default_rng(seed)
  pairs = []
  for e in range(examples):
    inputs = list(rng.integers(2, 200, rng.integers(1, 41)))
    for _ in range(rng.integers(1, 7)):
      pairs.append((inputs, list(rng.integers(2, 200, rng.integers(1, 13)))))
  many = list(rng.integers(2, 200, 17))
  pairs += [(many, list(rng.integers(2, 200, 12))) for _ in range(14)]  # 168 tokens > one row
  return pairs


def _reference(graphdef, params, pairs, family):
  """The scores before buckets and sharing: every pair one row of the model's forward, padded to
  the configured lengths (`pair_features` + `score_batch`), one pair per call."""
  out = {"sum": [], "length": [], "greedy": []}
  for pair in pairs:
    features = scoring.pair_features([pair], LENGTHS, family, start_id=0)
    result = scoring.score_batch(graphdef, params, features)
    for k in out:
      out[k].append(np.asarray(result[k])[0])
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def models():
  t5_model = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(params=0))
  dec_model = decoder.Decoder(decoder.preset("decoder_test", scan_layers=True),
                              rngs=nnx.Rngs(params=1))
  unscanned = decoder.Decoder(decoder.preset("decoder_test"), rngs=nnx.Rngs(params=2))
  out = {}
  for name, model in (("t5", t5_model), ("decoder", dec_model), ("unscanned", unscanned)):
    graphdef, state = nnx.split(model)
    out[name] = (graphdef, state.to_pure_dict())
  return out


@pytest.mark.parametrize("family", ["enc_dec", "decoder_only", "prefix_lm"])
def test_shared_and_bucketed_scores_equal_the_full_forward(models, family):
  # (the prefix-LM run takes the decoder with unscanned layers: both cache layouts are checked)
  graphdef, params = models[{"enc_dec": "t5", "decoder_only": "decoder",
                             "prefix_lm": "unscanned"}[family]]
  pairs = _pairs(seed=len(family))
  mesh = mesh_lib.make_mesh(data=4, fsdp=2, tensor=1)
  rules = rules_lib.DEFAULT_RULES
  expected = _reference(graphdef, params, pairs, family)
  assert len(prefix_sharing.groups(pairs)) < len(pairs)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    for share in (True, False):
      got = scoring.score_pairs(graphdef, params, pairs, lengths=LENGTHS, family=family,
                                batch_size=16, mesh=mesh, rules=rules, start_id=0,
                                share_inputs=share)
      np.testing.assert_allclose(got["sum"], expected["sum"], rtol=2e-5, atol=2e-5)
      np.testing.assert_array_equal(got["length"], expected["length"])
      np.testing.assert_array_equal(got["greedy"], expected["greedy"])


def test_targets_past_the_row_width_start_a_new_row():
  pairs = [([1, 2], [3] * 100), ([1, 2], [4] * 100), ([1, 2], [5] * 10), ([7], [8])]
  layout = prefix_sharing.rows(pairs, prefix_sharing.groups(pairs), width_cap=128)
  assert layout == [(0, [(0, 0, 100)]), (0, [(1, 0, 100), (2, 100, 10)]), (3, [(3, 0, 1)])]


def test_buckets():
  assert [batching.bucket(n) for n in (1, 16, 17, 20, 21, 33, 200, 256, 257, 300, 1000)] == [
      16, 16, 20, 20, 24, 40, 224, 256, 320, 320, 1024]
  assert batching.bucket(300, cap=310) == 310 and batching.bucket(300, cap=200) == 300
  for n in range(1, 3000):  # at most a quarter over, never under
    assert n <= batching.bucket(n) <= max(16, 1.25 * n)


def test_plan_sorts_and_shortens_only_the_last_batch():
  sizes = [5, 9, 1, 7, 3, 8, 2, 6, 4, 0, 10]
  batches = batching.plan(sizes, batch_size=4)
  assert [list(chunk) for chunk, _ in batches] == [[10, 1, 5, 3], [7, 0, 8, 4], [6, 2, 9]]
  order = [i for chunk, _ in batches for i in chunk]
  assert [sizes[i] for i in order] == sorted(sizes, reverse=True)
  assert [rows for _, rows in batches] == [4, 4, 4]  # 11 rows: 4, 4, then 3 -> 4
  assert [rows for _, rows in batching.plan(range(5), batch_size=64)] == [8]
  assert batching.short_rows(3, full=64, parallel=8) == 8
  assert batching.short_rows(9, full=64, parallel=8) == 16
  assert batching.short_rows(33, full=64, parallel=8) == 64
  assert batching.short_rows(17, full=40, parallel=8) == 32


def test_map_batches_returns_rows_in_order_and_cuts_to_buckets():
  lengths = [3, 30, 7, 18, 1]
  tokens = np.zeros((5, 64), np.int32)
  for r, n in enumerate(lengths):
    tokens[r, :n] = np.arange(1, n + 1)
  widths = []

  def fn(batch):
    widths.append(batch["tokens"].shape)
    return {"total": batch["tokens"].sum(-1), "width": np.full(len(batch["tokens"]),
                                                               batch["tokens"].shape[1])}

  out = batching.map_batches(fn, {"tokens": tokens}, batch_size=2, row_lengths=lengths)
  np.testing.assert_array_equal(out["total"], [n * (n + 1) // 2 for n in lengths])
  assert widths == [(2, 32), (2, 16), (1, 16)]  # longest first: (30, 18), (7, 3), (1,)
  np.testing.assert_array_equal(out["width"], [16, 32, 16, 32, 16])


def test_compiled_shapes_are_bounded_across_tasks(models):
  """Scoring tasks of many sizes compiles a bounded set of programs, not one per task size."""
  graphdef, params = models["t5"]
  batching.SHAPES = batching.Shapes()
  rng = np.random.default_rng(0)
  for rows in (1, 3, 5, 11, 13, 17, 23):  # seven "tasks" of different sizes
    pairs = [(list(rng.integers(2, 100, 20)), list(rng.integers(2, 100, 4))) for _ in range(rows)]
    scoring.score_pairs(graphdef, params, pairs, lengths=LENGTHS, batch_size=8)
  # One bucket (20 input, 16 target tokens) x row counts {8 (full), 1 and 4 (short)}.
  assert len(batching.SHAPES) == 3 and batching.SHAPES.batches == 1 + 1 + 1 + 2 + 2 + 3 + 3
