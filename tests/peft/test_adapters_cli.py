"""`mtjax eval` and `mtjax infer` on runs with multi-task adapters, through the CLI.

Each run trains t5_test (MHR and MixLoRA: decoder_test, decoder-only rows) on
`synthetic_strings` (copy, reverse, sort) for one step with one adapter, then its adapter parameters are overwritten with large random values (so that every
task's adapters move the model far and differently: a wrong task index changes the outputs).
The references are computed independently of the evaluators' task fixing (`select_task`) and
their cached decoding: the model's plain forward with the evaluated task's index given
explicitly as `task_ids` (greedy decoding by repeated full forwards, choice log-likelihoods by
one teacher-forced forward), and for the adapters that fold (Poly/MHR, MTLoRA) the per-task
plain HF checkpoint `mtjax export --task` writes, scored with transformers.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from mtjax import cli
from mtjax.config import schema
from mtjax.models import store
from mtjax.peft import lora

TASKS = ("synthetic_copy", "synthetic_reverse", "synthetic_sort")
INPUTS, TARGETS = 32, 8
EXAMPLES = 3
ADAPTERS = {  # the adapter's model.* keys (MHR: 2 heads divide the projections)
    "poly": dict(adapter_experts=3),
    "mhr": dict(adapter_experts=3, adapter_heads=2),
    "mtlora": {},
    "mixlora": dict(adapter_experts=3, adapter_top_k=2),
}
DECODER = ("mhr", "mixlora")  # trained as decoder_test (decoder-only rows); the others t5_test
# (LoRAMoE routes on the input like MixLoRA, which stands for both through the CLI here: each
# case costs 30-60 s of `make test`; test_adapters checks LoRAMoE's forward against numpy, its
# balancing loss and its one-expert reduction to LoRA)
TARGETS_OF = {"t5": ("query", "value", "out", "wi_0", "wo"),
              "decoder": ("query", "value", "out", "gate", "down")}
FOLDS = ("poly", "mhr", "mtlora")
DEFAULT = {"mtlora": "synthetic_reverse"}  # model.adapter_default_task: serves other tasks


def _train(tmp_path, cache_dir, adapter, **model_keys) -> str:
  """One training step with `adapter`, then its adapter parameters randomised (std 0.5) in the
  step-1 checkpoint. Returns the run dir."""
  from mtjax.recipes import train as train_recipe

  run_dir = str(tmp_path / adapter)
  family = "decoder" if adapter in DECODER else "t5"
  cfg = schema.RunConfig(
      run_dir=run_dir,
      data=schema.DataConfig(mixture="synthetic_strings", cache_dir=cache_dir,
                             inputs_length=INPUTS, targets_length=TARGETS, batch_size=8,
                             feature_converter="decoder_only" if family == "decoder"
                             else "enc_dec"),
      model=schema.ModelConfig(preset=f"{family}_test", lora_rank=2, adapter=adapter,
                               lora_targets=TARGETS_OF[family], **ADAPTERS[adapter],
                               **model_keys),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2),
      train=schema.TrainConfig(steps=1, log_every=1, checkpoint_every=1, trainable=("lora",)),
      eval=schema.EvalConfig(at_end=False),
      mesh=schema.MeshConfig(data=8, fsdp=1, tensor=1))
  train_recipe.run(cfg, progress=False)
  params_dir = os.path.join(run_dir, "checkpoints", "1", "params")
  params = ocp.StandardCheckpointer().restore(params_dir)
  rng = np.random.default_rng(0)

  def randomise(path, value):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    value = np.asarray(value)
    if not lora.is_adapter_path(name):
      return value
    return rng.normal(0, 0.5, value.shape).astype(value.dtype)

  params = jax.tree_util.tree_map_with_path(randomise, params)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(params_dir, params, force=True)
  checkpointer.wait_until_finished()
  return run_dir


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _vocab():
  from mtjax.mixtures import synthetic

  return synthetic.VOCAB


def _encode(text: str) -> list[int]:
  return list(_vocab().encode(text))[:INPUTS - 1] + [1]  # the task's inputs: bytes, EOS


class Reference:
  """The model's forward with each token's task given as `task_ids` (no task fixed on it).
  Decoder-only rows are `[0] + inputs + targets` (the start token, as training's rows)."""

  def __init__(self, run_dir, family):
    model = store.load_any(run_dir)
    self.family = family
    self.graphdef, self.params = nnx.split(model)
    self.forward = jax.jit(lambda params, batch: nnx.merge(self.graphdef, params)(batch))

  def logits(self, inputs: list[list[int]], decoder_inputs: np.ndarray, task: int):
    """Logits `[B, TARGETS, V]` over the targets part (decoder_inputs: the shifted targets)."""
    if self.family == "decoder":
      rows = np.zeros((len(inputs), 1 + INPUTS + TARGETS), np.int32)
      for i, x in enumerate(inputs):
        rows[i, 1:1 + len(x)] = x
        rows[i, len(x):len(x) + TARGETS] = decoder_inputs[i]  # (0 = the start: the EOS's spot)
        rows[i, len(x)] = x[-1]  # the inputs' EOS stays; the targets start after it
      batch = {"decoder_input_tokens": rows,
               "task_ids": np.full(rows.shape, task, np.int32)}
      out = np.asarray(self.forward(self.params, batch), np.float64)
      return np.stack([out[i, len(x):len(x) + TARGETS] for i, x in enumerate(inputs)])
    enc = np.zeros((len(inputs), INPUTS), np.int32)
    for i, x in enumerate(inputs):
      enc[i, :len(x)] = x
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": decoder_inputs,
             "task_ids": np.full(decoder_inputs.shape, task, np.int32)}
    return np.asarray(self.forward(self.params, batch), np.float64)

  def greedy(self, inputs, task: int) -> list[str]:
    """Greedy decoding by full forwards (decoder starts at 0, stops at EOS = 1)."""
    dec = np.zeros((len(inputs), TARGETS), np.int32)
    out = np.zeros((len(inputs), TARGETS), np.int32)
    for pos in range(TARGETS):
      out[:, pos] = self.logits(inputs, dec, task)[:, pos].argmax(-1)
      if pos + 1 < TARGETS:
        dec[:, pos + 1] = out[:, pos]
    texts = []
    for row in out:
      ends = np.flatnonzero(row == 1)
      row = row[:ends[0]] if ends.size else row
      texts.append(_vocab().decode([int(t) for t in row]).strip())
    return texts

  def choice_scores(self, text: str, choices: list[str], task: int) -> list[float]:
    """Summed log-likelihood of each choice (+ EOS), teacher-forced."""
    targets = np.zeros((len(choices), TARGETS), np.int32)
    for i, c in enumerate(choices):
      ids = (list(_vocab().encode(c)) + [1])[:TARGETS]
      targets[i, :len(ids)] = ids
    dec = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    logp = jax.nn.log_softmax(jnp.asarray(self.logits([_encode(text)] * len(choices), dec,
                                                      task)), -1)
    picked = np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
    return list((picked * (targets > 0)).sum(-1))


def _hf_choice_scores(hf_dir, family, text, choices) -> list[float]:
  """Each choice's summed log-likelihood (+ EOS) under the exported HF model, by transformers."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  auto = (transformers.AutoModelForCausalLM if family == "decoder"
          else transformers.AutoModelForSeq2SeqLM)
  model = auto.from_pretrained(hf_dir).eval()
  x, scores = _encode(text), []
  for c in choices:
    target = list(_vocab().encode(c)) + [1]
    with torch.no_grad():
      if family == "decoder":  # [start] + inputs + target: position len(x) + j predicts target j
        ids = torch.tensor([[0] + x + target])
        logits = model(input_ids=ids).logits[0, len(x):len(x) + len(target)]
      else:
        logits = model(input_ids=torch.tensor([x]), labels=torch.tensor([target])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    scores.append(float(logp.gather(-1, torch.tensor(target)[:, None]).sum()))
  return scores


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_eval_and_infer_use_each_tasks_adapters(adapter, tmp_path, synthetic_cache, capsys):
  default = DEFAULT.get(adapter, "")
  run_dir = _train(tmp_path, synthetic_cache, adapter, adapter_default_task=default)
  family = "decoder" if adapter in DECODER else "t5"
  ref = Reference(run_dir, family)

  # mtjax eval of the whole mixture: each task's predictions are the greedy decode with its own
  # task index
  out = str(tmp_path / "eval")
  cli.main(["eval", "--checkpoint", run_dir, "--max_examples", str(EXAMPLES), "--output_dir",
            out])
  evaluated = {}
  for index, task in enumerate(TASKS):
    rows = _read(os.path.join(out, "predictions", f"{task}-1.jsonl"))
    inputs = [_encode(r["inputs"]) for r in rows]
    assert [r["prediction"] for r in rows] == ref.greedy(inputs, index), task
    evaluated[task] = rows
  # the check can fail: the three tasks' adapters decode these inputs differently
  sort_inputs = [_encode(r["inputs"]) for r in evaluated["synthetic_sort"]]
  if adapter in FOLDS:
    decoded = {tuple(ref.greedy(sort_inputs, t)) for t in range(3)}
    assert len(decoded) > 1, decoded

  if adapter in FOLDS:  # (task-routed: an input-routed adapter ignores the task index)
    # one task of the mixture on its own: still that task's index (2), not the first row's
    out_sort = str(tmp_path / "eval_sort")
    cli.main(["eval", "--checkpoint", run_dir, "--mixture_or_task", "synthetic_sort",
              "--max_examples", str(EXAMPLES), "--output_dir", out_sort])
    rows = _read(os.path.join(out_sort, "predictions", "synthetic_sort-1.jsonl"))
    assert ([r["prediction"] for r in rows]
            == [r["prediction"] for r in evaluated["synthetic_sort"]])

  # mtjax infer --task synthetic_sort: the same predictions, and choice scores of that task
  source = tmp_path / "prompts.jsonl"
  choices = ["abc", "xyz", "hello"]
  source.write_text("".join(json.dumps({"inputs": r["inputs"], "answer_choices": choices}) + "\n"
                            for r in evaluated["synthetic_sort"]))
  predicted = str(tmp_path / "infer.jsonl")
  cli.main(["infer", "--checkpoint", run_dir, "--input", str(source), "--output", predicted,
            "--task", "synthetic_sort"])
  got = _read(predicted)
  assert [r["prediction"] for r in got] == [r["prediction"] for r in evaluated["synthetic_sort"]]
  # (large random adapters amplify float32 round-off: 1e-4 of scores of -20 to -40; a wrong
  # task's adapters change them by units, below)
  tol = dict(rtol=2e-4, atol=5e-3)
  for row in got:
    want = ref.choice_scores(row["inputs"], choices, 2)
    np.testing.assert_allclose([s["sum"] for s in row["scores"]], want, **tol)
  if adapter in FOLDS:
    other = ref.choice_scores(got[0]["inputs"], choices, 0)
    assert np.abs(np.subtract(other, [s["sum"] for s in got[0]["scores"]])).max() > 0.1

  if adapter in FOLDS:
    # the plain HF checkpoint exported for the task scores the choices as infer did
    hf_dir = str(tmp_path / "hf_sort")
    cli.main(["export", "--checkpoint", run_dir, "--out", hf_dir, "--task", "synthetic_sort"])
    for row in got[:2]:
      np.testing.assert_allclose([s["sum"] for s in row["scores"]],
                                 _hf_choice_scores(hf_dir, family, row["inputs"], choices),
                                 **tol)
  infer_add = ["infer", "--checkpoint", run_dir, "--input", str(source), "--output",
               str(tmp_path / "add.jsonl"), "--task", "synthetic_add"]
  eval_add = ["eval", "--checkpoint", run_dir, "--mixture_or_task", "synthetic_add",
              "--max_examples", "2", "--output_dir", str(tmp_path / "eval_add")]
  # eval.other_tasks (zero-shot, beside one training task)
  eval_other = ["eval", "--checkpoint", run_dir, "--mixture_or_task", "synthetic_copy",
                "--other_tasks", "synthetic_add", "--max_examples", "2", "--output_dir",
                str(tmp_path / "eval_other")]
  if adapter in FOLDS and default:
    # a task the adapters have no row for: model.adapter_default_task's adapters serve it
    cli.main(infer_add)
    want = ref.greedy([_encode(r["inputs"]) for r in got], TASKS.index(default))
    assert [r["prediction"] for r in _read(str(tmp_path / "add.jsonl"))] == want
    cli.main(eval_add)
    rows = _read(str(tmp_path / "eval_add" / "predictions" / "synthetic_add-1.jsonl"))
    want = ref.greedy([_encode(r["inputs"]) for r in rows], TASKS.index(default))
    assert [r["prediction"] for r in rows] == want
    cli.main(eval_other)
    folder = tmp_path / "eval_other" / "predictions"
    (other,) = [f for f in os.listdir(folder) if f.startswith("synthetic_add")]
    rows = _read(str(folder / other))
    want = ref.greedy([_encode(r["inputs"]) for r in rows], TASKS.index(default))
    assert [r["prediction"] for r in rows] == want
    rows = _read(str(folder / "synthetic_copy-1.jsonl"))  # its own task: its own adapters
    assert [r["prediction"] for r in rows] == ref.greedy([_encode(r["inputs"]) for r in rows], 0)
  elif adapter in FOLDS:
    # without one: one error line naming the ways out (infer, eval; infer without --task)
    for argv in (infer_add, eval_add, eval_other, infer_add[:-2]):
      capsys.readouterr()
      with pytest.raises(SystemExit):
        cli.main(argv)
      err = capsys.readouterr().err
      assert err.startswith("error:") and "model.adapter_default_task" in err, err
      assert "--task" in err, err
  else:  # routers over the input: any task is served, with the same weights
    cli.main(infer_add)
    assert [r["prediction"] for r in _read(str(tmp_path / "add.jsonl"))] == \
        [r["prediction"] for r in got]
