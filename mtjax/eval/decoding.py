"""Greedy decoding for encoder-decoder models.

Thin for now: each step re-runs the decoder over a fixed-length buffer (no KV cache), which
keeps shapes static under `jit` and is cheap for the short targets of the synthetic tasks.
The KV-cache decoder (issue 4) replaces the inner call, not the interface.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.data.feature_converters import BOS_ID


@functools.partial(jax.jit, static_argnames=("graphdef", "max_length", "eos_id"))
def greedy_decode(graphdef, params, encoder_tokens: jax.Array, *, max_length: int,
                  eos_id: int) -> jax.Array:
  """Token ids `[B, max_length]`; positions after the first EOS are 0."""
  model = nnx.merge(graphdef, params)
  enc_seg = (encoder_tokens > 0).astype(jnp.int32)
  encoded = model.encode(encoder_tokens, enc_seg)
  batch = encoder_tokens.shape[0]
  out = jnp.zeros((batch, max_length), jnp.int32)
  done = jnp.zeros((batch,), bool)

  def body(carry):
    i, out, done = carry
    decoder_inputs = jnp.concatenate([jnp.full((batch, 1), BOS_ID, jnp.int32), out[:, :-1]], 1)
    logits = model.decode(encoded, enc_seg, decoder_inputs)
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), -1)
    token = jnp.where(done, 0, token).astype(jnp.int32)
    out = jax.lax.dynamic_update_index_in_dim(out, token, i, axis=1)
    return i + 1, out, done | (token == eos_id)

  def not_finished(carry):
    i, _, done = carry
    return (i < max_length) & ~jnp.all(done)

  _, out, _ = jax.lax.while_loop(not_finished, body, (0, out, done))
  return out
