"""Tasks from the user's own files: JSONL/CSV/TSV parsing, PromptSource templates, errors."""

import json

import numpy as np
import pytest
import seqio

from mtjax.data import cache, file_tasks, pipeline, promptsource
from mtjax.data.templates import Template

# Written for this test in PromptSource's format (custom tags, `|||`, answer_choices).
PROMPTSOURCE_YAML = """\
dataset: toy_nli
templates:
  0a1b: !Template
    answer_choices: Yes ||| No ||| Maybe
    id: 0a1b
    jinja: 'Suppose {{premise}} Can we infer that "{{hypothesis}}"? Yes, no, or maybe?
      ||| {% if label != -1 %}{{ answer_choices[label] }}{% endif %}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics:
      - Accuracy
      original_task: true
    name: can we infer
    reference: test
  2c3d: !Template
    answer_choices: True ||| False ||| Neither
    id: 2c3d
    jinja: '{{premise}}

      Question: {{hypothesis}} True, False, or Neither? ||| {{ answer_choices[label] }}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      original_task: true
    name: gpt3 style
    reference: test
"""

RECORDS = [
    {"premise": "It rained.", "hypothesis": "The ground is wet.", "label": 0},
    {"premise": "Cats purr.", "hypothesis": "Dogs bark.", "label": 2},
    {"premise": "He left.", "hypothesis": "He stayed.", "label": 1},
]


@pytest.fixture()
def templates_file(tmp_path):
  path = tmp_path / "templates.yaml"
  path.write_text(PROMPTSOURCE_YAML)
  return str(path)


def test_promptsource_templates_render_as_their_jinja_says(templates_file):
  first, second = promptsource.load(templates_file)
  assert (first.name, second.name) == ("can we infer", "gpt3 style")
  assert first.metadata["metrics"] == ["Accuracy"]
  out = first.render(RECORDS[0])
  assert out == {"inputs": 'Suppose It rained. Can we infer that "The ground is wet."? '
                           "Yes, no, or maybe?",
                 "targets": "Yes", "answer_choices": ["Yes", "No", "Maybe"]}
  out = second.render(RECORDS[1])
  assert out["inputs"] == "Cats purr.\nQuestion: Dogs bark. True, False, or Neither?"
  assert out["targets"] == "Neither" and out["answer_choices"] == ["True", "False", "Neither"]
  # A test-split record (label -1) renders an empty target.
  assert first.render(dict(RECORDS[0], label=-1))["targets"] == ""


def test_jsonl_task_with_promptsource_templates_caches_what_was_rendered(tmp_path,
                                                                        templates_file):
  data = tmp_path / "train.jsonl"
  data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
  templates = promptsource.load(templates_file)
  task = file_tasks.register_file_task("test_file_nli", {"train": str(data)}, templates)
  cache.cache_task_split(task, "train", str(tmp_path / "cache"))
  cached = pipeline.read_examples(str(tmp_path / "cache"), "test_file_nli", "train")
  assert len(cached) == 3
  vocab = seqio.ByteVocabulary()
  for i, (ex, record) in enumerate(zip(cached, RECORDS)):
    want = templates[i % 2].render(record)
    assert ex["inputs_pretokenized"] == want["inputs"]
    assert ex["targets_pretokenized"] == want["targets"]
    assert list(ex["answer_choices"]) == want["answer_choices"]
    assert json.loads(ex["example_json"]) == record
    np.testing.assert_array_equal(ex["inputs"], vocab.encode(want["inputs"]))
  assert task.num_input_examples("train") == 3


def test_csv_and_tsv_tasks(tmp_path):
  csv_path = tmp_path / "d.csv"
  csv_path.write_text('question,answer\n"What is 1, plus 1?",2\nCapital of France?,Paris\n')
  tsv_path = tmp_path / "d.tsv"
  tsv_path.write_text("question\tanswer\nCapital of France?\tParis\n")
  t = Template("qa", "Q: {question}", "{answer}")
  rows = file_tasks.rendered_examples([str(csv_path), str(tsv_path)], [t])
  assert [r["inputs"] for r in rows] == ["Q: What is 1, plus 1?", "Q: Capital of France?",
                                         "Q: Capital of France?"]
  assert [r["targets"] for r in rows] == ["2", "Paris", "Paris"]


def test_bad_lines_are_named_by_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"a": 1}\n\n{"a": 2,}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:3: invalid JSON"):
    list(file_tasks.iter_records(str(bad)))
  ragged = tmp_path / "bad.tsv"
  ragged.write_text("a\tb\n1\t2\n3\n")
  with pytest.raises(ValueError, match=r"bad.tsv:3: 1 fields, but the header has 2"):
    list(file_tasks.iter_records(str(ragged)))
  ok = tmp_path / "ok.jsonl"
  ok.write_text('{"question": "hi"}\n')
  with pytest.raises(ValueError, match=r"ok.jsonl:1: template 'qa'.*answer"):
    file_tasks.rendered_examples([str(ok)], [Template("qa", "{question}", "{answer}")])


def test_changed_data_file_rebuilds_the_cache(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text('{"q": "a", "r": "b"}\n')
  t = Template("t", "{q}", "{r}")
  task = file_tasks.register_file_task("test_file_changed", {"train": str(data)}, [t])
  first = cache.cache_task_split(task, "train", str(tmp_path / "c"))
  data.write_text('{"q": "a", "r": "b"}\n{"q": "c", "r": "d"}\n')
  task = file_tasks.register_file_task("test_file_changed", {"train": str(data)}, [t])
  second = cache.cache_task_split(task, "train", str(tmp_path / "c"))
  assert first["num_examples"] == 1 and second["num_examples"] == 2


def test_parquet_task(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = tmp_path / "d.parquet"
  pq.write_table(pa.table({"question": ["Capital of France?", "2 + 2?"], "answer": ["Paris", "4"]}),
                 path)
  rows = file_tasks.rendered_examples([str(path)], [Template("qa", "Q: {question}", "{answer}")])
  assert [(r["inputs"], r["targets"]) for r in rows] == [("Q: Capital of France?", "Paris"),
                                                        ("Q: 2 + 2?", "4")]
  bad = tmp_path / "bad.parquet"
  bad.write_bytes(b"not parquet")
  with pytest.raises(ValueError, match="bad.parquet: not a readable Parquet file"):
    list(file_tasks.iter_records(str(bad)))


# --- Faithful files: TSV without CSV quoting, label_names, map_record, real PromptSource RTE ---

# Three of PromptSource's glue/rte templates as promptsource/templates/glue/rte/templates.yaml
# has them (YAML folding: a blank line is "\n", a line break inside a paragraph is a space).
GLUE_RTE_YAML = """\
dataset: glue
subset: rte
templates:
  03a7ae07-5ddd-46c4-92f3-2152223d44ec: !Template
    answer_choices: yes ||| no
    id: 03a7ae07-5ddd-46c4-92f3-2152223d44ec
    jinja: '{{sentence1}}

      Does this mean that "{{sentence2}}" is true? {{"A) yes or B) no."}}

      |||

      {{answer_choices[label]}}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics:
      - Accuracy
      original_task: true
    name: mean
    reference: ''
  4ee6ff27-de63-4e7b-a9d4-82a17eba407a: !Template
    answer_choices: yes ||| no
    id: 4ee6ff27-de63-4e7b-a9d4-82a17eba407a
    jinja: 'Does the claim "{{sentence2}}" follow from the fact that "{{sentence1}}"?
      Please answer either {{"yes"}} or {{"no"}}.

      |||

      {{answer_choices[label]}}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics:
      - Accuracy
      original_task: true
    name: "does the claim\\u2026 follow the fact\\u2026"
    reference: ''
  9e2b4267-ec23-44c8-b82a-107e2c890fec: !Template
    answer_choices: entailment ||| not entailment
    id: 9e2b4267-ec23-44c8-b82a-107e2c890fec
    jinja: 'We say that one sentence "{{"entails"}}" another sentence when the first
      sentence implies the second sentence. Consider the following two sentences:

      {{sentence1}}

      {{sentence2}}

      Is the relationship from the first to the second sentence "{{"entailment"}}"
      or "{{"not entailment"}}"?

      |||

      {{answer_choices[label]}}'
    metadata: !TemplateMetadata
      choices_in_prompt: true
      metrics:
      - Accuracy
      original_task: true
    name: entailment explained
    reference: ''
"""

# GLUE's RTE TSV layout: quotes are text (one opens a field and never closes), CRLF on a line.
RTE_TSV = ("index\tsentence1\tsentence2\tlabel\n"
           '0\t"The Osbournes" is a reality show.\tThe Osbournes is a TV show.\tentailment\r\n'
           '1\tHe said "no" twice.\tHe agreed.\tnot_entailment\n'
           '2\t"Quoted start, no end.\tSomething.\tentailment\n'
           "3\tA.\tB.\tnot_entailment\n")
# HF datasets' export of the same split: integer labels, written as digits.
RTE_HF_TSV = "idx\tsentence1\tsentence2\tlabel\n7\t\"Q\" is a letter.\tQ is.\t1\n"
RTE_LABELS = ("entailment", "not_entailment")

MEAN = "{s1}\nDoes this mean that \"{s2}\" is true? A) yes or B) no."
CLAIM = ("Does the claim \"{s2}\" follow from the fact that \"{s1}\"? Please answer either yes "
         "or no.")
EXPLAINED = ("We say that one sentence \"entails\" another sentence when the first sentence "
             "implies the second sentence. Consider the following two sentences:\n{s1}\n{s2}\n"
             "Is the relationship from the first to the second sentence \"entailment\" or "
             "\"not entailment\"?")


@pytest.fixture()
def rte(tmp_path):
  (tmp_path / "templates.yaml").write_text(GLUE_RTE_YAML)
  (tmp_path / "train.tsv").write_bytes(RTE_TSV.encode())
  (tmp_path / "hf.tsv").write_text(RTE_HF_TSV)
  (tmp_path / "int.jsonl").write_text(json.dumps(
      {"sentence1": "It's \"x\".", "sentence2": "Tab\there.", "label": 0}) + "\n")
  return tmp_path


def test_tsv_keeps_quotes_and_strips_crlf(rte):
  rows = list(file_tasks.iter_records(str(rte / "train.tsv")))
  assert [line for line, _ in rows] == [2, 3, 4, 5]
  assert rows[0][1] == {"index": "0", "sentence1": '"The Osbournes" is a reality show.',
                        "sentence2": "The Osbournes is a TV show.", "label": "entailment"}
  assert rows[1][1]["sentence1"] == 'He said "no" twice.'
  assert rows[2][1]["sentence1"] == '"Quoted start, no end.'  # (CSV rules ate the next lines)
  assert rows[3][1]["label"] == "not_entailment"


def test_glue_rte_templates_render_on_tsv_and_jsonl_with_string_and_int_labels(rte):
  templates = promptsource.load(str(rte / "templates.yaml"))
  assert [t.name for t in templates] == ["mean", "does the claim\u2026 follow the fact\u2026",
                                         "entailment explained"]
  files = [str(rte / "train.tsv"), str(rte / "hf.tsv"), str(rte / "int.jsonl")]
  rows = file_tasks.rendered_examples(files, templates, label_names=RTE_LABELS)
  s1 = ['"The Osbournes" is a reality show.', 'He said "no" twice.', '"Quoted start, no end.',
        "A.", '"Q" is a letter.', "It's \"x\"."]
  s2 = ["The Osbournes is a TV show.", "He agreed.", "Something.", "B.", "Q is.", "Tab\there."]
  forms = [MEAN, CLAIM, EXPLAINED, MEAN, CLAIM, EXPLAINED]
  assert [r["inputs"] for r in rows] == [f.format(s1=a, s2=b) for f, a, b in zip(forms, s1, s2)]
  assert [r["targets"] for r in rows] == ["yes", "no", "entailment", "no", "no", "entailment"]
  assert rows[2]["answer_choices"] == ["entailment", "not entailment"]
  assert rows[0]["inputs"] == ('"The Osbournes" is a reality show.\nDoes this mean that "The '
                               'Osbournes is a TV show." is true? A) yes or B) no.')
  # example_json is the record the template saw: the label is its index.
  assert json.loads(rows[1]["example_json"])["label"] == 1
  assert json.loads(rows[4]["example_json"]) == {"idx": "7", "sentence1": '"Q" is a letter.',
                                                 "sentence2": "Q is.", "label": 1}


def test_string_labels_without_label_names_say_what_to_do(rte):
  templates = promptsource.load(str(rte / "templates.yaml"))
  with pytest.raises(ValueError, match=r"train.tsv:2: .*'entailment'.*label_names="):
    file_tasks.rendered_examples([str(rte / "train.tsv")], templates)


def test_a_label_not_in_label_names_names_file_line_value_and_names(rte):
  bad = rte / "bad.tsv"
  bad.write_text("sentence1\tsentence2\tlabel\na\tb\tentailment\nc\td\tneutral\n")
  templates = promptsource.load(str(rte / "templates.yaml"))
  with pytest.raises(ValueError, match=r"task 'test_rte_bad': .*bad.tsv:3: label 'neutral' is not "
                                       r"one of the label_names \['entailment', "
                                       r"'not_entailment'\]"):
    file_tasks.register_file_task("test_rte_bad", {"train": str(bad)}, templates,
                                  label_names=RTE_LABELS)
  bad.write_text("s\tgold\na\t2\n")
  with pytest.raises(ValueError, match=r"bad.tsv:2: gold '2' is not one of"):
    list(file_tasks.records([str(bad)], label_names=RTE_LABELS, label_field="gold"))
  with pytest.raises(ValueError, match=r"label_names must be distinct strings"):
    file_tasks.register_file_task("test_rte_bad", {"train": str(bad)}, templates,
                                  label_names="entailment")


def test_label_conversion_rules():
  convert = file_tasks.label_mapper(["yes", "no"])
  assert [convert({"label": v}, "f:1")["label"] for v in ["yes", "no", "0", "1", "-1", 1, -1]] == [
      0, 1, 0, 1, -1, 1, -1]
  assert convert({"text": "x"}, "f:1") == {"text": "x"}  # no label field: as it is
  for value in ["maybe", "2", "", " 1", "1.0", 2, 1.0, None, True]:
    with pytest.raises(ValueError, match=r"f:1: label"):
      convert({"label": value}, "f:1")


def _rename(record):
  """A map_record: GLUE's column names -> the template's, dropping unlabeled records."""
  if record["label"] == "":
    return None
  return {"premise": record["sentence1"], "hypothesis": record["sentence2"],
          "label": record["label"]}


def _rename_keep_all(record):
  return {"premise": record["sentence1"], "hypothesis": record["sentence2"],
          "label": record["label"] or "entailment"}


def test_map_record_reshapes_and_drops_records_before_labels_and_templates(tmp_path,
                                                                           templates_file):
  data = tmp_path / "train.tsv"
  data.write_text("sentence1\tsentence2\tlabel\nIt rained.\tWet.\tnot_entailment\n"
                  "No label.\tx\t\nCats purr.\tDogs bark.\tentailment\n")
  templates = promptsource.load(templates_file)  # uses premise / hypothesis
  task = file_tasks.register_file_task("test_map_record", {"train": str(data)}, templates,
                                       map_record=_rename, label_names=RTE_LABELS)
  assert task.num_input_examples("train") == 2  # the dropped record is not counted
  rows = file_tasks.rendered_examples([str(data)], templates, map_record=_rename,
                                      label_names=RTE_LABELS)
  assert [(r["idx"], r["inputs"], r["targets"]) for r in rows] == [
      (0, 'Suppose It rained. Can we infer that "Wet."? Yes, no, or maybe?', "No"),
      (1, "Cats purr.\nQuestion: Dogs bark. True, False, or Neither?", "True")]
  # What few-shot variants read: the same mapped records.
  keywords = task.source._dataset_fn.keywords
  assert file_tasks.task_records(keywords, "train") == [
      {"premise": "It rained.", "hypothesis": "Wet.", "label": 1},
      {"premise": "Cats purr.", "hypothesis": "Dogs bark.", "label": 0}]
  with pytest.raises(ValueError, match=r"train.tsv:2: map_record .*<lambda> failed: KeyError"):
    file_tasks.rendered_examples([str(data)], templates, map_record=lambda r: r["nope"])
  with pytest.raises(ValueError, match=r"train.tsv:2: map_record returned list"):
    file_tasks.rendered_examples([str(data)], templates, map_record=lambda r: [r])
  with pytest.raises(ValueError, match=r"split 'train' is empty.*map_record dropped every"):
    file_tasks.register_file_task("test_map_record", {"train": str(data)}, templates,
                                  map_record=lambda r: None)


def test_label_names_and_map_record_are_in_the_cache_fingerprint(tmp_path, templates_file):
  data = tmp_path / "train.tsv"
  data.write_text("sentence1\tsentence2\tlabel\nIt rained.\tWet.\tentailment\n")
  templates = promptsource.load(templates_file)

  def fingerprint(**options):
    task = file_tasks.register_file_task("test_fp", {"train": str(data)}, templates, **options)
    return cache.fingerprint(task, "train"), task.source._dataset_fn.keywords

  plain, keywords = fingerprint()
  assert sorted(keywords) == ["files", "templates"]  # unset options: old fingerprints hold
  prints = {plain,
            fingerprint(map_record=_rename)[0], fingerprint(map_record=_rename_keep_all)[0],
            fingerprint(map_record=_rename, label_names=RTE_LABELS)[0],
            fingerprint(map_record=_rename, label_names=RTE_LABELS[::-1])[0],
            fingerprint(map_record=_rename, label_names=RTE_LABELS, label_field="gold")[0]}
  assert len(prints) == 6
  assert fingerprint(map_record=_rename)[0] == fingerprint(map_record=_rename)[0]


def test_rte_tsv_task_caches_with_label_names(rte):
  templates = promptsource.load(str(rte / "templates.yaml"))
  task = file_tasks.register_file_task("test_rte_tsv", {"train": str(rte / "train.tsv")},
                                       templates, label_names=RTE_LABELS)
  cache.cache_task_split(task, "train", str(rte / "cache"))
  cached = pipeline.read_examples(str(rte / "cache"), "test_rte_tsv", "train")
  assert [ex["targets_pretokenized"] for ex in cached] == ["yes", "no", "entailment", "no"]
  assert cached[0]["inputs_pretokenized"] == MEAN.format(
      s1='"The Osbournes" is a reality show.', s2="The Osbournes is a TV show.")


def test_tsv_malformed_lines_name_the_right_line_and_can_be_skipped(tmp_path):
  path = tmp_path / "d.tsv"
  path.write_text('a\tb\n"open\tx\n\n1\t2\t3\r\n4\t5\n')
  with pytest.raises(ValueError, match=r"d.tsv:4: 3 fields, but the header has 2 \(a, b\)"):
    list(file_tasks.iter_records(str(path)))
  skipped = []
  assert list(file_tasks.iter_records(str(path), skipped)) == [
      (2, {"a": '"open', "b": "x"}), (5, {"a": "4", "b": "5"})]
  assert len(skipped) == 1 and skipped[0].endswith("d.tsv:4: 3 fields, but the header has 2 "
                                                   "(a, b)")


def test_csv_keeps_rfc4180_quoting(tmp_path):
  path = tmp_path / "d.csv"
  path.write_text('q,a\n"He said ""hi, there""",1\n"two\nlines",2\nbad\n')
  with pytest.raises(ValueError, match=r"d.csv:5: 1 fields, but the header has 2"):
    list(file_tasks.iter_records(str(path)))
  skipped = []
  assert list(file_tasks.iter_records(str(path), skipped)) == [
      (2, {"q": 'He said "hi, there"', "a": "1"}), (3, {"q": "two\nlines", "a": "2"})]
  assert skipped[0].endswith("d.csv:5: 1 fields, but the header has 2 (q, a)")


def test_byte_order_mark_is_not_a_column_name_and_repeated_columns_are_errors(tmp_path):
  path = tmp_path / "d.csv"
  path.write_bytes(b"\xef\xbb\xbfq,a\nx,y\n")  # Excel's "CSV UTF-8"
  assert list(file_tasks.iter_records(str(path))) == [(2, {"q": "x", "a": "y"})]
  path.write_text("q,q\n1,2\n")
  with pytest.raises(ValueError, match=r"d.csv:1: the header names \['q'\] more than once"):
    list(file_tasks.iter_records(str(path)))


@pytest.mark.parametrize("kind", ["jsonl", "tsv"])
def test_a_block_far_into_a_file_reads_from_the_record_index(tmp_path, monkeypatch, kind):
  """`iter_records(start=...)` seeks to a checkpoint of the file's record index instead of
  passing over every line: the same (line, record) pairs as reading from the top, with blank and
  whitespace-only lines (Unicode ones too), CRLF line ends and a byte order mark in the file."""
  path = str(tmp_path / f"data.{kind}")
  blanks = ["\n", "\r\n", "   \n", "\u3000\n", "\x1c\n"] if kind == "jsonl" else ["\n", "\r\n"]
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write("\ufeff")
    if kind == "tsv":
      f.write("text\tlabel\r\n")
    for i in range(200):
      text = f"row {i} café" if i % 3 else f"row {i}"
      f.write(json.dumps({"text": text, "label": i % 2}, ensure_ascii=i % 2 == 0) + "\r\n"
              if kind == "jsonl" else f"{text}\t{i % 2}\n")
      if i % 7 == 0:
        f.write(blanks[i % len(blanks)])
  everything = list(file_tasks.iter_records(path))
  assert len(everything) == 200 == file_tasks._num_raw_records(path)
  monkeypatch.setattr(file_tasks, "INDEX_EVERY", 16)
  index = file_tasks.record_index(path)
  assert index[0] == 200 and len(index[1]) == 13
  for start in (0, 15, 16, 17, 50, 64, 199, 200):
    assert list(file_tasks.iter_records(path, start=start)) == everything[start:], start
  assert file_tasks._num_raw_records(path) == 200


def test_a_lone_carriage_return_in_jsonl_keeps_the_text_reader(tmp_path, monkeypatch):
  """A "\\r" ending no "\\r\\n" is a line end to the text reader but not to a byte scan: no
  index, and blocks are read from the top as before."""
  path = str(tmp_path / "data.jsonl")
  with open(path, "w", encoding="utf-8", newline="") as f:
    for i in range(40):
      f.write(json.dumps({"i": i}) + ("\r" if i == 5 else "\n"))
  monkeypatch.setattr(file_tasks, "INDEX_EVERY", 4)
  assert file_tasks.record_index(path) is None
  everything = list(file_tasks.iter_records(path))
  assert len(everything) == 40
  assert list(file_tasks.iter_records(path, start=21)) == everything[21:]
