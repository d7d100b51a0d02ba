"""Issue 15's Done-when: a decoder preset with an HF tokenizer trains on a real-text task and
evaluates by generation and by rank classification.

The run is configured as a user configures it: `data.tokenizer` names a tokenizer dir (a Llama 3
layout built here: byte-level BPE, id 0 is "!", BOS/EOS after the merges), `data.modules` imports
a module that registers a PromptSource-style file task *without* a vocabulary (so the run's
tokenizer is its vocabulary), and `mtjax.recipes.train.run` (the loop with evaluation) runs in process with the prefix-LM
converter (loss on the answer only).
"""

import json
import os
import sys

import numpy as np
import pytest

from mtjax.config import schema
from mtjax.recipes import train as train_recipe
from tests.data import tokenizer_files

TASK = "mtjax_real_text_entailment"
MODULE = "mtjax_real_text_tasks"

# (premise, hypothesis, label: 1 = the premise supports it)
PAIRS = [
    ("A man is playing a guitar on stage.", "Someone is making music.", 1),
    ("A man is playing a guitar on stage.", "The stage is empty.", 0),
    ("The café on the corner closed at noon.", "The café was open at midnight.", 0),
    ("The café on the corner closed at noon.", "A café closed.", 1),
    ("Two dogs run through the snow.", "Animals are outside.", 1),
    ("Two dogs run through the snow.", "The dogs are asleep indoors.", 0),
    ("\"The Osbournes\" is a reality show about a family.", "It is a TV show.", 1),
    ("\"The Osbournes\" is a reality show about a family.", "It is a cookbook.", 0),
    ("She didn't attend the meeting on Monday.", "She was at the meeting.", 0),
    ("She didn't attend the meeting on Monday.", "She missed a meeting.", 1),
    ("The bridge, built in 1932, survived the flood.", "The bridge still stands.", 1),
    ("The bridge, built in 1932, survived the flood.", "The flood destroyed the bridge.", 0),
    ("A woman reads a book in the park.", "A person is reading.", 1),
    ("A woman reads a book in the park.", "Nobody is in the park.", 0),
    ("Water boils at 100 degrees at sea level.", "Water can boil.", 1),
    ("Water boils at 100 degrees at sea level.", "Water never boils.", 0),
]
VALIDATION = [
    ("Kids play football in Zürich.", "Children are playing.", 1),
    ("Kids play football in Zürich.", "The kids are asleep.", 0),
    ("The committee approved the budget.", "The budget was approved.", 1),
    ("The committee approved the budget.", "The budget was rejected.", 0),
]
TEMPLATES_YAML = """\
dataset: real_text
templates:
  e1: !Template
    answer_choices: no ||| yes
    id: e1
    jinja: '{{premise}}

      Question: {{hypothesis}} Yes or no? ||| {{ answer_choices[label] }}'
    name: yes_no
    reference: test
"""
MODULE_SOURCE = '''\
"""Registers the real-text task: no vocabulary argument, so the run's tokenizer is used."""
from mtjax.data import file_tasks, promptsource
from mtjax.eval import metrics

file_tasks.register_file_task(
    {task!r}, {{"train": {train!r}, "validation": {validation!r}}},
    templates=promptsource.load({templates!r}), metric_fns=[metrics.accuracy])
'''


def _write_jsonl(path, pairs):
  with open(path, "w", encoding="utf-8") as f:
    for premise, hypothesis, label in pairs:
      f.write(json.dumps({"premise": premise, "hypothesis": hypothesis, "label": label},
                         ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("real_text")
  texts = [t for p, h, _ in PAIRS + VALIDATION for t in (p, h)] + [
      "Question: Yes or no?", "yes", "no"] + tokenizer_files.SENTENCES
  # 370 BPE tokens + 5 specials: fits decoder_test's 384 embedding rows.
  tokenizer = tokenizer_files.llama3(str(root / "tokenizer"), vocab_size=370, texts=texts)
  train, validation = str(root / "train.jsonl"), str(root / "validation.jsonl")
  _write_jsonl(train, PAIRS)
  _write_jsonl(validation, VALIDATION)
  templates = str(root / "templates.yaml")
  with open(templates, "w") as f:
    f.write(TEMPLATES_YAML)
  modules = root / "modules"
  modules.mkdir()
  (modules / f"{MODULE}.py").write_text(MODULE_SOURCE.format(
      task=TASK, train=train, validation=validation, templates=templates))
  sys.path.insert(0, str(modules))
  sys.modules.pop(MODULE, None)
  cfg = schema.RunConfig(
      run_dir=str(root / "run"),
      data=schema.DataConfig(mixture=TASK, modules=(MODULE,), tokenizer=tokenizer,
                             cache_dir=str(root / "cache"), inputs_length=40, targets_length=4,
                             batch_size=8, pack=False, feature_converter="prefix_lm"),
      model=schema.ModelConfig(preset="decoder_test"),
      optimizer=schema.OptimizerConfig(name="adamw", learning_rate=1e-2, warmup_steps=0),
      train=schema.TrainConfig(steps=24, log_every=1, checkpoint_every=1000),
      eval=schema.EvalConfig(at_end=True, batch_size=8),
      mesh=schema.MeshConfig(data=8, fsdp=1, tensor=1))
  try:
    summary = train_recipe.run(cfg, progress=False)
  finally:
    sys.path.remove(str(modules))
  return cfg, tokenizer, summary


def test_cached_tokens_are_the_hf_tokenizers_ids(run):
  import seqio

  from mtjax.data import cache, hf_vocab, pipeline

  cfg, tokenizer, _ = run
  vocab = seqio.get_mixture_or_task(TASK).output_features["targets"].vocabulary
  assert isinstance(vocab, hf_vocab.HFVocabulary)  # the run's tokenizer, not ByteVocabulary
  assert vocab == hf_vocab.HFVocabulary.from_dir(tokenizer)
  ref = tokenizer_files.reference(tokenizer)
  manifest = cache.read_manifest(cfg.data.cache_dir, TASK, "train")
  assert manifest["output_features"]["targets"]["eos_id"] == ref.eos_token_id
  assert manifest["output_features"]["targets"]["vocab_size"] == len(ref) <= 384
  examples = pipeline.read_examples(cfg.data.cache_dir, TASK, "train")
  assert len(examples) == len(PAIRS)
  for ex, (premise, hypothesis, label) in zip(examples, PAIRS):
    text = f"{premise}\nQuestion: {hypothesis} Yes or no?"
    assert ex["inputs_pretokenized"] == text
    assert list(ex["inputs"]) == ref.encode(text, add_special_tokens=False)
    assert list(ex["targets"]) == ref.encode(["no", "yes"][label], add_special_tokens=False)


def test_loss_is_finite_and_decreases(run):
  cfg, _, summary = run
  assert summary["steps"] == 24 and not summary["preempted"]
  with open(os.path.join(cfg.run_dir, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses) == 24 and np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses


def test_evaluates_by_generation_and_rank_classification(run):
  cfg, _, summary = run
  (result,) = summary["eval"]
  assert result["task"] == TASK and result["num_examples"] == len(VALIDATION)
  metrics = result["metrics"]
  assert 0.0 <= metrics["accuracy"] <= 100.0  # generation: decoded, then SeqIO's metric fn
  assert 0.0 <= metrics["rank_accuracy"] <= 100.0  # rank classification over the choices
  # The decoded predictions are text of the tokenizer (it learned to answer with a label).
  assert {row["target"] for row in result["rows"]} == {"yes", "no"}
  assert all(row["prediction"] in ("yes", "no") for row in result["rows"]), result["rows"]
  with open(os.path.join(cfg.run_dir, "eval_results.json")) as f:
    assert json.load(f)[0]["metrics"]["rank_accuracy"] == metrics["rank_accuracy"]


def test_token_id_zero_is_text_not_padding(tmp_path):
  """With a Llama 3 / Qwen2 tokenizer, id 0 is "!": rows must mark padding by length, not by
  value (the loss weights, the prefix of `prefix_lm`, the prompt lengths of generation)."""
  from mtjax.data import feature_converters, hf_vocab
  from mtjax.eval import generate

  vocab = hf_vocab.HFVocabulary.from_dir(tokenizer_files.llama3(str(tmp_path / "tok")))
  inputs, targets = vocab.encode("Wow! Is it true?"), vocab.encode("Yes!") + [vocab.eos_id]
  assert 0 in inputs and 0 in targets
  lengths = {"inputs": 16, "targets": 8}
  row = feature_converters.pad_example(
      feature_converters.concat_for_prefix_lm({"inputs": inputs, "targets": targets}),
      "prefix_lm", lengths)
  out = feature_converters.convert(row, "prefix_lm", packed=False)
  n, m = len(inputs), len(targets)
  assert list(out["decoder_loss_weights"][n:n + m]) == [1] * m  # "!" is trained too
  assert list(out["decoder_causal_attention"][:n + 1]) == [1] * (n + 1)
  prompts = np.asarray([feature_converters.pad_to(inputs, lengths["inputs"])])
  # evaluation gives the prompts' lengths (mtjax.eval.evaluate); a count of ids > 0 is short
  assert generate.prompt_batch("prefix_lm", prompts, [n])["decoder_prompt_lengths"][0] == n + 1
  assert generate.prompt_batch("prefix_lm", prompts)["decoder_prompt_lengths"][0] < n + 1
