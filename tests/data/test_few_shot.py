"""Few-shot prompts: deterministic demonstrations from the train split, hand-checked text."""

import json

import pytest

import mtjax.mixtures.synthetic as synthetic
from mtjax.data import cache, few_shot, file_tasks, pipeline
from mtjax.data.templates import Template

TEMPLATE = Template("qa", "Q: {q}", "{a}")


def test_draws_are_deterministic_distinct_and_skip_the_example():
  for i in range(50):
    demos = few_shot.draw_demonstrations(i, 6, 3, seed=1, exclude=i)
    assert demos == few_shot.draw_demonstrations(i, 6, 3, seed=1, exclude=i)
    assert len(set(demos)) == 3 and i not in demos and all(0 <= d < 6 for d in demos)
  assert few_shot.draw_demonstrations(0, 100, 3, seed=1) != \
      few_shot.draw_demonstrations(0, 100, 3, seed=2)
  with pytest.raises(ValueError, match="cannot draw 3 demonstrations from 2"):
    few_shot.draw_demonstrations(0, 3, 3, exclude=0)


def test_prompt_text_by_hand():
  demos = [{"inputs": "Q: 1+1", "targets": "2"}, {"inputs": "Q: 2+2", "targets": "4"}]
  got = few_shot.build_prompt({"inputs": "Q: 3+3", "targets": "6"}, demos)
  assert got == {"inputs": "Q: 1+1\n2\n\nQ: 2+2\n4\n\nQ: 3+3", "targets": "6"}
  got = few_shot.build_prompt({"inputs": "x", "targets": "y"}, demos[:1], separator=" ### ",
                              answer_separator=" => ")
  assert got["inputs"] == "Q: 1+1 => 2 ### x"


@pytest.fixture(scope="module")
def qa_task(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fewshot")
  for split, n in (("train", 6), ("validation", 3)):
    (folder / f"{split}.jsonl").write_text("".join(
        json.dumps({"q": f"{split[0]}{i}", "a": f"A{split[0]}{i}"}) + "\n" for i in range(n)))
  file_tasks.register_file_task(
      "fewshot_qa", {s: str(folder / f"{s}.jsonl") for s in ("train", "validation")},
      templates=[TEMPLATE])
  return str(folder)


def test_registered_k_shot_task_is_cached_with_hand_checked_prompts(qa_task, tmp_path):
  task = few_shot.register_few_shot_task("fewshot_qa", 2, seed=0)
  assert task.name == "fewshot_qa_2shot"
  cache_dir = str(tmp_path)
  for split in ("train", "validation"):
    cache.cache_task_split(task, split, cache_dir)
  train = pipeline.read_examples(cache_dir, task.name, "train")
  for i, ex in enumerate(train):
    d = [int(x) for x in ex["demo_ids"]]
    assert i not in d and len(set(d)) == 2
    assert ex["inputs_pretokenized"] == f"Q: t{d[0]}\nAt{d[0]}\n\nQ: t{d[1]}\nAt{d[1]}\n\nQ: t{i}"
    assert ex["targets_pretokenized"] == f"At{i}"
  # Pinned draws (numpy's seeded generator): a change here changes every cached prompt.
  assert [list(map(int, ex["demo_ids"])) for ex in train[:2]] == [[4, 5], [3, 5]]
  valid = pipeline.read_examples(cache_dir, task.name, "validation")
  d = [int(x) for x in valid[0]["demo_ids"]]  # from train; no exclusion needed
  assert valid[0]["inputs_pretokenized"] == f"Q: t{d[0]}\nAt{d[0]}\n\nQ: t{d[1]}\nAt{d[1]}\n\nQ: v0"
  assert json.loads(valid[0]["example_json"]) == {"q": "v0", "a": "Av0"}
  vocab = task.output_features["inputs"].vocabulary
  assert vocab.decode(list(valid[0]["inputs"])) == valid[0]["inputs_pretokenized"]


def test_zero_few_shot_mixing_is_per_example_and_deterministic():
  records = [{"q": str(i), "a": str(-i)} for i in range(400)]
  mixed = few_shot.render_few_shot(records, [TEMPLATE], 2, seed=3, zero_shot_prob=0.25)
  again = few_shot.render_few_shot(records, [TEMPLATE], 2, seed=3, zero_shot_prob=0.25)
  assert mixed == again
  zero = [ex for ex in mixed if ex["num_shots"] == 0]
  assert all(ex["inputs"] == f"Q: {ex['idx']}" for ex in zero)
  assert all(ex["inputs"].count("\n\n") == 2 for ex in mixed if ex["num_shots"] == 2)
  assert 0.18 < len(zero) / 400 < 0.32  # Binomial(400, 0.25): 6 standard deviations
  assert [ex["idx"] for ex in zero] == [i for i in range(400)
                                        if few_shot.is_zero_shot(i, 0.25, seed=3)]


def test_few_shot_of_a_templated_seqio_task_uses_the_examples_template(synthetic_cache):
  task = few_shot.register_few_shot_task("synthetic_add", 1, zero_shot_prob=0.5, seed=7)
  assert task.name == "synthetic_add_1shot_mixed"
  assert len(task.preprocessors) == 3  # apply_templates dropped: the source renders
  train, valid = synthetic.generate("add", "train"), synthetic.generate("add", "validation")
  for ex in task.source.get_dataset("validation").take(6).as_numpy_iterator():
    i, inputs = int(ex["idx"]), ex["inputs"].decode()
    raw = valid[i]
    query = ("{a} + {b} =" if i % 2 == 0 else "What is the sum of {a} and {b}?").format(**raw)
    if ex["num_shots"]:
      demo = train[int(ex["demo_ids"][0])]
      shot = ("{a} + {b} =" if i % 2 == 0 else "What is the sum of {a} and {b}?").format(**demo)
      assert inputs == f"{shot}\n{demo['answer']}\n\n{query}"
    else:
      assert inputs == query


def test_a_cache_worker_registers_the_base_of_a_few_shot_task(qa_task, tmp_path):
  """What a spawned worker sees: the few-shot task arrives pickled, its base is unregistered."""
  import cloudpickle
  import seqio

  task = few_shot.register_few_shot_task("fewshot_qa", 1)
  payload = cloudpickle.dumps(task)
  base = seqio.get_mixture_or_task("fewshot_qa")
  seqio.TaskRegistry.remove("fewshot_qa")
  try:
    assert "fewshot_qa" not in seqio.TaskRegistry.names()
    assert cache._cache_block(payload, "validation", 0, 0, 3, str(tmp_path / "block")) == 3
  finally:
    seqio.TaskRegistry.remove("fewshot_qa")
    seqio.TaskRegistry.add_provider("fewshot_qa", base)


def test_prompts_over_the_token_budget_drop_their_farthest_demonstrations(qa_task, tmp_path):
  """Byte vocabulary: one token per byte, plus EOS. "Q: t0" is 5 bytes, a demonstration with its
  separator (`Q: tN`, newline, `AtN`, two newlines) 11. Budget 24 tokens: with one demonstration
  16 + EOS fits, with two 27 + EOS does not; the example's own input always stays."""
  full = few_shot.register_few_shot_task("fewshot_qa", 2, name="fewshot_qa_2shot_full")
  fitted = few_shot.register_few_shot_task("fewshot_qa", 2, name="fewshot_qa_2shot_fit",
                                           max_input_tokens=24)
  cache_dir = str(tmp_path)
  for task in (full, fitted):
    cache.cache_task_split(task, "train", cache_dir)
  assert cache.fingerprint(fitted, "train") != cache.fingerprint(
      few_shot.register_few_shot_task("fewshot_qa", 2, name="fewshot_qa_2shot_fit",
                                      max_input_tokens=40), "train")
  full_ex = pipeline.read_examples(cache_dir, full.name, "train")
  fit_ex = pipeline.read_examples(cache_dir, fitted.name, "train")
  for i, (a, b) in enumerate(zip(full_ex, fit_ex)):
    demos = [int(x) for x in a["demo_ids"]]
    assert int(b["num_shots"]) == 1 and [int(x) for x in b["demo_ids"]] == demos[1:]
    assert b["inputs_pretokenized"] == f"Q: t{demos[1]}\nAt{demos[1]}\n\nQ: t{i}"
    assert len(b["inputs"]) + 1 <= 24  # + the EOS appended after the cache
  # A budget below the bare example keeps it whole with no demonstrations (trimming is then
  # the pipeline's, as for any example).
  tiny = few_shot.register_few_shot_task("fewshot_qa", 2, name="fewshot_qa_2shot_tiny",
                                         max_input_tokens=3)
  cache.cache_task_split(tiny, "train", cache_dir)
  assert all(int(ex["num_shots"]) == 0 and ex["inputs_pretokenized"] == f"Q: t{i}"
             for i, ex in enumerate(pipeline.read_examples(cache_dir, tiny.name, "train")))


def test_few_shot_variant_reads_records_as_the_task_does(tmp_path):
  """A file task with `label_names` (string labels in a TSV) through a PromptSource template
  that indexes `answer_choices[label]`: its k-shot variant sees the same mapped records."""
  from mtjax.data.promptsource import PromptTemplate

  rows = [("a", "entailment"), ("b", "not_entailment"), ("c", "entailment")]
  for split in ("train", "validation"):
    (tmp_path / f"{split}.tsv").write_text(
        "s\tlabel\n" + "".join(f'"{s}" x\t{label}\n' for s, label in rows))
  template = PromptTemplate("yn", "{{s}}? ||| {{ answer_choices[label] }}",
                            answer_choices="yes ||| no")
  file_tasks.register_file_task(
      "fewshot_labels", {s: str(tmp_path / f"{s}.tsv") for s in ("train", "validation")},
      templates=[template], label_names=("entailment", "not_entailment"))
  task = few_shot.register_few_shot_task("fewshot_labels", 1, seed=0)
  cache_dir = str(tmp_path / "cache")
  cache.cache_task_split(task, "validation", cache_dir)
  got = pipeline.read_examples(cache_dir, task.name, "validation")
  assert [ex["targets_pretokenized"] for ex in got] == ["yes", "no", "yes"]
  for i, ex in enumerate(got):
    d = int(ex["demo_ids"][0])
    assert ex["inputs_pretokenized"] == (f'"{rows[d][0]}" x?\n{"yes no".split()[d == 1]}\n\n'
                                         f'"{rows[i][0]}" x?')
