"""The loop in-process with the options together: frozen encoder, microbatches, task-balanced
loss, teacher-forced eval loss every 2 steps, keep-best by eval/loss, model summary."""

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtjax.config import schema
from mtjax.recipes import train as train_recipe
from mtjax.train import setup as setup_lib


def _flat(tree):
  key = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return {key(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_loop_with_frozen_encoder_microbatches_and_eval_loss(tmp_path, synthetic_cache):
  run_dir = str(tmp_path / "run")
  cfg = schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(cache_dir=synthetic_cache, inputs_length=32, targets_length=8,
                             batch_size=16),
      model=schema.ModelConfig(preset="t5_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
      train=schema.TrainConfig(steps=4, log_every=1, checkpoint_every=2, keep_checkpoints=1,
                               trainable=("decoder",), microbatches=2,
                               loss_normalization="task", best_metric="eval/loss"),
      eval=schema.EvalConfig(at_end=False, loss_every=2, loss_batches=1),
      mesh=schema.MeshConfig(data=4, fsdp=2, tensor=1))
  summary = train_recipe.run(cfg, progress=False)
  assert summary["steps"] == 4 and not summary["preempted"]
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  evals = [r for r in rows if "eval/loss" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(any(k.startswith("eval/loss/synthetic_") for k in r) for r in evals)

  with open(os.path.join(run_dir, "model_summary.json")) as f:
    model = json.load(f)
  params = model["params"]
  assert all(p["trainable"] == ("decoder" in name) for name, p in params.items())
  assert 0 < model["num_trainable"] < model["num_params"]
  assert any(p["axes"] for p in params.values())

  # trainable.json: the spec, the seed and every path on one side, as model_summary.json says.
  trainable_file = os.path.join(run_dir, "trainable.json")
  with open(trainable_file) as f:
    chosen = json.load(f)
  assert chosen["spec"] == ["decoder"] and chosen["seed"] == cfg.train.seed
  assert len(chosen["trainable"]) == sum(p["trainable"] for p in params.values())
  assert len(chosen["frozen"]) == sum(not p["trainable"] for p in params.values())
  assert all("decoder" in p for p in chosen["trainable"])
  assert not any("decoder" in p for p in chosen["frozen"])

  # Frozen encoder: bit-identical to the fresh init; the decoder trained.
  other = setup_lib.build(dataclasses.replace(cfg, run_dir=str(tmp_path / "other")))
  init = other.params
  before = os.stat(trainable_file).st_mtime_ns
  setup_lib.write_trainable(dataclasses.replace(other, cfg=cfg))  # as a resume would
  assert os.stat(trainable_file).st_mtime_ns == before  # identical: not written again
  final = ocp.StandardCheckpointer().restore(os.path.join(run_dir, "checkpoints", "4", "params"))
  init, final = _flat(init), _flat(final)
  assert init.keys() == final.keys()
  for name, value in final.items():
    if "decoder" in name:
      assert not np.array_equal(value, init[name]), name
    else:
      np.testing.assert_array_equal(value, init[name], err_msg=name)
  # keep 1 newest + the best by eval/loss (the newest is also the best or step 2 is kept).
  kept = sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit())
  best = min(evals, key=lambda r: r["eval/loss"])["step"]
  assert kept == sorted({4, best})


def test_full_eval_every_n_steps_ranks_checkpoints(tmp_path, synthetic_cache):
  """`eval.every=2` decodes and scores every task at steps 2 and 4; the best checkpoint by a
  decoded metric is the step whose logged metric is best (and is kept on disk)."""
  from mtjax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  run_dir = str(tmp_path / "run")
  metric = "average/accuracy"
  cfg = schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(cache_dir=synthetic_cache, inputs_length=32, targets_length=8,
                             batch_size=16),
      model=schema.ModelConfig(preset="t5_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=3e-2),
      train=schema.TrainConfig(steps=4, log_every=2, checkpoint_every=100, keep_checkpoints=1,
                               best_metric=metric, best_mode="max"),
      eval=schema.EvalConfig(every=2, max_examples=8, batch_size=8),
      mesh=schema.MeshConfig(data=8, fsdp=1, tensor=1))
  summary = train_recipe.run(cfg, progress=False)
  with open(os.path.join(run_dir, "eval_metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [2, 4]  # the end-of-run evaluation is step 4's, not a third
  assert summary["eval"] and metric in rows[-1]
  checkpointer = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=100,
                                       keep=1, best_metric=metric, best_mode="max")
  try:
    best = checkpointer.best_step()
    assert best in checkpointer.all_steps() and 4 in checkpointer.all_steps()
    logged = {r["step"]: r[metric] for r in rows}
    assert checkpointer.meta(best)["metrics"][metric] == logged[best] == max(logged.values())
  finally:
    checkpointer.close()
