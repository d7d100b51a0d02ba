"""The quickstart as a python config (twin of quickstart.gin; a test keeps them equal).

  mtjax train --config=configs/quickstart.py --set train.steps=50
"""

from mtjax.config.schema import (DataConfig, EvalConfig, ModelConfig, OptimizerConfig,
                                 RunConfig, TrainConfig)


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/quickstart",
      data=DataConfig(mixture="synthetic", modules=("mtjax.mixtures.synthetic",), inputs_length=64,
                      targets_length=16, batch_size=32, pack=True, packer="window"),
      model=ModelConfig(preset="t5_quickstart"),
      # T5X's finetuning optimizer; a tiny model takes a larger constant rate.
      optimizer=OptimizerConfig(name="adafactor", learning_rate=2e-2, schedule="constant"),
      train=TrainConfig(steps=600, log_every=100, checkpoint_every=300, keep_checkpoints=2),
      eval=EvalConfig(max_examples=200),
  )
