"""`mtjax ablate`: variant rates, sweep errors, the table's statistics, sampled-mixture counts, and
a tiny sweep that runs, resumes across shards and then redoes nothing."""

import csv
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from mtjax.data import mixing
from mtjax.recipes import report, sampling, sweep, variants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = mixing.MixtureSpec("m", (mixing.TaskRate("a", 3.0), mixing.TaskRate("b", 1.0),
                                mixing.TaskRate("c", 4.0), mixing.TaskRate("d", 2.0)))


def _rates(**raw):
  return variants.task_rates(variants.parse({"name": "v", **raw}, 0), SPEC)


def test_variant_rates_by_hand():
  assert _rates() == pytest.approx({"a": 0.3, "b": 0.1, "c": 0.4, "d": 0.2})  # the mixture's own
  assert _rates(rate_fn="uniform") == pytest.approx({t: 0.25 for t in "abcd"})
  assert _rates(exclude=["c"]) == pytest.approx({"a": 0.5, "b": 1 / 6, "c": 0.0, "d": 1 / 3})
  assert _rates(tasks=["a", "b"], rate_fn="uniform") == pytest.approx(
      {"a": 0.5, "b": 0.5, "c": 0.0, "d": 0.0})
  assert _rates(rates={"a": 1, "d": 3}) == pytest.approx({"a": 0.25, "b": 0, "c": 0, "d": 0.75})
  # General-instruction share: c+d get 0.7 split 4:2, a+b get 0.3 split 3:1.
  assert _rates(general={"tasks": ["c", "d"], "fraction": 0.7}) == pytest.approx(
      {"a": 0.225, "b": 0.075, "c": 0.7 * 4 / 6, "d": 0.7 * 2 / 6})


def test_rate_functions_use_the_task_sizes(synthetic_cache):
  del synthetic_cache  # registers the synthetic tasks
  spec = mixing.from_seqio("synthetic")
  n = {"synthetic_add": 6000, "synthetic_compare": 4000, "synthetic_copy": 4000,
       "synthetic_reverse": 8000, "synthetic_sort": 8000}  # mixtures/synthetic.py
  got = variants.task_rates(variants.parse(
      {"name": "t", "rate_fn": "examples_proportional", "maximum": 5000, "temperature": 2.0}, 0),
      spec)
  raw = {t: math.sqrt(min(k, 5000)) for t, k in n.items()}
  assert got == pytest.approx({t: r / sum(raw.values()) for t, r in raw.items()})
  flan = variants.task_rates(variants.parse({"name": "f", "rate_fn": "flan"}, 0), spec)
  assert flan["synthetic_sort"] == pytest.approx(3000 / (5 * 3000))  # all capped at 3000


@pytest.mark.parametrize("raw,message", [
    ({"variants": [{"name": "a", "exlude": ["x"]}]}, r"variant 'a'.*unknown key.*exlude"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "unique.*'a'"),
    ({"variants": [{"name": "a", "rate_fn": "zipf"}]}, "variant 'a'.*rate_fn"),
    ({"variants": [{"name": "a", "rates": {"b": 1}, "rate_fn": "uniform"}]}, "either `rates`"),
    ({"variants": [{"name": "a b"}]}, "`name`"),
    ({"variants": [{"name": "a", "general": {"tasks": ["b"]}}]}, "variant 'a'.*general"),
    ({"variants": [{"name": "a"}], "seeds": [0, 0]}, "seeds"),
    ({"variants": [{"name": "a"}], "steps": 3}, r"unknown key.*steps"),
    ({"variants": []}, "non-empty"),
])
def test_bad_sweeps_name_the_entry(raw, message):
  with pytest.raises(ValueError, match=message):
    sweep.parse(raw)


def test_bad_task_and_override_name_the_variant():
  with pytest.raises(ValueError, match=r"variant 'v'.*'e'.*not in the mixture"):
    _rates(exclude=["e"])
  s = sweep.parse({"variants": [{"name": "v", "set": ["train.stpes=3"]}]})
  from mtjax.config import schema
  with pytest.raises(ValueError, match=r"variant 'v' `set`.*train.stpes"):
    sweep.members(s, schema.RunConfig(), "/tmp/x", lambda name: SPEC)


def test_yaml_and_python_sweeps_parse(tmp_path):
  s = sweep.load(os.path.join(ROOT, "configs", "sweeps", "synthetic_mixtures.yaml"))
  assert [v.name for v in s.variants] == ["proportional", "no_sort", "arithmetic_heavy"]
  assert s.seeds == (0, 1)
  py = sweep.load(os.path.join(ROOT, "configs", "sweeps", "synthetic_rates.py"))
  assert len(py.variants) >= 3 and py.name == "synthetic_rates"
  (tmp_path / "bad.yaml").write_text("variants: [name: a\n")
  with pytest.raises(ValueError, match="invalid YAML"):
    sweep.load(str(tmp_path / "bad.yaml"))


def test_table_mean_and_sample_std():
  members = [sweep.Member(variants.Variant(v), seed, None, {"t1": w, "t2": 1 - w})
             for v, w in (("x", 0.5), ("y", 0.8)) for seed in (0, 1, 2)]
  values = {("x", 0): 10.0, ("x", 1): 20.0, ("x", 2): 60.0, ("y", 0): 1.0, ("y", 1): 2.0}
  results = {}
  for m in members:
    if (m.variant.name, m.seed) not in values:
      continue  # y-seed2 did not finish: left out of the statistics
    v = values[(m.variant.name, m.seed)]
    results[m.name] = {
        "rates": dict(m.rates),
        "sampled": {"t1": {"examples": 3, "tokens": 9}, "t2": {"examples": 1, "tokens": 2}},
        "eval": [{"task": "t1", "metrics": {"accuracy": v}},
                 {"task": "t2", "metrics": {"accuracy": 100 - v}}]}
  table = {(r["variant"], r["task"], r["metric"]): r for r in report.rows(members, results)}
  x = table[("x", "t1", "accuracy")]
  assert x["mean"] == pytest.approx(30.0) and x["n"] == 3
  assert x["std"] == pytest.approx(statistics.stdev([10, 20, 60]))
  y = table[("y", "t2", "accuracy")]
  assert (y["mean"], y["std"], y["n"]) == pytest.approx((98.5, statistics.stdev([99, 98]), 2))
  assert table[("x", "average (2 tasks)", "accuracy")]["mean"] == pytest.approx(50.0)
  assert table[("y", "t1", "configured_weight")]["mean"] == pytest.approx(0.8)
  assert table[("y", "t1", "sampled_share")]["mean"] == pytest.approx(3 / 4)
  assert table[("y", "t1", "sampled_token_share")]["mean"] == pytest.approx(9 / 11)
  md = report.markdown(report.rows(members, results), title="t")
  assert "| t1 | accuracy | 30.0 ± 26.5 | 1.5 ± 0.7 |" in md
  assert "| t1 | 0.500 → 0.750 (0.818) | 0.800 → 0.750 (0.818) |" in md


def test_table_averages_each_metric_only_with_itself():
  """Accuracy tasks and exact-match tasks: one average per metric, labelled with the tasks it
  pools; a classification task's rank accuracy is its own row; per-template numbers (template
  ids are per task) are never averaged across tasks."""
  members = [sweep.Member(variants.Variant("v"), seed, None, {"a": 0.5, "b": 0.5})
             for seed in (0, 1)]
  results = {m.name: {"rates": dict(m.rates), "eval": [
      {"task": "a", "metrics": {"accuracy": 40.0 + m.seed, "rank_accuracy": 70.0,
                                "rank_accuracy/template_0": 60.0}},
      {"task": "b", "metrics": {"accuracy": 60.0 + m.seed, "rank_accuracy/template_0": 90.0}},
      {"task": "c", "metrics": {"exact_match": 10.0}},
      {"task": "d", "metrics": {"exact_match": 30.0}},
      {"task": "e", "metrics": {"exact_match": 50.0}}]} for m in members}
  table = {(r["task"], r["metric"]): r for r in report.rows(members, results)}
  assert table[("average (2 tasks)", "accuracy")]["mean"] == pytest.approx(50.5)
  assert table[("average (3 tasks)", "exact_match")]["mean"] == pytest.approx(30.0)
  assert table[("a", "rank_accuracy")]["mean"] == 70.0
  averaged = {metric for task, metric in table if task.startswith("average")}
  assert averaged == {"accuracy", "exact_match"}  # no mixed mean, no template_0 of a and b
  md = report.markdown(report.rows(members, results), title="t")
  assert "| average (2 tasks) | accuracy | 50.5 ± 0.7 |" in md
  assert "| average (3 tasks) | exact_match | 30.0 ± 0.0 |" in md


def test_count_batch_packed_and_padded():
  batch = {  # row 0 packs task 2 (3 tokens) then task 0 (2); row 1 holds task 1 (2) + padding
      "task_ids": np.array([[2, 2, 2, 0, 0, 0], [1, 1, 0, 0, 0, 0]]),
      "decoder_loss_weights": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]),
      "decoder_segment_ids": np.array([[1, 1, 1, 2, 2, 0], [1, 1, 0, 0, 0, 0]])}
  examples, tokens = sampling.count_batch(batch, num_tasks=3)
  assert examples.tolist() == [1, 1, 1] and tokens.tolist() == [2, 2, 3]
  del batch["decoder_segment_ids"]  # unpacked: one example per row
  examples, _ = sampling.count_batch(batch, num_tasks=3)
  assert examples.tolist() == [0, 1, 1]


def _tiny_sweep(tmp_path) -> str:
  path = tmp_path / "tiny.yaml"
  path.write_text(
      "name: tiny\nseeds: [0]\n"
      "variants:\n  - {name: all}\n  - {name: no_sort, exclude: [synthetic_sort]}\n")
  return str(path)


def _phases(tmp_path, phases, worker_env) -> dict[str, str]:
  """Runs `mtjax ablate` invocations in one worker process; returns each one's output."""
  path = tmp_path / "phases.json"
  path.write_text(json.dumps(phases))
  env = dict(os.environ, **worker_env)
  proc = subprocess.run([sys.executable, "-m", "tests.recipes.sweep_worker", str(path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out, label = {}, None
  for line in proc.stdout.splitlines():
    if line.startswith("PHASE "):
      label = line[len("PHASE "):]
      out[label] = ""
    elif label is not None:
      out[label] += line + "\n"
  return out


def _trained(output: str) -> list[str]:
  return [line.split()[1] for line in output.splitlines() if line.startswith("TRAINED ")]


def test_sweep_runs_shards_resumes_and_skips_finished(tmp_path, synthetic_cache, worker_env):
  out = str(tmp_path / "sweep")
  args = ["ablate", "--config", os.path.join(ROOT, "configs", "quickstart.py"),
          "--sweep", _tiny_sweep(tmp_path), "--out", out, "--set",
          f"data.cache_dir={synthetic_cache}", "model.preset=t5_test", "data.batch_size=8",
          "data.inputs_length=32", "data.targets_length=8", "train.steps=2",
          "train.log_every=2", "train.checkpoint_every=2", "eval.max_examples=4",
          "eval.batch_size=8",
          "--compilation_cache_dir", worker_env["JAX_COMPILATION_CACHE_DIR"]]
  runs = _phases(tmp_path, [
      # Machine 0 of 2 runs the first member only.
      ["shard", args + ["--shard_index", "0", "--num_shards", "2"]],
      # The whole sweep (as after a kill): the finished member is skipped, the other one runs.
      ["full", args],
      # Once more: nothing trains; the report is rewritten from the members' results.
      ["again", args],
      # A changed config makes the members stale (not skipped); a dry run says so.
      ["changed", args + ["--dry_run", "--set", "train.steps=3"]],
  ], worker_env)
  assert _trained(runs["shard"]) == ["all-seed0"]
  assert "missing: no_sort-seed0" in runs["shard"]
  assert _trained(runs["full"]) == ["no_sort-seed0"]
  assert _trained(runs["again"]) == []
  assert "2 member(s) already finished: skipped" in runs["again"]
  assert "stale (config changed)" in runs["changed"] and _trained(runs["changed"]) == []

  with open(os.path.join(out, "results.csv")) as f:
    rows = {(r["variant"], r["task"], r["metric"]): r for r in csv.DictReader(f)}
  for variant in ("all", "no_sort"):  # the table holds what each run's own evaluation wrote
    run = os.path.join(out, "members", f"{variant}-seed0")
    with open(os.path.join(run, "eval_results.json")) as f:
      evaluated = json.load(f)
    for r in evaluated:
      for metric, value in r["metrics"].items():
        assert float(rows[(variant, r["task"], metric)]["mean"]) == pytest.approx(value, abs=1e-4)
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["2"]  # trained once
  assert float(rows[("no_sort", "synthetic_sort", "configured_weight")]["mean"]) == 0.0
  assert float(rows[("no_sort", "synthetic_sort", "sampled_share")]["mean"]) == 0.0
  assert float(rows[("all", "synthetic_sort", "sampled_share")]["mean"]) > 0.0
  for png in ("metrics.png", "mixture_weights.png"):
    assert os.path.getsize(os.path.join(out, png)) > 1000


def test_parallel_workers_get_their_own_gpus():
  from mtjax.recipes import ablate

  env = ablate._worker_env(slot=2, devices_per_member=2, parallel=4, cache_dir="/c")
  assert env["CUDA_VISIBLE_DEVICES"] == "4,5"
  assert env["JAX_COMPILATION_CACHE_DIR"] == "/c"
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # workers share what is left
  unchanged = ablate._worker_env(slot=0, devices_per_member=0, parallel=1)
  assert unchanged.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")
