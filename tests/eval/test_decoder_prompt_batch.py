"""Decoder generation starts where training does: `prompt_batch` gives the first decoded token
the logits the teacher-forced training features give the first target (BOS first; prefix-LM
prompts bidirectional)."""

import numpy as np
import pytest
from flax import nnx

from mtjax.eval import generate, scoring
from mtjax.models import registry


@pytest.mark.parametrize("family", ["decoder_only", "prefix_lm"])
def test_first_decoded_logits_equal_the_training_features_first_target(family):
  model = registry.build(registry.config("decoder_test"), rngs=nnx.Rngs(5))
  inputs = [[5, 6, 7, 1], [9, 10, 1]]
  pairs = [(x, [11, 12, 1]) for x in inputs]
  features = scoring.pair_features(pairs, {"inputs": 6, "targets": 4}, family)
  full = np.asarray(nnx.jit(lambda m, b: m(b))(model, features))
  tokens = np.stack([np.pad(x, (0, 6 - len(x))) for x in inputs]).astype(np.int32)
  logits, _ = nnx.jit(registry.start_decode, static_argnums=2)(
      model, generate.prompt_batch(family, tokens), 4)
  for row, x in enumerate(inputs):
    # decoder_input_tokens = [BOS, inputs..., targets...]: position len(x) predicts target 0
    assert features["decoder_loss_weights"][row, len(x)] == 1
    np.testing.assert_allclose(np.asarray(logits)[row], full[row, len(x)], atol=1e-5)
