"""`mtjax promot` end to end on a tiny prefix-LM decoder: stage runs are ordinary resumable run
dirs, the best prompt is exported and merged into stage 2 (where it stays frozen), the report
compares the methods, and a rerun trains nothing."""

import dataclasses
import json
import os

import numpy as np
import pytest

from mtjax.config import schema
from mtjax.peft import prompts
from mtjax.recipes import promot
from mtjax.train import pretrained as pretrained_lib


def _config(run_dir, cache_dir) -> schema.RunConfig:
  return schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(mixture="synthetic_compare", cache_dir=cache_dir, inputs_length=32,
                             targets_length=8, batch_size=8, feature_converter="prefix_lm"),
      model=schema.ModelConfig(preset="decoder_test"),
      train=schema.TrainConfig(log_every=2),
      eval=schema.EvalConfig(max_examples=8, batch_size=8, few_shot=(1,),
                             other_tasks=("synthetic_copy",)),
      mesh=schema.MeshConfig(data=8, fsdp=1, tensor=1),
      promot=schema.PromotConfig(methods=("pretrained", "prompt_tuning", "promot"),
                                 prompt_length=4, prompt_steps=4, model_steps=4, eval_every=2,
                                 model_learning_rate=3e-2))


def _lines(path):
  with open(path) as f:
    return f.read().splitlines()


def test_promot_recipe_end_to_end_and_resume(tmp_path, synthetic_cache):
  run_dir = str(tmp_path / "promot")
  cfg = _config(run_dir, synthetic_cache)
  report = promot.run(cfg, progress=False)

  assert list(report["methods"]) == ["pretrained", "prompt_tuning", "promot"]
  assert report["label_set"] == ["no", "yes"]  # inferred from the target task's targets
  assert report["ks"] == [0, 1]
  for method, row in report["summary"].items():
    assert row["target"] is not None and row["0shot/exact_match"] is not None, method
    assert row["0shot/exact_match/tasks"] == 1 and "0shot" not in row
    assert 0 <= row["1shot_format_rate"] <= 100
  # prompt removed, prompt tuning leaves the base model: its other-task numbers are pretrained's
  assert report["methods"]["prompt_tuning"]["other"] == report["methods"]["pretrained"]["other"]
  with open(os.path.join(run_dir, "report.md")) as f:
    md = f.read()
  assert "| promot |" in md and "format rate 1-shot" in md
  assert "others 0-shot exact_match (1 task)" in md and "first 8 examples" in md

  # Each stage is an ordinary run config.
  def stage(name):
    with open(os.path.join(run_dir, name, "config.json")) as f:
      return schema.from_dict(json.load(f))

  s1, s2 = stage("prompt_tuning"), stage("promot")
  assert s1.train.trainable == ("prompt",) and not s1.optimizer.parameter_scale
  assert s1.optimizer.learning_rate == 0.3 and s1.model.prompt_length == 4
  assert s2.train.trainable == ("all_but_prompt",) and s2.model.dropout_rate == 0.1
  assert s2.train.label_smoothing == 0.1 and not s1.data.pack and not s2.data.pack
  assert not os.path.exists(os.path.join(run_dir, "finetune"))  # only its config served

  # Stage 1's best step is the one with the best logged target accuracy; its prompt was
  # exported, and stage 2 trained with exactly that prompt attached (frozen).
  rows = [json.loads(x) for x in _lines(os.path.join(run_dir, "prompt_tuning",
                                                     "eval_metrics.jsonl"))]
  key = "synthetic_compare/accuracy"
  best = report["stages"]["prompt_tuning"]["best_step"]
  assert {r["step"]: r[key] for r in rows}[best] == max(r[key] for r in rows)
  exported, meta = prompts.load(os.path.join(run_dir, "prompt_tuning", "best_prompt"))
  assert meta["step"] == best and exported.shape == (1, 4, 32)
  in_ckpt, _ = pretrained_lib.load_prompt(os.path.join(run_dir, "prompt_tuning", "checkpoints",
                                                      str(best)))
  np.testing.assert_array_equal(exported, in_ckpt)
  stage2_prompt, _ = pretrained_lib.load_prompt(os.path.join(run_dir, "promot"))  # its newest step
  np.testing.assert_array_equal(stage2_prompt, exported)
  # `mtjax export` reads a prompted run as its base model (the prompt travels on its own).
  from mtjax.models import store
  model = store.load_any(os.path.join(run_dir, "promot"))
  assert model.embed_hook is None and model.token_embed.embedding[...].shape == (384, 32)

  # Rerunning resumes: nothing is trained or evaluated again; the same report comes out.
  logs = {d: len(_lines(os.path.join(run_dir, d, "metrics.jsonl")))
          for d in ("prompt_tuning", "promot")}
  again = promot.run(dataclasses.replace(cfg), progress=False)
  assert {d: len(_lines(os.path.join(run_dir, d, "metrics.jsonl"))) for d in logs} == logs
  assert again["summary"] == report["summary"]


def test_plan_derives_every_method_as_an_ordinary_run_config(tmp_path, synthetic_cache):
  """Joint tuning, the +1-shot variant and per-task prompts, from config alone (no training)."""
  import pytest

  cfg = _config(str(tmp_path / "p"), synthetic_cache)
  cfg = dataclasses.replace(cfg, promot=dataclasses.replace(
      cfg.promot, methods=("joint", "promot_1shot"), prompt_set=("train.log_every=1",)))
  stages = promot.plan(cfg)
  assert list(stages) == ["joint", "promot_1shot/prompt_tuning", "promot_1shot/promot"]
  joint = stages["joint"].cfg
  assert joint.train.trainable == ("all",) and joint.model.prompt_length == 4
  finetune = promot.plan(dataclasses.replace(cfg, promot=dataclasses.replace(
      cfg.promot, methods=("finetune",))))["finetune"].cfg
  assert finetune.train.trainable == ("all",) and finetune.model.prompt_length == 0
  assert finetune.model.dropout_rate == 0.1 and not finetune.data.pack
  s1, s2 = stages["promot_1shot/prompt_tuning"].cfg, stages["promot_1shot/promot"].cfg
  assert s1.data.mixture == s2.data.mixture == "synthetic_compare_1shot"  # demo after the prompt
  assert s1.data.inputs_length == 64 and s1.train.log_every == 1  # promot.prompt_set applied
  assert s1.train.best_metric == "synthetic_compare_1shot/accuracy"
  assert s2.train.init_prompt_from == os.path.join(cfg.run_dir, "promot_1shot", "prompt_tuning",
                                                   "best_prompt")
  assert s2.model.prompt_placement == "prefix" and s2.train.trainable == ("all_but_prompt",)
  for stage in stages.values():  # each round-trips through the schema as a plain run config
    assert schema.from_dict(schema.to_dict(stage.cfg)) == stage.cfg

  multi = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, mixture="synthetic_strings"),
                              promot=dataclasses.replace(cfg.promot, per_task_prompts=True,
                                                         methods=("promot",)))
  stages = promot.plan(multi)
  tasks = ("synthetic_copy", "synthetic_reverse", "synthetic_sort")
  assert stages["promot"].cfg.model.prompt_tasks == tasks  # one prompt per task, by task_ids
  assert stages["prompt_tuning"].cfg.train.best_metric == "average/accuracy"
  with pytest.raises(ValueError, match="promot_1shot needs data.mixture to be one task"):
    promot.plan(dataclasses.replace(multi, promot=dataclasses.replace(
        multi.promot, methods=("promot_1shot",))))


def test_report_never_averages_different_metrics():
  """Other tasks scored by accuracy and by exact match get one column each (with their task
  counts), never one mean of both; a classification target (answer choices) shows its rank
  accuracy next to the target metric."""
  def method(step, scale):
    return {"step": step,
            "target": {"rte": {"accuracy": 40.0 * scale, "rank_accuracy": 60.0 * scale,
                               "rank_accuracy_median": 61.0, "rank_accuracy_iqr": 2.0,
                               "rank_accuracy/template_0": 59.0, "format_rate": 100.0}},
            "other": {"copy": {"0": {"exact_match": 10.0 * scale, "format_rate": 50.0}},
                      "sort": {"0": {"exact_match": 30.0 * scale, "format_rate": 0.0}},
                      "boolq": {"0": {"accuracy": 70.0 * scale, "rank_accuracy": 80.0,
                                      "format_rate": 90.0}}}}

  evals = {"pretrained": method(None, 1.0), "promot": method(6, 0.5)}
  summary = promot.summarize(evals, [0], "accuracy")
  row = summary["pretrained"]
  assert "0shot" not in row  # what used to be mean(10, 30, 70): exact match and accuracy mixed
  assert row["0shot/exact_match"] == 20.0 and row["0shot/exact_match/tasks"] == 2
  assert row["0shot/accuracy"] == 70.0 and row["0shot/accuracy/tasks"] == 1
  assert row["0shot/rank_accuracy"] == 80.0
  assert row["0shot_format_rate"] == pytest.approx(140 / 3) and row["0shot_format_rate_max"] == 90
  assert (row["target"], row["target/accuracy"], row["target/rank_accuracy"]) == (40, 40, 60)
  assert not any("median" in k or "iqr" in k or "template" in k for k in row)

  report = {"target_tasks": ["rte"], "metric": "accuracy", "best_metric": "rte/accuracy",
            "other_tasks": ["copy", "sort", "boolq"], "ks": [0], "label_set": ["yes", "no"],
            "split": "validation", "max_examples": 0, "methods": evals, "summary": summary}
  md = promot.markdown(report)
  head = ("| method | step | target accuracy | target rank_accuracy | others 0-shot exact_match "
          "(2 tasks) | others 0-shot accuracy (1 task) | others 0-shot rank_accuracy (1 task) | "
          "format rate 0-shot (mean / max) |")
  assert head in md
  assert "| pretrained | - | 40.0 | 60.0 | 20.0 | 70.0 | 80.0 | 46.7 / 90.0 |" in md
  assert "| promot | 6 | 20.0 | 30.0 | 10.0 | 35.0 | 80.0 | 46.7 / 90.0 |" in md
  assert "whole `validation` split" in md
