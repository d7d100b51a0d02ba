"""Targets-only cross-entropy with label smoothing and z-loss, plus per-task sums.

The model owns the logits; this module owns how they become a scalar. Sums are returned
alongside the normalised loss so that metrics can be aggregated exactly across steps and tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0,
                        z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-token loss `[B, T]` (cross-entropy + z_loss * logsumexp^2) and the plain NLL `[B, T]`.

  With label smoothing the target distribution puts `1 - s` on the label and spreads `s` over
  the vocabulary; the constant entropy term is subtracted (as T5X does) so a perfect model's
  loss is 0.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  lse = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - lse[..., None]
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    smooth = -(confidence * -nll + low * (jnp.sum(log_probs, -1) + nll))
    normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    loss = smooth - normalizer
  else:
    loss = nll
  if z_loss > 0.0:
    loss = loss + z_loss * jnp.square(lse)
  return loss, nll


def loss_and_metrics(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                     task_ids: jax.Array | None, num_tasks: int, label_smoothing: float = 0.0,
                     z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Loss normalised per target token, and summed metrics (global and per task)."""
  loss_tok, nll = token_cross_entropy(logits, targets, label_smoothing, z_loss)
  weights = weights.astype(jnp.float32)
  num_tokens = jnp.sum(weights)
  loss = jnp.sum(loss_tok * weights) / jnp.maximum(num_tokens, 1.0)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * weights
  metrics = {
      "loss_sum": jnp.sum(nll * weights),
      "correct_sum": jnp.sum(correct),
      "token_sum": num_tokens,
  }
  if task_ids is not None:
    ids = task_ids.reshape(-1)
    per_task = lambda x: jnp.zeros((num_tasks,), jnp.float32).at[ids].add(x.reshape(-1))
    metrics["task_loss_sum"] = per_task(nll * weights)
    metrics["task_correct_sum"] = per_task(correct)
    metrics["task_token_sum"] = per_task(weights)
  return loss, metrics
