"""Mixtures of LoRA experts behind a learned router: MixLoRA and LoRAMoE.

MixLoRA: Li, Ma, Wang, Yang, Jiang, Zhou, Duan, Qiu, Gao, Tang, "MixLoRA: Enhancing Large
Language Models Fine-Tuning with LoRA-based Mixture of Experts" (arXiv 2404.15159, 2024). The
feed-forward block becomes `E` experts that share its frozen weights, each with its own LoRA on
the block's projections; a linear router over the block's input picks the top-k experts of each
token (softmax over the k selected logits, as Mixtral), and the block's output is their weighted
sum. The attention projections get plain LoRA. An auxiliary load-balancing loss (Switch /
Mixtral form) `E * sum_e f_e * P_e` keeps the experts used: `f_e` the share of top-k assignments
that go to expert `e`, `P_e` its mean router probability, over the batch's real tokens.

LoRAMoE: Dou, Zhou, Liu, Gao, Shen, Xiong, Zhou, Wang, Xi, Fan, Pu, Zhu, Zheng, Gui, Zhang,
Huang, "LoRAMoE: Alleviating World Knowledge Forgetting in Large Language Models via MoE-Style
Plugin" (ACL 2024). Each adapted projection gets `E` LoRA experts mixed by a dense softmax router:
`y = x W + alpha / r * sum_e g_e(x) x A_e B_e`. The localized balancing constraint splits the
experts into two groups, one meant for world knowledge and one for the downstream tasks, and
penalises `Var(Z) / Mean(Z)` of `Z = I * Q`: `Q[e, m]` the summed router weight of expert `e`
over tokens of data type `m`, `I[e, m] = 1 + delta` where expert `e`'s group is type `m`, else
`1 - delta`.

Choices made here:
- experts are computed densely (every expert's update for every token; the router's zeros do
  the top-k): the forward is exactly the sparse one's, the cost is `E` low-rank updates and, for
  MixLoRA, `E` activations and down projections per token (no token dispatch);
- MixLoRA's experts adapt the block projections `model.lora_targets` names (others stay the
  frozen kernel inside every expert); the router is one `[d_model, E]` matrix per block (no
  bias), started at N(0, 1/d), computed in float32;
- LoRAMoE's importance `Q` is divided by the number of tokens (the paper sums it over the
  batch, which makes the loss grow with the batch size);
- the balancing losses are computed per adapted module over the batch's real tokens, averaged
  over modules, and added to the training loss times `model.adapter_balance` (MixLoRA's
  coefficient: 0.01; LoRAMoE's beta, delta = 0.1: the values as we read the papers, not
  re-checked against their code); logged as `aux/<method>` and per task (the same loss on one
  task's tokens alone);
- LoRAMoE's data types come from the mixture: tasks named in `model.adapter_knowledge_tasks`
  are type 0 ("world knowledge", the first `E // 2` experts), the others type 1. With none named
  every token is type 1 and the constraint balances the downstream group against the idle
  knowledge group (it then pushes the knowledge experts' weight down, as the paper intends for
  downstream data).
- experts on a mesh axis (`model.adapter_shard_experts`): the expert axis of every expert
  bank and router (logical name `sharded_experts`) is sharded over the mesh's `tensor` axis
  (which must divide `model.adapter_experts`), so each tensor-parallel device holds (and keeps
  optimizer state for) 1/T of the experts instead of all of them; XLA partitions the dense
  expert computation accordingly. Off by default (replicated experts, as before); the forward and
  the gradients are the same either way (tested on 8 devices).
Neither folds into dense weights: the mixture depends on the input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.parallel import rules
from mtjax.peft import lowrank, routing

DELTA = 0.1  # LoRAMoE's localized-balance margin


EXPERTS = "experts"  # the expert axis' logical name: replicated
SHARDED_EXPERTS = "sharded_experts"  # ... over the mesh's tensor axis (adapter_shard_experts)


def expert_axis(shard: bool) -> str:
  return SHARDED_EXPERTS if shard else EXPERTS


def _router(rngs, d: int, experts: int, param_dtype, axis: str = EXPERTS):
  return rules.param(rngs, jax.nn.initializers.normal(stddev=d ** -0.5), (d, experts),
                     ("embed", axis), param_dtype)


def router_probs(x: jax.Array, router: jax.Array) -> jax.Array:
  """Softmax router probabilities `[..., E]` (float32) of inputs `x [..., d]`."""
  logits = jnp.einsum("...d,de->...e", x.astype(jnp.float32), router.astype(jnp.float32))
  return jax.nn.softmax(logits, axis=-1)


def top_k_weights(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(`weights [..., E]`: the top-k probabilities renormalised to sum to 1, zeros elsewhere;
  `chosen [..., E]`: 1 on the top-k). Ties go to the lower expert index (`lax.top_k`)."""
  _, idx = jax.lax.top_k(probs, k)
  chosen = jnp.sum(jax.nn.one_hot(idx, probs.shape[-1], dtype=probs.dtype), axis=-2)
  w = probs * chosen
  return w / jnp.sum(w, axis=-1, keepdims=True), chosen


def switch_balance(probs: jax.Array, chosen: jax.Array, mask: jax.Array) -> jax.Array:
  """`E * sum_e f_e * P_e` over the tokens where `mask` (float `[...]`) is 1."""
  e = probs.shape[-1]
  n = jnp.maximum(jnp.sum(mask), 1.0)
  f = jnp.sum(chosen * mask[..., None], axis=tuple(range(chosen.ndim - 1))) / n
  p = jnp.sum(probs * mask[..., None], axis=tuple(range(probs.ndim - 1))) / n
  return e * jnp.sum(f * p)


def localized_balance(gates: jax.Array, types: jax.Array, mask: jax.Array,
                      knowledge_experts: int) -> jax.Array:
  """LoRAMoE's `Var(I * Q) / Mean(I * Q)` (population variance over the `[E, 2]` entries), with
  `Q` the router weights summed per (expert, type) and divided by the number of tokens."""
  e = gates.shape[-1]
  onehot = jax.nn.one_hot(types, 2, dtype=jnp.float32) * mask[..., None]  # [..., 2]
  q = jnp.einsum("...e,...m->em", gates, onehot) / jnp.maximum(jnp.sum(mask), 1.0)
  group = (jnp.arange(e) >= knowledge_experts).astype(jnp.int32)
  coef = jnp.where(jax.nn.one_hot(group, 2) > 0, 1.0 + DELTA, 1.0 - DELTA)
  z = coef * q
  mean = jnp.mean(z)
  return jnp.var(z) / jnp.maximum(mean, 1e-9)


def _mask_and_ids(lead_shape):
  real = routing.real_tokens(lead_shape)
  mask = jnp.ones(lead_shape, jnp.float32) if real is None else real.astype(jnp.float32)
  return mask, routing.token_ids(lead_shape)


def _report(name: str, loss_fn: Callable, mask, ids, num_tasks: int, coef: float) -> None:
  """Reports `loss_fn(mask)` and, with ids, the same on each task's tokens alone."""
  if not routing.collecting():
    return
  if ids is None or num_tasks < 1:
    routing.report(name, loss_fn(mask), coef)
    return
  per_task = jax.nn.one_hot(ids, num_tasks, dtype=jnp.float32) * mask[..., None]
  task_losses = jax.vmap(loss_fn, in_axes=-1)(per_task)
  present = jnp.sum(per_task, axis=tuple(range(per_task.ndim - 1))) > 0
  routing.report(name, loss_fn(mask), coef, task_losses, present)


class LoRAMoE(nnx.Module):
  """`E` LoRA experts on one projection, mixed by a dense softmax router over its input."""

  def __init__(self, kernel_shape: Sequence[int], kernel_names: Sequence[str | None], n_in: int,
               *, rank: int, alpha: float, experts: int, balance: float,
               knowledge_tasks: Sequence[int], tasks: int, param_dtype, rngs: nnx.Rngs,
               shard: bool = False):
    shape = lowrank.Shape(kernel_shape, kernel_names, n_in)
    self.shape, self.scale, self.balance = shape, alpha / rank, balance
    self.knowledge_tasks, self.tasks = tuple(knowledge_tasks), tasks
    axis = expert_axis(shard)
    self.a, self.b = lowrank.bank(rngs, shape, experts, axis, rank, param_dtype)
    self.router = rules.param(rngs, jax.nn.initializers.normal(stddev=shape.in_dim ** -0.5),
                              shape.in_shape + (experts,),
                              rules.giving_way_to(shape.in_names + (axis,), axis), param_dtype)

  def gates(self, xf: jax.Array) -> jax.Array:
    router = self.router[...].reshape(self.shape.in_dim, -1)
    return router_probs(xf, router)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = self.shape.flat_in(x)
    g = self.gates(xf)
    a, b = lowrank.flat_bank(self.a[...], self.b[...], self.shape)
    y = lowrank.per_token(xf, g, a, b) * jnp.asarray(self.scale, x.dtype)
    if routing.collecting():
      mask, ids = _mask_and_ids(xf.shape[:-1])
      if ids is None:
        types = jnp.ones(xf.shape[:-1], jnp.int32)
      else:
        knowledge = jnp.zeros((max(self.tasks, 1),), jnp.int32)
        if self.knowledge_tasks:
          knowledge = knowledge.at[jnp.asarray(self.knowledge_tasks)].set(1)
        types = 1 - knowledge[jnp.clip(ids, 0, knowledge.shape[0] - 1)]
      k = g.shape[-1] // 2
      _report("loramoe_balance", lambda m: localized_balance(g, types, m, k), mask, ids,
              self.tasks, self.balance)
    return self.shape.unflat_out(y)

  def delta(self):
    raise lowrank.NotFoldable("loramoe adapters do not fold into dense weights: their expert "
                              "mixture depends on each token (export the model with "
                              "model.adapter=lora or mtlora/poly instead)")


class MixLoRA(nnx.Module):
  """A feed-forward block as `E` experts (the block's frozen kernels + each expert's LoRA on the
  `targets` projections) behind a top-k router."""

  def __init__(self, kernels: Mapping[str, tuple], d_model: int, *, rank: int, alpha: float,
               experts: int, top_k: int, balance: float, tasks: int, param_dtype,
               rngs: nnx.Rngs, shard: bool = False):
    """`kernels`: projection name -> (kernel shape, axis names) of the ones that get experts."""
    if not 1 <= top_k <= experts:
      raise ValueError(f"model.adapter_top_k={top_k} must be in [1, model.adapter_experts="
                       f"{experts}]")
    self.scale, self.top_k, self.balance, self.tasks = alpha / rank, top_k, balance, tasks
    self.names = tuple(kernels)
    axis = expert_axis(shard)
    for name, (shape, names) in kernels.items():
      a, b = lowrank.bank(rngs, lowrank.Shape(shape, names, 1), experts, axis, rank,
                          param_dtype)
      setattr(self, f"{name}_a", a)
      setattr(self, f"{name}_b", b)
    self.router = _router(rngs, d_model, experts, param_dtype, axis)

  def __call__(self, x: jax.Array, kernels: Mapping[str, jax.Array], act: Callable,
               gate: str, up: str | None, down: str, dropout: Callable) -> jax.Array:
    """The block's output for `x [..., d]`: `kernels` the frozen kernels by name, `act` the
    activation of `gate`'s output (times `up`'s when the block is gated), `dropout` the block's
    hidden dropout."""
    dt = x.dtype
    probs = router_probs(x, self.router[...])
    weights, chosen = top_k_weights(probs, self.top_k)
    e = probs.shape[-1]

    def proj(name, inp, per_expert):
      base = jnp.einsum("...i,io->...o", inp, kernels[name].astype(dt))
      if not per_expert:
        base = base[..., None, :]
      if name not in self.names:
        return jnp.broadcast_to(base, base.shape[:-2] + (e, base.shape[-1]))
      a = getattr(self, f"{name}_a")[...].astype(dt)
      b = getattr(self, f"{name}_b")[...].astype(dt)
      h = jnp.einsum("...ei,eir->...er" if per_expert else "...i,eir->...er", inp, a)
      return base + jnp.einsum("...er,ero->...eo", h, b) * jnp.asarray(self.scale, dt)

    h = act(proj(gate, x, False))
    if up is not None:
      h = h * proj(up, x, False)
    h = dropout(h)
    y = proj(down, h, True)  # [..., E, d]
    out = jnp.einsum("...e,...ed->...d", weights.astype(dt), y)
    if routing.collecting():
      mask, ids = _mask_and_ids(x.shape[:-1])
      _report("mixlora_balance", lambda m: switch_balance(probs, chosen, m), mask, ids,
              self.tasks, self.balance)
    return out

  def delta(self):
    raise lowrank.NotFoldable("mixlora adapters do not fold into dense weights: each token "
                              "goes through its own top-k experts")
