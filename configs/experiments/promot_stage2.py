"""ProMoT stage 2, model tuning with the stage-1 prompt attached and frozen (Wang et al., ICLR 2024,
arXiv:2211.00635; training details of its experiments).

  Adafactor, learning rate 1e-3 (constant), dropout 0.1, label smoothing 0.1; everything but the
  prompt trains (`train.trainable=all_but_prompt`); one example per row.

The model and the prompt start from stage 1's run (`train.init_from`: its newest checkpoint holds
the pretrained weights, untouched by stage 1, and the tuned prompt). Stage 1 keeps its last step
here; `mtjax promot` instead keeps stage 1's best step on the target task. Steps and batch size
are not from the paper: size them for your task. The gin twin is promot_stage2.gin. Toy scale
(after stage 1's toy run, see promot_stage1.py):

  mtjax train --config=configs/experiments/promot_stage2.py --set model.preset=t5_test \
      model.prompt_length=4 train.steps=2 data.batch_size=8 data.inputs_length=32 \
      data.targets_length=8 train.init_from=runs/promot_stage1_toy run_dir=runs/promot_stage2_toy
"""

from mtjax.config.schema import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/promot_stage2",
      data=DataConfig(mixture="synthetic", modules=("mtjax.mixtures.synthetic",), inputs_length=512,
                      targets_length=64, batch_size=32, pack=False),
      model=ModelConfig(preset="mt5_xxl", dtype="bfloat16", prompt_length=100,
                        dropout_rate=0.1),
      optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant"),
      train=TrainConfig(steps=1_000, log_every=50, checkpoint_every=200, label_smoothing=0.1,
                        trainable=("all_but_prompt",), init_from="runs/promot_stage1"),
  )
