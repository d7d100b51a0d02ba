"""The typed run configuration. Both front ends (gin, python) produce one `RunConfig`.

Each section is a frozen dataclass registered with gin under its class name, so a gin file says
`TrainConfig.steps = 100` and a python config says `train.steps=100`.

A field's documentation is its comment: the comment lines right above it and/or the comment at
the end of its line (continued on lines that start `#   `). The documentation site's
configuration reference is generated from them (scripts/docs_reference.py); a field without one
fails the docs tests.
"""

from __future__ import annotations

import dataclasses

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  mixture: str = "synthetic"  # a registered SeqIO mixture or task
  modules: tuple[str, ...] = ("mtjax.mixtures.synthetic",)  # imported to register tasks
  # a local/gs:// dir with an HF tokenizer (tokenizer.json): the default vocabulary of tasks
  # registered while `modules` import (file tasks without `vocabulary=`); "" = the tokenizer of
  # model.hf_checkpoint when it has one, else SeqIO's ByteVocabulary (mtjax.data.vocabularies)
  tokenizer: str = ""
  cache_dir: str = ".cache/mtjax"  # the ArrayRecord cache of the tasks (local or gs://...)
  # Where the collections (mtjax.collections) find their data while `modules` import: a folder
  # of local copies of Hugging Face dataset repositories as <dir>/<org>/<name> (searched before
  # the Hugging Face cache; "" = $MTJAX_HF_DATA_DIR), and PromptSource's templates folder
  # ("" = $MTJAX_PROMPTSOURCE_DIR, else the installed promptsource package's)
  hf_data_dir: str = ""
  promptsource_dir: str = ""  # PromptSource's templates folder (see hf_data_dir)
  inputs_length: int = 64  # tokens of the inputs feature (longer inputs are trimmed)
  targets_length: int = 16  # tokens of the targets feature (longer targets are trimmed)
  batch_size: int = 32  # global, in packed rows
  pack: bool = True  # several examples per row (False: one example per row, padded)
  packer: str = "window"  # window (mtjax.data.packing) | best_fit | first_fit (Grain's)
  packing_bins: int = 0  # window: examples per window (0 = 4096); Grain: open rows (0 = batch)
  seed: int = 0  # shuffling and mixing of the data stream
  feature_converter: str = "enc_dec"  # enc_dec | decoder_only | prefix_lm
  rate_stages: tuple = ()  # ((start_step, {task: rate}), ...): other rates from that step on
  worker_count: int = 0  # batch-preparing processes (Grain mp_prefetch); 0: one thread

  @property
  def sequence_length(self) -> dict[str, int]:
    """SeqIO's `sequence_length` for this run (given to preprocessors that read it)."""
    return {"inputs": self.inputs_length, "targets": self.targets_length}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  preset: str = "t5_quickstart"  # see mtjax.models.registry.PRESETS (T5 and decoder families)
  dropout_rate: float = 0.0  # dropout rate while training (evaluation runs without dropout)
  dtype: str = "float32"  # compute dtype; parameters stay float32
  remat: str = "none"  # none | full | dots_saveable | dots_with_no_batch_dims_saveable
  scan_layers: bool = False  # one compiled layer under lax.scan: faster compiles, same maths
  # auto: on GPU cuDNN flash (plain causal/full) or mtjax's Pallas flash kernel (packed,
  # prefix-LM, T5 bias); XLA elsewhere | xla | cudnn | pallas
  attention: str = "auto"
  hf_checkpoint: str = ""  # local HF checkpoint dir: start from its weights (preset ignored)
  # LoRA (mtjax.peft.lora): rank > 0 adds adapters to `lora_targets` (decoder: query key value
  # out gate up down; T5: query key value out wi_0 wi_1 wo); train them with train.trainable=lora.
  lora_rank: int = 0
  lora_alpha: float = 16.0  # adapter scale: W + alpha / rank * A @ B
  lora_targets: tuple[str, ...] = ("query", "value")  # projections that get adapters
  # Which adapter the lora_* keys build (mtjax.peft.adapters): lora | poly | mhr (task-routed
  # LoRA skills) | mixlora (top-k LoRA experts in the feed-forward block) | loramoe (LoRA experts
  # behind a softmax router) | mtlora (a shared plus a per-task LoRA); all train with
  # train.trainable=lora and cannot be combined with a soft prompt
  adapter: str = "lora"
  adapter_experts: int = 4  # poly/mhr: skills; mixlora/loramoe: experts
  adapter_top_k: int = 2  # mixlora: experts each token goes through
  adapter_heads: int = 4  # mhr: blocks each factor is split into, each routed on its own
  # mixlora/loramoe: weight of the routers' balancing loss in the training loss (logged as
  # aux/<method>_balance, overall and per task)
  adapter_balance: float = 0.01
  adapter_tasks: int = 0  # poly/mhr/mtlora: rows of per-task parameters; 0 = the mixture's tasks
  # loramoe: mixture tasks whose data is "world knowledge" (routed to the first half of the
  # experts by the localized balancing constraint); the others are downstream tasks
  adapter_knowledge_tasks: tuple[str, ...] = ()
  # poly/mhr/mtlora: the mixture task whose adapters serve inputs of no known task (mtjax infer,
  # eval.other_tasks); "" = such a forward pass is an error naming this key
  adapter_default_task: str = ""
  # poly/mhr: the task-skill routing during training: sigmoid (deterministic, HF PEFT's eval
  # form) | gumbel (Polytropon's relaxed-Bernoulli / Gumbel-sigmoid draw of the allocation, one
  # per task, layer and step); evaluation, inference and export always use the sigmoid
  adapter_routing: str = "sigmoid"
  adapter_temperature: float = 1.0  # poly/mhr, adapter_routing=gumbel: the relaxation's temperature
  # mixlora/loramoe: shard the experts (their LoRA factors, router columns and optimizer state)
  # over the mesh's tensor axis, which must divide adapter_experts; false: replicated
  adapter_shard_experts: bool = False
  # Soft prompt (mtjax.peft.prompts), inserted after the token embedding; 0 = none. Needs
  # data.pack=False (one example per row). Its parameters live under `embed_hook/prompt`.
  prompt_length: int = 0
  # One prompt per task, gathered by task_ids (mixture tasks not listed get no prompt); empty:
  # one prompt shared by every task of the mixture.
  prompt_tasks: tuple[str, ...] = ()
  prompt_placement: str = "prefix"  # prefix | after_bos (after the first token)
  prompt_init: str = "uniform"  # uniform | vocab (sampled token embeddings) | class_labels
  prompt_init_range: float = 0.5  # uniform: U(-r, r)
  prompt_init_vocab: int = 5000  # vocab / class_labels: sample from the first N token ids
  prompt_labels: tuple[str, ...] = ()  # class_labels: words whose embeddings start the prompt


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adafactor"  # adafactor | adamw
  learning_rate: float = 1e-3  # peak learning rate (after warmup)
  schedule: str = "constant"  # constant | linear | cosine | rsqrt
  warmup_steps: int = 0  # linear warmup from 0 to learning_rate over this many steps
  weight_decay: float = 0.0  # AdamW's weight_decay / Adafactor's weight_decay_rate (0 = none)
  clip_norm: float = 0.0  # 0 disables global-norm clipping
  decay_rate: float = 0.8  # adafactor: second-moment decay exponent (T5X 0.8)
  parameter_scale: bool = True  # adafactor: scale updates by parameter RMS (prompt tuning: off)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 1000  # total training steps (a resumed run trains up to this step)
  log_every: int = 50  # a metrics row (metrics.jsonl, TensorBoard, progress) every N steps
  checkpoint_every: int = 500  # save a checkpoint every N steps (and at the last step)
  keep_checkpoints: int = 2  # newest checkpoints kept (plus the best one with best_metric)
  label_smoothing: float = 0.0  # cross-entropy label smoothing
  z_loss: float = 0.0  # coefficient of the log(Z)^2 auxiliary loss (T5X: 1e-4)
  seed: int = 0  # parameter init and dropout
  # all | prompt | all_but_prompt | lora, or path regexes (mtjax.peft.filters); frozen parameters
  # get no optimizer state
  trainable: tuple[str, ...] = ("all",)
  microbatches: int = 1  # gradient accumulation: the batch is split into this many microbatches
  # token | sequence | constant | sample (mT0/xP3) | task (MFTCoder data balance); mtjax.train.loss
  loss_normalization: str = "token"
  loss_normalizing_factor: float = 0.0  # for `constant` (T5X finetuning: 233472)
  focal_gamma: float = 0.0  # > 0: focal weighting (1 - p)^gamma of each token's loss
  # > 0: decoder family: compute logits and loss this many positions at a time, never holding
  # [batch, length, vocab] logits (mtjax.train.loss.chunked_token_stats); 0: all at once
  logits_chunk: int = 0
  best_metric: str = ""  # a logged metric (e.g. "eval/loss"): also keep the best checkpoint
  best_mode: str = "min"  # min | max
  # a pretrained mtjax run dir / checkpoints dir / step dir (or a HF model dir): parameters only,
  # fresh init for the ones it lacks; ignored when the run dir already has a checkpoint
  init_from: str = ""
  # a soft prompt to start from (a prompt directory from mtjax.peft.prompts.save, or a run /
  # step dir holding one), applied after init_from; ignored when resuming
  init_prompt_from: str = ""
  # "START:END": a jax.profiler trace of steps START..END (1-based, as metrics rows number them)
  # in <run_dir>/profile, for TensorBoard's profile plugin / XProf (mtjax.train.profiler)
  profile_steps: str = ""
  # metrics destinations besides metrics.jsonl and TensorBoard (mtjax.train.trackers): "wandb"
  # (pip install 'mtjax[wandb]'), or "module:name" for a tracker of your own
  trackers: tuple[str, ...] = ()
  wandb_project: str = "mtjax"  # W&B project of the run (with trackers=("wandb",))
  wandb_entity: str = ""  # W&B team or user ("" = the API key's default)
  wandb_name: str = ""  # the W&B run's display name ("" = the run dir's name)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  at_end: bool = True  # greedy-decode each task's split and compute its SeqIO metrics
  every: int = 0  # the same full evaluation every N train steps (0 = only at the end); its
  #   metrics (`<task>/<metric>`, `average/<metric>`) can rank checkpoints (`train.best_metric`)
  loss_every: int = 0  # teacher-forced loss per task on `split` every N train steps (0 = off)
  loss_batches: int = 4  # batches (of data.batch_size rows) per teacher-forced loss evaluation
  split: str = "validation"  # the split every evaluation reads
  max_examples: int = 0  # per task; 0 = the whole split (a cap that cuts a split is logged
  #   with the number of examples left out, and the table shows "<n> of <split size>")
  batch_size: int = 200  # examples per decoding / scoring batch
  decode: str = "greedy"  # greedy | beam | sample (mtjax.eval.generate)
  beam_size: int = 4  # beams of decode=beam
  alpha: float = 0.6  # beam length penalty ((5 + length) / 6) ** alpha; 0 = plain log-prob
  temperature: float = 1.0  # sampling; 0 = greedy
  top_k: int = 0  # sampling: keep the k most likely tokens (0 = off)
  top_p: float = 1.0  # sampling: nucleus mass (1 = off)
  seed: int = 0  # sampling rng
  scoring: str = "sum"  # rank classification by summed or length-normalised ("mean") log-lik
  few_shot: tuple[int, ...] = ()  # k-shot in-context evaluation for each k (empty: off)
  label_set: tuple[str, ...] = ()  # format-specialisation rate: share of outputs in this set
  # tasks outside the mixture, evaluated with the soft prompt removed, zero-shot and at each k
  # of `few_shot` (ProMoT: does finetuning keep the base model's in-context abilities?)
  other_tasks: tuple[str, ...] = ()
  # lm-evaluation-harness tasks (`pip install 'mtjax[lmeval]'`; mtjax.eval.lm_eval), run on the
  # current parameters every `lm_eval_every` steps and after the final step; results in
  # <run_dir>/lm_eval/<step>.json, metrics `lm_eval/<task>/<metric>` (as lm-eval reports them:
  # accuracies in 0-1) in eval_metrics.jsonl / TensorBoard, usable as `train.best_metric`
  lm_eval_tasks: tuple[str, ...] = ()
  lm_eval_every: int = 0  # steps (0: only after the final step)
  lm_eval_num_fewshot: int = -1  # -1: each task's own default
  lm_eval_limit: float = 0.0  # examples per task (0: all; below 1: a fraction, as lm-eval's)
  lm_eval_include_path: str = ""  # a folder of task YAMLs (then only those, not lm-eval's own)
  lm_eval_batch_size: int = 32  # rows per scoring / generation batch
  lm_eval_max_length: int = 0  # context tokens (0: inputs_length + targets_length; T5: inputs)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1  # -1 fills the remaining devices
  fsdp: int = 1  # devices parameters and optimizer state are sharded over (FSDP / ZeRO-3)
  tensor: int = 1  # devices each layer's matrices are split over (tensor parallelism)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromotConfig:
  """`mtjax promot` (mtjax.recipes.promot): the run config's data/model/train sections describe
  the target task(s) and the base model (`train.init_from`); each stage is derived from them."""
  # which runs to make and compare: pretrained | finetune | prompt_tuning | promot | joint |
  # promot_1shot (ProMoT on the 1-shot variant of the target tasks)
  methods: tuple[str, ...] = ("pretrained", "finetune", "prompt_tuning", "promot")
  per_task_prompts: bool = False  # one prompt per task of data.mixture (multi-task ProMoT)
  prompt_length: int = 100  # soft-prompt vectors (the paper: 100)
  prompt_steps: int = 1000  # stage 1 (prompt tuning)
  prompt_learning_rate: float = 0.3  # stage 1: Adafactor, constant, decay 0.8, no scaling
  prompt_weight_decay: float = 1e-5  # stage 1's weight decay on the prompt
  model_steps: int = 1000  # stage 2 (model tuning) and the plain-finetuning / joint baselines
  model_learning_rate: float = 1e-3  # stage 2 and the model-tuning baselines: Adafactor
  model_dropout: float = 0.1  # stage 2 and the model-tuning baselines
  model_label_smoothing: float = 0.1  # stage 2 and the model-tuning baselines
  eval_every: int = 100  # stages evaluate the target task(s) this often; the best step is kept
  metric: str = "accuracy"  # the target tasks' metric that picks the best checkpoint (max)
  # extra `key=value` overrides of each stage's run config, e.g. ("train.log_every=10",)
  prompt_set: tuple[str, ...] = ()  # for the prompt-tuning stage
  model_set: tuple[str, ...] = ()  # for the model-tuning stages


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
  # where the run writes config.json, metrics.jsonl, TensorBoard events, checkpoints/ and eval
  # results (a local folder or a URL, e.g. gs://bucket/runs/x); rerunning resumes from it
  run_dir: str = "runs/default"
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  promot: PromotConfig = dataclasses.field(default_factory=PromotConfig)


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
