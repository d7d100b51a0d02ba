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
