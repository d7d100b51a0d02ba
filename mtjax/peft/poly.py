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

Routing (`model.adapter_routing`). Poly learns a binary task-skill allocation `Z` through a
continuous relaxation: during training each entry is a relaxed Bernoulli (Gumbel-sigmoid,
Maddison et al. 2017 / Jang et al. 2017) sample
    z = sigmoid((logit + log u - log(1 - u)) / tau),  u ~ U(0, 1),
and at evaluation the allocation is deterministic. `gumbel` does exactly this (`relaxed_bernoulli`,
temperature `model.adapter_temperature`); `sigmoid` (the default) uses the deterministic
`z = sigmoid(logit)` at training too. Either way the weights are
`w = z / (sum_s z + 1e-12)` and evaluation, inference and export use `sigmoid(logit)`.

Choices the papers leave open or that mtjax makes (as HF PEFT's Poly does unless said):
- the deterministic routing at evaluation is `sigmoid(logit)` (PEFT's choice; the relaxed
  sample's median at temperature 1), not a thresholded 0/1 allocation; the logits start
  U(-1e-3, 1e-3) (PEFT's);
- `gumbel`: one draw of the allocation per task, layer, adapted projection and training step
  (per microbatch), shared by every token of that task in the batch (PEFT draws one per
  example); temperature 1 by default (PEFT's fixed value), u clipped to [eps, 1 - eps] of
  float32 (torch's `clamp_probs`); the noise comes from the step's dropout rng
  (`mtjax.peft.routing.noise`), so a resumed run draws the same noise and stays bit-identical;
  MHR's per-block allocations are drawn the same way (our choice: the relaxation is Poly's);
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
from mtjax.peft import lowrank, routing

EPS = 1e-12
ROUTINGS = ("sigmoid", "gumbel")  # model.adapter_routing


def _uniform(bound: float):
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def relaxed_bernoulli(key: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """A relaxed Bernoulli (Gumbel-sigmoid) sample of `logits`' shape, float32:
  `sigmoid((logits + log u - log(1 - u)) / temperature)`, `u ~ U(eps, 1 - eps)`. It exceeds 1/2
  with probability `sigmoid(logits)` at any temperature."""
  eps = jnp.finfo(jnp.float32).eps
  u = jnp.clip(jax.random.uniform(key, logits.shape, jnp.float32), eps, 1 - eps)
  noise = jnp.log(u) - jnp.log1p(-u)
  return jax.nn.sigmoid((logits.astype(jnp.float32) + noise) / temperature)


class PolyLoRA(nnx.Module):
  """`S` skills of rank `r` with a `[tasks, heads, S]` routing table (heads = 1: Poly)."""

  def __init__(self, kernel_shape: Sequence[int], kernel_names: Sequence[str | None], n_in: int,
               *, rank: int, alpha: float, skills: int, heads: int, tasks: int, param_dtype,
               rngs: nnx.Rngs, routing_mode: str = "sigmoid", temperature: float = 1.0):
    shape = lowrank.Shape(kernel_shape, kernel_names, n_in)
    lowrank.check_divides(heads, (shape.in_dim, shape.out_dim), "model.adapter_heads")
    if tasks < 1:
      raise ValueError("poly / mhr adapters need the number of tasks (model.adapter_tasks)")
    if routing_mode not in ROUTINGS:
      raise ValueError(f"model.adapter_routing must be one of {ROUTINGS}, got {routing_mode!r}")
    self.shape, self.scale, self.heads, self.tasks = shape, alpha / rank, heads, tasks
    self.routing_mode, self.temperature = routing_mode, float(temperature)
    self.default_task = None  # used where no task is known (set by adapters.attach)
    self.task = None  # a fixed task (select_task): static, so each task compiles its program
    self.a, self.b = lowrank.bank(rngs, shape, skills, "skills", rank, param_dtype)
    self.router = rules.param(rngs, _uniform(1e-3),
                              (tasks, heads, skills), ("tasks", None, "skills"), param_dtype)

  def weights(self, router: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """`[tasks, heads, skills]` mixing weights from the routing logits: the deterministic
    sigmoid, or with `key` a relaxed Bernoulli draw (`gumbel` routing, training)."""
    if key is None:
      z = jax.nn.sigmoid(router.astype(jnp.float32))
    else:
      z = relaxed_bernoulli(key, router, self.temperature)
    return z / (jnp.sum(z, axis=-1, keepdims=True) + EPS)

  def task_factors(self, a, b, router, key=None) -> tuple[jax.Array, jax.Array]:
    """(`A [tasks, in_dim, r]`, `B [tasks, r, out_dim]`) of one layer."""
    a, b = lowrank.flat_bank(a, b, self.shape)
    s, r, h = a.shape[0], a.shape[-1], self.heads
    w = self.weights(router, key)
    a_t = jnp.einsum("ths,shir->thir", w, a.reshape(s, h, -1, r).astype(jnp.float32))
    b_t = jnp.einsum("ths,srho->trho", w, b.reshape(s, r, h, -1).astype(jnp.float32))
    t = w.shape[0]
    return a_t.reshape(t, -1, r), b_t.reshape(t, r, -1)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = self.shape.flat_in(x)
    key = routing.noise_key() if self.routing_mode == "gumbel" else None  # training only
    a_t, b_t = self.task_factors(self.a[...], self.b[...], self.router[...], key)
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
