"""KV-cache decoding, both families: greedy with the cache picks the same tokens as recomputing
the full forward each step (prompts of different lengths, prefix-LM, scanned layers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtjax.models import decoder, hf, registry, t5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("decoder_test"))
  hf.export(decoder.Decoder(decoder.preset("decoder_test"), rngs=nnx.Rngs(4)), path)
  return path


@nnx.jit
def forward(model, batch):
  return model(batch)


def _pad(x, n):
  return np.array(x + [0] * (n - len(x)), np.int32)


start_decode = nnx.jit(registry.start_decode, static_argnums=2)
decode_step = nnx.jit(registry.decode_step)


def _greedy_cached(model, batch, steps):
  logits, cache = start_decode(model, batch, steps)
  tokens = [jnp.argmax(logits, -1).astype(jnp.int32)]
  for _ in range(steps - 1):
    logits, cache = decode_step(model, cache, tokens[-1])
    tokens.append(jnp.argmax(logits, -1).astype(jnp.int32))
  b = batch[next(iter(batch))].shape[0]
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape[0] == b  # beam search tiles/gathers along the leading axis
  return np.asarray(jnp.stack(tokens, 1))


def test_t5_cached_greedy_equals_full_recompute():
  m = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(3))
  enc = np.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]], np.int32)
  steps = 6
  got = _greedy_cached(m, {"encoder_input_tokens": enc}, steps)
  dec = np.zeros((2, steps), np.int32)  # BOS = 0, then the tokens chosen so far
  for i in range(steps):
    logits = np.asarray(forward(m, {"encoder_input_tokens": enc, "decoder_input_tokens": dec}))
    nxt = logits[:, i].argmax(-1)
    np.testing.assert_array_equal(got[:, i], nxt)
    if i + 1 < steps:
      dec[:, i + 1] = nxt


@pytest.mark.parametrize("prefix_lm,scan", [(False, False), (True, True)],
                         ids=["causal", "prefix_lm-scanned"])
def test_decoder_cached_greedy_equals_full_recompute_with_different_prompt_lengths(
    exported, prefix_lm, scan):
  m = hf.load(exported, scan_layers=scan)
  prompts = [[0, 5, 6, 7, 8], [0, 9, 10]]
  p, steps = 5, 5
  batch = {"decoder_input_tokens": np.stack([_pad(x, p) for x in prompts]),
           "decoder_prompt_lengths": np.array([len(x) for x in prompts], np.int32)}
  if prefix_lm:
    batch["decoder_causal_attention"] = (np.arange(p)[None] <
                                         batch["decoder_prompt_lengths"][:, None]).astype(np.int32)
  got = _greedy_cached(m, batch, steps)
  for row, prompt in enumerate(prompts):
    seq = list(prompt)
    for i in range(steps):
      full = {"decoder_input_tokens": _pad(seq, p + steps)[None]}
      if prefix_lm:
        full["decoder_causal_attention"] = _pad([1] * len(prompt), p + steps)[None]
      logits = np.asarray(forward(m, full))[0, len(seq) - 1]
      assert got[row, i] == logits.argmax(), (row, i)
      seq.append(int(logits.argmax()))


def test_registry_dispatches_decoding_to_the_family(exported):
  m = hf.load(exported)
  batch = {"decoder_input_tokens": np.array([[0, 5, 6]], np.int32)}
  logits, cache = start_decode(m, batch, 4)
  assert logits.shape == (1, 384) and logits.dtype == jnp.float32
  full = np.asarray(forward(m, batch))[0, -1]
  np.testing.assert_allclose(np.asarray(logits)[0], full, atol=1e-5)
  logits, cache = decode_step(m, cache, jnp.array([7], jnp.int32))
  full = np.asarray(forward(m, {"decoder_input_tokens": np.array([[0, 5, 6, 7]], np.int32)}))
  np.testing.assert_allclose(np.asarray(logits)[0], full[0, -1], atol=1e-5)


def test_t5_scanned_layers_give_the_same_logits_and_cached_tokens(tmp_path):
  m = t5.T5(t5.preset("t5_test"), rngs=nnx.Rngs(3))
  hf.export(m, str(tmp_path))
  scanned = hf.load(str(tmp_path), scan_layers=True)
  assert scanned.decoder_layers.mlp.wo[...].shape[0] == 2  # [layers, mlp, embed]
  batch = {"encoder_input_tokens": np.array([[5, 6, 7, 8, 1], [9, 10, 1, 0, 0]], np.int32),
           "decoder_input_tokens": np.array([[0, 3, 4], [0, 5, 0]], np.int32)}
  np.testing.assert_allclose(np.asarray(forward(scanned, batch)), np.asarray(forward(m, batch)),
                             atol=1e-5)
  enc = {"encoder_input_tokens": batch["encoder_input_tokens"]}
  np.testing.assert_array_equal(_greedy_cached(scanned, enc, 4), _greedy_cached(m, enc, 4))
