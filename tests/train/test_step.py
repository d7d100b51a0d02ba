"""Train step: frozen parameters, gradient accumulation, loss normalisation (hand-computed)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax.models import t5
from mtjax.peft import filters
from mtjax.train import loss as loss_lib
from mtjax.train import optimizers
from mtjax.train import step as step_lib


@pytest.fixture(scope="module")
def tiny():
  # One layer each side keeps compilation short; the step does not care about depth.
  cfg = dataclasses.replace(t5.preset("t5_test"), num_encoder_layers=1, num_decoder_layers=1)
  model = t5.T5(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return graphdef, state.to_pure_dict()


def _batch(rows=8, seed=0):
  rng = np.random.default_rng(seed)
  tgt = rng.integers(3, 300, (rows, 6)).astype(np.int32)
  weights = (rng.random((rows, 6)) < 0.8).astype(np.int32)
  return {"encoder_input_tokens": rng.integers(3, 300, (rows, 10)).astype(np.int32),
          "decoder_input_tokens": np.concatenate([np.zeros((rows, 1), np.int32), tgt[:, :-1]], 1),
          "decoder_target_tokens": tgt, "decoder_loss_weights": weights,
          "task_ids": rng.integers(0, 3, (rows, 6)).astype(np.int32)}


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def test_frozen_parameters_are_bit_identical_and_have_no_optimizer_state(tiny):
  graphdef, params = tiny
  paths = filters.trainable_paths(params, [r"decoder.*mlp", r"norm"])
  train_p, frozen = filters.partition(params, paths)
  assert jax.tree_util.tree_structure(filters.combine(train_p, frozen)) == \
      jax.tree_util.tree_structure(params)
  tx = optimizers.make("adamw", 1e-2)
  opt_state = tx.init(train_p)
  step = step_lib.make_train_step(graphdef, tx, num_tasks=3, trainable=paths, donate=False)
  new, opt_state, _ = step(_copy(params), opt_state, _batch(), 0)
  new, opt_state, _ = step(new, opt_state, _batch(seed=1), 1)
  flat_old = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  changed = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(new)[0]:
    key = tuple(p.key for p in path)
    if key in paths:
      changed += not np.array_equal(leaf, flat_old[path])
    else:
      np.testing.assert_array_equal(leaf, flat_old[path])  # frozen: bit-identical
  assert changed == len(paths)
  # Adam's moments exist only for the trainable leaves.
  mu = opt_state[0].mu
  assert {tuple(p.key for p in path) for path, _ in jax.tree_util.tree_flatten_with_path(mu)[0]} \
      == set(paths)


def test_named_sets():
  params = {"encoder": {"prompt": {"embedding": 1}, "w": 2}, "decoder": {"lora_a": 3, "w": 4}}
  names = lambda spec: sorted(filters.path_str(p) for p in filters.trainable_paths(params, spec))
  assert names("prompt") == ["encoder/prompt/embedding"]
  assert names("all_but_prompt") == ["decoder/lora_a", "decoder/w", "encoder/w"]
  assert names("lora") == ["decoder/lora_a"]
  assert len(names("all")) == 4
  with pytest.raises(ValueError, match="selects no parameter"):
    filters.trainable_paths(params, "nothing_matches")


def test_four_microbatches_equal_one_large_batch(tiny):
  graphdef, params = tiny
  tx = optimizers.make("adamw", 1e-2)
  batch = _batch(rows=16)
  out = {}
  for k in (1, 4):
    step = step_lib.make_train_step(graphdef, tx, num_tasks=3, microbatches=k, donate=False)
    out[k] = step(params, tx.init(params), batch, 0)
  np.testing.assert_allclose(out[1][2]["loss"], out[4][2]["loss"], rtol=1e-5)
  np.testing.assert_allclose(out[1][2]["grad_norm"], out[4][2]["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out[1][0]), jax.tree.leaves(out[4][0])):
    np.testing.assert_allclose(a, b, atol=1e-5)


# Tiny batch for hand-computed normalisations: 2 rows x 4 tokens, a 2-word vocabulary whose
# logits make token losses easy: logits (0, 0) -> nll log 2; (0, log 3) with label 1 -> log 4/3.
L2, L43 = np.log(2.0), np.log(4.0 / 3.0)


def _hand_batch():
  logits = np.zeros((2, 4, 2), np.float32)
  logits[0, 1, 1] = logits[1, 0, 1] = logits[1, 1, 1] = np.log(3.0)
  targets = np.ones((2, 4), np.int32)
  weights = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)
  segments = np.array([[1, 1, 2, 0], [1, 1, 1, 1]], np.int32)  # row 0 packs two examples
  tasks = np.array([[0, 0, 1, 0], [0, 0, 0, 1]], np.int32)
  return logits, targets, weights, segments, tasks


@pytest.mark.parametrize("mode,want", [
    # token losses (weighted): row0 = [l2, l43, l2], row1 = [l43, l43, l2, l2]
    ("token", (4 * L2 + 3 * L43) / 7),
    ("sequence", (4 * L2 + 3 * L43) / 3),  # three examples: (r0,s1), (r0,s2), (r1,s1)
    ("constant", (4 * L2 + 3 * L43) / 10.0),
    # per-example means: (l2 + l43)/2, l2, (2 l43 + 2 l2)/4; averaged
    ("sample", ((L2 + L43) / 2 + L2 + (L43 + L2) / 2) / 3),
    # task 0 tokens: l2, l43, l43, l43, l2 -> (2 l2 + 3 l43)/5; task 1: l2, l2 -> l2
    ("task", ((2 * L2 + 3 * L43) / 5 + L2) / 2),
])
def test_normalisation_modes_match_hand_computed_values(mode, want):
  logits, targets, weights, segments, tasks = _hand_batch()
  coef, denom = loss_lib.normalization(jnp.asarray(weights), mode, segment_ids=segments,
                                       task_ids=tasks, num_tasks=2, factor=10.0)
  loss, _ = loss_lib.loss_and_metrics(logits, targets, weights, tasks, 2, coef=coef,
                                      denominator=denom)
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_focal_weighting_matches_formula():
  logits, targets, weights, _, tasks = _hand_batch()
  loss, _ = loss_lib.loss_and_metrics(logits, targets, weights, tasks, 2, focal_gamma=2.0)
  focal = lambda nll: (1 - np.exp(-nll)) ** 2 * nll  # p = 1/2 or 3/4
  np.testing.assert_allclose(loss, (4 * focal(L2) + 3 * focal(L43)) / 7, rtol=1e-6)


def test_duplicating_a_tasks_rows_keeps_the_balanced_loss():
  logits, targets, weights, _, _ = _hand_batch()
  tasks = np.array([[0, 0, 0, 0], [1, 1, 1, 1]], np.int32)
  dup = lambda x: np.concatenate([x, x[1:], x[1:]])  # task 1's row three times
  def losses(lg, tg, w, t):
    out = []
    for mode in ("token", "task"):
      coef, denom = loss_lib.normalization(jnp.asarray(w), mode, task_ids=t, num_tasks=2)
      out.append(float(loss_lib.loss_and_metrics(lg, tg, w, t, 2, coef=coef,
                                                 denominator=denom)[0]))
    return out
  token, task = losses(logits, targets, weights, tasks)
  token_dup, task_dup = losses(dup(logits), dup(targets), dup(weights), dup(tasks))
  assert abs(token - token_dup) > 1e-3
  np.testing.assert_allclose(task, task_dup, rtol=1e-6)

