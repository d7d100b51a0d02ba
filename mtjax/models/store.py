"""mtjax model directories and trained-run parameters: what `mtjax convert` writes and
`mtjax export` reads.

A model directory holds `model.json` (family + config fields) and `params/` (an Orbax
checkpoint of the parameter pytree, the same pure-dict structure the trainer checkpoints), so
`ModelConfig`-free tools can rebuild the module. `load_any` also accepts a training run: a run
dir (latest step), its `checkpoints/` dir, or one step's dir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from mtjax import errors, fs
from mtjax.models import decoder, families, registry, t5
# (where a path points: below this module, so that hf_meta finds model dirs without importing it)
from mtjax.models.locations import MODEL_FILE, Location, latest_step, locate  # noqa: F401

_CONFIGS = {"t5": t5.T5Config, "decoder": decoder.DecoderConfig}


def save(model, out_dir: str) -> None:
  """Writes `model.json` and `params/` for `model`."""
  out_dir = fs.abspath(out_dir)  # a URL: Orbax writes it directly
  fs.makedirs(out_dir)
  fs.write_text(os.path.join(out_dir, MODEL_FILE), json.dumps(
      {"family": families.name(model.cfg), "config": dataclasses.asdict(model.cfg)}, indent=1))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out_dir, "params"), nnx.state(model).to_pure_dict(), force=True)
  checkpointer.wait_until_finished()


def _config_from_json(raw: dict):
  cls = _CONFIGS[raw["family"]]
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["config"].items()}
  return cls(**fields)


def _restore(cfg, params_dir: str, partial: bool = False):
  """The model `cfg` describes with the checkpoint's weights; `partial` leaves out parameters
  the model lacks (a run's soft prompt: `mtjax.train.pretrained.load_prompt` reads it)."""
  abstract = nnx.eval_shape(lambda: registry.build(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.to_pure_dict())
  if partial:
    params = ocp.PyTreeCheckpointer().restore(params_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  else:
    params = ocp.StandardCheckpointer().restore(params_dir, target)
  return nnx.merge(graphdef, params)


def load(model_dir: str):
  """The module saved by `save`."""
  cfg = _config_from_json(fs.read_json(os.path.join(model_dir, MODEL_FILE)))
  return _restore(cfg, os.path.join(model_dir, "params"))


def load_any(path: str, task: str | None = None):
  """A model directory (`save`), or a training run's checkpoint (latest step unless a step
  dir is given), rebuilt with the run's `model` config. `task`: a task of the run's mixture,
  fixed on task-routed adapters (Poly/MHR, MTLoRA: `mtjax.peft.adapters.select_task_on`), so
  `mtjax.models.hf.export` folds that task's adapters into the kernels."""
  model = _load_any(path)
  if task is None:
    return model
  from mtjax.peft import adapters  # pylint: disable=g-import-not-at-top

  where = locate(path)
  names = run_task_names(where.run_dir) if where.run_dir else None
  if not names:
    raise errors.ConfigError(f"{path}: a task can only be chosen for a run checkpoint whose "
                             "model_summary.json lists the mixture's tasks")
  index = adapters.task_indices((task,), names, "task")[0]
  return adapters.select_task_on(model, index)


def _load_any(path: str):
  where = locate(path)
  if where.model_dir:
    return load(where.model_dir)
  run_dir, ckpt_dir, step = where.run_dir, where.ckpt_dir, where.step
  config_path = os.path.join(run_dir, "config.json")
  if not fs.exists(config_path):
    raise FileNotFoundError(f"{path}: neither a model directory ({MODEL_FILE}) nor a run "
                            f"checkpoint ({config_path} not found)")
  from mtjax.config import schema  # pylint: disable=g-import-not-at-top
  run_cfg = schema.from_dict(fs.read_json(config_path))
  if step is None:
    step = latest_step(ckpt_dir)
  prompt = getattr(run_cfg.model, "prompt_length", 0) > 0
  if prompt:
    logging.getLogger(__name__).info(
        "%s has a soft prompt: the model is loaded without it "
        "(mtjax.train.pretrained.load_prompt reads the prompt)", path)
  return _restore(registry.architecture(run_cfg.model, run_task_names(run_dir)),
                  os.path.join(ckpt_dir, str(step), "params"), partial=prompt)


def run_task_names(run_dir: str) -> tuple[str, ...] | None:
  """The run's mixture tasks (model_summary.json), which task-routed adapters have rows for;
  None without the file."""
  path = os.path.join(run_dir, "model_summary.json")
  return tuple(fs.read_json(path).get("tasks", ())) if fs.exists(path) else None
