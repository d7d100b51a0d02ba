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
)


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
