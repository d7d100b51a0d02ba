"""Per-token log-probabilities of targets under logits (`scoring` and `prefix_sharing`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_log_probs(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Per-token `log p(target)` `[B, T]`, zero where the weight is zero."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), -1)[..., 0]
  return jnp.where(weights > 0, picked, 0.0)
