"""Polytropon (Poly) and Multi-Head Routing (MHR): task-routed mixtures of LoRA "skills".

Poly: Ponti, Sordoni, Bengio, Reddy, "Combining Parameter-efficient Modules for Task-level
Generalisation" (EACL 2023). Each adapted projection keeps an inventory of `S` LoRA skills
`(A_s, B_s)`; a learned task-skill allocation `Z [tasks, S]` mixes them per task:
`A_t = sum_s w_ts A_s`, `B_t = sum_s w_ts B_s`, and the update of a token of task `t` is
`alpha / r * x A_t B_t`.

MHR: Caccia, Ponti, Su, Pereira, Le Roux, Sordoni, "Multi-Head Adapter Routing for Cross-Task
Generalization" (NeurIPS 2023). The same, with the factors cut into `H` blocks ("heads"): `A`'s
input dimension and `B`'s output dimension are split into `H` parts, each with its own routing
`Z [tasks, H, S]`. Poly is MHR with `H = 1`.

Choices the papers leave open or that mtjax makes (as HF PEFT's Poly does unless said):
- routing weights `w = sigmoid(Z) / (sum_s sigmoid(Z) + 1e-12)`, Z initialised U(-1e-3, 1e-3)
  (PEFT's choice; Poly draws Z from a relaxed Bernoulli during training). Here the routing is the
  deterministic sigmoid at training and at inference: no Gumbel noise, so a step depends on the
  parameters and batch only (checkpoints resume bit-identically without a noise key).
- each skill's `A` starts N(0, 1/fan_in), `B` at zero (LoRA's start: the model is unchanged);
- one routing table per adapted projection and layer (the papers route per layer as well);
- the task of a token is its mixture task (`task_ids`); at evaluation the task is fixed with
  `mtjax.peft.adapters.select_task`, and then the adapter folds into the kernel (`delta`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.parallel import rules
from mtjax.peft import lowrank

EPS = 1e-12


def _uniform(bound: float):
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class PolyLoRA(nnx.Module):
  """`S` skills of rank `r` with a `[tasks, heads, S]` routing table (heads = 1: Poly)."""

  def __init__(self, kernel_shape: Sequence[int], kernel_names: Sequence[str | None], n_in: int,
               *, rank: int, alpha: float, skills: int, heads: int, tasks: int, param_dtype,
               rngs: nnx.Rngs):
    shape = lowrank.Shape(kernel_shape, kernel_names, n_in)
    lowrank.check_divides(heads, (shape.in_dim, shape.out_dim), "model.adapter_heads")
    if tasks < 1:
      raise ValueError("poly / mhr adapters need the number of tasks (model.adapter_tasks)")
    self.shape, self.scale, self.heads, self.tasks = shape, alpha / rank, heads, tasks
    self.default_task = None  # used where no task is known (set by adapters.attach)
    self.task = None  # a fixed task (select_task): static, so each task compiles its program
    self.a, self.b = lowrank.bank(rngs, shape, skills, "skills", rank, param_dtype)
    self.router = rules.param(rngs, _uniform(1e-3),
                              (tasks, heads, skills), ("tasks", None, "skills"), param_dtype)

  def weights(self, router: jax.Array) -> jax.Array:
    """`[tasks, heads, skills]` mixing weights from the routing logits."""
    z = jax.nn.sigmoid(router.astype(jnp.float32))
    return z / (jnp.sum(z, axis=-1, keepdims=True) + EPS)

  def task_factors(self, a, b, router) -> tuple[jax.Array, jax.Array]:
    """(`A [tasks, in_dim, r]`, `B [tasks, r, out_dim]`) of one layer."""
    a, b = lowrank.flat_bank(a, b, self.shape)
    s, r, h = a.shape[0], a.shape[-1], self.heads
    w = self.weights(router)
    a_t = jnp.einsum("ths,shir->thir", w, a.reshape(s, h, -1, r).astype(jnp.float32))
    b_t = jnp.einsum("ths,srho->trho", w, b.reshape(s, r, h, -1).astype(jnp.float32))
    t = w.shape[0]
    return a_t.reshape(t, -1, r), b_t.reshape(t, r, -1)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = self.shape.flat_in(x)
    a_t, b_t = self.task_factors(self.a[...], self.b[...], self.router[...])
    onehot = lowrank.task_onehot(xf.shape[:-1], self.tasks, self.task, "a poly/mhr adapter",
                                    self.default_task)
    y = lowrank.per_token(xf, onehot, a_t, b_t) * jnp.asarray(self.scale, x.dtype)
    return self.shape.unflat_out(y)

  def delta(self) -> jax.Array:
    """The kernel-shaped update `scale * A_t @ B_t` of the fixed task (`select_task`)."""
    if self.task is None:
      raise lowrank.NotFoldable(
          "a poly/mhr adapter folds into dense weights for one task only: choose it with "
          "mtjax export --task NAME (in Python: mtjax.peft.adapters.select_task_on before "
          "mtjax.models.hf.export)")
    lead = self.a[...].ndim - self.shape.n_in - 2

    def one(a, b, router):
      a_t, b_t = self.task_factors(a, b, router)
      d = a_t[self.task] @ b_t[self.task] * self.scale
      return d.reshape(self.shape.in_shape + self.shape.out_shape)

    return lowrank.per_layer(one, self.a[...], self.b[...], self.router[...], lead=lead)
