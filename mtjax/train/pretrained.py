"""Parameters from elsewhere: a pretrained model for `train.init_from`, a soft prompt for
`train.init_prompt_from`, a whole run's or HF model's parameters (`load_params`).

Sources: an mtjax run (its dir, `checkpoints/` dir or one step's dir; the newest complete step
unless named) or a Hugging Face dir (config.json + *.safetensors); prompts also come from a
prompt directory (`mtjax.peft.prompts.save`). Everything lands on the shardings of the mesh it is
loaded for. This lives in `mtjax.train` (not `mtjax.peft` or `mtjax.models`) because reading a
run checkpoint is the checkpointer's format (`mtjax.train.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
from flax import nnx

from mtjax import errors, fs
from mtjax.config import schema
from mtjax.models import registry, store
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib
from mtjax.peft import prompt_setup, prompts
from mtjax.train import checkpoint as ckpt_lib

log = logging.getLogger(__name__)


def is_hf_dir(path: str) -> bool:
  return (fs.exists(fs.join(path, "config.json"))
          and any(f.endswith(".safetensors") for f in fs.listdir(path)))


def init_from(setup, params, source: str):
  """`params` (a run's fresh init, `mtjax.train.setup.Setup`) with every parameter `source`
  has; fresh init for the rest (e.g. a new soft prompt or LoRA adapters).

  A soft prompt the source lacks is initialised from the restored embeddings (its `vocab` /
  `class_labels` init means the pretrained model's), not the random ones.
  """
  params, fresh = _restore(setup.cfg.model, setup.cfg.train.seed, setup.mesh, setup.rules,
                           params, source)
  if setup.prompt_rows is not None:
    params = prompt_setup.reinit_after_init_from(setup.cfg, params, setup.model_cfg,
                                                 setup.spec.task_names, fresh)
  return params


def _restore(model_cfg, seed: int, mesh, rules, params, source: str):
  """(params, paths that kept their fresh init)."""
  if is_hf_dir(source):
    hf_cfg = dataclasses.replace(model_cfg, hf_checkpoint=source)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      model = registry.create(hf_cfg, seed=seed, mesh=mesh, rules=rules)
    flat = lambda t: {jax.tree_util.keystr(p): v
                      for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    theirs, ours = flat(nnx.split(model)[1].to_pure_dict()), flat(params)
    restored = sorted(k for k in ours if k in theirs and theirs[k].shape == ours[k].shape)
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: theirs.get(jax.tree_util.keystr(p), v)
        if jax.tree_util.keystr(p) in restored else v, params)
    fresh = sorted(set(ours) - set(restored))
  else:
    with jax.set_mesh(mesh):
      params, restored, fresh = ckpt_lib.init_params(source, params)
  log.info("initialised %d parameters from %s; %d keep their fresh init%s", len(restored),
           source, len(fresh), f" ({', '.join(fresh[:8])}{' ...' if len(fresh) > 8 else ''})"
           if fresh else "")
  return params, fresh


@dataclasses.dataclass
class Loaded:
  """A model's parameters placed on a mesh (`load_params`)."""
  graphdef: Any
  params: Any  # pure dict, each leaf on its sharding from its logical axis names
  model_config: schema.ModelConfig  # what built it (a run's `model`, or the HF dir's)
  mesh: Any
  rules: rules_lib.Rules


def load_params(source: str, *, model_config: schema.ModelConfig | None = None, mesh=None,
                rules=None, seed: int = 0) -> Loaded:
  """Every parameter of `source` (an mtjax run / checkpoints / step dir, or an HF dir) on `mesh`.

  The architecture is `model_config` if given, else the run's own `model` (its config.json), or
  the HF dir's config. The model is built sharded on `mesh` (default: every device on the data
  axis, or the run's `mesh` shape) and the checkpoint restored straight onto those shardings; a
  parameter the model has and the checkpoint lacks is an error (nothing stays a fresh init). A
  run's soft prompt is not loaded (`load_prompt` reads it). For `mtjax merge` and scripts.
  """
  rules = rules or rules_lib.DEFAULT_RULES
  hf = is_hf_dir(source)
  run_cfg = None if hf or model_config is not None else _run_config(source)
  if model_config is None:
    model_config = (schema.ModelConfig(hf_checkpoint=source) if hf
                    else dataclasses.replace(run_cfg.model, prompt_length=0, prompt_tasks=()))
  if mesh is None:
    shape = ((run_cfg.mesh.data, run_cfg.mesh.fsdp, run_cfg.mesh.tensor) if run_cfg is not None
             else (-1, 1, 1))
    mesh = mesh_lib.make_mesh(*shape)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    model = registry.create(model_config, seed=seed, mesh=mesh, rules=rules)
    graphdef, state = nnx.split(model)
  params = state.to_pure_dict()
  if not (hf and model_config.hf_checkpoint == source):
    params, fresh = _restore(model_config, seed, mesh, rules, params, source)
    if fresh:
      raise errors.MissingError(f"{source} lacks {len(fresh)} parameter(s) of the model: "
                                f"{', '.join(fresh[:8])}{' ...' if len(fresh) > 8 else ''}")
  return Loaded(graphdef, params, model_config, mesh, rules)


def _run_config(source: str) -> schema.RunConfig:
  path = fs.join(store.locate(source).run_dir, "config.json")
  if not fs.exists(path):
    raise errors.MissingError(f"{path} not found: the run's config names its model (or give "
                              "model_config)")
  return schema.from_dict(fs.read_json(path))


def load_prompt(path: str) -> tuple[np.ndarray, dict]:
  """(table, meta) from a prompt directory (`prompts.save`), or the prompt inside a run
  checkpoint (a run dir, its `checkpoints/` dir or a step dir: the newest step unless named)."""
  path = fs.abspath(path)
  if prompts.is_prompt_dir(path):
    return prompts.load(path)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  try:
    step_dir = ckpt_lib.find_step_dir(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: neither a prompt directory ({prompts.TABLE_FILE}) nor a "
                            "run checkpoint") from None
  item = os.path.join(step_dir, "params")
  handler = ocp.PyTreeCheckpointer()
  metadata = ckpt_lib._to_dict(handler.metadata(item))  # pylint: disable=protected-access
  entry = (metadata.get(prompts.HOOK) or {}).get("prompt")
  if entry is None:
    raise KeyError(f"checkpoint {step_dir} has no soft prompt ({prompts.HOOK}/prompt)")
  target = {prompts.HOOK: {"prompt": np.zeros(tuple(entry.shape), np.float32)}}
  restored = handler.restore(item, args=ocp.args.PyTreeRestore(
      item=target,
      restore_args={prompts.HOOK: {"prompt": ocp.RestoreArgs(restore_type=np.ndarray)}},
      partial_restore=True))
  handler.close()
  return np.asarray(restored[prompts.HOOK]["prompt"], np.float32), {"source": step_dir}


def merge_prompt(params, path: str) -> dict:
  """`params` (any copy of the base model with a prompt attached) with the prompt at `path` (a
  prompt directory or a run checkpoint: `load_prompt`)."""
  loaded, _ = load_prompt(path)
  return prompts.with_table(params, loaded)
