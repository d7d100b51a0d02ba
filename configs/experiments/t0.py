"""T0 (Sanh et al., "Multitask Prompted Training Enables Zero-Shot Task Generalization", ICLR 2022,
Sec. 5 "Experimental setup" / training details): the T5+LM 11B model finetuned on the P3 training
mixture.

  Adafactor, constant learning rate 1e-3, dropout 0.1; batch 1024 packed sequences of 1024
  input / 256 target tokens; 12,200 steps. Mixing: examples-proportional, a dataset with more than
  500,000 examples counting as 500,000 / (its number of templates)
  (`mtjax.data.rates.t0_examples_proportional`, used in your mixture's registration).

Here: the T5 v1.1 XXL architecture; start from the LM-adapted weights with
`--set model.hf_checkpoint=/path/to/t5-xxl-lm-adapt` (a local HF directory). The data is T0's
own training mixture, `t0_train` (313 tasks: every PromptSource template of T0's 38 training
datasets, T0's blacklist, rates from the recorded dataset sizes with T0's floor-division cap;
`mtjax.collections.t0`); `t0+_train` / `t0++_train` are T0+ / T0++. It needs PromptSource's
templates (`--set data.promptsource_dir=...`, v0.1.0 as T0) and the datasets (the Hugging Face
cache, or local copies under `data.hf_data_dir`). `mtjax tasks --mixture t0_train` lists it.
The gin twin is t0.gin.

Toy scale on a CPU (any recipe of configs/experiments/ takes the same overrides):

  mtjax train --config=configs/experiments/t0.py --set model.preset=t5_test train.steps=2 \
      data.batch_size=8 data.inputs_length=32 data.targets_length=8 run_dir=runs/t0_toy \
      data.mixture=synthetic data.modules=mtjax.mixtures.synthetic
"""

from mtjax.config.schema import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/t0",
      data=DataConfig(mixture="t0_train", modules=("mtjax.collections.t0",),
                      inputs_length=1024, targets_length=256, batch_size=1024, pack=True),
      model=ModelConfig(preset="t5_1_1_xxl", dropout_rate=0.1, dtype="bfloat16"),
      optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant"),
      train=TrainConfig(steps=12_200, log_every=100, checkpoint_every=1_000),
  )
