"""The typed run configuration. Both front ends (gin, python) produce one `RunConfig`.

Each section is a frozen dataclass registered with gin under its class name, so a gin file says
`TrainConfig.steps = 100` and a python config says `train.steps=100`.
"""

from __future__ import annotations

import dataclasses

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  mixture: str = "synthetic"  # a registered SeqIO mixture or task
  modules: tuple[str, ...] = ("mixtures.synthetic",)  # imported to register tasks
  cache_dir: str = ".cache/mtjax"
  inputs_length: int = 64
  targets_length: int = 16
  batch_size: int = 32  # global, in packed rows
  pack: bool = True
  packer: str = "window"  # window (mtjax.data.packing) | best_fit | first_fit (Grain's)
  packing_bins: int = 0  # window: examples per window (0 = 4096); Grain: open rows (0 = batch)
  seed: int = 0
  feature_converter: str = "enc_dec"  # enc_dec | decoder_only | prefix_lm
  rate_stages: tuple = ()  # ((start_step, {task: rate}), ...): other rates from that step on
  worker_count: int = 0  # batch-preparing processes (Grain mp_prefetch); 0: one thread


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  preset: str = "t5_quickstart"  # see mtjax.models.registry.PRESETS (T5 and decoder families)
  dropout_rate: float = 0.0
  dtype: str = "float32"  # compute dtype; parameters stay float32
  remat: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  hf_checkpoint: str = ""  # local HF checkpoint dir: start from its weights (preset ignored)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adafactor"  # adafactor | adamw
  learning_rate: float = 1e-3
  schedule: str = "constant"  # constant | linear | cosine | rsqrt
  warmup_steps: int = 0
  weight_decay: float = 0.0
  clip_norm: float = 0.0  # 0 disables global-norm clipping


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000
  log_every: int = 50
  checkpoint_every: int = 500
  keep_checkpoints: int = 2
  label_smoothing: float = 0.0
  z_loss: float = 0.0
  seed: int = 0  # parameter init and dropout
  # all | prompt | all_but_prompt | lora, or path regexes (mtjax.peft.filters); frozen parameters
  # get no optimizer state
  trainable: tuple[str, ...] = ("all",)
  microbatches: int = 1  # gradient accumulation: the batch is split into this many microbatches
  # token | sequence | constant | sample (mT0/xP3) | task (MFTCoder data balance); mtjax.train.loss
  loss_normalization: str = "token"
  loss_normalizing_factor: float = 0.0  # for `constant` (T5X finetuning: 233472)
  focal_gamma: float = 0.0  # > 0: focal weighting (1 - p)^gamma of each token's loss
  best_metric: str = ""  # a logged metric (e.g. "eval/loss"): also keep the best checkpoint
  best_mode: str = "min"  # min | max
  # a pretrained mtjax run dir / checkpoints dir / step dir (or a HF model dir): parameters only,
  # fresh init for the ones it lacks; ignored when the run dir already has a checkpoint
  init_from: str = ""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  at_end: bool = True  # greedy-decode each task's split and compute its SeqIO metrics
  loss_every: int = 0  # teacher-forced loss per task on `split` every N train steps (0 = off)
  loss_batches: int = 4  # batches (of data.batch_size rows) per teacher-forced loss evaluation
  split: str = "validation"
  max_examples: int = 200  # per task
  batch_size: int = 200
  decode: str = "greedy"  # greedy | beam | sample (mtjax.eval.generate)
  beam_size: int = 4
  alpha: float = 0.6  # beam length penalty ((5 + length) / 6) ** alpha; 0 = plain log-prob
  temperature: float = 1.0  # sampling; 0 = greedy
  top_k: int = 0  # sampling: keep the k most likely tokens (0 = off)
  top_p: float = 1.0  # sampling: nucleus mass (1 = off)
  seed: int = 0  # sampling rng
  scoring: str = "sum"  # rank classification by summed or length-normalised ("mean") log-lik
  few_shot: tuple[int, ...] = ()  # k-shot in-context evaluation for each k (empty: off)
  label_set: tuple[str, ...] = ()  # format-specialisation rate: share of outputs in this set


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # -1 fills the remaining devices
  fsdp: int = 1
  tensor: int = 1


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
  run_dir: str = "runs/default"
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


def to_dict(cfg) -> dict:
  return dataclasses.asdict(cfg)


def from_dict(raw: dict) -> RunConfig:
  """Rebuilds a RunConfig from `to_dict` output (e.g. the config.json of a run)."""
  sections = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)
              if f.default_factory is not dataclasses.MISSING}
  kwargs = {}
  for key, value in raw.items():
    if key in sections:
      typ = sections[key]
      fields = {f.name: f for f in dataclasses.fields(typ)}
      unknown = set(value) - set(fields)
      if unknown:
        raise KeyError(f"unknown config key(s) {sorted(f'{key}.{u}' for u in unknown)}")
      kwargs[key] = typ(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    elif key == "run_dir":
      kwargs[key] = value
    else:
      raise KeyError(f"unknown config key {key!r}")
  return RunConfig(**kwargs)
