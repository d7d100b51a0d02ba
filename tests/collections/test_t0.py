"""The T0 / P3 collection on small PromptSource-format templates and small datasets in the Hub's
layout: T0's task names, blacklist, rate rule, mixtures, rendering rules and score-eval rows.

The templates here are written for the test in PromptSource's format; the full v0.1.0 set is
not needed (the 313 / 392 / 464 task counts with it are checked by hand, see the README)."""

import json
import os

import pytest
import seqio

from mtjax import errors
from mtjax.collections import catalog, t0
from mtjax.data import cache, mixing, pipeline
from tests.collections import hub_layouts as L


def _template(uid, name, jinja, choices=None, original=True, metrics=("Accuracy",)):
  lines = [f"  {uid}: !Template"]
  if choices:
    lines.append(f"    answer_choices: {json.dumps(choices)}")
  lines += [f"    id: {uid}", f"    jinja: {json.dumps(jinja)}", "    metadata: !TemplateMetadata",
            "      choices_in_prompt: false", "      metrics:"]
  lines += [f"      - {m}" for m in metrics]
  lines += [f"      original_task: {'true' if original else 'false'}", f"    name: {json.dumps(name)}",
            "    reference: test"]
  return "\n".join(lines)


def _write(root, dataset, subset, *templates):
  folder = os.path.join(root, dataset, *([subset] if subset else []))
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "templates.yaml"), "w") as f:
    f.write(f"dataset: {dataset}\n" + (f"subset: {subset}\n" if subset else "")
            + "templates:\n" + "\n".join(templates) + "\n")


RTE_JINJA = ('{{premise}} Question: does this imply that "{{hypothesis}}"? Yes or no? ||| '
             '{% if label != -1 %}{{answer_choices[label]}}{% endif %}')


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
  root = tmp_path_factory.mktemp("t0")
  tpl = str(root / "templates")
  # glue/mrpc (BASE training): two templates, the second one renders empty input for idx 2
  _write(tpl, "glue", "mrpc",
         _template("a1", "equivalent", RTE_JINJA.replace("premise", "sentence1").replace(
             "hypothesis", "sentence2"), "No ||| Yes"),
         _template("a2", "generate paraphrase",
                   "{% if idx != 2 %}Paraphrase: {{sentence1}}{% endif %} ||| {{sentence2}}",
                   original=False, metrics=("BLEU",)))
  # amazon_polarity (3.6M recorded > 500,000): cap 500,000 // 2; hyphenated field name
  _write(tpl, "amazon_polarity", None,
         _template("b1", "Is this review", "Title: {{title}} Review: {{review_text}} |||"
                   " {{answer_choices[label]}}", "negative ||| positive"),
         _template("b2", "User recommend this product", "{{review_text}} ||| yes",
                   original=False))
  _write(tpl, "gigaword", None, _template("c1", "summarize!", "{{document}} ||| {{summary}}",
                                          original=False))  # -> gigaword_summarize_: blacklisted
  _write(tpl, "super_glue", "rte", _template("d1", "GPT-3 style", RTE_JINJA, "yes ||| no"),
         _template("d2", "not original", RTE_JINJA, "yes ||| no", original=False))
  _write(tpl, "anli", None, _template("e1", "can we infer", RTE_JINJA, "Yes ||| No"))
  _write(tpl, "ai2_arc", "ARC-Easy", _template("f1", "pick", "{{question}} ||| x", "a ||| b"))
  _write(tpl, "super_glue", "copa", _template("g1", "best option", "{{premise}} ||| x", "a ||| b"))
  _write(tpl, "story_cloze", "2016", _template(
      "h1", "Answer Given options",
      "{{input_sentence_1}} {{input_sentence_2}} ... ||| {{answer_choices[answer_right_ending -1]}}",
      "{{sentence_quiz1}} ||| {{sentence_quiz2}}"))
  _write(tpl, "crows_pairs", None, _template("i1", "which", "{{sent_more}} ||| x", "a ||| b"))
  data = root / "data"
  mrpc = L.rte_dataset(4)
  mrpc = mrpc.rename_columns({"premise": "sentence1", "hypothesis": "sentence2"})
  mrpc = mrpc.map(lambda ex: {"label": -1 if ex["idx"] == 3 else ex["label"]})
  L.hub_repo_files(str(data / "nyu-mll" / "glue"), "mrpc", {"train": mrpc})
  import datasets  # pylint: disable=g-import-not-at-top

  amazon = datasets.Dataset.from_dict(
      {"title": ["Good", "Bad"], "review-text": ["Works well.", "Broke."], "label": [1, 0]})
  L.write_parquet(amazon, str(data / "fancyzhx" / "amazon_polarity" / "amazon_polarity" /
                              "train-00000-of-00001.parquet"))
  L.hub_repo_files(str(data / "aps" / "super_glue"), "rte", {"validation": L.rte_dataset(3)})
  cloze = data / "story_cloze" / "2016"
  cloze.mkdir(parents=True)
  (cloze / "cloze_test_val__spring2016 - cloze_test_ALL_val.csv").write_text(
      "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,"
      "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
      "s1,Ann woke.,She ran.,It rained.,She slept.,She was happy.,She was sad.,2\n")
  made = t0.register(templates=tpl, data_root=str(data))
  return made, root


def test_task_names_mixtures_and_rates(collection):
  made, _ = collection
  assert t0.task_name("super_glue", "rte", "GPT-3 style") == "super_glue_rte_GPT_3_style"
  assert t0.task_name("gigaword", None, "summarize!") == "gigaword_summarize_"
  m = made.mixtures
  assert m["t0_train"] == ["glue_mrpc_equivalent", "glue_mrpc_generate_paraphrase",
                           "amazon_polarity_Is_this_review",
                           "amazon_polarity_User_recommend_this_product"]  # gigaword: blacklist
  assert m["t0+_train"] == m["t0_train"] + ["ai2_arc_ARC_Easy_pick"]
  assert m["t0++_train"] == m["t0+_train"] + ["super_glue_copa_best_option"]
  assert m["t0_train_one_og_prompt"] == ["glue_mrpc_equivalent", "amazon_polarity_Is_this_review"]
  assert m["t0_train_all_og_prompts"] == m["t0_train_one_og_prompt"]
  assert sorted(m["t0_eval_score_eval"]) == sorted(
      ["super_glue_copa_best_option_score_eval", "super_glue_rte_GPT_3_style_score_eval",
       "story_cloze_2016_Answer_Given_options_score_eval"]
      + [f"anli_can_we_infer_r{r}_score_eval" for r in (1, 2, 3)])
  assert m["t0_train_score_eval"] == ["glue_mrpc_equivalent_score_eval"]  # amazon: skipped
  assert m["bias_fairness_eval_score_eval"] == ["crows_pairs_which_score_eval"]
  assert made.rates["amazon_polarity_Is_this_review"] == 250_000  # 500,000 // 2 templates
  assert made.rates["glue_mrpc_equivalent"] == 3668
  assert t0.cap(3_600_000, 9) == 55_555 and t0.cap(560_000, 4) == 125_000
  spec = mixing.from_seqio("t0_train")
  assert dict(zip(spec.task_names, [e.rate for e in spec.tasks])) == {
      "glue_mrpc_equivalent": 3668.0, "glue_mrpc_generate_paraphrase": 3668.0,
      "amazon_polarity_Is_this_review": 250000.0,
      "amazon_polarity_User_recommend_this_product": 250000.0}
  anli = seqio.get_mixture_or_task("anli_can_we_infer_r2")
  assert t0.hf_tasks.hf_source(anli).splits == {"train": "train_r2", "validation": "dev_r2",
                                                "test": "test_r2"}


def test_rendering_follows_t0(collection, tmp_path):
  _, root = collection
  task = seqio.get_mixture_or_task("glue_mrpc_generate_paraphrase")
  assert list(task.splits) == ["train"]  # the dataset has no validation / test split
  cache.cache_task_split(task, "train", str(tmp_path))
  got = pipeline.read_examples(str(tmp_path), task.name, "train")
  assert [e["inputs_pretokenized"] for e in got] == [
      "Paraphrase: Premise 0 is here.", "Paraphrase: Premise 1 is here.",
      "Paraphrase: Premise 3 is here."]  # idx 2 rendered an empty input: dropped
  assert [e["targets_pretokenized"] for e in got] == ["Hypothesis 0.", "Hypothesis 1.",
                                                      "Hypothesis 3."]
  assert not task.output_features["inputs"].add_eos and task.output_features["targets"].add_eos
  equivalent = seqio.get_mixture_or_task("glue_mrpc_equivalent")
  cache.cache_task_split(equivalent, "train", str(tmp_path))
  got = pipeline.read_examples(str(tmp_path), equivalent.name, "train")
  assert [e["targets_pretokenized"] for e in got] == ["No", "Yes", "No", t0.NO_LABEL]
  assert list(got[0]["answer_choices"]) == ["No", "Yes"]
  assert equivalent.postprocess_fn(" Yes ", example=None, is_target=True) == 1
  # hyphenated field names are renamed before rendering
  amazon = seqio.get_mixture_or_task("amazon_polarity_Is_this_review")
  shown = catalog.show(amazon.name, "train", 1)
  assert shown[0]["inputs"] == "Title: Good Review: Works well." and shown[0]["targets"] == "positive"


def test_score_eval_rows(collection, tmp_path):
  task = seqio.get_mixture_or_task("super_glue_rte_GPT_3_style_score_eval")
  cache.cache_task_split(task, "validation", str(tmp_path))
  rows = pipeline.read_examples(str(tmp_path), task.name, "validation")
  assert [list(r["idx"]) for r in rows] == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
  assert [r["targets_pretokenized"] for r in rows] == ["yes", "no"] * 3
  assert [int(r["is_correct"]) for r in rows] == [1, 0, 0, 1, 1, 0]  # labels 0, 1, 0
  assert rows[0]["inputs_pretokenized"] == rows[1]["inputs_pretokenized"]
  # T0's metric for the twin: T5's rank_classification over the rows' scores, through SeqIO's
  # metric machinery (predicted choices 0, 0, 1 for correct 0, 1, 0; see tests/eval)
  from mtjax.eval import evaluate  # pylint: disable=g-import-not-at-top

  got = evaluate.task_metrics(task, rows, scores=[-1.0, -2.0, -1.0, -3.0, -5.0, -1.0])
  assert got == pytest.approx({"accuracy": 100 / 3, "f1": 0.0, "auc-roc": 0.0,
                               "auc-pr": 100 / 3})


def test_story_cloze_reads_the_manual_download(collection):
  shown = catalog.show("story_cloze_2016_Answer_Given_options_score_eval", "validation", 1)
  assert shown[0] == [
      {"inputs": "Ann woke. She ran. ...", "targets": "She was happy.", "is_correct": 0},
      {"inputs": "Ann woke. She ran. ...", "targets": "She was sad.", "is_correct": 1}]


def test_missing_templates_say_how_to_get_them(tmp_path, monkeypatch):
  monkeypatch.delenv("MTJAX_PROMPTSOURCE_DIR", raising=False)
  with pytest.raises(errors.MissingError) as e:
    t0.templates_dir(str(tmp_path / "nowhere"))
  assert "nowhere" in str(e.value) and "v0.1.0" in e.value.hint


def test_mtjax_tasks_lists_and_shows(collection, capsys):
  from mtjax import cli  # pylint: disable=g-import-not-at-top

  _, root = collection
  cli.main(["tasks", "--mixture", "t0_train", "--cache_dir", str(root / "no_cache")])
  out = capsys.readouterr().out
  assert "t0_train: 4 task(s)" in out
  assert "amazon_polarity_Is_this_review" in out and "250000" in out and "3,600,000 (recorded)" in out
  cli.main(["tasks", "--show", "glue_mrpc_equivalent", "-n", "2"])
  out = capsys.readouterr().out
  assert 'Premise 0 is here. Question: does this imply that "Hypothesis 0."? Yes or no?' in out
  assert 'answer_choices: ["No", "Yes"]' in out
  with pytest.raises(SystemExit) as e:
    cli.main(["tasks", "--show", "glue_mrpc_equivalent", "--split", "validation"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: task 'glue_mrpc_equivalent' split 'validation'")
  assert "no split 'validation'" in err and "available: train" in err
