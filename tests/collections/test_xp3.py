"""xP3 on a small copy in its per-language layout, and mT0's held-out suite on small datasets in
their Hub layouts with PromptSource-format templates written here: names, layouts, language
weights (hand-computed), what is cached, and what happens without data or templates."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio

from mtjax import errors
from mtjax.collections import catalog, hf_tasks, prerendered, xp3
from mtjax.data import cache, mixing, pipeline
from tests.collections import hub_layouts as L

XP3 = {  # language folder -> {file: rows}
    "en": {"xp3_glue_mrpc_train_same thing?.jsonl": 3, "xp3_super_glue_boolq_train_q.jsonl": 1,
           "merged_en.jsonl": 4},
    "fr": {"merged_fr.jsonl": 2},
    "code": {"xp3_codeparrot_apps_train_solve.jsonl": 2},
}


def _template(uid, name, jinja, choices=None):
  lines = [f"  {uid}: !Template"]
  if choices:
    lines.append(f"    answer_choices: {json.dumps(choices)}")
  lines += [f"    id: {uid}", f"    jinja: {json.dumps(jinja)}", "    metadata: !TemplateMetadata",
            "      choices_in_prompt: true", "      metrics:", "      - Accuracy",
            "      original_task: true", f"    name: {json.dumps(name)}", "    reference: test"]
  return "\n".join(lines)


def _templates(root, dataset, subset, *templates):
  folder = os.path.join(root, dataset, subset)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "templates.yaml"), "w") as f:
    f.write(f"dataset: {dataset}\nsubset: {subset}\ntemplates:\n" + "\n".join(templates) + "\n")


def _jsonl(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _parquet(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), path)


XNLI = [{"premise": "Il pleut.", "hypothesis": "Le sol est mouillé.", "label": 0},
        {"premise": "Un chat dort.", "hypothesis": "Un chien court.", "label": 2}]
XCOPA = [{"premise": "Jatuh.", "choice1": "Licin.", "choice2": "Bernyanyi.", "question": "cause",
          "label": 0, "idx": 0, "changed": False},
         {"premise": "Hujan.", "choice1": "Basah.", "choice2": "Kering.", "question": "effect",
          "label": 0, "idx": 1, "changed": False}]
STORIES = [{"story_id": f"s{i}", "input_sentence_1": f"One {i}.", "input_sentence_2": "Two.",
            "input_sentence_3": "Three.", "input_sentence_4": "Four.",
            "sentence_quiz1": f"Good {i}.", "sentence_quiz2": f"Bad {i}.",
            "answer_right_ending": 1 + i % 2} for i in range(2)]
WINOGRAD = [{"sentence": "The cup fell off the table because _ was slippery.", "option1": "cup",
             "option2": "table", "answer": "2"},
            {"sentence": "Ann thanked Mary because _ had helped.", "option1": "Ann",
             "option2": "Mary", "answer": "2"}]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  root = tmp_path_factory.mktemp("xp3")
  data = str(root / "data")
  for lang, files in XP3.items():
    for name, n in files.items():
      _jsonl(os.path.join(data, xp3.REPO, lang, name),
             [{"inputs": f"{lang} {name} input {i}", "targets": f"target {i}"} for i in range(n)])
  _parquet(os.path.join(data, "facebook/xnli/en/validation-00000-of-00001.parquet"), XNLI)
  _parquet(os.path.join(data, "cambridgeltl/xcopa/id/validation-00000-of-00001.parquet"), XCOPA)
  _parquet(os.path.join(data, "juletxara/xstory_cloze/ar/eval/0000.parquet"), STORIES)
  _jsonl(os.path.join(data, "Muennighoff/xwinograd/test/en.jsonl"), WINOGRAD)
  tpl = str(root / "templates")
  _templates(tpl, "xnli", "en",
             _template("n1", "GPT-3 style", "{{premise}}\nQuestion: {{hypothesis}} True, False, or "
                       "Neither? ||| {{ answer_choices[label] }}", "True ||| Neither ||| False"),
             _template("n2", "no choices", "{{premise}} ||| {{hypothesis}}"))
  _templates(tpl, "super_glue", "copa",
             _template("c1", "best_option", "{{ premise }} What was the {{ question }}?\n- "
                       "{{choice1}}\n- {{choice2}} ||| {% if label != -1 %}"
                       "{{ answer_choices[label] }}{% endif %}", "{{choice1}} ||| {{choice2}}"),
             _template("c2", "…As a result, C1 or C2?", "{% if question == \"effect\" %}"
                       "{{ premise }} As a result? {% endif %}||| {{ answer_choices[label] }}",
                       "{{choice1}} ||| {{choice2}}"))
  _templates(tpl, "story_cloze", "2016",
             _template("s1", "Answer Given options", "{{input_sentence_1}} {{input_sentence_2}} "
                       "{{input_sentence_3}} {{input_sentence_4}} Which ending?\n- "
                       "{{answer_choices | join(\"\\n- \")}} ||| "
                       "{{answer_choices[answer_right_ending -1]}}",
                       "{{sentence_quiz1}} ||| {{sentence_quiz2}}"),
             _template("s2", "Movie What Happens Next", "Movie: {{input_sentence_1}} ||| "
                       "{{answer_choices[answer_right_ending -1]}}",
                       "{{sentence_quiz1}} ||| {{sentence_quiz2}}"))
  _templates(tpl, "winogrande", "winogrande_xl",
             _template("w1", "Replace", "{{sentence}}\nReplace the _ with the correct option:\n- "
                       "{{option1}}\n- {{option2}} ||| {% if answer == '1' %} {{option1}} "
                       "{% else %} {{ option2 }} {% endif %}", "{{option1}} ||| {{option2}}"),
             _template("w2", "fill in the blank", "{{sentence}} Fill in the _ ||| "
                       "{{answer_choices[answer | int - 1]}}", "{{option1}} ||| {{option2}}"))
  return data, tpl


@pytest.fixture
def collection(roots, tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing there
  data, tpl = roots
  return xp3.register(data_root=data, templates=tpl)


def _weights(name):
  spec = mixing.from_seqio(name)
  return dict(zip(spec.task_names, spec.weights))


def test_one_task_per_file_and_the_auto_layout(collection):
  assert collection.languages == {
      "code": ["xp3_code_codeparrot_apps_train_solve"],
      "en": ["xp3_en_glue_mrpc_train_same_thing", "xp3_en_super_glue_boolq_train_q"],
      "fr": ["xp3_fr_merged"]}  # en's merged file holds the same rows as its prompt files
  for tasks in collection.languages.values():
    for name in tasks:
      assert name in seqio.TaskRegistry.names() and catalog.collection_of(name) == "xp3"
  assert xp3.task_name("en", "xp3_a b?.jsonl") == "xp3_en_a_b"
  assert xp3.list_files(os.path.join(collection.folder), "merged") == {
      "en": ["merged_en.jsonl"], "fr": ["merged_fr.jsonl"]}
  assert xp3.list_files(collection.folder, "files", languages=("en", "fr")) == {
      "en": ["xp3_glue_mrpc_train_same thing?.jsonl", "xp3_super_glue_boolq_train_q.jsonl"]}


def test_language_mixtures_and_weights(roots, collection):
  assert _weights("xp3_en") == pytest.approx({"xp3_en_glue_mrpc_train_same_thing": 3 / 4,
                                              "xp3_en_super_glue_boolq_train_q": 1 / 4})
  # default: each language by its share of the examples found (8 here)
  assert _weights("xp3") == pytest.approx({
      "xp3_en_glue_mrpc_train_same_thing": 3 / 8, "xp3_en_super_glue_boolq_train_q": 1 / 8,
      "xp3_fr_merged": 2 / 8, "xp3_code_codeparrot_apps_train_solve": 2 / 8})
  # BLOOMZ's published weights over the languages found, nested per language
  w = xp3.BLOOMZ_WEIGHTS
  total = w["en"] + w["fr"] + w["code"]
  want = {"xp3_en_glue_mrpc_train_same_thing": w["en"] * 3 / 4 / total,
          "xp3_en_super_glue_boolq_train_q": w["en"] / 4 / total,
          "xp3_fr_merged": w["fr"] / total,
          "xp3_code_codeparrot_apps_train_solve": w["code"] / total}
  assert _weights("xp3_bloomz") == pytest.approx(want)
  xp3.register(data_root=roots[0], templates=roots[1], language_weights="bloomz")
  assert _weights("xp3") == pytest.approx(want)
  xp3.register(data_root=roots[0], templates=roots[1], language_weights={"en": 1, "fr": 3})
  assert _weights("xp3") == pytest.approx({
      "xp3_en_glue_mrpc_train_same_thing": 1 / 4 * 3 / 4,
      "xp3_en_super_glue_boolq_train_q": 1 / 4 / 4, "xp3_fr_merged": 3 / 4})
  with pytest.raises(errors.ConfigError, match="language_weights"):
    xp3.register(data_root=roots[0], templates=roots[1], language_weights="uniform")


def test_cached_xp3_task_is_the_file_text(collection, tmp_path):
  name = "xp3_en_glue_mrpc_train_same_thing"
  task = seqio.get_mixture_or_task(name)
  assert task.output_features["inputs"].add_eos and task.output_features["targets"].add_eos
  assert cache.cache_task_split(task, "train", str(tmp_path))["num_examples"] == 3
  cached = pipeline.read_examples(str(tmp_path), name, "train")
  file = "xp3_glue_mrpc_train_same thing?.jsonl"
  assert [(ex["inputs_pretokenized"], ex["targets_pretokenized"]) for ex in cached] == [
      (f"en {file} input {i}", f"target {i}") for i in range(3)]
  assert prerendered.count_rows([collection.files[name]]) == 3


def test_held_out_suite_names_splits_and_mixtures(collection):
  held = collection.held_out
  assert held["xnli"] == [f"xnli_{lang}_GPT_3_style_score_eval"
                          for lang in xp3.HELD_OUT[0].languages]  # "no choices" has no twin
  assert len(held["xcopa"]) == 2 * 11 and "xcopa_it__As_a_result_C1_or_C2__score_eval" in \
      held["xcopa"]
  assert len(held["xstory_cloze"]) == 2 * 8 and len(held["xwinograd"]) == 2 * 6
  # the mixtures hold the prompts the paper reports (all, where they are not known)
  m = collection.mixtures
  assert m["xstory_cloze_score_eval"] == [f"xstory_cloze_{lang}_Answer_Given_options_score_eval"
                                          for lang in xp3.HELD_OUT[2].languages]
  assert m["xwinograd_score_eval"] == [f"xwinograd_{lang}_Replace_score_eval"
                                       for lang in ("en", "fr", "pt", "zh", "jp", "ru")]
  assert m["xcopa_score_eval"] == held["xcopa"]
  assert sorted(m[xp3.EVAL_MIXTURE]) == sorted(
      held["xnli"] + held["xcopa"] + m["xstory_cloze_score_eval"] + m["xwinograd_score_eval"])
  assert len(seqio.get_mixture_or_task(xp3.EVAL_MIXTURE).tasks) == 15 + 22 + 8 + 6
  for name in m[xp3.EVAL_MIXTURE]:
    assert catalog.collection_of(name) == "xp3"
  splits = {d: hf_tasks.hf_source(seqio.get_mixture_or_task(held[d][0])).splits for d in held}
  assert splits == {"xnli": {"validation": "validation"}, "xcopa": {"validation": "validation"},
                    "xstory_cloze": {"validation": "eval"}, "xwinograd": {"validation": "test"}}


def _rows(cache_dir, name):
  task = seqio.get_mixture_or_task(name)
  cache.cache_task_split(task, "validation", cache_dir)
  return [(ex["inputs_pretokenized"], ex["targets_pretokenized"], int(ex["is_correct"]))
          for ex in pipeline.read_examples(cache_dir, name, "validation")]


def test_held_out_rows_are_rank_classification_rows(collection, tmp_path):
  out = str(tmp_path)
  story = ("One {i}. Two. Three. Four. Which ending?\n- Good {i}.\n- Bad {i}.")
  assert _rows(out, "xstory_cloze_ar_Answer_Given_options_score_eval") == [
      (story.format(i=0), "Good 0.", 1), (story.format(i=0), "Bad 0.", 0),
      (story.format(i=1), "Good 1.", 0), (story.format(i=1), "Bad 1.", 1)]
  replace = "{s}\nReplace the _ with the correct option:\n- {a}\n- {b}"
  first = replace.format(s=WINOGRAD[0]["sentence"], a="cup", b="table")
  second = replace.format(s=WINOGRAD[1]["sentence"], a="Ann", b="Mary")
  assert _rows(out, "xwinograd_en_Replace_score_eval") == [
      (first, "cup", 0), (first, "table", 1), (second, "Ann", 0), (second, "Mary", 1)]
  nli = "Il pleut.\nQuestion: Le sol est mouillé. True, False, or Neither?"
  assert _rows(out, "xnli_en_GPT_3_style_score_eval")[:3] == [
      (nli, "True", 1), (nli, "Neither", 0), (nli, "False", 0)]
  # the effect-only prompt renders XCOPA's second example only (T0 drops empty inputs)
  assert _rows(out, "xcopa_id__As_a_result_C1_or_C2__score_eval") == [
      ("Hujan. As a result?", "Basah.", 1), ("Hujan. As a result?", "Kering.", 0)]


def test_without_templates_or_data(roots, tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.delenv("MTJAX_PROMPTSOURCE_DIR", raising=False)
  monkeypatch.delenv("MTJAX_HF_DATA_DIR", raising=False)
  monkeypatch.setattr(xp3.importlib.util, "find_spec", lambda name: None)  # no promptsource
  with caplog.at_level("WARNING", logger="mtjax.collections.xp3"):
    collection = xp3.register(data_root=roots[0])
  assert collection.languages and not collection.held_out
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1
  assert lines[0].startswith("mT0's held-out suite (XNLI, XCOPA, XStoryCloze, XWinograd) is not "
                             "registered: no PromptSource templates folder is set")
  assert "data.promptsource_dir" in lines[0]
  assert xp3.EVAL_MIXTURE not in seqio.MixtureRegistry.names()
  assert "xp3" in seqio.MixtureRegistry.names()
  caplog.clear()
  with pytest.raises(errors.MissingError, match="not found") as e:
    xp3.register(data_root=str(tmp_path / "empty"))
  assert "hf download --repo-type dataset bigscience/xP3 --include 'fr/*'" in e.value.hint
  assert xp3.REGISTRATION_ERROR is e.value
  assert "xp3" not in seqio.MixtureRegistry.names()


def test_found_in_the_hugging_face_cache(roots, tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  merged = os.path.join(roots[0], xp3.REPO, "fr", "merged_fr.jsonl")
  L.hub_cache(str(tmp_path / "hub"), xp3.REPO, {"fr/merged_fr.jsonl": merged})
  collection = xp3.register(data_root=None, templates=roots[1])
  assert collection.origin.startswith("hub cache")
  assert collection.languages == {"fr": ["xp3_fr_merged"]}
  assert mixing.from_seqio("xp3").tasks == (mixing.TaskRate("xp3_fr_merged", 2.0),)
  task = seqio.get_mixture_or_task("xp3_fr_merged")
  assert cache.cache_task_split(task, "train", str(tmp_path / "c"))["num_examples"] == 2
