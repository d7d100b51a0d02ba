"""`mtjax infer` predicts what `mtjax eval` predicts for the same texts, and ranks answer choices
as rank classification does."""

import json
import os

import numpy as np
import pytest

from mtjax import cli
from mtjax.config import python_config
from mtjax.recipes import train as train_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEP = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic_cache):
  """A tiny quickstart run (t5_test, a few steps, no evaluation at the end)."""
  out = str(tmp_path_factory.mktemp("run"))
  cfg = python_config.load(os.path.join(ROOT, "configs", "quickstart.py"), [
      f"run_dir={out}", f"data.cache_dir={synthetic_cache}", "model.preset=t5_test",
      "data.batch_size=8", f"train.steps={STEP}", f"train.checkpoint_every={STEP}",
      "optimizer.learning_rate=0.05", "eval.at_end=False", "train.log_every=10"])
  train_recipe.run(cfg, progress=False)
  return out


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _eval_rows(run_dir, out_dir, task, *flags):
  cli.main(["eval", "--checkpoint", run_dir, "--mixture_or_task", task, "--max_examples", "8",
            "--output_dir", out_dir, *flags])
  return _read(os.path.join(out_dir, "predictions", f"{task}-{STEP}.jsonl"))


def test_predictions_equal_eval(run_dir, tmp_path, capsys):
  """Greedy and beam search, through the CLI; the run's task names the postprocessor."""
  for flags, infer_flags in [((), ()), (("--decode", "beam", "--beam_size", "3"),
                                        ("--set", "eval.decode=beam", "eval.beam_size=3"))]:
    name = "beam" if flags else "greedy"
    expected = _eval_rows(run_dir, str(tmp_path / f"eval_{name}"), "synthetic_copy", *flags)
    source = tmp_path / f"{name}.jsonl"
    source.write_text("".join(json.dumps({"inputs": r["inputs"], "id": i}) + "\n"
                              for i, r in enumerate(expected)))
    out = str(tmp_path / f"{name}_preds.jsonl")
    capsys.readouterr()
    cli.main(["infer", "--checkpoint", run_dir, "--input", str(source), "--output", out,
              "--task", "synthetic_copy", "--batch_size", "4", *infer_flags])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == len(expected) == 8 and summary["decode"] == (flags[1:2] or
                                                                            ("greedy",))[0]
    got = _read(out)
    assert [r["id"] for r in got] == list(range(8))  # the record's own fields pass through
    assert [r["prediction"] for r in got] == [r["prediction"] for r in expected]
    assert any(r["prediction"] for r in got)  # a trained model says something

  # A .txt of the same prompts, from a step dir, without a task: the decoded text unprocessed
  # (the synthetic postprocessor only strips it).
  txt = tmp_path / "prompts.txt"
  txt.write_text("".join(r["inputs"] + "\n" for r in expected))
  out = str(tmp_path / "txt_preds.jsonl")
  cli.main(["infer", "--checkpoint", os.path.join(run_dir, "checkpoints", str(STEP)),
            "--input", str(txt), "--output", out, "--decode", "beam", "--beam_size", "3"])
  assert [r["prediction"].strip() for r in _read(out)] == [r["prediction"] for r in expected]


def test_answer_choices_rank_as_rank_classification(run_dir, synthetic_cache):
  """The Python call: each choice's scores and the chosen one are rank classification's over
  the cached (SeqIO-tokenized) inputs."""
  from mtjax.eval import evaluate, infer, scoring

  model = infer.load(run_dir, task="synthetic_compare")
  lengths = model.lengths
  examples = evaluate.load_examples(synthetic_cache, "synthetic_compare", "validation", lengths,
                                    6)
  prepared = evaluate._prepared(examples, synthetic_cache, "synthetic_compare", "validation",
                                lengths)
  texts = [str(ex["inputs_pretokenized"]) for ex in examples]
  choices = [["yes", "no"], ["no", "yes", "maybe"]] * 3
  rows = infer.predict(model, texts, answer_choices=choices, batch_size=4, scoring_mode="mean")
  inputs = [np.asarray(p["inputs"], np.int32) for p in prepared]
  assert all(np.array_equal(infer.encode_inputs(model, t), x) for t, x in zip(texts, inputs))

  for ex, c in zip(examples, choices):
    ex["answer_choices"] = c
  pairs, owners, gold = scoring.choice_pairs(examples, inputs, model.vocab, add_eos=True,
                                             targets_length=lengths["targets"])
  scores = scoring.score_pairs(model.graphdef, model.params, pairs, lengths=lengths,
                               batch_size=4, mesh=model.mesh, rules=model.rules)
  ranked = scoring.rank_answer_choices(scores, owners, gold, "mean")
  for i, (row, c) in enumerate(zip(rows, choices)):
    assert [s["choice"] for s in row["scores"]] == c
    mine = np.flatnonzero(owners == i)
    np.testing.assert_allclose([s["sum"] for s in row["scores"]], scores["sum"][mine], rtol=1e-5)
    np.testing.assert_allclose([s["mean"] for s in row["scores"]], scores["mean"][mine],
                               rtol=1e-5)
    assert row["choice"] == c[ranked["predicted"][i]]
    assert isinstance(row["prediction"], str)


def test_bad_input_is_one_error_line(run_dir, tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"inputs": "fine"}\n{"text": "no inputs"}\n')
  with pytest.raises(SystemExit) as e:
    cli.main(["infer", "--checkpoint", run_dir, "--input", str(bad), "--output",
              str(tmp_path / "o.jsonl")])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "line 2" in err and "Traceback" not in err
  good = tmp_path / "good.txt"
  good.write_text("Copy the text: abc\n")
  with pytest.raises(SystemExit):
    cli.main(["infer", "--checkpoint", str(tmp_path), "--input", str(good), "--output",
              str(tmp_path / "o.jsonl")])
  assert "holds no model" in capsys.readouterr().err
