"""Targets-only cross-entropy (label smoothing, z-loss, focal weighting), its normalisation, and
per-task sums.

The model owns the logits; this module owns how they become a scalar. Every normalisation mode is
linear in the per-token losses: `loss = sum(token_loss * coef) / denominator`, where `coef` and
`denominator` depend only on the batch's weights, segments and task ids. They are computed once on
the full batch, so gradient accumulation over microbatches sums to exactly the large-batch loss.
Sums are returned alongside the loss so metrics aggregate exactly across steps and tasks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# token: mean over target tokens (T5X default without a factor). sequence: summed token losses /
# number of examples. constant: summed / `loss_normalizing_factor` (T5X finetuning).
# sample: mean over examples of each example's token mean (mT0/xP3 target-length normalisation).
# task: mean over the tasks in the batch of each task's token mean (MFTCoder "data balance").
NORMALIZATIONS = ("token", "sequence", "constant", "sample", "task")


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


def normalization(weights: jax.Array, mode: str = "token", *, segment_ids: jax.Array | None = None,
                  task_ids: jax.Array | None = None, num_tasks: int = 1,
                  factor: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-token coefficients `[B, T]` and the scalar denominator of a normalisation mode.

  An example is a row (padded batches) or a `(row, segment)` pair (packed rows).
  """
  if mode not in NORMALIZATIONS:
    raise ValueError(f"train.loss_normalization must be one of {NORMALIZATIONS}, got {mode!r}")
  w = weights.astype(jnp.float32)
  if mode == "token":
    return w, jnp.maximum(jnp.sum(w), 1.0)
  if mode == "constant":
    if factor <= 0:
      raise ValueError("train.loss_normalization='constant' needs train.loss_normalizing_factor "
                       "> 0 (T5X finetuning uses 233472)")
    return w, jnp.float32(factor)
  if mode == "task":
    if task_ids is None:
      raise ValueError("train.loss_normalization='task' needs task_ids in the batch")
    ids = task_ids.reshape(-1)
    counts = jnp.zeros((num_tasks,), jnp.float32).at[ids].add(w.reshape(-1))
    coef = w / jnp.maximum(counts[ids], 1.0).reshape(w.shape)
    return coef, jnp.maximum(jnp.sum(counts > 0), 1).astype(jnp.float32)
  rows, length = w.shape
  seg = jnp.zeros_like(w, jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
  ids = (jnp.arange(rows, dtype=jnp.int32)[:, None] * (length + 1) + seg).reshape(-1)
  counts = jax.ops.segment_sum(w.reshape(-1), ids, num_segments=rows * (length + 1))
  num_examples = jnp.maximum(jnp.sum(counts > 0), 1).astype(jnp.float32)
  if mode == "sequence":
    return w, num_examples
  return w / jnp.maximum(counts[ids], 1.0).reshape(w.shape), num_examples  # sample


def token_stats(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0,
                z_loss: float = 0.0, focal_gamma: float = 0.0):
  """Per-token `(loss, nll, correct)`, each `[B, T]` float32: what the reductions need."""
  loss_tok, nll = token_cross_entropy(logits, targets, label_smoothing, z_loss)
  if focal_gamma > 0.0:
    loss_tok = loss_tok * jnp.power(1.0 - jnp.exp(-nll), focal_gamma)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return loss_tok, nll, correct


def chunked_token_stats(hidden: jax.Array, project, targets: jax.Array, chunk: int,
                        label_smoothing: float = 0.0, z_loss: float = 0.0,
                        focal_gamma: float = 0.0):
  """`token_stats` of `project(hidden)` without ever holding the `[B, T, V]` logits.

  The sequence is cut into chunks of `chunk` positions; a `lax.scan` projects one chunk at a
  time under `jax.checkpoint`, so the backward pass recomputes each chunk's logits instead of
  keeping them (one extra head matmul, ~2 d V FLOPs per token, against 2 x 4 B T V bytes of
  float32 logits and their gradient for a 32k vocabulary).
  """
  b, t = targets.shape
  pad = (-t) % chunk
  if pad:
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
  n = (t + pad) // chunk
  hs = jnp.moveaxis(hidden.reshape(b, n, chunk, hidden.shape[-1]), 1, 0)
  ts = jnp.moveaxis(targets.reshape(b, n, chunk), 1, 0)

  @jax.checkpoint
  def one(h, tgt):
    return token_stats(project(h), tgt, label_smoothing, z_loss, focal_gamma)

  _, stats = jax.lax.scan(lambda c, xs: (c, one(*xs)), None, (hs, ts))
  return tuple(jnp.moveaxis(x, 0, 1).reshape(b, n * chunk)[:, :t] for x in stats)


def reduce_stats(stats, weights: jax.Array, task_ids: jax.Array | None, num_tasks: int, *,
                 coef: jax.Array | None = None, denominator: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`sum(token_loss * coef) / denominator` (default: per target token), and summed metrics."""
  loss_tok, nll, correct = stats
  weights = weights.astype(jnp.float32)
  num_tokens = jnp.sum(weights)
  coef = weights if coef is None else coef
  denominator = jnp.maximum(num_tokens, 1.0) if denominator is None else denominator
  loss = jnp.sum(loss_tok * coef) / denominator
  correct = correct * weights
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


def loss_and_metrics(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                     task_ids: jax.Array | None, num_tasks: int, label_smoothing: float = 0.0,
                     z_loss: float = 0.0, *, coef: jax.Array | None = None,
                     denominator: jax.Array | None = None,
                     focal_gamma: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`sum(token_loss * coef) / denominator` (default: per target token), and summed metrics.

  `focal_gamma > 0` scales each token's loss by `(1 - p)^gamma`, p = the label's probability
  (focal loss, as in MFTCoder), so well-learnt tokens and tasks weigh less.
  """
  stats = token_stats(logits, targets, label_smoothing, z_loss, focal_gamma)
  return reduce_stats(stats, weights, task_ids, num_tasks, coef=coef, denominator=denominator)
