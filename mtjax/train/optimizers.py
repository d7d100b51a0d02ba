"""Optimizers and learning-rate schedules, from the run config."""

from __future__ import annotations

from collections.abc import Callable

import jax
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


def _param_path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def scale_by_param_rms_except(unscaled: Callable[[str], bool],
                              min_scale: float = 1e-3) -> optax.GradientTransformation:
  """`optax.scale_by_param_block_rms`, except for parameters whose `/` path `unscaled` accepts.

  Adafactor multiplies each step by max(RMS(param), 1e-3). A LoRA factor `b` starts at zero, so
  its steps would be lr * 1e-3 and then grow only by a factor (1 + lr) per step: the adapter
  barely trains. Its steps stay lr-sized instead (as for a soft prompt). Same (empty) state as
  optax's, so the optimizer state's structure is unchanged.
  """

  def update(updates, state, params):
    if params is None:
      raise ValueError("scale_by_param_rms_except needs the parameters")
    scale = lambda path, u, p: u if unscaled(_param_path(path)) else (
        u * jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p))), min_scale).astype(u.dtype))
    return jax.tree_util.tree_map_with_path(scale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make(name: str, lr: optax.Schedule, weight_decay: float = 0.0,
         clip_norm: float = 0.0, *, decay_rate: float = 0.8,
         parameter_scale: bool = True,
         unscaled: Callable[[str], bool] | None = None) -> optax.GradientTransformation:
  """Adafactor with T5X's defaults (factored, decay 0.8, update clipping 1.0) or AdamW.

  Prompt tuning (Lester et al., ProMoT) turns Adafactor's parameter scaling off
  (`parameter_scale=False`): a prompt's scale is not a layer's. `unscaled` (a `/` path
  predicate, e.g. LoRA factors) turns it off for some parameters only: optax's Adafactor chain
  with `scale_by_param_rms_except` in place of its parameter scaling.
  """
  if name == "adafactor" and parameter_scale and unscaled is not None:
    # optax.adafactor's chain, element for element (tests/train/test_optimizers.py checks it
    # equals optax's when nothing is exempt).
    parts = [optax.scale_by_factored_rms(decay_rate=decay_rate),
             optax.clip_by_block_rms(1.0),
             optax.scale_by_learning_rate(lr, flip_sign=False),
             scale_by_param_rms_except(unscaled)]
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    tx = optax.chain(*parts, optax.scale(-1))
  elif name == "adafactor":
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
