"""ProMoT stage 1, prompt tuning (Wang et al., "Two-stage LLM Fine-tuning with Less Specialization
and More Generalization", ICLR 2024, arXiv:2211.00635; training details of its experiments):
only a soft prompt trains, the model stays frozen.

  Adafactor with a constant learning rate of 0.3, second-moment decay 0.8, no parameter scaling
  (`optimizer.parameter_scale=False`: a prompt's scale is not a layer's), weight decay 1e-5;
  one example per row (`data.pack=False`: a prompt is attached to each example).

Here: mT5-XXL (`--set model.hf_checkpoint=/path/to/mt5-xxl`), a 100-token prompt (Lester et al.
2021's usual length; the length ProMoT used is not restated here -- check before citing), and
1,000 steps of batch 32 (not from the paper: size them for your task). Stage 2 is
promot_stage2.py; `mtjax promot` runs both stages plus the baselines in one command. The gin
twin is promot_stage1.gin. Toy scale on a CPU:

  mtjax train --config=configs/experiments/promot_stage1.py --set model.preset=t5_test \
      model.prompt_length=4 train.steps=2 data.batch_size=8 data.inputs_length=32 \
      data.targets_length=8 run_dir=runs/promot_stage1_toy
"""

from mtjax.config.schema import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/promot_stage1",
      # Replace with your target task (ProMoT: e.g. RTE); the synthetic suite keeps it runnable.
      data=DataConfig(mixture="synthetic", modules=("mtjax.mixtures.synthetic",), inputs_length=512,
                      targets_length=64, batch_size=32, pack=False),
      model=ModelConfig(preset="mt5_xxl", dtype="bfloat16", prompt_length=100),
      optimizer=OptimizerConfig(name="adafactor", learning_rate=0.3, schedule="constant",
                                decay_rate=0.8, parameter_scale=False, weight_decay=1e-5),
      train=TrainConfig(steps=1_000, log_every=50, checkpoint_every=200, trainable=("prompt",)),
  )
