"""Optimizers and learning-rate schedules, from the run config."""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adafactor", "adamw")


def schedule(name: str, learning_rate: float, total_steps: int,
             warmup_steps: int = 0) -> optax.Schedule:
  """`constant`, `linear` / `cosine` decay to 0, or T5's `rsqrt` (lr / sqrt(max(step, warmup)))."""
  if name not in SCHEDULES:
    raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {name!r}")
  decay_steps = max(total_steps - warmup_steps, 1)
  if name == "constant":
    main = optax.constant_schedule(learning_rate)
  elif name == "linear":
    main = optax.linear_schedule(learning_rate, 0.0, decay_steps)
  elif name == "cosine":
    main = optax.cosine_decay_schedule(learning_rate, decay_steps)
  else:
    offset = max(warmup_steps, 1)
    # join_schedules also evaluates this during warmup (step < 0): clamp, never divide by 0.
    main = lambda step: learning_rate * (offset ** 0.5) / jnp.sqrt(
        jnp.maximum(step + offset, 1))
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def make(name: str, lr: optax.Schedule, weight_decay: float = 0.0,
         clip_norm: float = 0.0, *, decay_rate: float = 0.8,
         parameter_scale: bool = True) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (factored, decay 0.8, update clipping 1.0) or AdamW.

  Prompt tuning (Lester et al., ProMoT) turns Adafactor's parameter scaling off
  (`parameter_scale=False`): a prompt's scale is not a layer's.
  """
  if name == "adafactor":
    tx = optax.adafactor(learning_rate=lr, decay_rate=decay_rate, clipping_threshold=1.0,
                         multiply_by_parameter_scale=parameter_scale,
                         weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    tx = optax.adamw(learning_rate=lr, b1=0.9, b2=0.98, eps=1e-9, weight_decay=weight_decay)
  else:
    raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {name!r}")
  if clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx
