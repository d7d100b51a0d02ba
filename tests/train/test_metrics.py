"""What the metrics rows and trackers receive, on one small in-process run resumed once:
learning rate, cumulative tokens and examples per task (counted independently here from the
same batches), their continuation across a resume, decoded samples as TensorBoard text, the
profile window, and the same rows plus the resolved config reaching a registered tracker and
Weights & Biases (offline)."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from mtjax.config import schema
from mtjax.recipes import train as train_recipe
from mtjax.train import setup as setup_lib
from mtjax.train import trackers

STEPS = 4
try:
  import wandb  # noqa: F401  # pylint: disable=unused-import
  HAS_WANDB = True
except ImportError:  # not in the test extra: its test skips, the rest runs
  HAS_WANDB = False
CALLS: list[tuple] = []  # what the `recorder` tracker received: (method, args...)


@trackers.register("recorder")
class Recorder(trackers.Tracker):
  """A tracker registered by a test file: no edit of the loop."""

  def __init__(self, context):
    CALLS.append(("init", context.resume_step))

  def log(self, step, row):
    CALLS.append(("log", step, dict(row)))

  def log_samples(self, step, name, rows):
    CALLS.append(("samples", step, name, list(rows)))

  def log_config(self, config):
    CALLS.append(("config", config))

  def close(self):
    CALLS.append(("close",))


def _config(run_dir, cache_dir, profile_steps="", **eval_kw):
  return schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(cache_dir=cache_dir, inputs_length=32, targets_length=8,
                             batch_size=16),
      model=schema.ModelConfig(preset="t5_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2, schedule="linear",
                                       warmup_steps=2),
      train=schema.TrainConfig(steps=STEPS, log_every=1, checkpoint_every=2, keep_checkpoints=3,
                               profile_steps=profile_steps,
                               trackers=("recorder",) + ("wandb",) * HAS_WANDB),
      eval=schema.EvalConfig(max_examples=4, batch_size=8, **eval_kw),
      mesh=schema.MeshConfig(data=8, fsdp=1, tensor=1))


def _rows(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _expected_counts(cfg):
  """{step: (target tokens, input tokens, {task: examples})}, cumulative, counted in numpy from
  the batches the run reads (single process: the local batch is the global one)."""
  setup = setup_lib.build(cfg)
  data = setup_lib.data_iterator(setup)
  target, inputs, examples, out = 0, 0, dict.fromkeys(setup.spec.task_names, 0), {}
  for step in range(1, STEPS + 1):
    b = next(data)
    target += int((b["decoder_loss_weights"] > 0).sum())
    inputs += int((b["encoder_segment_ids"] > 0).sum())
    for seg, tasks in zip(b["decoder_segment_ids"], b["task_ids"]):
      for s in set(seg[seg > 0].tolist()):
        examples[setup.spec.task_names[tasks[np.argmax(seg == s)]]] += 1
    out[step] = (target, inputs, dict(examples))
  return out, setup.spec.task_names


def _tb_texts(path):
  """[(step, tag, text)] of the text summaries in one event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    data = f.read()
  out, at = [], 0
  while at + 12 <= len(data):
    n = int.from_bytes(data[at:at + 8], "little")
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
    at += 12 + n + 4
    for v in event.summary.value:
      if v.metadata.plugin_data.plugin_name == "text":
        out.append((event.step, v.tag, v.tensor.string_val[0].decode()))
  return out


def _wandb_records(run_dir):
  """(config, {step: row}) of the offline W&B runs under `run_dir/wandb`, read from their
  `.wandb` files (LevelDB-log framed protobuf records)."""
  from wandb.proto import wandb_internal_pb2 as pb  # pylint: disable=g-import-not-at-top

  config, history = {}, {}
  for path in sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "*.wandb"))):
    with open(path, "rb") as f:
      data = f.read()
    at, pending = 7, b""  # after the ":W&B" header
    while at + 7 <= len(data):
      if 32768 - at % 32768 < 7:  # block trailer
        at += 32768 - at % 32768
        continue
      n, kind = int.from_bytes(data[at + 4:at + 6], "little"), data[at + 6]
      chunk, at = data[at + 7:at + 7 + n], at + 7 + n
      if kind in (2, 3):
        pending = (b"" if kind == 2 else pending) + chunk
        continue
      if kind not in (1, 4):
        continue
      record = pb.Record.FromString(pending + chunk if kind == 4 else chunk)
      which = record.WhichOneof("record_type")
      updates = {"run": lambda r: r.run.config.update, "config": lambda r: r.config.update}
      if which in updates:
        for item in updates[which](record):
          config[item.key] = json.loads(item.value_json)
      elif which == "history":
        row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
               for i in record.history.item}
        history.setdefault(int(row.get("_step", -1)), {}).update(row)
  return config, history


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_cache):
  """One run of 4 steps (full evaluations at steps 2 and 4, a profile of step 3), then the same
  run resumed from its step-2 checkpoint with only the end-of-run evaluation and no profile."""
  base = tmp_path_factory.mktemp("metrics")
  run_dir = str(base / "run")
  cfg = _config(run_dir, synthetic_cache, profile_steps="3:3", every=2, at_end=True)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.chdir(base)
    CALLS.clear()
    first = train_recipe.run(cfg, progress=False)
    first_calls, first_rows = list(CALLS), _rows(run_dir)
    first_events = set(glob.glob(os.path.join(run_dir, "tensorboard", "events.*")))
    first_wandb = _wandb_records(run_dir) if HAS_WANDB else None
    shutil.rmtree(os.path.join(run_dir, "checkpoints", "4"))
    CALLS.clear()
    second = train_recipe.run(_config(run_dir, synthetic_cache, every=0, at_end=True), progress=False)
    second_calls = list(CALLS)
  expected, tasks = _expected_counts(cfg)
  return dict(cfg=cfg, run_dir=run_dir, first=first, second=second, first_rows=first_rows,
              first_calls=first_calls, second_calls=second_calls, first_events=first_events,
              first_wandb=first_wandb, expected=expected, tasks=tasks)


def test_learning_rate_is_the_schedule_of_each_rows_update(runs):
  # linear warmup 0 -> 1e-2 over 2 updates, then linear decay to 0 over the 2 left; the row of
  # step N shows the rate of its update, schedule(N - 1) (optax counts updates from 0)
  lrs = {r["step"]: r["learning_rate"] for r in runs["first_rows"] if "learning_rate" in r}
  assert lrs == pytest.approx({1: 0.0, 2: 5e-3, 3: 1e-2, 4: 5e-3})


def test_tokens_and_examples_per_task_are_cumulative_and_exact(runs):
  rows = {r["step"]: r for r in runs["first_rows"] if "loss" in r}
  assert sorted(rows) == [1, 2, 3, 4]
  for step, (target, inputs, examples) in runs["expected"].items():
    row = rows[step]
    assert row["seen/target_tokens"] == target
    assert row["seen/input_tokens"] == inputs
    assert row["seen/examples"] == sum(examples.values())
    assert {t: row[f"seen/examples/{t}"] for t in runs["tasks"]} == examples
  assert len(set(runs["expected"][STEPS][2].values())) > 1 or len(runs["tasks"]) == 1


def test_a_resumed_run_continues_the_counts_without_double_counting(runs):
  assert runs["second"]["resumed_from"] == 2 and runs["second"]["steps"] == STEPS
  rows = _rows(runs["run_dir"])
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # 3 and 4 replaced, once each
  seen = lambda rs: [{k: v for k, v in r.items() if k.startswith("seen/") or k == "loss"}
                     for r in rs if "loss" in r]
  assert seen(rows) == seen(runs["first_rows"])
  # and the checkpoint the resumed run saved records the same totals
  from mtjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  checkpointer = ckpt_lib.Checkpointer(os.path.join(runs["run_dir"], "checkpoints"),
                                       save_every=2, keep=3)
  try:
    meta = checkpointer.meta(4)
  finally:
    checkpointer.close()
  target, inputs, examples = runs["expected"][STEPS]
  assert meta["seen"] == {"target_tokens": target, "input_tokens": inputs,
                          "examples": sum(examples.values()), "examples_per_task": examples}


def test_each_full_evaluation_writes_decoded_samples_as_tensorboard_text(runs):
  events = sorted(glob.glob(os.path.join(runs["run_dir"], "tensorboard", "events.*")))
  first = [t for p in sorted(runs["first_events"]) for t in _tb_texts(p)]
  for step in (2, 4):  # eval.every=2; step 4's is also the end-of-run evaluation (not twice)
    tags = sorted(tag for s, tag, _ in first if s == step)
    assert tags == sorted(f"samples/{t}/text_summary" for t in runs["tasks"])
  assert len(first) == 2 * len(runs["tasks"])
  text = first[0][2]
  assert text.startswith("| input | target | prediction |") and len(text.splitlines()) == 5
  # the resumed run has only the end-of-run evaluation (after the loop): written there too
  later = [t for p in events if p not in runs["first_events"] for t in _tb_texts(p)]
  assert sorted(s for s, _, _ in later) == [STEPS] * len(runs["tasks"])


def test_a_registered_tracker_gets_the_rows_config_and_samples(runs):
  calls = runs["first_calls"]
  assert calls[0] == ("init", 0) and calls[-1] == ("close",)
  configs = [c[1] for c in calls if c[0] == "config"]
  assert configs == [schema.to_dict(runs["cfg"])]
  logged = {c[1]: c[2] for c in calls if c[0] == "log" and "loss" in c[2]}
  for row in runs["first_rows"]:
    if "loss" in row:
      assert logged[row["step"]] == {k: v for k, v in row.items() if k != "step"}
  evals = [c for c in calls if c[0] == "log" and any(k.startswith("eval/average/") for k in c[2])]
  assert [c[1] for c in evals] == [2, 4]
  samples = [c for c in calls if c[0] == "samples"]
  assert sorted({c[2] for c in samples}) == sorted(runs["tasks"])
  assert all(len(c[3]) == 3 and {"inputs", "target", "prediction"} <= set(c[3][0])
             for c in samples)
  second = runs["second_calls"]
  assert second[0] == ("init", 2)
  assert sorted(c[1] for c in second if c[0] == "log" and "loss" in c[2]) == [3, 4]
  assert sorted({c[1] for c in second if c[0] == "samples"}) == [STEPS]


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'mtjax[wandb]')")
def test_wandb_offline_gets_the_same_rows_and_the_resolved_config(runs):
  config, history = runs["first_wandb"]
  resolved = schema.to_dict(runs["cfg"])
  for section in ("data", "model", "optimizer", "train", "eval"):
    assert config[section] == json.loads(json.dumps(resolved[section]))
  for row in runs["first_rows"]:
    if "loss" in row:
      got = history[row["step"]]
      for k, v in row.items():
        if k != "step":
          assert got[k] == pytest.approx(v, rel=1e-6), (row["step"], k)
  assert any(k.startswith("eval/average/") for k in history[2])
  assert any(k.startswith("samples/") for k in history[4])
  with open(os.path.join(runs["run_dir"], "wandb_run_id")) as f:
    run_id = f.read().strip()
  runs_dirs = glob.glob(os.path.join(runs["run_dir"], "wandb", "offline-run-*"))
  assert len(runs_dirs) == 2 and all(d.endswith(run_id) for d in runs_dirs)  # resumed: same id


def test_the_profile_window_writes_a_trace(runs):
  traces = glob.glob(os.path.join(runs["run_dir"], "profile", "plugins", "profile", "*",
                                  "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_tracker_registry():
  assert {"jsonl", "tensorboard", "wandb", "recorder"} <= set(trackers.registered())
  assert trackers.resolve("recorder") is Recorder
  assert trackers.resolve(f"{__name__}:recorder") is Recorder
  assert trackers.resolve(f"{__name__}:Recorder") is Recorder
  from mtjax import errors  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match="unknown tracker 'nope'.*jsonl"):
    trackers.check(("nope",))
  with pytest.raises(errors.ModuleError, match="no_such_module"):
    trackers.check(("no_such_module:x",))


def test_missing_wandb_is_one_error_naming_the_extra(monkeypatch, tmp_path):
  from mtjax import errors  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # `import wandb` fails
  with pytest.raises(errors.ModuleError, match=r"mtjax\[wandb\]"):
    trackers.check(("wandb",))
  cfg = schema.RunConfig(run_dir=str(tmp_path / "run"),
                         train=schema.TrainConfig(trackers=("wandb",)))
  with pytest.raises(errors.ModuleError, match=r"pip install 'mtjax\[wandb\]'"):
    train_recipe.run(cfg, progress=False)
  assert not os.path.exists(tmp_path / "run")  # before anything is written


def test_samples_markdown_escapes_table_syntax():
  text = trackers.samples_markdown([{"inputs": "a | b\nc", "target": ["x"], "prediction": None,
                                     "target_log_likelihood": -1.5}])
  assert text.splitlines()[2] == '| a \\| b c | ["x"] | (scored: target log-likelihood -1.500) |'
