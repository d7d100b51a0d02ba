"""The models `mtjax merge` reads, as flat `{"/"-joined path: array}` dicts on a mesh.

A source is an mtjax training run (its run dir: newest checkpoint; its `checkpoints/` dir; or one
step's dir `.../checkpoints/600`), an mtjax model dir (`mtjax convert`: model.json + params/), or
a Hugging Face dir (config.json + *.safetensors). Each parameter is restored (or, from HF, put)
straight into the sharding its logical axis names give on the mesh; no host holds a whole model.
A LoRA run's adapters are folded into their kernels first (`W + alpha / r * A @ B`, as
`mtjax export` does), and a soft prompt is left out (it has no place in a merged model), so what
remains is the plain model of the run's architecture.

`check_compatible` refuses sources that are not the same architecture: one ConfigError naming the
first differing parameter path and both shapes (or the first differing config field).

Only the public checkpoint and HF functions are used (`mtjax.models.hf.load`,
`mtjax.models.store.locate`, `mtjax.models.registry`), plus Orbax for a sharded restore.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from mtjax import errors, fs
from mtjax.models import decoder, registry, store, t5
from mtjax.parallel import rules as rules_lib
from mtjax.peft import lora

# Config fields that do not change the function a set of weights computes, or that loading
# removes (LoRA is merged): sources may differ in them.
COMPUTE_ONLY = ("dtype", "param_dtype", "remat", "attention", "dropout_rate", "scan_layers",
                "lora_rank", "lora_alpha", "lora_targets")


@dataclasses.dataclass
class Source:
  path: str  # as given
  kind: str  # "hf" | "run" | "model"
  family: str  # "t5" | "decoder"
  cfg: Any  # the family config (LoRA removed)
  params: dict[str, jax.Array]  # flat, "/"-joined paths
  run_cfg: Any = None  # schema.RunConfig of a run
  root: str | None = None  # the run dir or model dir (where `hf/` export facts live)
  step: int | None = None

  def describe(self) -> str:
    return self.path if self.step is None else f"{self.path} (step {self.step})"


def family_name(cfg) -> str:
  return "t5" if registry.family(cfg) is t5 else "decoder"


def is_hf_dir(path: str) -> bool:
  return (fs.exists(fs.join(path, "config.json")) and not fs.exists(fs.join(path, store.MODEL_FILE))
          and (bool(glob.glob(os.path.join(path, "*.safetensors"))) if not fs.is_url(path)
               else any(n.endswith(".safetensors") for n in fs.listdir(path))))


def shardings(cfg, mesh, rules) -> tuple[Any, dict]:
  """(graphdef, pure-dict tree of ShapeDtypeStructs with their NamedShardings) of `cfg`'s model."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    abstract = nnx.eval_shape(lambda: registry.build(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  specs = {tuple(path): jax.sharding.NamedSharding(
      mesh, rules_lib.logical_to_spec(rules_lib.axis_names(var) or (), rules))
           for path, var in state.flat_state()}
  flat = traverse_util.flatten_dict(state.to_pure_dict())
  return graphdef, traverse_util.unflatten_dict(
      {p: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=specs[p]) for p, v in flat.items()})


def flatten(tree) -> dict[str, jax.Array]:
  return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: dict[str, Any]) -> dict:
  """The nested pure dict of `flatten`'s output (layer indices as int keys, as NNX uses)."""
  return _typed(traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()}))


def _typed(tree):
  """Orbax gives layer indices back as str keys; NNX's pure dicts use int keys for lists."""
  if isinstance(tree, dict):
    return {(int(k) if isinstance(k, str) and k.isdigit() else k): _typed(v)
            for k, v in tree.items()}
  return tree


def _latest_step(ckpt_dir: str) -> int:
  steps = [int(d) for d in fs.listdir(ckpt_dir) if d.isdigit()] if fs.isdir(ckpt_dir) else []
  if fs.is_url(ckpt_dir):  # a bucket step folder exists while it uploads: committed ones only
    steps = [s for s in steps if fs.exists(fs.join(ckpt_dir, str(s), "commit_success.txt"))]
  if not steps:
    raise errors.MissingError(f"no checkpoint in {ckpt_dir}")
  return max(steps)


def _config_from_model_json(raw: dict):
  cls = {"t5": t5.T5Config, "decoder": decoder.DecoderConfig}[raw["family"]]
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["config"].items()})


def _restore(cfg, params_dir: str, mesh, rules, partial: bool):
  graphdef, target = shardings(cfg, mesh, rules)
  if partial:  # a run with a soft prompt: the model without it
    params = ocp.PyTreeCheckpointer().restore(params_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  else:
    params = ocp.StandardCheckpointer().restore(params_dir, target)
  return graphdef, _typed(params)


def _fold_lora(cfg, graphdef, params: dict) -> tuple[Any, dict[str, jax.Array]]:
  """(the config without LoRA, flat params with each adapter folded into its kernel)."""
  flat = flatten(params)
  if not getattr(cfg, "lora_rank", 0):
    return cfg, flat
  model = nnx.merge(graphdef, params)
  merged = {k.replace(".", "/"): v for k, v in lora.merged_kernels(model).items()}
  out = {k: merged.get(k, v) for k, v in flat.items() if not lora.is_adapter_path(k)}
  return dataclasses.replace(cfg, lora_rank=0), out


def load(path: str, *, mesh, rules=rules_lib.DEFAULT_RULES) -> Source:
  """One source onto `mesh` (see the module doc)."""
  fs.check_usable(path, "merge input")
  if not fs.exists(path):
    raise errors.MissingError(f"merge input {path} does not exist")
  if is_hf_dir(path):
    from mtjax.models import hf  # pylint: disable=g-import-not-at-top

    model = hf.load(path, mesh=mesh, rules=rules)
    return Source(path, "hf", hf.family_of(model), model.cfg,
                  flatten(nnx.state(model).to_pure_dict()))
  where = store.locate(path)
  if where.model_dir:
    cfg = _config_from_model_json(fs.read_json(fs.join(where.model_dir, store.MODEL_FILE)))
    graphdef, params = _restore(cfg, fs.join(where.model_dir, "params"), mesh, rules, False)
    cfg, flat = _fold_lora(cfg, graphdef, params)
    return Source(path, "model", family_name(cfg), cfg, flat, root=where.model_dir)
  config_path = fs.join(where.run_dir, "config.json")
  if not fs.exists(config_path):
    raise errors.MissingError(
        f"merge input {path}: neither a HF dir (config.json + *.safetensors), an mtjax model "
        f"dir ({store.MODEL_FILE}) nor a run checkpoint ({config_path} not found)")
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top

  run_cfg = schema.from_dict(fs.read_json(config_path))
  step = where.step if where.step is not None else _latest_step(where.ckpt_dir)
  params_dir = fs.join(where.ckpt_dir, str(step), "params")
  if not fs.exists(params_dir):
    raise errors.MissingError(f"merge input {path}: {params_dir} not found")
  cfg = registry.architecture(run_cfg.model)
  graphdef, params = _restore(cfg, params_dir, mesh, rules,
                              partial=getattr(run_cfg.model, "prompt_length", 0) > 0)
  cfg, flat = _fold_lora(cfg, graphdef, params)
  return Source(path, "run", family_name(cfg), cfg, flat, run_cfg=run_cfg, root=where.run_dir,
                step=step)


def check_compatible(base: Source, others: list[Source]) -> None:
  """One ConfigError naming the first parameter (in path order) whose presence or shape differs
  from the base's, else the first differing architecture field."""
  for other in others:
    names = sorted(set(base.params) | set(other.params))
    for name in names:
      a, b = base.params.get(name), other.params.get(name)
      if a is None or b is None or tuple(a.shape) != tuple(b.shape):
        shape = lambda x: "absent" if x is None else str(tuple(x.shape))
        raise errors.ConfigError(
            f"merge: {other.describe()} is not the base's architecture: parameter {name} is "
            f"{shape(a)} in the base ({base.describe()}) and {shape(b)} there",
            hint="merge models finetuned from the same base (LoRA runs are merged first; "
                 "soft prompts are left out)")
    if base.family != other.family:
      raise errors.ConfigError(f"merge: {other.describe()} is a {other.family} model, the base "
                               f"({base.describe()}) a {base.family} one")
    ours, theirs = dataclasses.asdict(base.cfg), dataclasses.asdict(other.cfg)
    for field in ours:
      if field not in COMPUTE_ONLY and ours[field] != theirs.get(field):
        raise errors.ConfigError(
            f"merge: {other.describe()} differs from the base ({base.describe()}) in "
            f"{field}: {theirs.get(field)!r} there, {ours[field]!r} in the base")


def to_json(obj) -> str:
  return json.dumps(obj, indent=1, default=str)
