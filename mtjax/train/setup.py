"""The run setup: everything a run builds from its config before the first step.

Order: prompt options checked -> tasks registered (`data.modules`, k-shot variants) -> cache
(first use) -> vocabulary vs embedding checked -> mesh -> sharded model init (LoRA adapters come
with the model, from `model.lora_*`) -> soft prompt attached (`mtjax.peft.prompt_setup`) ->
trainable set -> optimizer and its state (trainable parameters only).

One home for it because every command that needs a model on a mesh builds it the same way:
`mtjax train` (`mtjax.train.loop`), `mtjax eval` (`build(..., optimizer=False)`: evaluation
allocates no optimizer state), the ProMoT recipe's evaluation, benchmarks and tests. Parameters
from elsewhere (`train.init_from`, `train.init_prompt_from`, a checkpoint for `mtjax merge`) are
`mtjax.train.pretrained`'s. The data iterator is here too: it depends on the mesh and the spec
only, and tests and benchmarks draw from it without the loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from mtjax import errors, fs
from mtjax.config import schema
from mtjax.data import pipeline, registration, startup, vocabularies
from mtjax.models import hf_meta, registry
from mtjax.parallel import mesh as mesh_lib
from mtjax.parallel import rules as rules_lib
from mtjax.peft import filters, lora, prompt_setup, prompts
from mtjax.train import optimizers

log = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.json"


@dataclasses.dataclass
class Setup:
  """Everything a run needs, built once from the config (also used by tests and eval)."""
  cfg: schema.RunConfig
  mesh: Any
  rules: rules_lib.Rules
  spec: Any  # mixing.MixtureSpec
  graphdef: Any
  params: Any
  tx: Any  # None when built without an optimizer
  opt_state: Any  # of the trainable parameters only
  trainable: frozenset | None = None  # parameter paths that train (None: all)
  model_cfg: Any = None  # the family config (t5.T5Config, decoder.DecoderConfig)
  axes: dict | None = None  # parameter path -> logical axis names
  prompt_rows: np.ndarray | None = None  # soft-prompt row of each mixture task (-1: none)
  # the tasks task-routed adapters have rows for, in order (the training mixture's: `mtjax eval`
  # of another mixture builds them for the run's tasks); None: spec.task_names
  adapter_tasks: tuple[str, ...] | None = None


def build(cfg: schema.RunConfig, *, devices=None, optimizer: bool = True,
          adapter_tasks: Sequence[str] | None = None) -> Setup:
  """The run's tasks, cache, mesh, model (+ LoRA, + soft prompt) and, with `optimizer`, the
  trainable set and optimizer state. `devices`: the mesh's (default: all). `adapter_tasks`: the
  tasks task-routed adapters get rows for (default: the mixture's; `mtjax eval` passes the
  trained run's, whatever mixture it evaluates)."""
  prompt_setup.check_config(cfg)
  # tasks registered (`data.modules`) and cached; on a warm cache of unchanged tasks the
  # registration (SeqIO, TensorFlow) is put off until something needs the tasks
  spec = startup.prepare(cfg, splits=("train", cfg.eval.split))
  if cfg.model.prompt_length > 0 and cfg.model.prompt_init == "class_labels":
    registration.ensure_registered()  # the prompt's init tokenises the tasks' label words
  vocabularies.check_fits(spec, cfg.data.cache_dir, registry.architecture(cfg.model).vocab_size,
                          cfg.model.hf_checkpoint or f"model.preset={cfg.model.preset}")
  mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
  rules = rules_lib.DEFAULT_RULES
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    adapter_tasks = tuple(adapter_tasks) if adapter_tasks else tuple(spec.task_names)
    model = registry.create(cfg.model, seed=cfg.train.seed, mesh=mesh, rules=rules,
                            task_names=adapter_tasks)
    prompt_rows = prompt_setup.attach(cfg, model, spec.task_names)
    graphdef, state = nnx.split(model)
    axes = {jax.tree_util.keystr(p): rules_lib.axis_names(v)
            for p, v in jax.tree_util.tree_flatten_with_path(
                state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
    params = state.to_pure_dict()
    tx = opt_state = trainable = None
    if optimizer:
      tx = make_optimizer(cfg)
      trainable = trainable_set(cfg, params)
      opt_state = jax.jit(tx.init)(params if trainable is None
                                   else filters.partition(params, trainable)[0])
  return Setup(cfg, mesh, rules, spec, graphdef, params, tx, opt_state, trainable,
               getattr(model, "cfg", None), axes, prompt_rows, adapter_tasks)


def make_optimizer(cfg: schema.RunConfig):
  """The optax transformation of `cfg.optimizer`, its schedule over `train.steps`."""
  o = cfg.optimizer
  lr = optimizers.schedule(o.schedule, o.learning_rate, cfg.train.steps, o.warmup_steps)
  # LoRA factors start at zero: Adafactor's parameter scaling would keep their steps ~lr * 1e-3.
  unscaled = lora.is_adapter_path if cfg.model.lora_rank > 0 else None
  return optimizers.make(o.name, lr, o.weight_decay, o.clip_norm, decay_rate=o.decay_rate,
                         parameter_scale=o.parameter_scale, unscaled=unscaled)


def trainable_set(cfg: schema.RunConfig, params) -> frozenset | None:
  """The parameter paths `train.trainable` selects (None: all of them)."""
  if tuple(cfg.train.trainable) == ("all",):
    return None
  return filters.trainable_paths(params, cfg.train.trainable, seed=cfg.train.seed)


def check_microbatches(setup: Setup) -> None:
  """`train.microbatches` must split the global batch into parts the data x fsdp mesh divides."""
  cfg, k = setup.cfg, max(setup.cfg.train.microbatches, 1)
  parallel = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
  if cfg.data.batch_size % k or (cfg.data.batch_size // k) % parallel:
    raise errors.ConfigError(
        f"data.batch_size={cfg.data.batch_size} must split into train.microbatches={k} "
        f"microbatches that each divide over the data x fsdp mesh ({parallel} devices)")


def local_batch(setup: Setup, batch: dict) -> dict:
  """A host-local batch as the model takes it: plus `prompt_ids` when a prompt is attached."""
  if setup.prompt_rows is None:
    return batch
  return prompts.add_prompt_ids(batch, setup.prompt_rows)


def data_iterator(setup: Setup):
  """This host's share of the global batch, as a checkpointable Grain iterator."""
  cfg = setup.cfg
  n_hosts, parallel = jax.process_count(), (setup.mesh.shape["data"] * setup.mesh.shape["fsdp"])
  if cfg.data.batch_size % parallel or cfg.data.batch_size % n_hosts:
    raise errors.ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                             f"data x fsdp mesh size ({parallel}) and the number of hosts "
                             f"({n_hosts})")
  options = pipeline.PipelineOptions(
      lengths={"inputs": cfg.data.inputs_length, "targets": cfg.data.targets_length},
      batch_size=cfg.data.batch_size // n_hosts, pack=cfg.data.pack, packer=cfg.data.packer,
      packing_bins=cfg.data.packing_bins, seed=cfg.data.seed,
      feature_converter=cfg.data.feature_converter, rate_stages=cfg.data.rate_stages,
      worker_count=cfg.data.worker_count,
      shard_index=jax.process_index(), num_shards=n_hosts)
  pipeline.report_trimming(setup.spec, cfg.data.cache_dir, options.lengths)
  return iter(pipeline.train_batches(setup.spec, cfg.data.cache_dir, options))


def write_run_files(setup: Setup) -> None:
  """config.json, model_summary.json (count, shape, dtype, logical axes, sharding of each
  parameter, and whether it trains), what `mtjax export` needs (`hf_meta`) and, for a partial
  trainable set, trainable.json. Called once the run dir's checkpoints accept this config."""
  cfg = setup.cfg
  fs.makedirs(cfg.run_dir)
  if jax.process_index() != 0:
    return
  fs.write_text(fs.join(cfg.run_dir, "config.json"), json.dumps(schema.to_dict(cfg), indent=1))
  leaves = jax.tree_util.tree_flatten_with_path(setup.params)[0]
  trains = lambda p: setup.trainable is None or tuple(
      getattr(k, "key", getattr(k, "idx", k)) for k in p) in setup.trainable
  axes = setup.axes or {}
  summary = {
      "num_params": int(sum(np.prod(x.shape) for _, x in leaves)),
      "num_trainable": int(sum(np.prod(x.shape) for p, x in leaves if trains(p))),
      "params": {jax.tree_util.keystr(p): {
          "shape": list(x.shape), "dtype": str(x.dtype),
          "axes": list(axes.get(jax.tree_util.keystr(p)) or ()),
          "sharding": str(getattr(x.sharding, "spec", x.sharding)), "trainable": trains(p)}
                 for p, x in leaves},
      "mesh": dict(setup.mesh.shape),
      "tasks": list(setup.spec.task_names),
  }
  fs.write_text(fs.join(cfg.run_dir, "model_summary.json"), json.dumps(summary, indent=1))
  hf_meta.record(setup, cfg.run_dir)  # tokenizer + special ids for `mtjax export`
  write_trainable(setup)


def write_trainable(setup: Setup) -> None:
  """`<run_dir>/trainable.json` when not every parameter trains: the `train.trainable` spec, the
  seed (a seeded set, e.g. HFT's, is reproducible from both) and every parameter path, trainable
  or frozen, so what a run trained can be read without rebuilding it. Written on the first start;
  a resume leaves an identical file untouched (a bucket's object is not rewritten)."""
  if setup.trainable is None or jax.process_index() != 0:
    return
  cfg = setup.cfg
  text = json.dumps(filters.describe(setup.params, cfg.train.trainable, seed=cfg.train.seed),
                    indent=1)
  path = fs.join(cfg.run_dir, TRAINABLE_FILE)
  if fs.exists(path) and fs.read_text(path) == text:
    return
  fs.write_text(path, text)
