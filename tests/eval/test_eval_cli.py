"""`mtjax eval` on a checkpoint reproduces the evaluation printed at the end of training."""

import json
import os
import re

import pytest

from mtjax import cli
from mtjax.config import python_config
from mtjax.eval import run
from mtjax.recipes import train as train_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_cache):
  """A quickstart-style run: t5_test, a few steps, evaluation at the end."""
  run_dir = str(tmp_path_factory.mktemp("run"))
  cfg = python_config.load(os.path.join(ROOT, "configs", "quickstart.py"), [
      f"run_dir={run_dir}", f"data.cache_dir={synthetic_cache}", "model.preset=t5_test",
      "data.batch_size=8", "train.steps=6", "train.log_every=3", "train.checkpoint_every=3",
      "optimizer.learning_rate=0.05", "eval.max_examples=8", "eval.batch_size=8",
      "eval.label_set=yes,no"])
  summary = train_recipe.run(cfg, progress=False)
  return run_dir, summary["eval"]


def _metrics(results):
  return {r["task"]: r["metrics"] for r in results}


def test_eval_reproduces_end_of_training(trained, capsys, tmp_path):
  run_dir, at_end = trained
  end_table = json.load(open(os.path.join(run_dir, "eval_results.json")))
  out_dir = str(tmp_path / "eval")
  cli.main(["eval", "--checkpoint", os.path.join(run_dir, "checkpoints", "6"),
            "--output_dir", out_dir])
  printed = capsys.readouterr().out
  assert "at step 6" in printed and "synthetic_compare" in printed
  # Training evaluated the same tasks in this process: every batch shape is compiled already.
  assert re.search(r"evaluated \d+ task results in [\d.]+s: \d+ batches, 0 new batch shapes",
                   printed), printed
  again = json.load(open(os.path.join(out_dir, "eval_results.json")))
  assert _metrics(again) == _metrics(at_end) == _metrics(end_table)
  # Same decoded outputs, not only the same aggregate numbers.
  assert [r["samples"] for r in again] == [r["samples"] for r in end_table]
  assert all("format_rate" in m for m in _metrics(again).values())
  row = json.loads(open(os.path.join(out_dir, "eval_metrics.jsonl")).readline())
  assert row["step"] == 6 and "synthetic_compare/accuracy" in row
  assert "average/exact_match" in row
  assert os.listdir(os.path.join(out_dir, "tensorboard"))
  with open(os.path.join(out_dir, "predictions", "synthetic_copy-6.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  copy = next(r for r in again if r["task"] == "synthetic_copy")
  assert len(rows) == 8 and rows[:3] == copy["samples"]
  assert "rows" not in again[0]


def test_eval_with_beam_search_and_another_task(trained, capsys, tmp_path):
  run_dir, _ = trained
  out_dir = str(tmp_path / "beam")
  cli.main(["eval", "--run_dir", run_dir, "--mixture_or_task", "synthetic_add", "--decode",
            "beam", "--beam_size", "3", "--max_examples", "4", "--output_dir", out_dir])
  printed = capsys.readouterr().out
  results = json.load(open(os.path.join(out_dir, "eval_results.json")))
  assert [r["task"] for r in results] == ["synthetic_add"]
  assert results[0]["num_examples"] == 4 and "exact_match" in results[0]["metrics"]
  assert "synthetic_add" in printed


def test_locate_checkpoint(tmp_path):
  (tmp_path / "checkpoints" / "7").mkdir(parents=True)
  by_run = run.locate(str(tmp_path))
  by_step = run.locate(str(tmp_path / "checkpoints" / "7"))
  by_dir = run.locate(str(tmp_path / "checkpoints"))
  assert by_run.step is None and by_dir.step is None and by_step.step == 7
  assert by_run.run_dir == by_step.run_dir == by_dir.run_dir == str(tmp_path)
  with pytest.raises(KeyError, match="beam_sise"):
    run.with_overrides(run_config_stub(), eval_fields={"beam_sise": 2})


def run_config_stub():
  from mtjax.config import schema
  return schema.RunConfig()
