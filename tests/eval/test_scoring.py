"""Scores equal per-token log-probabilities from the full forward; rank classification."""

import jax
import numpy as np
import pytest
from flax import nnx

from mtjax.eval import scoring
from mtjax.models import t5

LENGTHS = {"inputs": 12, "targets": 6}
PAIRS = [([5, 6, 7, 1], [9, 10, 1]), ([8, 1], [11, 12, 13, 14, 15, 1]),
         ([5, 6, 7, 1], [20, 1]), ([30, 31, 32, 33, 34, 1], [1])]


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def t5_model():
  model = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  return model, graphdef, state.to_pure_dict()


def _forward(graphdef, params, batch):
  return np.asarray(jax.jit(lambda p, b: nnx.merge(graphdef, p)(b))(params, batch))


def test_enc_dec_scores_are_summed_target_log_probs(t5_model):
  _, graphdef, params = t5_model
  out = scoring.score_pairs(graphdef, params, PAIRS, lengths=LENGTHS, batch_size=3)
  # Independent reference: one full forward over the pairs (hand-built, teacher-forced), then
  # log-softmax in float64 numpy and a sum over each pair's own target tokens.
  enc = np.zeros((len(PAIRS), LENGTHS["inputs"]), np.int32)
  dec = np.zeros((len(PAIRS), LENGTHS["targets"]), np.int32)
  for row, (inputs, targets) in enumerate(PAIRS):
    enc[row, :len(inputs)] = inputs
    dec[row, 1:len(targets)] = targets[:-1]
  lp = _log_softmax(_forward(graphdef, params, {"encoder_input_tokens": enc,
                                                "decoder_input_tokens": dec}))
  for row, (_, targets) in enumerate(PAIRS):
    expected = sum(lp[row, i, t] for i, t in enumerate(targets))
    np.testing.assert_allclose(out["sum"][row], expected, rtol=1e-5, atol=1e-5)
    assert out["length"][row] == len(targets)
    np.testing.assert_allclose(out["mean"][row], expected / len(targets), rtol=1e-5, atol=1e-5)


def test_decoder_only_scores_only_target_tokens():
  decoder = pytest.importorskip("mtjax.models.decoder")
  model = decoder.Decoder(decoder.preset("decoder_test"), rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  total = LENGTHS["inputs"] + LENGTHS["targets"]
  for family in ("decoder_only", "prefix_lm"):
    out = scoring.score_pairs(graphdef, params, PAIRS, lengths=LENGTHS, family=family)
    tokens = np.zeros((len(PAIRS), total), np.int32)
    causal = np.zeros((len(PAIRS), total), np.int32)
    for row, (inputs, targets) in enumerate(PAIRS):
      seq = inputs + targets
      tokens[row, 1:len(seq)] = seq[:-1]
      causal[row, :len(inputs) + 1] = 1  # prefix-LM: the prompt plus the first-target position
    batch = {"decoder_input_tokens": tokens}
    if family == "prefix_lm":
      batch["decoder_causal_attention"] = causal
    lp = _log_softmax(_forward(graphdef, params, batch))
    for row, (inputs, targets) in enumerate(PAIRS):
      expected = sum(lp[row, len(inputs) + i, t] for i, t in enumerate(targets))
      np.testing.assert_allclose(out["sum"][row], expected, rtol=1e-5, atol=1e-5)
      assert out["length"][row] == len(targets)


def test_sum_and_mean_pick_different_answers():
  # Example 0: choice 0 is one token at log-prob -2 (sum -2, mean -2); choice 1 is four tokens
  # at -0.9 each (sum -3.6, mean -0.9). Sum prefers the short answer, mean the long one.
  scores = {"sum": np.array([-2.0, -3.6, -1.0, -5.0]), "length": np.array([1, 4, 1, 1])}
  scores["mean"] = scores["sum"] / scores["length"]
  owners, gold = np.array([0, 0, 1, 1]), np.array([1, 0])
  by_sum = scoring.rank_answer_choices(scores, owners, gold, "sum")
  by_mean = scoring.rank_answer_choices(scores, owners, gold, "mean")
  assert list(by_sum["predicted"]) == [0, 0] and by_sum["accuracy"] == 50.0
  assert list(by_mean["predicted"]) == [1, 0] and by_mean["accuracy"] == 100.0


def test_rank_classification_with_a_model(t5_model):
  """Choices scored by the model: the prediction is the argmax of independently summed scores."""
  import seqio

  _, graphdef, params = t5_model
  vocab = seqio.ByteVocabulary()
  examples = [{"answer_choices": ["yes", "no"], "targets_pretokenized": "no", "template_id": 0},
              {"answer_choices": ["red", "green", "blue"], "targets_pretokenized": "blue",
               "template_id": 1},
              {"answer_choices": ["a", "bb"], "targets_pretokenized": "zz", "template_id": 1}]
  inputs = [vocab.encode("Is it?") + [1], vocab.encode("Colour?") + [1], vocab.encode("x") + [1]]
  pairs, owners, gold = scoring.choice_pairs(examples, inputs, vocab, add_eos=True,
                                             targets_length=6)
  assert list(owners) == [0, 0, 1, 1, 1, 2, 2] and list(gold) == [1, 2, -1]
  assert pairs[1][1] == vocab.encode("no") + [1]
  scores = scoring.score_pairs(graphdef, params, pairs, lengths=LENGTHS)
  for mode in ("sum", "mean"):
    ranked = scoring.rank_answer_choices(scores, owners, gold, mode)
    expected = [int(np.argmax(scores[mode][owners == i])) for i in range(3)]
    assert list(ranked["predicted"]) == expected
    assert ranked["num_scored"] == 2  # the third target is not among its choices
    per_template = scoring.per_template_accuracy(examples, ranked["predicted"], gold)
    assert set(per_template) == {"0", "1"}


def test_seqio_rank_classification_rows():
  # T5's rank_classification preprocessor: one row per (example, choice).
  rows = [{"idx": [0, 0], "is_correct": False}, {"idx": [0, 1], "is_correct": True},
          {"idx": [1, 0], "is_correct": True}, {"idx": [1, 1], "is_correct": False},
          {"idx": [1, 2], "is_correct": False}]
  out = scoring.rank_classification_rows(rows, np.array([-1.0, -0.5, -3.0, -2.0, -4.0]))
  assert out["num_examples"] == 2 and out["accuracy"] == 50.0
  assert list(out["predicted_rows"]) == [1, 3]


def test_median_and_iqr():
  out = scoring.median_iqr([10.0, 20.0, 30.0, 40.0, 90.0])
  assert out == {"median": 30.0, "iqr": 20.0}  # numpy's linear percentiles: 40 - 20
