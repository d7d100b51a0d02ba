"""Logical axis names -> mesh axes. The only place that decides how things are sharded.

Model code names axes logically (`embed`, `mlp`, ...); these rules turn them into mesh axes.
Parameters: `embed` is sharded over `fsdp` (ZeRO-3 style), the wide axes over `tensor`.
Activations: `batch` over `data` x `fsdp`.
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec as P

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
    ("prompt", None),
    ("lora", None),  # LoRA rank axis
    # banks of the multi-task adapters (mtjax.peft.adapters): replicated, except MixLoRA /
    # LoRAMoE experts with model.adapter_shard_experts (`sharded_experts`: over `tensor`)
    ("skills", None),
    ("experts", None),
    ("sharded_experts", "tensor"),
    ("tasks", None),
    ("shared", None),
)


def param(rngs, init, shape: Sequence[int], names: Sequence[str], dtype):
  """An `nnx.Param` with logical axis names (turned into mesh axes by these rules): placed on its
  sharding inside a mesh, unplaced (names kept) outside one. Models and LoRA adapters
  (`mtjax.peft.lora`, which the models import) create their parameters through it."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if len(shape) != len(names):
    raise ValueError(f"shape {tuple(shape)} and axis names {tuple(names)} differ in rank")
  value = init(rngs.params(), tuple(shape), dtype)
  if jax.sharding.get_abstract_mesh().empty:  # no mesh: keep the names, place nothing
    with nnx.use_eager_sharding(False):
      return nnx.Param(value, sharding_names=tuple(names))
  return nnx.Param(value, sharding_names=tuple(names))


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None) -> P:
  """PartitionSpec for logical axis names; unknown names are replicated, mesh axes used once."""
  rules = dict(flax_spmd.get_logical_axis_rules() if rules is None else rules)
  used: set[str] = set()
  spec = []
  for name in names:
    target = rules.get(name) if name else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def giving_way_to(names: Sequence[str | None], first: str, rules: Rules | None = None
                  ) -> tuple[str | None, ...]:
  """`names` with every other name that maps to a mesh axis of `first` replaced by None, so that
  `first` (e.g. `sharded_experts`) gets that axis: a sharding maps each mesh axis to one
  dimension (the rules in force, else `DEFAULT_RULES`)."""
  rules = dict(rules or flax_spmd.get_logical_axis_rules() or DEFAULT_RULES)

  def axes(name):
    target = rules.get(name) if name else None
    return set((target,) if isinstance(target, str) else tuple(target or ()))

  taken = axes(first)
  return tuple(n if n == first or not (axes(n) & taken) else None for n in names)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh or without rules."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not flax_spmd.get_logical_axis_rules():
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def axis_names(variable) -> tuple[str | None, ...] | None:
  """The logical axis names an NNX variable was created with (None if it has none)."""
  metadata = variable.get_metadata()
  names = metadata.get("out_sharding", metadata.get("sharding_names"))
  return None if names is None else tuple(names)
