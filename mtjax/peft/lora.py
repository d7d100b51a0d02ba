"""LoRA (Hu et al. 2021): a trainable low-rank update `W + (alpha / r) * A @ B` of projection kernels.

A model built with `lora_rank > 0` gets, next to each projection named in `lora_targets`
(decoder: query, key, value, out, gate, up, down; T5: query, key, value, out, wi_0, wi_1, wo), a
`<name>_lora` module holding `a` (`in_shape + (r,)`, random) and `b` (`(r,) + out_shape`,
zeros), so a fresh adapter leaves the model's outputs unchanged. The factors sit under paths
containing `lora`, which `train.trainable=lora` selects: the base weights then get no optimizer
state and stay bit-identical. The rank axis is the `lora` logical axis (replicated); the
kernel-shaped sides keep the kernel's own axis names, so they shard like the kernel.

Base weights come from a preset seed, an mtjax checkpoint or a HF checkpoint; the adapters start
fresh when the source lacks them. `merged_kernels` folds the adapters into the kernels, which is
what `mtjax export` writes (a plain HF checkpoint).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtjax.parallel import rules

AXIS = "lora"  # the rank axis: maps to no mesh axis (mtjax.parallel.rules)
SUFFIX = "_lora"


class LoRA(nnx.Module):
  """The update of one kernel of shape `in_shape + out_shape` (the first `n_in` axes contract)."""

  def __init__(self, kernel_shape: Sequence[int], kernel_names: Sequence[str | None], n_in: int,
               *, rank: int, alpha: float, param_dtype, rngs: nnx.Rngs):
    in_shape, out_shape = tuple(kernel_shape[:n_in]), tuple(kernel_shape[n_in:])
    in_names, out_names = tuple(kernel_names[:n_in]), tuple(kernel_names[n_in:])
    fan_in = 1
    for s in in_shape:
      fan_in *= s
    self.n_in, self.scale = n_in, alpha / rank
    # As the paper: A random (here N(0, 1/fan_in)), B zero, so the update starts at zero.
    self.a = rules.param(rngs, jax.nn.initializers.normal(stddev=fan_in ** -0.5),
                         in_shape + (rank,), in_names + (AXIS,), param_dtype)
    self.b = rules.param(rngs, jax.nn.initializers.zeros, (rank,) + out_shape,
                         (AXIS,) + out_names, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x @ A @ B * scale` for `x` of shape `[..., *in_shape]` (two thin matmuls)."""
    h = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=self.n_in)
    return jnp.tensordot(h, self.b[...].astype(x.dtype), axes=1) * jnp.asarray(self.scale,
                                                                                 x.dtype)

  def delta(self) -> jax.Array:
    """The kernel-shaped update `scale * A @ B` (with a leading layers axis when scanned)."""
    a, b = self.a[...], self.b[...]
    lead = a.ndim - self.n_in - 1  # 1 for a scanned stack, else 0
    if lead:
      return jax.vmap(lambda a, b: jnp.tensordot(a, b, axes=1))(a, b) * self.scale
    return jnp.tensordot(a, b, axes=1) * self.scale


def attach(module: nnx.Module, cfg, names_and_n_in: dict[str, int], *, rngs: nnx.Rngs) -> None:
  """Adds `<name>_lora` to `module` for each of its projections that `cfg.lora_targets` names."""
  if not getattr(cfg, "lora_rank", 0):
    return
  for name, n_in in names_and_n_in.items():
    if name not in cfg.lora_targets or not hasattr(module, name):
      continue
    kernel = getattr(module, name)
    setattr(module, name + SUFFIX,
            LoRA(kernel[...].shape, rules.axis_names(kernel), n_in, rank=cfg.lora_rank,
                 alpha=cfg.lora_alpha, param_dtype=cfg.param_dtype, rngs=rngs))


def project(module: nnx.Module, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """`y` (the base projection of `x` by kernel `name`) plus the adapter's update, if any."""
  adapter = getattr(module, name + SUFFIX, None)
  return y if adapter is None else y + adapter(x).astype(y.dtype)


def check_targets(cfg, known: Sequence[str]) -> None:
  """Config check shared by the families: a misspelled target must not silently do nothing."""
  if cfg.lora_rank < 0:
    raise ValueError(f"model.lora_rank must be >= 0, got {cfg.lora_rank}")
  unknown = sorted(set(cfg.lora_targets) - set(known))
  if cfg.lora_rank and (unknown or not cfg.lora_targets):
    raise ValueError(f"model.lora_targets: {unknown or 'empty'}; this model family's "
                     f"projections are {list(known)}")


def merged_kernels(model: nnx.Module) -> dict[str, jax.Array]:
  """`{kernel path: kernel + update}` for every adapter of `model` (paths joined by `.`).
  Adapters that do not fold (MixLoRA, LoRAMoE; Poly/MHR and MTLoRA without a chosen task)
  raise `mtjax.peft.lowrank.NotFoldable`, which says why."""
  out = {}
  nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}
  for path, node in nodes.items():
    # LoRA, and any multi-task adapter (mtjax.peft.adapters) under `<name>_lora`: its `delta`
    # is the update, or raises `NotFoldable` (a router's mixture, a task not chosen).
    if path and str(path[-1]).endswith(SUFFIX) and isinstance(node, nnx.Module) and hasattr(
        node, "delta"):
      *parent, attr = path
      delta = node.delta()
      kernel_attr = str(attr)[:-len(SUFFIX)]
      kernel = getattr(nodes[tuple(parent)], kernel_attr)[...]
      out[".".join(str(k) for k in (*parent, kernel_attr))] = kernel + delta.astype(kernel.dtype)
  return out


def fresh_value(path: str, shape: Sequence[int], names: Sequence[str | None], dtype,
                seed: int = 0) -> jax.Array:
  """A new adapter factor for a model whose other weights come from elsewhere (a HF checkpoint):
  `b` (and `*_b`) zeros, anything else (`a`, routers) N(0, 1/fan_in) from `seed` and the path
  (so each factor differs)."""
  import zlib  # pylint: disable=g-import-not-at-top

  last = re.split(r"[./]", path)[-1]
  if last == "b" or last.endswith("_b"):  # LoRA's b, and the B banks of mtjax.peft.adapters
    return jnp.zeros(shape, dtype)
  lead = 1 if names and names[0] == "layers" else 0
  fan_in = 1
  for s in shape[lead:-1]:
    fan_in *= s
  key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(path.encode()))
  return (jax.random.normal(key, tuple(shape), jnp.float32) * fan_in ** -0.5).astype(dtype)


def is_adapter_path(path: str) -> bool:
  """True for a parameter path inside an adapter, however it is written (`a/b_lora/a`,
  `a.b_lora.a`, or jax's `['a']['b_lora']['a']`)."""
  return re.search(rf"\w{SUFFIX}\b", path) is not None
