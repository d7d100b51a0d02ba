"""GLUE / SuperGLUE the T5 way (mtjax.collections.glue): texts, postprocessors, metrics, mixtures.

The datasets are tiny copies in the Hub's layout (`<root>/nyu-mll/glue/<config>/<split>-00000-
of-00001.parquet`, written by `datasets` with its features), read the way a run reads
`data.hf_data_dir`. Expected texts are T5's own test vectors (t5/data/preprocessors_test.py)
or written out by hand from T5's preprocessors; metric values are computed by hand or by scipy.
"""

import json

import numpy as np
import pytest
import seqio

from mtjax.collections import glue, hf_tasks
from mtjax.collections import t5_postprocessors as post
from mtjax.data import cache, mixing, pipeline
from mtjax.eval import evaluate, metrics

VOCAB = seqio.ByteVocabulary()

MULTIRC_PARAGRAPH = ("<b>Sent 1: </b>Once upon a time, there was a squirrel named Joey.<br><b>"
                     "Sent 2: </b>Joey loved to go outside and play with his cousin Jimmy.")
MULTIRC_QUESTION = "Why was Joey surprised the morning he woke up for breakfast?"
MULTIRC_INPUT = ("multirc question: Why was Joey surprised the morning he woke up for breakfast? "
                 "answer: {} paragraph: Sent 1: Once upon a time, there was a squirrel named "
                 "Joey. Sent 2: Joey loved to go outside and play with his cousin Jimmy.")
RECORD_PASSAGE = ("This is the passage\n@highlight\nAnother sentence.\n@highlight\n"
                  "Third sentence.")
RECORD_INPUT = ("record query: It was @placeholder. entities: A, B, C passage: This is the "
                "passage. Another sentence. Third sentence.")
WSC_TEXT = "Mitchell asked Tom if he could lend some money."
WSC_SPECIAL = ('The boy continued to whip the pony , and eventually the pony threw him over. '
               'John laughed out quite loud. "Good for him," he said. ')
# STS-B scores as float32 (the HF column type) whose float32 rounding to a fifth differs from
# rounding the widened float64 value, the exact float32 ties, and T5's test values.
STSB = {0.1: "0.0", 0.7: "0.8", 1.7: "1.6", 1.9: "2.0", 2.3: "2.4", 2.9: "2.8", 3.1: "3.2",
        3.7: "3.6", 4.7: "4.8", 4.9: "4.8", 0.5: "0.4", 2.5: "2.4", 4.5: "4.4", 2.8: "2.8",
        1.66: "1.6", 5.0: "5.0"}


def _write(root, repo, config, split, columns, features):
  from datasets import Dataset, Features  # pylint: disable=g-import-not-at-top

  path = root / repo / config / f"{split}-00000-of-00001.parquet"
  path.parent.mkdir(parents=True, exist_ok=True)
  Dataset.from_dict(columns, features=Features(features)).to_parquet(str(path))


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
  """Small GLUE / SuperGLUE / DPR copies in the Hub layout."""
  from datasets import ClassLabel, Sequence, Value  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("hf")
  s, i32 = Value("string"), Value("int32")

  def label(*names):
    return ClassLabel(names=list(names))

  g, sg = "nyu-mll/glue", "aps/super_glue"
  _write(root, g, "qqp", "validation",
         {"question1": ["How so?", "Why not?", "Who?"], "question2": ["Why?", "", "Who?"],
          "label": [0, 1, 1], "idx": [0, 1, 2]},
         {"question1": s, "question2": s, "label": label("not_duplicate", "duplicate"),
          "idx": i32})
  _write(root, g, "qqp", "test", {"question1": ["A?"], "question2": ["B?"], "label": [-1],
                                  "idx": [0]},
         {"question1": s, "question2": s, "label": label("not_duplicate", "duplicate"),
          "idx": i32})
  _write(root, g, "stsb", "train",
         {"sentence1": ["Big news."] * len(STSB), "sentence2": ["No idea."] * len(STSB),
          "label": list(STSB), "idx": list(range(len(STSB)))},
         {"sentence1": s, "sentence2": s, "label": Value("float32"), "idx": i32})
  _write(root, g, "stsb", "test", {"sentence1": ["a"], "sentence2": ["b"], "label": [-1.0],
                                   "idx": [0]},
         {"sentence1": s, "sentence2": s, "label": Value("float32"), "idx": i32})
  nli = label("entailment", "neutral", "contradiction")
  _write(root, g, "mnli", "validation_matched",
         {"premise": ["P one."], "hypothesis": ["H one."], "label": [2], "idx": [7]},
         {"premise": s, "hypothesis": s, "label": nli, "idx": i32})
  _write(root, g, "ax", "test", {"premise": ["P."], "hypothesis": ["H."], "label": [-1],
                                 "idx": [0]},
         {"premise": s, "hypothesis": s, "label": nli, "idx": i32})
  _write(root, g, "cola", "validation",
         {"sentence": [f"Sentence {k}." for k in range(6)], "label": [1, 1, 0, 0, 1, 0],
          "idx": list(range(6))},
         {"sentence": s, "label": label("unacceptable", "acceptable"), "idx": i32})
  _write(root, g, "wnli", "validation", {
      "sentence1": ["Lily spoke to Donna breaking her silence.",
                    "The fish ate the worm. It was tasty.",
                    "Edward dropped adhesive tape onto his window sill, and when he pulled the "
                    "tape off, some of the glue was stuck on it.",
                    "Al stole Bob's wallet and car, and then he was driving it really fast to "
                    "get away."],
      "sentence2": ["Lily spoke to Donna breaking Donna's silence.", "The worm was tasty.",
                    "Some of the glue was stuck on the window sill.",
                    "He was driving the car really fast to get away."],
      "label": [1, 0, 0, 1], "idx": [1, 2, 3, 4]},
      {"sentence1": s, "sentence2": s, "label": label("not_entailment", "entailment"),
       "idx": i32})

  _write(root, sg, "multirc", "validation", {
      "paragraph": [MULTIRC_PARAGRAPH] * 3, "question": [MULTIRC_QUESTION] * 2 + ["Who?"],
      "answer": ["There was only pie to eat", "It was his birthday", "Joey"],
      "idx": [{"paragraph": 5, "question": 1, "answer": 3},
              {"paragraph": 5, "question": 1, "answer": 4},
              {"paragraph": 5, "question": 2, "answer": 5}],
      "label": [1, 0, 1]},
      {"paragraph": s, "question": s, "answer": s,
       "idx": {"paragraph": i32, "question": i32, "answer": i32}, "label": label("False", "True")})
  record_features = {"passage": s, "query": s, "entities": Sequence(s),
                     "entity_spans": Sequence({"text": s, "start": i32, "end": i32}),
                     "answers": Sequence(s), "idx": {"passage": i32, "query": i32}}
  spans = {"text": ["A"], "start": [0], "end": [0]}
  _write(root, sg, "record", "validation", {
      "passage": [RECORD_PASSAGE, "Bob ran!\n@highlight\nIt rained\n@highlight\nEnd"],
      "query": ["It was @placeholder.", "@placeholder ran."],
      "entities": [["C", "A", "B", "A"], ["Bob", "Ann"]],
      "entity_spans": [spans, spans],
      "answers": [["C", "A"], ["The Bob"]],
      "idx": [{"passage": 1, "query": 2}, {"passage": 3, "query": 4}]}, record_features)
  _write(root, sg, "record", "test", {
      "passage": [RECORD_PASSAGE], "query": ["It was @placeholder."],
      "entities": [["A", "B", "C"]], "entity_spans": [spans], "answers": [[]],
      "idx": [{"passage": 1, "query": 2}]}, record_features)
  wsc = {"text": s, "span1_index": i32, "span2_index": i32, "span1_text": s, "span2_text": s,
         "idx": i32, "label": label("False", "True")}
  _write(root, sg, "wsc.fixed", "train", {
      "text": [WSC_TEXT, WSC_TEXT], "span1_index": [2, 0], "span2_index": [4, 4],
      "span1_text": ["Tom", "Mitchell"], "span2_text": ["he", "he"], "idx": [1, 2],
      "label": [1, 0]}, wsc)
  _write(root, sg, "wsc.fixed", "validation", {
      "text": [WSC_TEXT, WSC_TEXT, WSC_SPECIAL], "span1_index": [2, 0, 0],
      "span2_index": [4, 4, 0], "span1_text": ["Tom", "Mitchell", "the pony"],
      "span2_text": ["he", "he", "him"], "idx": [0, 1, 2], "label": [1, 0, 0]}, wsc)
  _write(root, sg, "axb", "test", {"sentence1": ["S one."], "sentence2": ["S two."],
                                   "idx": [0], "label": [1]},
         {"sentence1": s, "sentence2": s, "idx": i32,
          "label": label("entailment", "not_entailment")})
  _write(root, sg, "copa", "train", {
      "premise": ["The man broke his toe."], "choice1": ["He dropped a hammer."],
      "choice2": ["He got a hole in his sock."], "question": ["cause"], "idx": [0],
      "label": [0]},
      {"premise": s, "choice1": s, "choice2": s, "question": s, "idx": i32,
       "label": label("choice1", "choice2")})
  _write(root, sg, "wic", "train", {
      "word": ["bank"], "sentence1": ["A river bank."], "sentence2": ["A bank loan."],
      "start1": [2], "start2": [2], "end1": [6], "end2": [6], "idx": [0], "label": [0]},
      {"word": s, "sentence1": s, "sentence2": s, "start1": i32, "start2": i32, "end1": i32,
       "end2": i32, "idx": i32, "label": label("False", "True")})
  _write(root, sg, "cb", "validation", {
      "premise": [f"P{k}" for k in range(5)], "hypothesis": [f"H{k}" for k in range(5)],
      "idx": list(range(5)), "label": [0, 1, 2, 0, 1]},
      {"premise": s, "hypothesis": s, "idx": i32,
       "label": label("entailment", "contradiction", "neutral")})
  _write(root, sg, "boolq", "validation", {
      "question": ["is it?"], "passage": ["It is."], "idx": [0], "label": [1]},
      {"question": s, "passage": s, "idx": i32, "label": label("False", "True")})
  _write(root, glue.DPR_REPO, "plain_text", "train", {
      "sentence": ["Mitchell asked Tom if he could lend some money.",
                   "Bill beat Tom at Scrabble because that newbie had all the luck.",
                   "Carl borrowed a book from Richard, but the book was unreadable to him."],
      "pronoun": ["he", "that newbie", "him"],
      "candidates": [["Mitchell", "Tom"], ["Bill", "Tom"], ["Carl", "Richard"]],
      "label": [1, 0, 0]},
      {"sentence": s, "pronoun": s, "candidates": Sequence(s, length=2), "label": label("0", "1")})
  return root


@pytest.fixture()
def hub(hub_root):
  """The tasks registered over `hub_root` (as `data.hf_data_dir` would); default after."""
  glue.register(data_root=str(hub_root))
  yield hub_root
  glue.register()


def _examples(name, split):
  return hf_tasks.hf_source(seqio.get_mixture_or_task(name)).examples(split)


def _cached(name, split, tmp_path):
  task = seqio.get_mixture_or_task(name)
  cache.cache_task_split(task, split, str(tmp_path / "cache"))
  return task, pipeline.read_examples(str(tmp_path / "cache"), name, split)


def _predicted_ids(texts, width=48):
  rows = []
  for text in texts:
    ids = VOCAB.encode(text) + [1]
    rows.append(ids + [0] * (width - len(ids)))
  return rows


# ---- texts ---------------------------------------------------------------------------------------


def test_t5_glue_vector_and_unlabeled_target():
  record = {"q1": "How so?", "q2": "Why not?", "q3": "Who?", "idx": 10, "label": 0}
  kwargs = dict(benchmark="qqp", label_names=("not_duplicate", "duplicate"))
  out = glue.glue_example(record, feature_names=("q1", "q2", "q3"), **kwargs)
  assert out == {"inputs": "qqp q1: How so? q2: Why not? q3: Who?",
                 "targets": "not_duplicate", "idx": 10}
  assert glue.glue_example(record, feature_names=("q3", "q1"), **kwargs)["inputs"] == (
      "qqp q3: Who? q1: How so?")
  assert glue.glue_example(dict(record, label=-1), feature_names=("q1",),
                           **kwargs)["targets"] == "<unk>"
  with pytest.raises(ValueError, match="out of range"):
    glue.glue_example(dict(record, label=2), feature_names=("q1",), **kwargs)


def test_qqp_cached_texts_and_fields(hub, tmp_path):
  _, cached = _cached("glue_qqp_v002", "validation", tmp_path)
  assert [ex["inputs_pretokenized"] for ex in cached] == [
      "qqp question1: How so? question2: Why?",
      "qqp question1: Why not? question2: ",  # an empty value keeps its space, as T5's join
      "qqp question1: Who? question2: Who?"]
  assert [ex["targets_pretokenized"] for ex in cached] == ["not_duplicate", "duplicate",
                                                           "duplicate"]
  assert [int(ex["idx"]) for ex in cached] == [0, 1, 2]
  np.testing.assert_array_equal(cached[0]["inputs"], VOCAB.encode(cached[0]["inputs_pretokenized"]))
  assert _examples("glue_qqp_v002", "test")[0]["targets"] == "<unk>"


def test_stsb_targets_round_in_float32_half_to_even(hub, tmp_path):
  _, cached = _cached("glue_stsb_v002", "train", tmp_path)
  assert [ex["targets_pretokenized"] for ex in cached] == list(STSB.values())
  assert cached[0]["inputs_pretokenized"] == "stsb sentence1: Big news. sentence2: No idea."
  assert _examples("glue_stsb_v002", "test")[0]["targets"] == "-1.0"


def test_stsb_rounding_equals_tensorflow_on_a_grid():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  values = np.concatenate([np.arange(0, 5.001, 0.01), np.arange(0, 5.001, 0.1)]).astype(np.float32)
  want = tf.strings.as_string(tf.round(tf.constant(values) * 5) / 5, precision=1).numpy()
  got = [glue.stsb_example({"sentence1": "", "sentence2": "", "label": float(v), "idx": 0})
         ["targets"] for v in values]
  assert got == [w.decode() for w in want]


def test_feature_orders_and_benchmark_names(hub):
  mnli = _examples("glue_mnli_v002", "validation_matched")[0]
  assert (mnli["inputs"], mnli["targets"], mnli["idx"]) == (
      "mnli hypothesis: H one. premise: P one.", "contradiction", 7)
  ax = _examples("glue_ax_v002", "test")[0]
  assert (ax["inputs"], ax["targets"]) == ("mnli hypothesis: H. premise: P.", "<unk>")
  axb = _examples("super_glue_axb_v102", "test")[0]
  assert (axb["inputs"], axb["targets"]) == ("rte hypothesis: S two. premise: S one.",
                                             "not_entailment")
  copa = _examples("super_glue_copa_v102", "train")[0]
  assert copa["inputs"] == ("copa choice1: He dropped a hammer. choice2: He got a hole in his "
                            "sock. premise: The man broke his toe. question: cause")
  assert copa["targets"] == "choice1"
  wic = _examples("super_glue_wic_v102", "train")[0]
  assert (wic["inputs"], wic["targets"]) == (
      "wic sentence1: A river bank. sentence2: A bank loan. word: bank", "False")
  assert _examples("super_glue_cb_v102", "validation")[2]["inputs"] == (
      "cb hypothesis: H2 premise: P2")
  assert _examples("super_glue_boolq_v102", "validation")[0]["inputs"] == (
      "boolq passage: It is. question: is it?")


def test_task_splits_are_t5s():
  splits = {name: tuple(seqio.get_mixture_or_task(name).splits) for name in glue.TASKS}
  assert splits["glue_mnli_v002"] == glue.MNLI_SPLITS
  assert splits["glue_mnli_matched_v002"] == ("validation", "test")
  assert splits["glue_ax_v002"] == ("test",)
  assert splits["super_glue_axg_v102"] == ("test",)
  assert splits["super_glue_wsc_v102_simple_train"] == ("train",)
  assert splits["super_glue_wsc_v102_simple_eval"] == ("validation", "test")
  assert splits["dpr_v001_simple"] == ("train", "test")
  assert splits["glue_cola_v002"] == ("train", "validation", "test")


def test_multirc_html_cleanup_and_question_groups(hub, tmp_path):
  task, cached = _cached("super_glue_multirc_v102", "validation", tmp_path)
  assert cached[0]["inputs_pretokenized"] == MULTIRC_INPUT.format("There was only pie to eat")
  assert [ex["targets_pretokenized"] for ex in cached] == ["True", "False", "True"]
  assert [(int(ex["idx/paragraph"]), int(ex["idx/question"]), int(ex["idx/answer"]))
          for ex in cached] == [(5, 1, 3), (5, 1, 4), (5, 2, 5)]
  targets = evaluate.postprocessed_targets(task, cached)
  assert targets == [{"value": 1, "group": 1}, {"value": 0, "group": 1},
                     {"value": 1, "group": 2}]
  # question 1 all right, question 2 wrong: exact match 50; F1 over answers: tp 1, fn 1 -> 2/3
  got = evaluate.task_metrics(task, cached, _predicted_ids(["True", "False", "False"]))
  assert got["exact_match"] == pytest.approx(50.0)
  assert got["f1"] == pytest.approx(100 * 2 / 3)


def test_record_expansion_cleanup_and_dedupe_squad(hub, tmp_path):
  task, cached = _cached("super_glue_record_v102", "validation", tmp_path)
  assert [ex["targets_pretokenized"] for ex in cached] == ["A", "C", "The Bob"]
  assert cached[0]["inputs_pretokenized"] == RECORD_INPUT == cached[1]["inputs_pretokenized"]
  assert cached[2]["inputs_pretokenized"] == (
      "record query: @placeholder ran. entities: Ann, Bob passage: Bob ran! It rained. End")
  assert json.loads(cached[0]["answers_json"]) == ["A", "C"]
  assert [(int(ex["idx/passage"]), int(ex["idx/query"])) for ex in cached] == [
      (1, 2), (1, 2), (3, 4)]
  targets = evaluate.postprocessed_targets(task, cached)
  assert targets[1] == {"value": ["A", "C"], "group": (1, 2)}
  # one score per query, its first copy's: "c" is gold "C", "bob!" is "The Bob" (normalised)
  got = evaluate.task_metrics(task, cached, _predicted_ids(["c", "wrong", "bob!"]))
  assert got == {"em": pytest.approx(100.0), "f1": pytest.approx(100.0)}
  # "B" is neither A nor C; "Bob Smith" vs "bob": token F1 2/3
  got = evaluate.task_metrics(task, cached, _predicted_ids(["B", "A", "Bob Smith"]))
  assert got == {"em": pytest.approx(0.0), "f1": pytest.approx(100 * (0 + 2 / 3) / 2)}
  test = _examples("super_glue_record_v102", "test")
  assert len(test) == 1 and test[0]["targets"] == "<unk>" and test[0]["answers_json"] == "[]"
  assert test[0]["inputs"] == RECORD_INPUT


def test_wsc_simple_train_and_eval(hub, tmp_path):
  train = _examples("super_glue_wsc_v102_simple_train", "train")
  assert [(ex["inputs"], ex["targets"], ex["label"], ex["idx"]) for ex in train] == [
      ("wsc: Mitchell asked Tom if *he* could lend some money.", "Tom", 1, 1)]
  task, cached = _cached("super_glue_wsc_v102_simple_eval", "validation", tmp_path)
  assert [ex["inputs_pretokenized"] for ex in cached] == [
      "wsc: Mitchell asked Tom if *he* could lend some money.",
      "wsc: Mitchell asked Tom if *he* could lend some money.",
      'wsc: The boy continued to whip the pony , and eventually the pony threw him over. John '
      'laughed out quite loud. "Good for *him* ," he said.']
  assert [ex["targets_pretokenized"] for ex in cached] == ["Tom", "Mitchell", "the pony"]
  assert evaluate.postprocessed_targets(task, cached) == [1, 0, 0]
  # "the Tom" -> Tom (1 = label 1), "Tom" vs Mitchell (0 = label 0), "" -> -1 (label 0: miss)
  got = evaluate.task_metrics(task, cached, _predicted_ids(["the Tom", "Tom", ""]))
  assert got == {"accuracy": pytest.approx(200 / 3)}


def test_wsc_simple_refuses_a_misplaced_pronoun():
  record = {"text": WSC_TEXT, "span1_text": "Tom", "span2_text": "he", "span2_index": 3,
            "idx": 0, "label": 1}
  with pytest.raises(ValueError, match="not span2_text"):
    glue.wsc_simple_example(record, correct_referent_only=False)
  with pytest.raises(ValueError, match="span2_index 0"):
    glue.wsc_simple_example(dict(record, span2_index=0), correct_referent_only=False)


def test_dpr_and_wnli_simple_t5_vectors(hub):
  assert [(ex["inputs"], ex["targets"]) for ex in _examples("dpr_v001_simple", "train")] == [
      ("wsc: Mitchell asked Tom if *he* could lend some money.", "Tom"),
      ("wsc: Bill beat Tom at Scrabble because *that newbie* had all the luck.", "Bill"),
      ("wsc: Carl borrowed a book from Richard, but the book was unreadable to *him*.", "Carl")]
  wnli = _examples("glue_wnli_v002_simple_eval", "validation")
  assert [(ex["inputs"], ex["targets"], ex["label"], ex["idx"]) for ex in wnli] == [
      ("wsc: Lily spoke to Donna breaking *her* silence.", "Donna", 1, 1),
      ("wsc: The fish ate the worm. *It* was tasty.", "The worm", 0, 2),
      ("wsc: Edward dropped adhesive tape onto his window sill, and when he pulled the tape "
       "off, some of the glue was stuck on *it* .", "the window sill", 0, 3),
      ("wsc: Al stole Bob's wallet and car, and then he was driving *it* really fast to get "
       "away.", "the car", 1, 4)]
  assert wnli[0]["premise"] == "Lily spoke to Donna breaking her silence."


# ---- postprocessors ------------------------------------------------------------------------------


def test_postprocessors():
  to_id = glue.postprocess_fn("glue", "rte")
  assert [to_id(s) for s in ("entailment", "not_entailment", "Entailment", "")] == [0, 1, -1, -1]
  assert glue.postprocess_fn("glue", "wnli")("entailment", is_target=True) == 1
  assert post.string_to_float("3.4") == 3.4 and post.string_to_float("x") == -1.0
  example = {"idx/question": np.array(7, np.int32), "idx/passage": np.array(1),
             "idx/query": np.array(2), "answers_json": '["A", "B"]', "label": np.array(1),
             "targets_pretokenized": "Bob's hat"}
  assert post.multirc("True", example, is_target=True) == {"value": 1, "group": 7}
  assert post.multirc("Maybe", example) == {"value": -1}
  assert post.record("x", example, is_target=True) == {"value": ["A", "B"], "group": (1, 2)}
  assert post.record("x", example) == {"value": "x"}
  assert post.wsc_simple("", example, is_target=True) == 1
  assert post.wsc_simple("Bob", example) == 0  # apostrophe in one only
  assert post.wsc_simple("Bob's dog", example) == 0  # words not a subset either way
  assert post.wsc_simple("the hat of Bob's", example) == 1  # the referent's words are in it
  assert post.wsc_simple("Bob's", example) == 1
  assert post.wsc_simple(" THE ", example) == -1


# ---- metrics -------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
  # invalid -1 -> 1 - target (0): tp 1, fp 1, fn 2 -> 2/(2+1+2)
  assert metrics.f1_score_with_invalid([1, 0, 1, 1, 0], [1, 1, -1, 0, 0]) == {"f1": 40.0}
  assert metrics.f1_score_with_invalid([0, 0], [0, 0]) == {"f1": 0.0}  # sklearn's zero_division
  # binary MCC: tp 1, tn 2, fp 0, fn 1 -> 2 / sqrt(1 * 2 * 2 * 3)
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])["matthews_corrcoef"] == (
      pytest.approx(100 * 2 / np.sqrt(12)))
  # -1 as a third class (sklearn's multiclass formula): 3 / sqrt(18 * 22)
  assert metrics.matthews_corrcoef([1, 1, 0, 0, 1, 0], [1, 0, 0, -1, 1, 1])[
      "matthews_corrcoef"] == pytest.approx(100 * 3 / np.sqrt(396))
  assert metrics.matthews_corrcoef([1, 0], [1, 1]) == {"matthews_corrcoef": 0.0}
  f1 = metrics.mean_multiclass_f1(num_classes=3)
  assert f1.__name__ == "mean_3class_f1"
  # class 0: 2/3, class 1: 2/4, class 2: 0
  assert f1([0, 1, 2, 0, 1], [0, 1, 1, -1, 2]) == {
      "mean_3class_f1": pytest.approx(100 * (2 / 3 + 0.5 + 0) / 3)}
  assert metrics.sequence_accuracy(["a", "b"], ["a", "c"]) == {"sequence_accuracy": 50.0}


def test_correlations_equal_scipy():
  from scipy import stats  # pylint: disable=g-import-not-at-top

  t, p = [0.0, 1.2, 3.4, 3.4, 5.0, 2.2], [0.4, 1.0, 3.0, 4.2, 4.8, -1.0]
  assert metrics.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(
      100 * stats.pearsonr(t, p)[0])
  assert metrics.pearson_corrcoef(t, p)["pearson_corrcoef"] == pytest.approx(
      100 * np.corrcoef(t, p)[0, 1])
  assert metrics.spearman_corrcoef(t, p)["spearman_corrcoef"] == pytest.approx(
      100 * stats.spearmanr(t, p)[0])
  arrays = [np.array(x, np.float32) for x in t]  # 0-d arrays, as cached fields arrive
  assert metrics.pearson_corrcoef(arrays, p)["pearson_corrcoef"] == pytest.approx(
      100 * stats.pearsonr(t, p)[0], rel=1e-6)


def test_qa_and_group_metrics_by_hand():
  got = metrics.squad([["The Cat", "a dog"], ["New York City"]], ["cat!", "york"])
  assert got == {"em": 50.0, "f1": pytest.approx(100 * (1 + 0.5) / 2)}
  assert metrics.normalize_squad("  The  Quick, brown-fox!  ") == "quick brownfox"
  grouped = metrics.mean_group_metric(metrics.all_match)
  targets = [{"value": 1, "group": 1}, {"value": 0, "group": 1}, {"value": 1, "group": 2}]
  assert grouped(targets, [{"value": 1}, {"value": 0}, {"value": 0}]) == {"exact_match": 50.0}
  dedup = metrics.deduplicate_metric(metrics.squad)
  targets = [{"value": ["d"], "group": (1, 2)}, {"value": ["d"], "group": (1, 2)},
             {"value": ["b"], "group": (1, 3)}]
  assert dedup(targets, [{"value": "d"}, {"value": "x"}, {"value": "c"}]) == {"em": 50.0,
                                                                             "f1": 50.0}
  # T5's normalisation deletes articles: "a" vs "the" are both "" (exact match, F1 0)
  assert metrics.squad([["a"]], ["The"]) == {"em": 100.0, "f1": 0.0}
  assert metrics.multirc_f1_over_all_answers(
      [{"value": 1}, {"value": 0}, {"value": 1}],
      [{"value": 1}, {"value": 0}, {"value": -1}]) == {"f1": pytest.approx(100 * 2 / 3)}


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.pearson_corrcoef([1.0, 2.0], [1.0]), "2 targets but 1 predictions"),
    (lambda: metrics.spearman_corrcoef([], []), "no examples"),
    (lambda: metrics.pearson_corrcoef([1.0, 2.0], ["1.0", 2.0]), "predictions must be numbers"),
    (lambda: metrics.spearman_corrcoef([None, 1.0], [1.0, 2.0]), "targets must be numbers"),
    (lambda: metrics.pearson_corrcoef([1.0], [1.0]), "at least 2"),
    (lambda: metrics.f1_score_with_invalid([], []), "no examples"),
    (lambda: metrics.f1_score_with_invalid([2, 0], [1, 0]), "targets must be 0 or 1"),
    (lambda: metrics.matthews_corrcoef([1], [1, 0]), "1 targets but 2"),
    (lambda: metrics.mean_multiclass_f1(3)([], []), "no examples"),
    (lambda: metrics.squad([[]], ["a"]), "no gold answers"),
    (lambda: metrics.squad(["abc"], ["a"]), "list of answer strings"),
    (lambda: metrics.mean_group_metric(metrics.all_match)([{"value": 1}], [{"value": 1}]),
     "'group' key"),
    (lambda: metrics.deduplicate_metric(metrics.squad)([], []), "no examples"),
    (lambda: metrics.sequence_accuracy([], []), "no examples"),
])
def test_bad_metric_input_is_a_value_error(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_cola_and_cb_metrics_through_seqio(hub, tmp_path):
  task, cached = _cached("glue_cola_v002", "validation", tmp_path)
  predictions = ["acceptable", "unacceptable", "unacceptable", "garbage", "acceptable",
                 "acceptable"]
  got = evaluate.task_metrics(task, cached, _predicted_ids(predictions))
  assert got == {"matthews_corrcoef": pytest.approx(100 * 3 / np.sqrt(396))}  # as by hand above
  task = seqio.get_mixture_or_task("super_glue_cb_v102")
  examples = [{"targets_pretokenized": ex["targets"], **ex}
              for ex in _examples("super_glue_cb_v102", "validation")]
  got = evaluate.task_metrics(task, examples, _predicted_ids(
      ["entailment", "contradiction", "contradiction", "other", "neutral"]))
  assert got == {"mean_3class_f1": pytest.approx(100 * (2 / 3 + 0.5) / 3),
                 "accuracy": pytest.approx(40.0)}


def test_stsb_metrics_use_the_rounded_text_targets(hub, tmp_path):
  from scipy import stats  # pylint: disable=g-import-not-at-top

  task, cached = _cached("glue_stsb_v002", "train", tmp_path)
  predictions = [f"{(k * 7) % 26 / 5:.1f}" for k in range(len(cached))]
  predictions[3] = "no idea"  # -> -1.0
  got = evaluate.task_metrics(task, cached, _predicted_ids(predictions))
  t = [float(v) for v in STSB.values()]
  p = [float(x) if x != "no idea" else -1.0 for x in predictions]
  assert got == {"pearson_corrcoef": pytest.approx(100 * stats.pearsonr(t, p)[0]),
                 "spearman_corrcoef": pytest.approx(100 * stats.spearmanr(t, p)[0])}


def test_metric_tables_for_other_collections():
  assert glue.metric_fns("glue", "cola") == [metrics.matthews_corrcoef]
  assert glue.metric_fns("glue", "mrpc") == [metrics.f1_score_with_invalid, metrics.accuracy]
  assert glue.metric_fns("super_glue", "axb") == []
  assert glue.metric_fns("super_glue", "wsc.fixed") is None
  assert [f.__name__ for f in glue.metric_fns("super_glue", "multirc")] == [
      "multirc_f1_over_all_answers", "mean_group_all_match"]


# ---- registration and mixtures -------------------------------------------------------------------


def test_mixtures_have_t5s_weights_and_eval_members():
  glue_mix = seqio.get_mixture_or_task("glue_v002_proportional")
  rates = {t.name: glue_mix.get_rate(t) for t in glue_mix.tasks}
  assert rates == dict(glue.GLUE_WEIGHTS)
  assert rates["glue_ax_v002"] == 0 and "glue_wnli_v002" not in rates
  spec = mixing.from_seqio("glue_v002_proportional")
  assert len(spec.tasks) == 8 and sum(t.rate for t in spec.tasks) == 949_101
  sg = mixing.from_seqio("super_glue_v102_proportional")
  assert {t.name: t.rate for t in sg.tasks} == {
      k: v for k, v in glue.SUPER_GLUE_WEIGHTS if v > 0}
  assert len(sg.tasks) == 9


def test_register_reads_the_data_option_and_pins_revisions(monkeypatch, tmp_path):
  monkeypatch.setenv("MTJAX_HF_DATA_DIR", str(tmp_path))
  sha = "a" * 40
  try:
    made = glue.register(revisions={"nyu-mll/glue": sha, "super_glue": "main"},
                         glue_repo="me/glue")
    assert set(made["tasks"]) == set(glue.TASKS)
    source = hf_tasks.hf_source(seqio.get_mixture_or_task("glue_rte_v002"))
    assert source.data_root == str(tmp_path)
    assert (source.dataset.repo, source.dataset.config, source.dataset.revision) == (
        "me/glue", "rte", None)
    made = glue.register(revisions={"nyu-mll/glue": sha, "super_glue": "main"})
    source = hf_tasks.hf_source(seqio.get_mixture_or_task("glue_rte_v002"))
    assert source.dataset.revision == sha
    wsc = hf_tasks.hf_source(seqio.get_mixture_or_task("super_glue_wsc_v102_simple_eval"))
    assert (wsc.dataset.repo, wsc.dataset.config, wsc.dataset.revision) == (
        "aps/super_glue", "wsc.fixed", "main")
  finally:
    monkeypatch.delenv("MTJAX_HF_DATA_DIR")
    glue.register()  # leave the default registration behind
