"""`mtjax train` / `mtjax eval` as a user runs them: files written, resume, per-task table."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mtjax(*args, timeout=400, stderr=False):
  env = dict(os.environ, PYTHONPATH=ROOT)  # keeps the 8 fake devices from conftest
  out = subprocess.run([sys.executable, "-m", "mtjax.cli", *args], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=timeout)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return (out.stdout, out.stderr) if stderr else out.stdout


def test_train_resume_and_eval(tmp_path, synthetic_cache):
  run_dir = str(tmp_path / "run")
  common = ["--config", os.path.join(ROOT, "configs", "quickstart.py"), "--set",
            f"run_dir={run_dir}", f"data.cache_dir={synthetic_cache}", "model.preset=t5_test",
            "data.batch_size=8", "data.inputs_length=64", "data.targets_length=16",
            "train.log_every=2", "train.checkpoint_every=2", "optimizer.warmup_steps=0",
            "eval.max_examples=8", "eval.batch_size=8"]
  # stderr is a pipe here, as in a log file: progress comes as plain lines (every update with
  # --progress_every=0), never as carriage-return redraws
  stdout, stderr = _mtjax("train", *common, "train.steps=4", "--progress_every=0", stderr=True)
  assert "\r" not in stderr, stderr[-2000:]
  train_lines = [x for x in stderr.splitlines() if x.startswith("train ")]
  assert [x.split()[1] for x in train_lines] == ["1/4", "2/4", "3/4", "4/4"], stderr[-2000:]
  assert "loss=" in train_lines[1] and "tok_s=" in train_lines[1] and "ETA" in train_lines[1]
  assert "eval 5/5 tasks (100%) task=synthetic_sort" in stderr, stderr[-2000:]
  for name in ("config.json", "model_summary.json", "metrics.jsonl", "eval_results.json"):
    assert os.path.exists(os.path.join(run_dir, name)), name
  assert "synthetic_copy" in stdout and "exact_match" in stdout  # the printed table
  results = json.load(open(os.path.join(run_dir, "eval_results.json")))
  assert {r["task"] for r in results} == {f"synthetic_{t}" for t in
                                          ("add", "compare", "copy", "reverse", "sort")}
  assert all(r["num_examples"] == 8 and r["metrics"] for r in results)
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "4"]

  # Asking for more steps resumes from step 4 instead of starting over.
  _, stderr = _mtjax("train", *common, "train.steps=6", "eval.at_end=False", "--progress=none",
                     stderr=True)
  assert "train " not in stderr
  rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert all("loss/synthetic_copy" in r or "loss/synthetic_add" in r for r in rows)

  stdout = _mtjax("eval", "--run_dir", run_dir, "--max_examples", "4")
  assert "at step 6" in stdout and "synthetic_compare" in stdout
