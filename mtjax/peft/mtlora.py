"""MTLoRA: task-agnostic and task-specific low-rank modules in the same layer.

Agiza, Neseem, Reda, "MTLoRA: Low-Rank Adaptation Approach for Efficient Multi-Task Learning"
(CVPR 2024). The paper adds to a frozen backbone task-agnostic LoRA modules (TA-LoRA, shared by
every task) and task-specific ones (TS-LoRA, one per task), the latter at the end of each
backbone stage, where they produce one feature map per task for that task's decoder head.

mtjax's setting is a text-to-text mixture with one task per example and one shared output head,
so the choices it makes are:
- every adapted projection (`model.lora_targets`) gets both: `y = x W + alpha / r * (x A B +
  x A_t B_t)`, with `t` the token's mixture task (`task_ids`); the paper's per-stage placement
  of TS-LoRA has no counterpart in a uniform transformer stack, so it is not reproduced;
- both ranks are `model.lora_rank`, both scales `alpha / r`; every `A` starts N(0, 1/fan_in),
  every `B` at zero (the model starts unchanged);
- the paper's fusion of multi-scale task features (its decoders) is left out: the task-specific
  update enters the projection it adapts, like the shared one.
For a fixed task (`mtjax.peft.adapters.select_task`) it folds into the kernel (`delta`), so a
per-task HF checkpoint can be exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.peft import lowrank


class MTLoRA(nnx.Module):
  """A shared LoRA pair `(a, b)` plus one pair per task `(task_a, task_b)`."""

  def __init__(self, kernel_shape: Sequence[int], kernel_names: Sequence[str | None], n_in: int,
               *, rank: int, alpha: float, tasks: int, param_dtype, rngs: nnx.Rngs):
    if tasks < 1:
      raise ValueError("mtlora adapters need the number of tasks (model.adapter_tasks)")
    shape = lowrank.Shape(kernel_shape, kernel_names, n_in)
    self.shape, self.scale, self.tasks = shape, alpha / rank, tasks
    self.default_task = None  # used where no task is known (set by adapters.attach)
    self.task = None  # a fixed task (select_task)
    self.a, self.b = lowrank.bank(rngs, shape, 1, "shared", rank, param_dtype)
    self.task_a, self.task_b = lowrank.bank(rngs, shape, tasks, "tasks", rank, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = self.shape.flat_in(x)
    onehot = lowrank.task_onehot(xf.shape[:-1], self.tasks, self.task, "an mtlora adapter",
                                    self.default_task)
    a, b = lowrank.flat_bank(self.a[...], self.b[...], self.shape)
    ta, tb = lowrank.flat_bank(self.task_a[...], self.task_b[...], self.shape)
    shared = jnp.einsum("...i,ir,ro->...o", xf, a[0].astype(x.dtype), b[0].astype(x.dtype))
    y = (shared + lowrank.per_token(xf, onehot, ta, tb)) * jnp.asarray(self.scale, x.dtype)
    return self.shape.unflat_out(y)

  def delta(self) -> jax.Array:
    """The kernel-shaped update `scale * (A B + A_t B_t)` of the fixed task."""
    if self.task is None:
      raise lowrank.NotFoldable(
          "an mtlora adapter folds into dense weights for one task only: choose it with "
          "mtjax export --task NAME (in Python: mtjax.peft.adapters.select_task_on before "
          "mtjax.models.hf.export)")
    lead = self.a[...].ndim - self.shape.n_in - 2

    def one(a, b, ta, tb):
      a, b = lowrank.flat_bank(a, b, self.shape)
      ta, tb = lowrank.flat_bank(ta, tb, self.shape)
      d = (a[0] @ b[0] + ta[self.task] @ tb[self.task]) * self.scale
      return d.reshape(self.shape.in_shape + self.shape.out_shape)

    return lowrank.per_layer(one, self.a[...], self.b[...], self.task_a[...], self.task_b[...],
                             lead=lead)
