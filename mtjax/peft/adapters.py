"""`model.adapter`: which low-rank adapter a model's projections get, for both families.

| adapter | module | what each adapted projection (or feed-forward block) gets |
|---|---|---|
| `lora` | `mtjax.peft.lora` | one LoRA pair (Hu et al. 2021) |
| `poly` / `mhr` | `mtjax.peft.poly` | `adapter_experts` LoRA skills mixed per task (MHR: per block) |
| `mixlora` | `mtjax.peft.moe_lora` | the feed-forward block as top-k routed LoRA experts; attention: LoRA |
| `loramoe` | `mtjax.peft.moe_lora` | `adapter_experts` LoRA experts, dense softmax router |
| `mtlora` | `mtjax.peft.mtlora` | a shared LoRA pair plus one pair per task |

All use `lora_rank`, `lora_alpha` and `lora_targets`, and put their parameters under
`<projection>_lora` (MixLoRA: `ffn_lora` on the feed-forward module), so `train.trainable=lora`
trains the adapters and routers only and `mtjax.peft.lora.is_adapter_path` knows them. The models
call `attach` when they build a projection's module, `lora.project` to add an update, and `ffn`
to let MixLoRA run a feed-forward block. Task identity reaches task-routed adapters through
`mtjax.peft.routing`; for evaluation and export, `select_task` fixes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flax import nnx

from mtjax import errors
from mtjax.parallel import rules
from mtjax.peft import lora, lowrank, moe_lora, mtlora, poly

METHODS = ("lora", "poly", "mhr", "mixlora", "loramoe", "mtlora")
TASK_ROUTED = ("poly", "mhr", "mtlora")  # need each token's task (fold for a fixed task)
FFN_NAMES = frozenset({"gate", "up", "down", "wi_0", "wi_1", "wo"})
FFN_SUFFIX = "ffn" + lora.SUFFIX
NotFoldable = lowrank.NotFoldable


def method(cfg) -> str:
  return getattr(cfg, "adapter", "lora") if getattr(cfg, "lora_rank", 0) else "none"


def check(cfg) -> None:
  """Config check shared by the families (called from their `__post_init__`)."""
  m = getattr(cfg, "adapter", "lora")
  if m not in METHODS:
    raise ValueError(f"model.adapter must be one of {METHODS}, got {m!r}")
  if m != "lora" and not getattr(cfg, "lora_rank", 0):
    raise ValueError(f"model.adapter={m!r} needs model.lora_rank > 0 (the rank of its LoRA "
                     "factors)")
  if m in ("poly", "mhr", "mixlora", "loramoe") and getattr(cfg, "adapter_experts", 1) < 1:
    raise ValueError("model.adapter_experts must be >= 1")
  routing_mode = getattr(cfg, "adapter_routing", "sigmoid")
  if routing_mode not in poly.ROUTINGS:
    raise ValueError(f"model.adapter_routing must be one of {poly.ROUTINGS}, got "
                     f"{routing_mode!r}")
  if not getattr(cfg, "adapter_temperature", 1.0) > 0:
    raise ValueError("model.adapter_temperature must be > 0")


def attach(module: nnx.Module, cfg, names_and_n_in: dict[str, int], *, rngs: nnx.Rngs) -> None:
  """Adds the configured adapter to each of `module`'s projections in `cfg.lora_targets`."""
  m = method(cfg)
  if m == "none":
    return
  targets = [n for n in names_and_n_in if n in cfg.lora_targets and hasattr(module, n)]
  if m == "lora" or (m == "mixlora" and not set(names_and_n_in) <= FFN_NAMES):
    lora.attach(module, cfg, names_and_n_in, rngs=rngs)  # MixLoRA: attention gets plain LoRA
    return
  common = dict(rank=cfg.lora_rank, alpha=cfg.lora_alpha, param_dtype=cfg.param_dtype,
                rngs=rngs)
  tasks = getattr(cfg, "adapter_tasks", 0)
  if m == "mixlora":
    if targets:
      kernels = {n: (getattr(module, n)[...].shape, rules.axis_names(getattr(module, n)))
                 for n in targets}
      setattr(module, FFN_SUFFIX, moe_lora.MixLoRA(
          kernels, cfg.d_model, experts=cfg.adapter_experts, top_k=cfg.adapter_top_k,
          balance=cfg.adapter_balance, tasks=tasks,
          shard=getattr(cfg, "adapter_shard_experts", False), **common))
    return
  for name in targets:
    kernel = getattr(module, name)
    args = (kernel[...].shape, rules.axis_names(kernel), names_and_n_in[name])
    if m in ("poly", "mhr"):
      adapter = poly.PolyLoRA(*args, skills=cfg.adapter_experts,
                              heads=cfg.adapter_heads if m == "mhr" else 1, tasks=tasks,
                              routing_mode=getattr(cfg, "adapter_routing", "sigmoid"),
                              temperature=getattr(cfg, "adapter_temperature", 1.0), **common)
    elif m == "mtlora":
      adapter = mtlora.MTLoRA(*args, tasks=tasks, **common)
    else:
      adapter = moe_lora.LoRAMoE(*args, experts=cfg.adapter_experts, balance=cfg.adapter_balance,
                                 knowledge_tasks=getattr(cfg, "adapter_knowledge", ()),
                                 tasks=tasks, shard=getattr(cfg, "adapter_shard_experts", False),
                                 **common)
    if m in TASK_ROUTED:
      default = getattr(cfg, "adapter_default_task", -1)
      adapter.default_task = default if default >= 0 else None
    setattr(module, name + lora.SUFFIX, adapter)


def ffn(module: nnx.Module, x, *, act: Callable, gate: str, up: str | None, down: str,
        dropout: Callable):
  """The feed-forward block's output through MixLoRA's experts, or None (no MixLoRA here: the
  block runs as usual)."""
  adapter = getattr(module, FFN_SUFFIX, None)
  if adapter is None:
    return None
  names = [gate, down] + ([up] if up else [])
  kernels = {n: getattr(module, n)[...] for n in names}
  return adapter(x, kernels, act, gate, up, down, dropout)


def _task_routed_nodes(model: nnx.Module):
  return [node for _, node in nnx.iter_graph(model)
          if isinstance(node, (poly.PolyLoRA, mtlora.MTLoRA))]


def task_routed(graphdef, params) -> bool:
  """Whether the model's adapters need a task (Poly/MHR, MTLoRA)."""
  return bool(_task_routed_nodes(nnx.merge(graphdef, params)))


def select_task(graphdef, params, task: int):
  """(graphdef, params) with every task-routed adapter fixed to mixture task `task`: decoding,
  scoring and export then need no task ids, and the adapters fold (`lora.merged_kernels`). The
  task is static in the graphdef, so each task compiles its own programs."""
  model = nnx.merge(graphdef, params)
  nodes = _task_routed_nodes(model)
  for node in nodes:
    if not 0 <= task < node.tasks:
      raise ValueError(f"task index {task} out of range: the adapters were built for "
                       f"{node.tasks} tasks")
    lowrank.set_task(node, task)
  if not nodes:
    return graphdef, params
  new_graphdef, _ = nnx.split(model)
  return new_graphdef, params


def default_task(graphdef, params) -> int | None:
  """The task index task-routed adapters use where none is known (`model.adapter_default_task`),
  or None (then such a forward pass is an error)."""
  nodes = _task_routed_nodes(nnx.merge(graphdef, params))
  return nodes[0].default_task if nodes else None


def task_index(graphdef, params, task: str, task_names: Sequence[str] | None) -> int | None:
  """The index task-routed adapters use for `task` at evaluation and inference: its row among
  `task_names` (the tasks the adapters were trained on: the training mixture's, in order), else
  `model.adapter_default_task`'s. None: the model has no task-routed adapter. A task they have
  no row for, without a default task, is a `ConfigError` naming both ways out."""
  if not task_routed(graphdef, params):
    return None
  names = list(task_names or ())
  if task in names:
    return names.index(task)
  fallback = default_task(graphdef, params)
  if fallback is not None:
    return fallback
  raise errors.ConfigError(
      f"task {task!r} is not one of the tasks whose adapters this model routes ({names}): "
      "task-routed adapters (model.adapter=poly/mhr/mtlora) have no routing for it, and the run "
      "set no model.adapter_default_task",
      hint="evaluate or infer one of those tasks (mtjax infer --task NAME), or train with "
           "model.adapter_default_task=NAME to serve other tasks with that task's adapters")


def for_task(graphdef, params, task: str, task_names: Sequence[str] | None):
  """(graphdef, params) with `task`'s index (`task_index`) fixed on task-routed adapters;
  unchanged without them."""
  index = task_index(graphdef, params, task, task_names)
  return (graphdef, params) if index is None else select_task(graphdef, params, index)


def select_task_on(model: nnx.Module, task: int) -> nnx.Module:
  """`select_task` on a module in place (export: `mtjax.models.hf.export` folds it)."""
  for node in _task_routed_nodes(model):
    lowrank.set_task(node, task)
  return model


def task_indices(names: Sequence[str], task_names: Sequence[str], key: str) -> tuple[int, ...]:
  """Mixture indices of `names` (a config key's task list); an unknown name is an error."""
  unknown = [n for n in names if n not in task_names]
  if unknown:
    raise errors.ConfigError(f"{key}: {unknown} are not tasks of the mixture "
                             f"({list(task_names)})")
  return tuple(list(task_names).index(n) for n in names)
