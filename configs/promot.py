"""ProMoT on the quickstart model: finetune the multi-task T5 of `make quickstart` on
`synthetic_compare` (yes/no) and see what it keeps of the other four tasks.

  make quickstart                                   # the base model: runs/quickstart
  mtjax promot --config=configs/promot.py           # -> runs/promot/report.md
  mtjax promot --config=configs/promot.py --set promot.methods=pretrained,finetune,promot,joint

Each stage is its own run dir under runs/promot (prompt_tuning/, promot/, finetune/, ...), with a
plain config.json; rerunning the command resumes. The paper's settings are PromotConfig's
defaults except the sizes: a 20-vector prompt and 300 steps per stage for this tiny model.
"""

from mtjax.config.schema import (
  DataConfig,
  EvalConfig,
  ModelConfig,
  PromotConfig,
  RunConfig,
  TrainConfig,
)


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/promot",
      data=DataConfig(mixture="synthetic_compare", modules=("mtjax.mixtures.synthetic",),
                      inputs_length=64, targets_length=16, batch_size=32, pack=False),
      model=ModelConfig(preset="t5_quickstart"),
      train=TrainConfig(init_from="runs/quickstart", log_every=50),
      eval=EvalConfig(max_examples=200,
                      other_tasks=("synthetic_add", "synthetic_copy", "synthetic_reverse",
                                   "synthetic_sort"),
                      label_set=("yes", "no")),
      promot=PromotConfig(methods=("pretrained", "finetune", "prompt_tuning", "promot"),
                          prompt_length=20, prompt_steps=300, model_steps=300, eval_every=100),
  )
