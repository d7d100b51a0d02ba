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

from mtjax import fs
from mtjax.models import decoder, registry, t5

MODEL_FILE = "model.json"
_CONFIGS = {"t5": t5.T5Config, "decoder": decoder.DecoderConfig}


def _family_name(cfg) -> str:
  return "t5" if registry.family(cfg) is t5 else "decoder"


def save(model, out_dir: str) -> None:
  """Writes `model.json` and `params/` for `model`."""
  out_dir = fs.abspath(out_dir)  # a URL: Orbax writes it directly
  fs.makedirs(out_dir)
  fs.write_text(os.path.join(out_dir, MODEL_FILE), json.dumps(
      {"family": _family_name(model.cfg), "config": dataclasses.asdict(model.cfg)}, indent=1))
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


@dataclasses.dataclass(frozen=True)
class Location:
  """What a `--checkpoint` path names: a model dir, or a run's checkpoint (step None: latest)."""
  model_dir: str | None = None
  run_dir: str | None = None
  ckpt_dir: str | None = None
  step: int | None = None


def locate(path: str) -> Location:
  """Where `path` (a model dir, a run dir, its `checkpoints/` dir or one step's dir) lives, so
  that the weights and what was recorded next to them (`mtjax.models.hf_meta`) are found the
  same way."""
  path = fs.abspath(path)
  if fs.exists(os.path.join(path, MODEL_FILE)):
    return Location(model_dir=path)
  if fs.isdir(os.path.join(path, "checkpoints")):
    return Location(run_dir=path, ckpt_dir=os.path.join(path, "checkpoints"))
  if os.path.basename(path).isdigit():
    return Location(run_dir=os.path.dirname(os.path.dirname(path)), ckpt_dir=os.path.dirname(path),
                    step=int(os.path.basename(path)))
  return Location(run_dir=os.path.dirname(path), ckpt_dir=path)


def latest_step(ckpt_dir: str) -> int:
  """The newest step of a run's `checkpoints/` dir (`load_any` loads it)."""
  steps = [int(d) for d in fs.listdir(ckpt_dir) if d.isdigit()] if fs.isdir(ckpt_dir) else []
  if fs.is_url(ckpt_dir):  # a bucket step folder exists while it uploads: committed ones only
    steps = [s for s in steps if fs.exists(os.path.join(ckpt_dir, str(s), "commit_success.txt"))]
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
  return max(steps)


def load_any(path: str):
  """A model directory (`save`), or a training run's checkpoint (latest step unless a step
  dir is given), rebuilt with the run's `model` config."""
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
  return _restore(registry.architecture(run_cfg.model),
                  os.path.join(ckpt_dir, str(step), "params"), partial=prompt)
