"""The jitted train step: (params, opt_state, batch, step) -> (params, opt_state, metrics).

Parameters are a plain pytree (NNX state as a pure dict) so optax, Orbax and `jax.jit` see the
same structure; the model graph is merged back inside the step. State is donated.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax
from flax import nnx

from mtjax.train import loss as loss_lib


def make_train_step(graphdef, tx: optax.GradientTransformation, *, num_tasks: int,
                    label_smoothing: float = 0.0, z_loss: float = 0.0,
                    dropout_seed: int = 0, donate: bool = True) -> Callable:
  """Builds the jitted step. Dropout keys derive from (seed, step), so resumption is exact."""

  def step_fn(params, opt_state, batch, step):
    rng = jax.random.fold_in(jax.random.key(dropout_seed), step)

    def compute_loss(p):
      model = nnx.merge(graphdef, p)
      logits = model(batch, rng=rng)  # dropout is a no-op when the model's rate is 0
      return loss_lib.loss_and_metrics(
          logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
          batch.get("task_ids"), num_tasks, label_smoothing, z_loss)

    (loss, metrics), grads = jax.value_and_grad(compute_loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.global_norm(grads)
    return params, opt_state, metrics

  return jax.jit(step_fn, donate_argnums=(0, 1) if donate else ())

