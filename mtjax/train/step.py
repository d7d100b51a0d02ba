"""The jitted train step: (params, opt_state, batch, step) -> (params, opt_state, metrics).

Parameters are a plain pytree (NNX state as a pure dict) so optax, Orbax and `jax.jit` see the
same structure; the model graph is merged back inside the step. State is donated. Only the
trainable subset of the parameters is differentiated and updated (`opt_state` covers only it).
With `microbatches > 1` the batch is split into strided microbatches whose gradients are summed
in a `lax.scan`; the loss normalisation is computed on the full batch first, so the result equals
one step on the full batch. Routers' balancing losses (mtjax.peft.routing) are not linear in the
batch: with microbatches, the penalty is the mean of the microbatches' own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtjax.peft import filters, routing
from mtjax.train import loss as loss_lib


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """How token losses become the training loss (see `mtjax.train.loss`)."""
  label_smoothing: float = 0.0
  z_loss: float = 0.0
  normalization: str = "token"
  normalizing_factor: float = 0.0
  focal_gamma: float = 0.0
  # > 0: project the last hidden states to logits this many positions at a time
  # (loss.chunked_token_stats), for models with `hidden`/`logits` (the decoder family).
  logits_chunk: int = 0


def _split_micro(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B/k, ...]; microbatch i takes rows i, i+k, ... (spread over all shards)."""
  return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, num_tasks: int,
                    label_smoothing: float = 0.0, z_loss: float = 0.0,
                    dropout_seed: int = 0, donate: bool = True,
                    trainable: frozenset[tuple] | None = None, microbatches: int = 1,
                    loss_options: LossOptions | None = None) -> Callable:
  """Builds the jitted step. Dropout keys derive from (seed, step), so resumption is exact.

  `trainable`: parameter paths to train (`mtjax.peft.filters.trainable_paths`); None = all.
  """
  opts = loss_options or LossOptions(label_smoothing=label_smoothing, z_loss=z_loss)

  def step_fn(params, opt_state, batch, step):
    rng = jax.random.fold_in(jax.random.key(dropout_seed), step)
    if trainable is None:
      train_p, frozen = params, {}
    else:
      train_p, frozen = filters.partition(params, trainable)
    weights = batch["decoder_loss_weights"]
    coef, denominator = loss_lib.normalization(
        weights, opts.normalization, segment_ids=batch.get("decoder_segment_ids"),
        task_ids=batch.get("task_ids"), num_tasks=num_tasks, factor=opts.normalizing_factor)

    # One microbatch with per-token normalisation keeps the original expression (bit-identical
    # results for existing runs); otherwise the full batch's coefficients and denominator apply.
    explicit = microbatches > 1 or opts.normalization != "token"

    def compute_loss(p, mb, mb_coef, mb_rng):
      full = p if trainable is None else filters.combine(p, frozen)
      model = nnx.merge(graphdef, full)
      targets = mb["decoder_target_tokens"]
      with routing.collect() as aux:  # routers' balancing losses (mtjax.peft.routing)
        if opts.logits_chunk > 0 and hasattr(model, "hidden"):
          stats = loss_lib.chunked_token_stats(
              model.hidden(mb, rng=mb_rng), model.logits, targets, opts.logits_chunk,
              opts.label_smoothing, opts.z_loss, opts.focal_gamma)
        else:  # dropout is a no-op when the model's rate is 0
          stats = loss_lib.token_stats(model(mb, rng=mb_rng), targets, opts.label_smoothing,
                                       opts.z_loss, opts.focal_gamma)
      loss, metrics = loss_lib.reduce_stats(
          stats, mb["decoder_loss_weights"], mb.get("task_ids"), num_tasks,
          coef=mb_coef if explicit else None, denominator=denominator if explicit else None)
      if aux.sums:  # each microbatch adds its share of the penalty
        loss = loss + aux.penalty() / max(microbatches, 1)
        metrics.update(aux.metrics())
      return loss, metrics

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
    if microbatches <= 1:
      (loss, metrics), grads = grad_fn(train_p, batch, coef, rng)
    else:
      micro = jax.tree.map(lambda x: _split_micro(x, microbatches), (dict(batch), coef))

      def body(carry, xs):
        i, (mb, mb_coef) = xs
        out = grad_fn(train_p, mb, mb_coef, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, out), None

      first = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(grad_fn, train_p, first[0], first[1], rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      ((loss, metrics), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(microbatches), micro))
    updates, opt_state = tx.update(grads, opt_state, train_p)
    train_p = optax.apply_updates(train_p, updates)
    params = train_p if trainable is None else filters.combine(train_p, frozen)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.global_norm(grads)
    return params, opt_state, metrics

  return jax.jit(step_fn, donate_argnums=(0, 1) if donate else ())


def make_eval_step(graphdef, *, num_tasks: int) -> Callable:
  """Jitted teacher-forced metrics sums (no dropout, no update) for a batch."""

  def eval_fn(params, batch):
    logits = nnx.merge(graphdef, params)(batch)
    _, metrics = loss_lib.loss_and_metrics(
        logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
        batch.get("task_ids"), num_tasks)
    return metrics

  return jax.jit(eval_fn)
