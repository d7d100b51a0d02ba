"""mT0 on xP3 (Muennighoff et al., "Crosslingual Generalization through Multitask Finetuning",
ACL 2023): mT5 finetuned on xP3, as it was trained (bigscience-workshop/xmtf).

  T5X's finetuning defaults: Adafactor, constant learning rate 1e-3, dropout 0.1; batch 512
  sequences of 1024 input / 1024 target tokens, unpacked; the loss normalised per sequence (each
  example's mean over its target tokens, averaged over the batch: `train.loss_normalization=
  sample`, T5X's AVERAGE_PER_SEQUENCE), so long targets do not dominate the gradient. Trained
  30,000 steps; the released mT0-XXL is the checkpoint near 7,000 (xmtf issue 6), which is the
  step count here.

The data is xP3, `xp3` (`mtjax.collections.xp3`: one task per prompt file, languages weighted by
their share of the data; `mt0_eval_score_eval` is the held-out XNLI / XCOPA / XStoryCloze /
XWinograd suite by rank classification). Start from mT5 with `--set model.hf_checkpoint=/path/
to/mt5-xxl`. The gin twin is mt0_xp3.gin; toy scale: see t0.py.
"""

from mtjax.config.schema import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/mt0_xp3",
      data=DataConfig(mixture="xp3", modules=("mtjax.collections.xp3",),
                      inputs_length=1024, targets_length=1024, batch_size=512, pack=False),
      model=ModelConfig(preset="mt5_xxl", dropout_rate=0.1, dtype="bfloat16"),
      optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant"),
      train=TrainConfig(steps=7_000, log_every=100, checkpoint_every=500,
                        loss_normalization="sample"),
  )
