"""Model presets by name, for both families, and the family-agnostic entry points.

`config("flan_t5_base")` -> `T5Config`, `config("llama_270m")` -> `DecoderConfig`;
`build(cfg, rngs=...)` makes the matching module; `create(model_config, seed=...)` is what the
trainer calls: a preset initialised from `seed`, or a local HF checkpoint when
`ModelConfig.hf_checkpoint` is set. `start_decode` / `decode_step` dispatch to the family.
"""

from __future__ import annotations

import dataclasses
from flax import nnx

from mtjax import errors
from mtjax.models import decoder, families, t5

PRESETS = {**t5.PRESETS, **decoder.PRESETS}

family = families.family  # the family module (`t5` or `decoder`) of a model or config


def config(name: str, **overrides):
  """The preset's config with `overrides` (fields the family lacks are an error)."""
  if name not in PRESETS:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(name, PRESETS, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise errors.ConfigError(f"model.preset: unknown model preset {name!r}{hint} "
                             f"(known: {', '.join(sorted(PRESETS))})")
  return dataclasses.replace(PRESETS[name], **overrides)


def build(cfg, *, rngs: nnx.Rngs):
  return t5.T5(cfg, rngs=rngs) if family(cfg) is t5 else decoder.Decoder(cfg, rngs=rngs)


def _overrides(model_config, task_names=None) -> dict:
  overrides = {"dropout_rate": model_config.dropout_rate, "dtype": model_config.dtype}
  remat = getattr(model_config, "remat", "none")
  if remat != "none":
    overrides["remat"] = remat
  if getattr(model_config, "scan_layers", False):
    overrides["scan_layers"] = True
  attention = getattr(model_config, "attention", "auto")
  if attention != "auto":  # both families (mtjax.models.layers.attention)
    overrides["attention"] = attention
  if getattr(model_config, "lora_rank", 0):
    overrides.update(lora_rank=model_config.lora_rank, lora_alpha=model_config.lora_alpha,
                     lora_targets=tuple(model_config.lora_targets))
    overrides.update(_adapter_overrides(model_config, task_names))
  return overrides


def _adapter_overrides(model_config, task_names) -> dict:
  """The multi-task adapter options (mtjax.peft.adapters); the task count and LoRAMoE's
  knowledge tasks resolved against the mixture's `task_names` when given."""
  adapter = getattr(model_config, "adapter", "lora")
  if adapter == "lora":
    return {}
  tasks = getattr(model_config, "adapter_tasks", 0) or len(task_names or ())
  knowledge = tuple(getattr(model_config, "adapter_knowledge_tasks", ()))
  default = getattr(model_config, "adapter_default_task", "")
  if task_names is None:  # (a shape-only use: names resolve when the mixture is known)
    knowledge, default = (), ""
  from mtjax.peft import adapters  # pylint: disable=g-import-not-at-top
  knowledge = adapters.task_indices(knowledge, task_names or (), "model.adapter_knowledge_tasks")
  default = adapters.task_indices((default,), task_names, "model.adapter_default_task")[0] \
      if default else -1
  return {"adapter": adapter, "adapter_experts": model_config.adapter_experts,
          "adapter_top_k": model_config.adapter_top_k,
          "adapter_heads": model_config.adapter_heads,
          "adapter_balance": model_config.adapter_balance, "adapter_tasks": tasks,
          "adapter_knowledge": knowledge, "adapter_default_task": default,
          "adapter_routing": getattr(model_config, "adapter_routing", "sigmoid"),
          "adapter_temperature": getattr(model_config, "adapter_temperature", 1.0),
          "adapter_shard_experts": getattr(model_config, "adapter_shard_experts", False)}


def architecture(model_config, task_names=None):
  """The family config a `schema.ModelConfig` describes (from an HF `config.json` if it names
  a checkpoint), without loading any weights. `task_names`: the mixture's tasks (task-routed
  adapters get one row per task)."""
  hf_dir = getattr(model_config, "hf_checkpoint", "")
  if hf_dir:
    from mtjax import fs  # pylint: disable=g-import-not-at-top
    from mtjax.models import hf  # pylint: disable=g-import-not-at-top
    return hf.config_from_hf(fs.read_json(fs.join(hf_dir, "config.json")),
                             **_overrides(model_config, task_names))[1]
  return config(model_config.preset, **_overrides(model_config, task_names))


def check_expert_sharding(model_config, mesh) -> None:
  """`model.adapter_shard_experts` needs the mesh's tensor axis to divide the experts."""
  if (mesh is None or not getattr(model_config, "adapter_shard_experts", False)
      or getattr(model_config, "adapter", "lora") not in ("mixlora", "loramoe")):
    return
  tensor, experts = mesh.shape.get("tensor", 1), model_config.adapter_experts
  if experts % tensor:
    from mtjax import errors  # pylint: disable=g-import-not-at-top
    raise errors.ConfigError(
        f"model.adapter_shard_experts: the mesh's tensor axis ({tensor} devices) must divide "
        f"model.adapter_experts={experts}",
        hint="choose adapter_experts a multiple of mesh.tensor, or leave the experts replicated")


def create(model_config, *, seed: int, mesh=None, rules=None, task_names=None):
  """The model a run starts from (`model_config` is a `schema.ModelConfig`).

  Call inside `jax.set_mesh(mesh)` + `nnx.logical_axis_rules(rules)`, so fresh parameters are
  created sharded; HF weights go straight to their shardings.
  """
  check_expert_sharding(model_config, mesh)
  hf_dir = getattr(model_config, "hf_checkpoint", "")
  if hf_dir:
    from mtjax.models import hf  # pylint: disable=g-import-not-at-top
    return hf.load(hf_dir, mesh=mesh, rules=rules, **_overrides(model_config, task_names))
  return build(architecture(model_config, task_names), rngs=nnx.Rngs(params=seed))


def start_decode(model, batch, max_decode_len: int):
  """`(logits [B, V] float32, cache)`: see `t5.start_decode` / `decoder.start_decode`."""
  return family(model).start_decode(model, batch, max_decode_len)


def decode_step(model, cache, tokens):
  """`(logits [B, V] float32, cache)`: see `t5.decode_step` / `decoder.decode_step`."""
  return family(model).decode_step(model, cache, tokens)
