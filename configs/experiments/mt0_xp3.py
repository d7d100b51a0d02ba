"""mT0 on xP3 (Muennighoff et al., "Crosslingual Generalization through Multitask Finetuning",
ACL 2023): mT5 finetuned on xP3 with T0's recipe, the loss normalised per sample.

  As T0 (t0.py): Adafactor, constant learning rate 1e-3, inputs 1024 / targets 256 tokens, packed.
  Difference kept here: the loss is each example's mean over its target tokens, averaged over
  the examples of the batch (`train.loss_normalization=sample`), so long targets do not
  dominate the gradient. Steps: 7,000 for mT0-XXL (its model card: 7,000 finetuning steps,
  1.29B tokens).

CAVEAT: the batch size (2048 here) and learning rate (T0's 1e-3 here) could not be re-checked
against the paper's text when this file was written; check them before citing a run as a
reproduction. Start from mT5 with `--set model.hf_checkpoint=/path/to/mt5-xxl`; point
`data.mixture` at your xP3 registration. The gin twin is mt0_xp3.gin; toy scale: see t0.py.
"""

from mtjax.config.schema import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/mt0_xp3",
      # Replace with your xP3 mixture; the synthetic suite keeps the file runnable.
      data=DataConfig(mixture="synthetic", modules=("mtjax.mixtures.synthetic",),
                      inputs_length=1024, targets_length=256, batch_size=2048, pack=True),
      model=ModelConfig(preset="mt5_xxl", dtype="bfloat16"),
      optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant"),
      train=TrainConfig(steps=7_000, log_every=100, checkpoint_every=500,
                        loss_normalization="sample"),
  )
