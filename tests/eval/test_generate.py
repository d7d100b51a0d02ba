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


def test_decoder_only_greedy_and_beam_through_its_cache():
  """Right-padded prompts of different lengths; reference: full forward of BOS + prompt + output
  (`prompt_batch` starts decoder prompts with BOS, as training rows start)."""
  import pytest
  decoder = pytest.importorskip("mtjax.models.decoder")
  if not hasattr(decoder, "start_decode"):
    pytest.skip("decoder family has no decode interface yet")

  model = decoder.Decoder(decoder.preset("decoder_test"), rngs=nnx.Rngs(params=2))
  graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  prompts = [[5, 9, 13, 2], [7, 3], [11, 12, 13, 14, 15, 16]]
  tokens = np.zeros((3, 8), np.int32)
  for row, p in enumerate(prompts):
    tokens[row, :len(p)] = p
  batch = generate.prompt_batch("decoder_only", tokens)
  length = 4
  forward = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b))
  expected = np.zeros((3, length), np.int32)
  for row, p in enumerate(prompts):
    seq = [0, *p]
    for i in range(length):  # right-padded to one width (causal: padding changes nothing)
      padded = np.asarray([seq + [0] * (12 - len(seq))], np.int32)
      logits = np.asarray(forward(params, {"decoder_input_tokens": padded}))
      seq.append(int(logits[0, len(seq) - 1].argmax()))
      expected[row, i] = seq[-1]
      if seq[-1] == 1:
        break
  for method in ("greedy", "beam"):
    options = generate.DecodeOptions(method=method, beam_size=1, alpha=0.0, max_length=length,
                                     eos_id=1)
    out, _ = generate.generate(graphdef, params, batch, jax.random.key(0), options=options)
    np.testing.assert_array_equal(np.asarray(out), expected, err_msg=method)
  options = generate.DecodeOptions(method="beam", beam_size=3, alpha=0.6, max_length=length,
                                   eos_id=1)
  out, scores = generate.generate(graphdef, params, batch, jax.random.key(0), options=options)
  assert out.shape == (3, length) and np.all(np.isfinite(np.asarray(scores)))
