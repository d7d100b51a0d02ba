"""`mtjax promot` end to end on a tiny T5: stage runs are ordinary resumable run dirs, the best
prompt is exported and merged into stage 2 (where it stays frozen), the report compares the
methods, and a rerun trains nothing."""

import dataclasses
import json
import os

import numpy as np

from mtjax.config import schema
from mtjax.peft import prompts
from mtjax.recipes import promot


def _config(run_dir, cache_dir) -> schema.RunConfig:
  return schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=cache_dir, inputs_length=32,
                             targets_length=8, batch_size=8),
      model=schema.ModelConfig(preset="t5_test"),
      train=schema.TrainConfig(log_every=2),
      eval=schema.EvalConfig(max_examples=8, batch_size=8, few_shot=(1,),
                             other_tasks=("synthetic_copy",)),
      mesh=schema.MeshConfig(data=8, fsdp=1, tensor=1),
      promot=schema.PromotConfig(prompt_length=4, prompt_steps=4, model_steps=4, eval_every=2,
                                 model_learning_rate=3e-2))


def _lines(path):
  with open(path) as f:
    return f.read().splitlines()


def test_promot_recipe_end_to_end_and_resume(tmp_path, synthetic_cache):
  run_dir = str(tmp_path / "promot")
  cfg = _config(run_dir, synthetic_cache)
  report = promot.run(cfg, progress=False)

  assert list(report["methods"]) == ["pretrained", "finetune", "prompt_tuning", "promot"]
  assert report["label_set"] == ["no", "yes"]  # inferred from the target task's targets
  assert report["ks"] == [0, 1]
  for method, row in report["summary"].items():
    assert row["target"] is not None and row["0shot"] is not None, method
    assert 0 <= row["1shot_format_rate"] <= 100
  # prompt removed, prompt tuning leaves the base model: its other-task numbers are pretrained's
  assert report["methods"]["prompt_tuning"]["other"] == report["methods"]["pretrained"]["other"]
  with open(os.path.join(run_dir, "report.md")) as f:
    md = f.read()
  assert "| promot |" in md and "format rate 1-shot" in md

  # Each stage is an ordinary run config.
  def stage(name):
    with open(os.path.join(run_dir, name, "config.json")) as f:
      return schema.from_dict(json.load(f))

  s1, s2, ft = stage("prompt_tuning"), stage("promot"), stage("finetune")
  assert s1.train.trainable == ("prompt",) and not s1.optimizer.parameter_scale
  assert s1.optimizer.learning_rate == 0.3 and s1.model.prompt_length == 4
  assert s2.train.trainable == ("all_but_prompt",) and s2.model.dropout_rate == 0.1
  assert s2.train.label_smoothing == 0.1 and ft.model.prompt_length == 0
  assert not s1.data.pack and not s2.data.pack and not ft.data.pack

  # Stage 1's best step is the one with the best logged target accuracy; its prompt was
  # exported, and stage 2 trained with exactly that prompt attached (frozen).
  rows = [json.loads(x) for x in _lines(os.path.join(run_dir, "prompt_tuning",
                                                     "eval_metrics.jsonl"))]
  key = "synthetic_compare/accuracy"
  best = report["stages"]["prompt_tuning"]["best_step"]
  assert {r["step"]: r[key] for r in rows}[best] == max(r[key] for r in rows)
  exported, meta = prompts.load(os.path.join(run_dir, "prompt_tuning", "best_prompt"))
  assert meta["step"] == best and exported.shape == (1, 4, 32)
  in_ckpt, _ = prompts.load(os.path.join(run_dir, "prompt_tuning", "checkpoints", str(best)))
  np.testing.assert_array_equal(exported, in_ckpt)
  stage2_prompt, _ = prompts.load(os.path.join(run_dir, "promot"))  # its newest step
  np.testing.assert_array_equal(stage2_prompt, exported)

  # Rerunning resumes: nothing is trained or evaluated again; the same report comes out.
  logs = {d: len(_lines(os.path.join(run_dir, d, "metrics.jsonl")))
          for d in ("finetune", "prompt_tuning", "promot")}
  again = promot.run(dataclasses.replace(cfg), progress=False)
  assert {d: len(_lines(os.path.join(run_dir, d, "metrics.jsonl"))) for d in logs} == logs
  assert again["summary"] == report["summary"]
