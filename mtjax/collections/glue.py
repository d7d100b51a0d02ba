"""GLUE and SuperGLUE the T5 way: T5's tasks, text formats, postprocessors, metrics, mixtures.

    data.modules=("mtjax.collections.glue",)  data.mixture="glue_v002_proportional"
    data.hf_data_dir=/data/hf        (local copies: /data/hf/nyu-mll/glue, /data/hf/aps/super_glue)

A port of T5's registration (google-research/text-to-text-transfer-transformer @ e081111:
t5/data/tasks.py, glue_utils.py, preprocessors.py, postprocessors.py, mixtures.py) onto Hugging
Face copies of the data (`HFDataset("nyu-mll/glue", config)`, `HFDataset("aps/super_glue",
config)`; the TFDS and HF loaders share feature names, label orders and split names):

- Tasks under T5's names: `glue_<cfg>_v002` for cola, sst2, mrpc, qqp, stsb, mnli (splits
  train, validation_matched, validation_mismatched, test_matched, test_mismatched),
  mnli_matched, mnli_mismatched, qnli, rte, wnli and ax (test only); `super_glue_<cfg>_v102` for
  boolq, cb, copa, multirc, record, rte, wic, axb and axg (test only); WSC as T5 trains and
  evaluates it, `super_glue_wsc_v102_simple_train` / `_simple_eval` (wsc.fixed); DPR,
  `dpr_v001_simple`; and `glue_wnli_v002_simple_eval` (WNLI as WSC, evaluation only).
- The inputs and targets are T5's text exactly: `<benchmark> <feature>: <value> ...` in T5's
  feature order, label names from T5's label lists, `<unk>` for an unlabeled (-1) record;
  STS-B's score rounded to a fifth in float32 (half to even) and printed with one decimal;
  ReCoRD one example per gold answer with its `@highlight` clean-up; MultiRC's HTML stripped;
  WSC / DPR / WNLI with the pronoun marked `*...*` and the referent as target.
- Postprocessors and metrics are T5's (`mtjax.collections.t5_postprocessors`,
  `mtjax.eval.metrics`), computed on the postprocessed *text targets* as SeqIO does.
- Mixtures `glue_v002_proportional` and `super_glue_v102_proportional` with T5's fixed weights
  (each task's train size after preprocessing); their zero-weight members are there to be
  evaluated, as in T5 (mtjax's training mixes only the positive-rate tasks).

Fields the postprocessors read are kept in each example: `idx` (or MultiRC's `idx/paragraph`,
`idx/question`, `idx/answer`; ReCoRD's `idx/passage`, `idx/query`), WSC's `label`, and ReCoRD's
gold answers as the JSON string `answers_json` (the cache keeps strings and integers; a list
of strings other than `answer_choices` cannot pass).

Not ported: the `*_1_sentinel` variants and `super_glue_v102_proportional_sentinel`, and the
unregistered `wsc` / `wsc.fixed` classification tasks (T5 skips them too).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any, Callable, Mapping, Sequence

from mtjax.collections import hf_datasets, hf_tasks
from mtjax.collections import t5_postprocessors as post
from mtjax.collections.t5_metrics import METRICS, metric_fns  # noqa: F401  (re-exported)
from mtjax.data import modules
from mtjax.eval import metrics

GLUE_REPO = "nyu-mll/glue"
SUPER_GLUE_REPO = "aps/super_glue"
DPR_REPO = "community-datasets/definite_pronoun_resolution"

# T5's label lists (TFDS `label_classes`; the HF ClassLabel names, in the same order).
NLI3 = ("entailment", "neutral", "contradiction")
RTE = ("entailment", "not_entailment")
BOOL = ("False", "True")
GLUE_LABELS: dict[str, tuple[str, ...] | None] = {
    "cola": ("unacceptable", "acceptable"), "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"), "qqp": ("not_duplicate", "duplicate"),
    "stsb": None, "mnli": NLI3, "mnli_mismatched": NLI3, "mnli_matched": NLI3, "qnli": RTE,
    "rte": RTE, "wnli": ("not_entailment", "entailment"), "ax": NLI3}
SUPER_GLUE_LABELS: dict[str, tuple[str, ...] | None] = {
    "boolq": BOOL, "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"), "multirc": BOOL, "record": None, "rte": RTE, "wic": BOOL,
    "axb": RTE, "axg": RTE}

# The order T5 joins features in: `sorted()` of the TFDS feature names less label and idx, or
# glue_utils' explicit lists (multirc, wic). Written out, since HF records have more columns
# (ReCoRD's entity_spans, WiC's start/end offsets).
GLUE_FEATURES = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "mnli": ("hypothesis", "premise"),
    "mnli_mismatched": ("hypothesis", "premise"), "mnli_matched": ("hypothesis", "premise"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"), "ax": ("hypothesis", "premise")}
SUPER_GLUE_FEATURES = {
    "boolq": ("passage", "question"), "cb": ("hypothesis", "premise"),
    "copa": ("choice1", "choice2", "premise", "question"),
    "multirc": ("question", "answer", "paragraph"), "rte": ("hypothesis", "premise"),
    "wic": ("sentence1", "sentence2", "word"),
    "axb": ("hypothesis", "premise"),  # after T5's rekey: premise, hypothesis <- sentence1, 2
    "axg": ("hypothesis", "premise")}

# t5.data.glue_utils.GLUE_WEIGHT_MAPPING / SUPER_GLUE_WEIGHT_MAPPING (TFDS train sizes after
# preprocessing: ReCoRD expanded per answer, WSC kept where label == 1), in T5's order.
GLUE_WEIGHTS = (
    ("glue_cola_v002", 8_551.), ("glue_sst2_v002", 67_349.), ("glue_mrpc_v002", 3_668.),
    ("glue_qqp_v002", 363_849.), ("glue_stsb_v002", 5_749.), ("glue_mnli_v002", 392_702.),
    ("glue_qnli_v002", 104_743.), ("glue_rte_v002", 2_490.),
    ("glue_mnli_mismatched_v002", 0.), ("glue_mnli_matched_v002", 0.), ("glue_ax_v002", 0.))
SUPER_GLUE_WEIGHTS = (
    ("dpr_v001_simple", 1_322.), ("super_glue_wsc_v102_simple_train", 259.),
    ("super_glue_wsc_v102_simple_eval", 0.), ("super_glue_boolq_v102", 9_427.),
    ("super_glue_cb_v102", 250.), ("super_glue_copa_v102", 400.),
    ("super_glue_multirc_v102", 27_243.), ("super_glue_record_v102", 138_854.),
    ("super_glue_rte_v102", 2_490.), ("super_glue_wic_v102", 5_428.),
    ("super_glue_axb_v102", 0.), ("super_glue_axg_v102", 0.))
MIXTURES = {"glue_v002_proportional": GLUE_WEIGHTS,
            "super_glue_v102_proportional": SUPER_GLUE_WEIGHTS}

TRAIN_VAL_TEST = ("train", "validation", "test")
MNLI_SPLITS = ("train", "validation_matched", "validation_mismatched", "test_matched",
               "test_mismatched")


# ---- preprocessing: records -> examples (module-level, fingerprinted by their source) ------------


def glue_example(record: Mapping[str, Any], *, benchmark: str, label_names: Sequence[str],
                 feature_names: Sequence[str]) -> dict[str, Any]:
  """T5's `preprocessors.glue`: `<benchmark> <f1>: <v1> <f2>: <v2> ...` -> the label's name.

  Joined with single spaces, nothing stripped or collapsed (an empty value leaves a double
  space); label -1 (unlabeled) -> `<unk>`. MultiRC: `<br>` -> space and `<b>`, `</b>` removed
  over the whole input, and its three indexes kept as `idx/paragraph`, `idx/question`,
  `idx/answer`; every other benchmark keeps `idx`.
  """
  parts = [benchmark]
  for key in feature_names:
    value = record[key]
    if not isinstance(value, str):
      raise ValueError(f"field {key!r} is {type(value).__name__} {value!r}, not text")
    parts += [f"{key}:", value]
  inputs = " ".join(parts)
  label = record["label"]
  if isinstance(label, str):  # a label already named (a copy with string labels)
    if label not in label_names:
      raise ValueError(f"label {label!r} is none of {list(label_names)}")
    targets = label
  elif int(label) == -1:
    targets = "<unk>"
  elif 0 <= int(label) < len(label_names):
    targets = label_names[int(label)]
  else:
    raise ValueError(f"label {label!r} is out of range for {list(label_names)}")
  example: dict[str, Any] = {}
  if benchmark == "multirc":
    inputs = re.sub("<br>", " ", inputs)
    inputs = re.sub("<(/)?b>", "", inputs)
    idx = record["idx"]
    example["idx/paragraph"] = int(idx["paragraph"])
    example["idx/question"] = int(idx["question"])
    example["idx/answer"] = int(idx["answer"])
  else:
    example["idx"] = int(record["idx"])
  example["inputs"] = inputs
  example["targets"] = targets
  return example


def stsb_example(record: Mapping[str, Any]) -> dict[str, Any]:
  """T5's `preprocessors.stsb`: the similarity score rounded to a fifth, as text ("3.4").

  Exactly TF's `as_string(round(label * 5) / 5, precision=1)` on the float32 label: float32
  arithmetic, round half to even, `%.1f` (so 0.5 -> "0.4" and 0.1 -> "0.0", which rounding the
  float64 value would not give). The test split's -1.0 becomes "-1.0"."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  label = np.float32(record["label"])
  rounded = np.round(label * np.float32(5)) / np.float32(5)
  inputs = " ".join(["stsb sentence1:", record["sentence1"], "sentence2:", record["sentence2"]])
  return {"inputs": inputs, "targets": "%.1f" % float(rounded), "idx": int(record["idx"])}


def rekey(record: Mapping[str, Any], *, key_map: tuple[tuple[str, str], ...]) -> dict[str, Any]:
  """SeqIO's `preprocessors.rekey`: {new: record[old]} for each (new, old); others dropped.
  (SuperGLUE AX-b: premise <- sentence1, hypothesis <- sentence2.)"""
  return {new: record[old] for new, old in key_map}


def record_examples(record: Mapping[str, Any]) -> list[dict[str, Any]]:
  """T5's `preprocessors.record` (ReCoRD): one example per gold answer, all with the same input.

  Passage clean-up in T5's order: a `\\n@highlight\\n` after `.?!"'` becomes a space, any other
  one `. `. Input `record query: <query> entities: <e1>, <e2>, ... passage: <passage>`.
  Entities and answers are `sorted(set(...))` as TFDS stores them (one HF version keeps
  entities as an unordered set). No answers (test) -> one example with target `<unk>`. Each
  copy keeps `idx/passage`, `idx/query` and every gold answer (`answers_json`, a JSON list)."""
  passage = record["passage"]
  passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", passage)
  passage = re.sub(r"\n@highlight\n", ". ", passage)
  entities = sorted(set(record["entities"] or []))
  inputs = " ".join(["record query:", record["query"], "entities:", ", ".join(entities),
                     "passage:", passage])
  answers = sorted(set(record["answers"] or []))
  common = {"idx/passage": int(record["idx"]["passage"]),
            "idx/query": int(record["idx"]["query"]),
            "inputs": inputs,
            "answers_json": json.dumps(answers, ensure_ascii=False)}
  return [dict(common, targets=a) for a in answers] or [dict(common, targets="<unk>")]


def wsc_simple_example(record: Mapping[str, Any], *, correct_referent_only: bool,
                       label: str = "wsc:") -> dict[str, Any] | None:
  """T5's `preprocessors.wsc_simple` (with `_wsc_inputs`): the pronoun (span2) marked
  `*pronoun*` in the text, the candidate (span1) as target; `label` and `idx` kept.

  `correct_referent_only` (training) keeps only records whose label is true (label == 1), so
  every target is the referent. The pronoun must sit at word `span2_index` of the text split on
  single spaces, not first (T5's asserts); T5's two hard-coded texts are blanked as T5 does."""
  if correct_referent_only and not bool(record.get("label", False)):
    return None
  text, pronoun = record["text"], record["span2_text"]
  if text == ('The boy continued to whip the pony , and eventually the pony threw him over. '
              'John laughed out quite loud. "Good for him," he said. '):
    blanked = ('The boy continued to whip the pony , and eventually the pony threw him over. '
               'John laughed out quite loud. "Good for X ," he said.')
  elif text == ('When they had eventually calmed down a bit , and had gotten home, Mr. Farley '
                'put the magic pebble in an iron safe . Some day they might want to use it , '
                'but really for now, what more could they wish for?'):
    # (span2_index points at "use", not "it")
    blanked = ('When they had eventually calmed down a bit , and had gotten home, Mr. Farley '
               'put the magic pebble in an iron safe . Some day they might want to use X , '
               'but really for now, what more could they wish for?')
  else:
    words = text.split(" ")
    i = int(record["span2_index"])
    if not 0 < i < len(words):
      raise ValueError(f"span2_index {i} is not inside the text's {len(words)} words "
                       "(T5 asserts 0 < span2_index < number of words)")
    if words[i] != pronoun:
      raise ValueError(f"word {i} of the text is {words[i]!r}, not span2_text {pronoun!r}")
    blanked = " ".join([" ".join(words[:i]), "X", " ".join(words[i + 1:])])
  inputs = " ".join([label, blanked.replace(" X ", " *" + pronoun + "* ")])
  return {"inputs": inputs, "targets": record["span1_text"],
          "label": int(record.get("label", 0)), "idx": int(record["idx"])}


def dpr_simple_example(record: Mapping[str, Any], *, label: str = "wsc:") -> dict[str, Any]:
  """T5's `preprocessors.definite_pronoun_resolution_simple`: the first ` <pronoun>` followed
  by a space, `.` or `,` is marked `*pronoun*` (the pronoun used as a regular expression, as
  T5 does); the target is `candidates[label]`."""
  sentence = re.sub(r" (" + record["pronoun"] + r")( |\.|,)", r" *\1*\2", record["sentence"],
                    count=1)
  return {"inputs": " ".join([label, sentence]),
          "targets": record["candidates"][int(record["label"])]}


def wnli_simple_example(record: Mapping[str, Any], *, label: str = "wsc:") -> dict[str, Any]:
  """T5's `preprocessors.wnli_simple`: WNLI as WSC for evaluation. The premise pronoun whose
  neighbours best match the hypothesis is marked `*...*`; the target is the hypothesis words
  that replaced it (the candidate), cleaned as T5 does. Keeps premise, hypothesis, label, idx.
  """
  import collections  # pylint: disable=g-import-not-at-top

  pronouns = ["he", "she", "they", "it", "her", "his", "their", "them", "him"]
  PronounMatch = collections.namedtuple(  # pylint: disable=invalid-name
      "PronounMatch", ["score", "index_in_premise", "candidate"])

  def split_clean(s):
    words = [re.sub(r"(\.|,|\?|\!)$", "", w) for w in s.strip().lower().split(" ")]
    return [w for w in words if w]

  def get_post_match_size(hypothesis, words):
    hypothesis = " ".join(hypothesis)
    for i in range(len(words)):
      if " ".join(words[:i + 1]) not in hypothesis:
        return i
    return len(words)

  def get_pre_match_size(hypothesis, words):
    return get_post_match_size(hypothesis[::-1], words[::-1])

  def get_pronoun_match(premise, hypothesis, index):
    pre, post_ = premise[:index], premise[index + 1:]
    pre_match_size = get_pre_match_size(hypothesis, pre)
    post_match_size = get_post_match_size(hypothesis, post_)
    score = pre_match_size + post_match_size
    candidate = ""
    if score:
      pre_match = pre[-pre_match_size or len(pre):]
      post_match = post_[:post_match_size]
      m = re.search(" ".join(pre_match + [r"(.+)"] + post_match), " ".join(hypothesis))
      if not m:  # the candidate at the start of the hypothesis
        m = re.search(" ".join([r"^(.+)"] + post_match), " ".join(hypothesis))
      if not m:  # the candidate at its end
        m = re.search(" ".join(pre_match + [r"(.+)$"]), " ".join(hypothesis))
      if m:
        candidate = m.group(1)
    return PronounMatch(score=score, index_in_premise=index, candidate=candidate)

  def get_best_pronoun_match(premise, hypothesis):
    matches = [get_pronoun_match(premise, hypothesis, i)
               for i, w in enumerate(premise) if w in pronouns]
    return max(matches, key=lambda x: x.score)

  def highlight(sentence, index):
    words = sentence.split(" ")
    word = words[index]
    if word[-1] in [".", ",", "!", "?"]:
      highlighted = "*{}* {}".format(word[:-1], word[-1])
    else:
      highlighted = "*{}*".format(word)
    return " ".join(words[:index] + [highlighted] + words[index + 1:])

  def make_nonpossessive(word):
    if word.endswith("'"):
      return word[:-1]
    if word.endswith("'s"):
      return word[:-2]
    return word

  def clean_up(candidate):
    words = candidate.split(" ")
    article_index = max([words.index(art) for art in {"a", "an", "the"} if art in words] or [0])
    return " ".join(words[article_index:])

  def process_candidate(candidate, hypothesis):
    candidate = clean_up(candidate)
    pattern = "({})".format(" ".join(
        r"{}(?:\.|,|\?|\!)?".format(re.escape(c)) for c in candidate.split(" ")))
    m = re.search(pattern, hypothesis, re.IGNORECASE)
    if not m:
      raise ValueError(f"Unable to find candidate {candidate!r} in hypothesis {hypothesis!r}.")
    candidate = m.group(1)
    if candidate and candidate[-1] in [".", ",", "!", "?"]:
      candidate = candidate[:-1]
    return make_nonpossessive(candidate)

  premise, hypothesis = record["sentence1"], record["sentence2"]
  match = get_best_pronoun_match(split_clean(premise), split_clean(hypothesis))
  targets = process_candidate(match.candidate, hypothesis)
  inputs = "{} {}".format(label, highlight(premise, match.index_in_premise))
  return {"inputs": inputs, "targets": targets, "premise": premise, "hypothesis": hypothesis,
          "label": int(record.get("label", 0)), "idx": int(record["idx"])}


# ---- metrics and postprocessors (t5.data.glue_utils) ---------------------------------------------


def postprocess_fn(dataset: str, config: str) -> Callable:
  """T5's `glue_utils.get_glue_postprocess_fn`: `string_to_float` (stsb), `multirc`,
  `record`, else `string_label_to_class_id` with the config's label list."""
  if config == "stsb":
    return post.string_to_float
  if (dataset, config) == ("super_glue", "multirc"):
    return post.multirc
  if (dataset, config) == ("super_glue", "record"):
    return post.record
  labels = (GLUE_LABELS if dataset == "glue" else SUPER_GLUE_LABELS)[config]
  return functools.partial(post.string_label_to_class_id, label_classes=labels)


# ---- the task table and registration -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class T5Task:
  """One of T5's tasks: where its records come from and how they become examples."""

  name: str
  dataset: str  # "glue" | "super_glue" | "dpr"
  config: str
  splits: tuple[str, ...]  # task split names = dataset split names
  prepare: Callable
  metric_fns: tuple[Callable, ...]
  postprocess_fn: Callable | None
  map_record: Callable | None = None


def tasks() -> list[T5Task]:
  """Every task T5 registers for GLUE, SuperGLUE, WSC, DPR and WNLI-simple, in T5's order."""
  out = []
  for config, labels in GLUE_LABELS.items():
    splits = (MNLI_SPLITS if config == "mnli" else ("test",) if config == "ax" else
              ("validation", "test") if config in ("mnli_matched", "mnli_mismatched") else
              TRAIN_VAL_TEST)
    if config == "stsb":
      prepare = stsb_example
    else:
      benchmark = "mnli" if ("mnli" in config or config == "ax") else config
      prepare = functools.partial(glue_example, benchmark=benchmark, label_names=labels,
                                  feature_names=GLUE_FEATURES[config])
    out.append(T5Task(f"glue_{config}_v002", "glue", config, splits, prepare,
                      tuple(METRICS[("glue", config)]), postprocess_fn("glue", config)))
  for config, labels in SUPER_GLUE_LABELS.items():
    splits = ("test",) if config in ("axb", "axg") else TRAIN_VAL_TEST
    map_record = None
    if config == "record":
      prepare = record_examples
    else:
      benchmark = "rte" if config in ("axb", "axg") else config
      prepare = functools.partial(glue_example, benchmark=benchmark, label_names=labels,
                                  feature_names=SUPER_GLUE_FEATURES[config])
      if config == "axb":
        map_record = functools.partial(rekey, key_map=(
            ("premise", "sentence1"), ("hypothesis", "sentence2"), ("label", "label"),
            ("idx", "idx")))
    out.append(T5Task(f"super_glue_{config}_v102", "super_glue", config, splits, prepare,
                      tuple(METRICS[("super_glue", config)]),
                      postprocess_fn("super_glue", config), map_record))
  out += [
      T5Task("dpr_v001_simple", "dpr", "plain_text", ("train", "test"), dpr_simple_example,
             (metrics.accuracy,), None),
      T5Task("super_glue_wsc_v102_simple_train", "super_glue", "wsc.fixed", ("train",),
             functools.partial(wsc_simple_example, correct_referent_only=True), (), None),
      T5Task("super_glue_wsc_v102_simple_eval", "super_glue", "wsc.fixed",
             ("validation", "test"),
             functools.partial(wsc_simple_example, correct_referent_only=False),
             (metrics.accuracy,), post.wsc_simple),
      T5Task("glue_wnli_v002_simple_eval", "glue", "wnli", ("validation", "test"),
             wnli_simple_example, (metrics.accuracy,), post.wsc_simple),
  ]
  return out


TASKS = tuple(t.name for t in tasks())


def register(data_root: str | None = None, glue_repo: str = GLUE_REPO,
             super_glue_repo: str = SUPER_GLUE_REPO,
             revisions: Mapping[str, str] | None = None, dpr_repo: str = DPR_REPO,
             vocabulary=None) -> dict[str, list[str]]:
  """Registers T5's GLUE / SuperGLUE tasks and mixtures (replacing earlier definitions).

  `data_root`: where local copies of the repositories live (`<data_root>/<repo id>`; default
  `data.hf_data_dir` / $MTJAX_HF_DATA_DIR), else the Hugging Face cache / Hub. `glue_repo`,
  `super_glue_repo`, `dpr_repo`: the Hub repository ids. `revisions`: {repo id, or "glue" /
  "super_glue" / "dpr": branch, tag or commit} (a commit pins the data). `vocabulary`: the
  tasks' vocabulary (default: the run's, as for every `register_hf_task`). Nothing is read
  here. Returns {"tasks": [...], "mixtures": [...]}.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  data_root = data_root or modules.option("hf_data_dir")
  revisions = dict(revisions or {})
  repos = {"glue": glue_repo, "super_glue": super_glue_repo, "dpr": dpr_repo}
  names = []
  for task in tasks():
    repo = repos[task.dataset]
    dataset = hf_datasets.HFDataset(
        repo=repo, config=task.config,
        revision=revisions.get(repo) or revisions.get(task.dataset))
    hf_tasks.register_hf_task(
        task.name, dataset, task.prepare, splits=task.splits, vocabulary=vocabulary,
        metric_fns=task.metric_fns, postprocess_fn=task.postprocess_fn,
        map_record=task.map_record, data_root=data_root)
    names.append(task.name)
  for name, weights in MIXTURES.items():
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(weights))
  return {"tasks": names, "mixtures": list(MIXTURES)}


register()
