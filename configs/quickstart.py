"""The quickstart as a python config (twin of quickstart.gin; a test keeps them equal).

  mtjax train --config=configs/quickstart.py --set train.steps=50
"""

from mtjax.config.schema import (DataConfig, EvalConfig, ModelConfig, OptimizerConfig,
                                 RunConfig, TrainConfig)


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/quickstart",
      data=DataConfig(mixture="synthetic", modules=("mixtures.synthetic",), inputs_length=128,
                      targets_length=32, batch_size=32, pack=True),
      model=ModelConfig(preset="t5_quickstart"),
      optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                                warmup_steps=100, clip_norm=1.0),
      train=TrainConfig(steps=1200, log_every=100, checkpoint_every=400, keep_checkpoints=2),
      eval=EvalConfig(max_examples=200),
  )
