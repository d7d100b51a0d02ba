"""Flan-T5 (Chung et al., "Scaling Instruction-Finetuned Language Models", 2022; JMLR 2024),
Sec. 2.2 "Finetuning procedure" and Appendix E (per-model hyperparameters).

  Sec. 2.2: Adafactor with a constant learning rate; packing, with masking so tokens do not
  attend across packed examples (mtjax's packed attention does this); the same procedure for
  every size except learning rate, batch size, dropout and number of steps (Appendix E).

Here: the T5 v1.1 XL architecture (start from its weights with
`--set model.hf_checkpoint=/path/to/t5-v1_1-xl`), batch 64, dropout 0.05, learning rate 1e-3,
38,000 steps, 2048 input / 512 target tokens. CAVEAT: these per-size numbers (Appendix E,
and the sequence lengths) could not be re-checked against the paper's text when this file was
written; check them against Appendix E before citing a run as a reproduction. The data is Flan
2022's published mix, `flan2022` (`mtjax.collections.flan2022`: the five pre-rendered submixes
at 0.4 / 0.32 / 0.2 / 0.05 / 0.03, template types weighted inside each, per-task caps; a
re-weighted variant with `flan2022.register_mixture`). The gin twin is flan_t5.gin; toy scale:
see t0.py.
"""

from mtjax.config.schema import DataConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig


def get_config() -> RunConfig:
  return RunConfig(
      run_dir="runs/flan_t5",
      data=DataConfig(mixture="flan2022", modules=("mtjax.collections.flan2022",),
                      inputs_length=2048, targets_length=512, batch_size=64, pack=True),
      model=ModelConfig(preset="t5_1_1_xl", dropout_rate=0.05, dtype="bfloat16"),
      optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant"),
      train=TrainConfig(steps=38_000, log_every=100, checkpoint_every=2_000),
  )
