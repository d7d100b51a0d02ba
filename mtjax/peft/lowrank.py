"""Pieces the multi-task adapters share: kernel-shape bookkeeping, factor banks, task selection.

An adapter of a kernel `in_shape + out_shape` (the first `n_in` axes contract) sees inputs
`[B, L, *in_shape]`; the adapters here work on the flattened view `[B, L, in_dim]` ->
`[B, L, out_dim]`, while their factors keep the kernel's axis names (so they shard like it) with
a bank axis in front (`skills`, `experts` or `tasks`: replicated, no mesh rule names them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax import errors
from mtjax.parallel import rules
from mtjax.peft import routing

AXIS = "lora"  # the rank axis (replicated), as mtjax.peft.lora's


class NotFoldable(errors.ConfigError):
  """An adapter whose update depends on the input (a router) or on a task not chosen."""


class Shape:
  """`in_shape + out_shape` of a kernel with its axis names."""

  def __init__(self, kernel_shape: Sequence[int], kernel_names: Sequence[str | None], n_in: int):
    self.n_in = n_in
    self.in_shape, self.out_shape = tuple(kernel_shape[:n_in]), tuple(kernel_shape[n_in:])
    self.in_names, self.out_names = tuple(kernel_names[:n_in]), tuple(kernel_names[n_in:])
    self.in_dim, self.out_dim = math.prod(self.in_shape), math.prod(self.out_shape)

  def flat_in(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[:x.ndim - self.n_in] + (self.in_dim,))

  def unflat_out(self, y: jax.Array) -> jax.Array:
    return y.reshape(y.shape[:-1] + self.out_shape)


def bank(rngs, shape: Shape, n: int, bank_name: str, rank: int, param_dtype):
  """`(a, b)`: `n` LoRA factor pairs, `a [n, *in_shape, r]` ~ N(0, 1/fan_in), `b [n, r,
  *out_shape]` zeros (so every adapter starts as the identity update, as LoRA)."""
  a_names = rules.giving_way_to((bank_name,) + shape.in_names + (AXIS,), bank_name)
  b_names = rules.giving_way_to((bank_name, AXIS) + shape.out_names, bank_name)
  a = rules.param(rngs, jax.nn.initializers.normal(stddev=shape.in_dim ** -0.5),
                  (n,) + shape.in_shape + (rank,), a_names, param_dtype)
  b = rules.param(rngs, jax.nn.initializers.zeros, (n, rank) + shape.out_shape, b_names,
                  param_dtype)
  return a, b


def flat_bank(a: jax.Array, b: jax.Array, shape: Shape) -> tuple[jax.Array, jax.Array]:
  """`a [n, in_dim, r]`, `b [n, r, out_dim]` (one layer's factors)."""
  return (a.reshape(a.shape[0], shape.in_dim, a.shape[-1]),
          b.reshape(b.shape[0], b.shape[1], shape.out_dim))


def per_token(x: jax.Array, onehot: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """`x_t @ a[k_t] @ b[k_t]` for each token t with the one-hot choice `onehot [..., n]` (or
  soft weights: then the weighted sum of the n updates): `x [..., in]`, `a [n, in, r]`,
  `b [n, r, out]`. The rank-r products of all n factors are formed (n * r is small); the
  out-projection contracts over (n, r) at once."""
  h = jnp.einsum("...i,nir->...nr", x, a.astype(x.dtype))
  h = h * onehot[..., None].astype(x.dtype)
  return jnp.einsum("...nr,nro->...o", h, b.astype(x.dtype))


def task_onehot(lead_shape, num_tasks: int, fixed: int | None, what: str,
                default: int | None = None) -> jax.Array:
  """`[*lead_shape, num_tasks]`: the fixed task, else the routing scope's ids (mtjax.peft.routing),
  else the `default` task (model.adapter_default_task); an error naming the adapter when none is
  known."""
  if fixed is None:
    ids = routing.token_ids(lead_shape)
    if ids is not None:
      return jax.nn.one_hot(ids, num_tasks)
    fixed = default
  if fixed is None:
    raise ValueError(
        f"{what} routes by task, but this forward pass knows none: training reads the batch's "
        "task_ids; evaluation of the mixture's tasks and export fix one "
        "(mtjax.peft.adapters.select_task), as does mtjax infer --task; other tasks use "
        "model.adapter_default_task, which is not set")
  return jnp.broadcast_to(jax.nn.one_hot(fixed, num_tasks), tuple(lead_shape) + (num_tasks,))


def per_layer(fn, *arrays: jax.Array, lead: int):
  """`fn(*arrays)` once per layer of a scanned stack (`lead` = 1), else once."""
  return jax.vmap(fn)(*arrays) if lead else fn(*arrays)


def check_divides(n: int, dims: Sequence[int], what: str) -> None:
  bad = [d for d in dims if d % n]
  if bad:
    raise ValueError(f"{what}={n} must divide the adapted projections' sizes; {bad} are not "
                     "multiples")


def set_task(module: nnx.Module, task: int | None) -> None:
  module.task = task
