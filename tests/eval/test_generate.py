"""Generation with a real model through its family's decode interface."""

import jax
import numpy as np
from flax import nnx

from mtjax.eval import generate
from mtjax.models import t5


def test_t5_greedy_equals_argmax_of_the_full_forward():
  model = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(params=1))
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  rng = np.random.default_rng(0)
  enc = rng.integers(3, 200, size=(4, 10)).astype(np.int32)
  enc[:, 7:] = 0
  enc[1, 4:] = 0
  length = 5
  options = generate.DecodeOptions(method="greedy", max_length=length, eos_id=1)
  out, _ = generate.generate(graphdef, params, {"encoder_input_tokens": enc}, jax.random.key(0),
                             options=options)
  # Reference: re-run the whole teacher-forced forward for each new token, argmax, in a Python
  # loop (no cache, no while_loop, eager).
  forward = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b))
  dec = np.zeros((4, length), np.int32)
  for i in range(length - 1):
    logits = np.asarray(forward(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec}))
    dec[:, i + 1] = logits[:, i].argmax(-1)
  last = np.asarray(forward(params, {"encoder_input_tokens": enc,
                                     "decoder_input_tokens": dec}))[:, -1].argmax(-1)
  expected = np.concatenate([dec[:, 1:], last[:, None]], 1)
  for row in range(4):  # positions after the first EOS are 0
    eos = np.flatnonzero(expected[row] == 1)
    if eos.size:
      expected[row, eos[0] + 1:] = 0
  np.testing.assert_array_equal(np.asarray(out), expected)
  beam1 = generate.DecodeOptions(method="beam", beam_size=1, alpha=0.0, max_length=length,
                                 eos_id=1)
  out_beam, _ = generate.generate(graphdef, params, {"encoder_input_tokens": enc},
                                  jax.random.key(0), options=beam1)
  np.testing.assert_array_equal(np.asarray(out_beam), expected)
  beam4 = generate.DecodeOptions(method="beam", beam_size=4, alpha=0.0, max_length=length,
                                 eos_id=1)
  out4, score4 = generate.generate(graphdef, params, {"encoder_input_tokens": enc},
                                   jax.random.key(0), options=beam4)
  assert out4.shape == (4, length) and np.all(np.isfinite(np.asarray(score4)))
