"""P3 / T0 (Sanh et al. 2022): PromptSource templates over T0's datasets, under T0's names.

    data.modules=("mtjax.collections.t0",)  data.mixture="t0_train"
    data.promptsource_dir=/path/to/promptsource/templates   (or pip install promptsource)

What T0's own registration (bigscience-workshop/t-zero, t0/seqio_tasks/tasks.py, datasets.csv)
does, re-done on mtjax's data layer:
- T0's dataset table (`DATASETS`): 38 training datasets (T0), +10 for T0+ (GPT_EVAL), +6 for T0++
  (SGLUE); the 11 held-out evaluation sets; the bias/fairness sets.
- Every PromptSource template of a dataset is a task, named by T0's rule (`task_name`); ANLI's
  templates make one task per round (`_r1`, splits train_r1 / dev_r1 / test_r1 as train /
  validation / test). A template with answer choices also gets a rank-classification twin,
  `<task>_score_eval` (one row per choice; `is_correct`), scored by summed log-likelihood.
- Rates: a training task's rate is its dataset's cap, `500_000 // num_templates` when the
  dataset's recorded train size exceeds 500,000, else that size (`cap`); evaluation mixtures
  weigh tasks by their number of examples, at most 500,000.
- Mixtures under T0's names: t0_train, t0+_train, t0++_train, t0_eval_score_eval,
  t0_train_score_eval, t0_train_one_og_prompt, t0_train_all_og_prompts,
  bias_fairness_eval_score_eval; T0's blacklist applies to all of them.
- Rendering as T0's `apply_template`: hyphens in field names become underscores, an empty
  target becomes `<NO LABEL>`, examples whose input is empty (or whose render does not split
  into input ||| target) are dropped, answer choices are kept; inputs without EOS, targets with.

The templates are PromptSource's (T0 pinned promptsource==0.1.0); mtjax does not ship them:
`data.promptsource_dir` / $MTJAX_PROMPTSOURCE_DIR, else the installed `promptsource` package's
folder. The data comes from the Hugging Face Hub repositories in `HUB` (T0's canonical names
have moved to organisations), from local copies under `data.hf_data_dir`, or from the Hugging
Face cache offline (`mtjax.collections.hf_datasets`). Story Cloze needs its manual download:
put the two CSV files in `<hf_data_dir>/story_cloze/2016/`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Mapping

from mtjax.collections import hf_datasets, hf_tasks, t5_postprocessors
from mtjax.collections.promptsource_tasks import (  # noqa: F401  (re-exported: T0's own names)
    NO_LABEL, apply_template, class_id_postprocessor, load_templates, remove_hyphens,
    score_eval_rows, strip_postprocessor, task_name, templates_dir)
from mtjax.data import modules
from mtjax.data import promptsource as ps
from mtjax.eval import metrics

log = logging.getLogger(__name__)

MAX_EXAMPLES_PER_DATASET = 500_000


@dataclasses.dataclass(frozen=True)
class T0Dataset:
  """One row of T0's datasets.csv."""

  name: str
  subset: str | None
  convention: str  # task_by_convention
  train: str  # do_train: "" | BASE (T0) | GPT_EVAL (added for T0+) | SGLUE (added for T0++)
  eval: str  # do_eval: "" | BASE (held-out evaluation) | BIAS_FAIRNESS
  train_size: int  # recorded train size (0 where none)


# T0's datasets.csv (t-zero @7a699e3): name | subsets | convention | do_train | do_eval | size.
_TABLE = """
crows_pairs |  | bias_and_fairness |  | BIAS_FAIRNESS |
jigsaw_toxicity_pred |  | bias_and_fairness |  | BIAS_FAIRNESS |
super_glue | axg | bias_and_fairness |  | BIAS_FAIRNESS |
wino_bias | type1_anti, type2_anti, type1_pro, type2_pro | bias_and_fairness |  | BIAS_FAIRNESS |
super_glue | wsc.fixed | coreference | SGLUE | BASE | 554
winogrande | winogrande_xl | coreference |  | BASE | 40398
super_glue | cb | NLI |  | BASE | 250
super_glue | rte | NLI |  | BASE | 2490
anli |  | NLI |  | BASE | 162865
glue | mrpc | paraphrase | BASE |  | 3668
glue | qqp | paraphrase | BASE |  | 363846
paws | labeled_final | paraphrase | BASE |  | 49401
ai2_arc | ARC-Challenge | QA_closed_book | GPT_EVAL |  | 1119
ai2_arc | ARC-Easy | QA_closed_book | GPT_EVAL |  | 2251
kilt_tasks | hotpotqa | QA_closed_book | BASE |  | 88869
trivia_qa | unfiltered | QA_closed_book | GPT_EVAL |  | 87622
web_questions |  | QA_closed_book | GPT_EVAL |  | 3778
wiki_qa |  | QA_closed_book | BASE |  | 20360
adversarial_qa | dbidaf, dbert, droberta | QA_extractive | BASE |  | 10000
duorc | SelfRC | QA_extractive | BASE |  | 60721
duorc | ParaphraseRC | QA_extractive | BASE |  | 69524
ropes |  | QA_extractive | BASE |  | 10924
squad_v2 |  | QA_extractive | GPT_EVAL |  | 130319
super_glue | record | QA_extractive | SGLUE |  | 100730
quoref |  | QA_extractive | BASE |  | 19399
cos_e | v1.11 | QA_multiple_choice | BASE |  | 9741
cosmos_qa |  | QA_multiple_choice | BASE |  | 25262
dream |  | QA_multiple_choice | BASE |  | 6116
openbookqa | main | QA_multiple_choice | GPT_EVAL |  | 4957
qasc |  | QA_multiple_choice | BASE |  | 8134
quail |  | QA_multiple_choice | BASE |  | 10246
quarel |  | QA_multiple_choice | BASE |  | 1941
quartz |  | QA_multiple_choice | BASE |  | 2696
race | high | QA_multiple_choice | GPT_EVAL |  | 62445
race | middle | QA_multiple_choice | GPT_EVAL |  | 25421
sciq |  | QA_multiple_choice | BASE |  | 11679
social_i_qa |  | QA_multiple_choice | BASE |  | 33410
super_glue | boolq | QA_multiple_choice | SGLUE |  | 9427
super_glue | copa | QA_multiple_choice | SGLUE | BASE | 400
super_glue | multirc | QA_multiple_choice | SGLUE |  | 27243
wiki_hop | original | QA_multiple_choice | BASE |  | 43738
wiqa |  | QA_multiple_choice | BASE |  | 29808
piqa |  | QA_multiple_choice | GPT_EVAL |  | 16113
amazon_polarity |  | sentiment | BASE |  | 3600000
app_reviews |  | sentiment | BASE |  | 288065
imdb |  | sentiment | BASE |  | 25000
rotten_tomatoes |  | sentiment | BASE |  | 8530
yelp_review_full |  | sentiment | BASE |  | 650000
story_cloze | 2016 | story_completion |  | BASE |
hellaswag |  | story_completion | GPT_EVAL | BASE | 39905
common_gen |  | structure_to_text | BASE |  | 67389
wiki_bio |  | structure_to_text | BASE |  | 582659
cnn_dailymail | 3.0.0 | summarization | BASE |  | 287113
gigaword |  | summarization | BASE |  | 3803957
multi_news |  | summarization | BASE |  | 44972
samsum |  | summarization | BASE |  | 14732
xsum |  | summarization | BASE |  | 204045
ag_news |  | topic_classification | BASE |  | 120000
dbpedia_14 |  | topic_classification | BASE |  | 560000
trec |  | topic_classification | BASE |  | 5452
super_glue | wic | word_sense_disambiguation | SGLUE | BASE | 5428
"""


def _parse_table(text: str) -> tuple[T0Dataset, ...]:
  rows = []
  for line in text.strip().splitlines():
    name, subsets, convention, train, evaluation, size = (c.strip() for c in line.split("|"))
    for subset in [s.strip() for s in subsets.split(",")] if subsets else [None]:
      rows.append(T0Dataset(name, subset, convention, train, evaluation, int(size or 0)))
  return tuple(rows)


DATASETS = _parse_table(_TABLE)

# Where T0's datasets live on the Hugging Face Hub now (canonical names moved to organisations;
# a name not listed here is used as it is). Override per dataset with `register(hub=...)`.
HUB = {
    "ag_news": "fancyzhx/ag_news",
    "ai2_arc": "allenai/ai2_arc",
    "amazon_polarity": "fancyzhx/amazon_polarity",
    "anli": "facebook/anli",
    "app_reviews": "sealuzh/app_reviews",
    "cnn_dailymail": "abisee/cnn_dailymail",
    "common_gen": "allenai/common_gen",
    "cos_e": "Salesforce/cos_e",
    "cosmos_qa": "allenai/cosmos_qa",
    "crows_pairs": "nyu-mll/crows_pairs",
    "dbpedia_14": "fancyzhx/dbpedia_14",
    "dream": "dataset-org/dream",
    "adversarial_qa": "UCLNLP/adversarial_qa",
    "duorc": "ibm-research/duorc",
    "gigaword": "Harvard/gigaword",
    "glue": "nyu-mll/glue",
    "hellaswag": "Rowan/hellaswag",
    "imdb": "stanfordnlp/imdb",
    "kilt_tasks": "facebook/kilt_tasks",
    "multi_news": "alexfabbri/multi_news",
    "openbookqa": "allenai/openbookqa",
    "paws": "google-research-datasets/paws",
    "piqa": "ybisk/piqa",
    "qasc": "allenai/qasc",
    "quail": "textmachinelab/quail",
    "quarel": "allenai/quarel",
    "quartz": "allenai/quartz",
    "quoref": "allenai/quoref",
    "race": "ehovy/race",
    "ropes": "allenai/ropes",
    "rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
    "samsum": "Samsung/samsum",
    "sciq": "allenai/sciq",
    "social_i_qa": "allenai/social_i_qa",
    "squad_v2": "rajpurkar/squad_v2",
    "super_glue": "aps/super_glue",
    "trec": "CogComp/trec",
    "trivia_qa": "mandarjoshi/trivia_qa",
    "web_questions": "stanfordnlp/web_questions",
    "wiki_bio": "michaelauli/wiki_bio",
    "wiki_hop": "QAngaroo/wiki_hop",
    "wiki_qa": "microsoft/wiki_qa",
    "winogrande": "allenai/winogrande",
    "wino_bias": "uclanlp/wino_bias",
    "wiqa": "allenai/wiqa",
    "xsum": "EdinburghNLP/xsum",
    "yelp_review_full": "Yelp/yelp_review_full",
}

# Repositories that hold only a loading script on `main` (which `datasets` >= 4 no longer runs);
# the Hub's parquet conversion of them is the `refs/convert/parquet` branch (`{config}/{split}/
# 0000.parquet`, config `default` for datasets without one), read unless a revision is given.
# Checked from public sources on 2026-12-07, not against the live Hub from here.
CONVERTED = frozenset({
    "allenai/quoref", "Rowan/hellaswag", "EdinburghNLP/xsum", "ybisk/piqa",
    "allenai/social_i_qa", "QAngaroo/wiki_hop", "allenai/wiqa", "CogComp/trec",
    "dataset-org/dream", "allenai/cosmos_qa", "alexfabbri/multi_news", "textmachinelab/quail"})
PARQUET_BRANCH = "refs/convert/parquet"

# Removed from every mixture (t-zero's TASK_BLACKLIST: tasks whose inputs often exceed 1,024
# tokens, and gigaword_summarize_, whose cached files were broken).
BLACKLIST = frozenset(
    [f"hotpot_qa_{s}_Generate_{w}" for s in ("distractor", "fullwiki")
     for w in ("Explanations", "Answer_and_Explanations", "Answer", "Title_1", "Title_2",
               "Question")]
    + [f"tab_fact_tab_fact_tab_fact_{i}" for i in range(1, 8)]
    + ["wiki_hop_masked_Choose_Best_Object_Candidate",
       "wiki_hop_masked_Indirect_Question_about_Birthplace_Citizenship_Place_of_Death",
       "narrativeqa_Template_05", "ecthr_cases_alleged_violation_prediction_silver_rationales",
       "gigaword_summarize_"])

# Not scored for checkpoint selection (t-zero's D4_TRAIN_SKIP_EVAL, matched as substrings, and
# the score-eval twins its authors could not cache).
TRAIN_SKIP_EVAL = ("paws_labeled_final", "adversarial_qa_dbidaf", "adversarial_qa_dbert",
                   "duorc_ParaphraseRC", "dream", "amazon_polarity", "app_reviews", "imdb",
                   "wiki_bio", "gigaword", "multi_news", "samsum", "dbpedia_14", "trec")
TRAIN_SCORE_EVAL_BLACKLIST = frozenset(
    [f"amazon_polarity_{t}_score_eval" for t in (
        "Is_this_product_review_positive", "Is_this_review_negative", "Is_this_review",
        "User_recommend_this_product", "convey_negative_or_positive_sentiment",
        "flattering_or_not", "negative_or_positive_tone", "user_satisfied", "would_you_buy")]
    + [f"dbpedia_14_{t}_score_eval" for t in (
        "given_a_choice_of_categories_", "given_list_what_category_does_the_paragraph_belong_to",
        "pick_one_category_for_the_following_text")]
    + [f"wiki_hop_original_choose_best_object_{t}_score_eval" for t in (
        "affirmative_1", "affirmative_2", "affirmative_3", "interrogative_1", "interrogative_2")])

MIXTURES = ("t0_train", "t0+_train", "t0++_train", "t0_eval_score_eval", "t0_train_score_eval",
            "t0_train_one_og_prompt", "t0_train_all_og_prompts", "bias_fairness_eval_score_eval")
SPLITS = ("train", "validation", "test")


def cap(train_size: int, num_templates: int) -> int:
  """T0's rate of each task of a dataset: its train size, or 500,000 // templates above that."""
  if train_size > MAX_EXAMPLES_PER_DATASET:
    return MAX_EXAMPLES_PER_DATASET // num_templates
  return train_size


def story_cloze_record(record: dict) -> dict:
  """A row of Story Cloze's manual-download CSVs with the field names of HF's `story_cloze`
  (the names PromptSource's templates use)."""
  names = {"InputStoryid": "story_id", "InputSentence1": "input_sentence_1",
           "InputSentence2": "input_sentence_2", "InputSentence3": "input_sentence_3",
           "InputSentence4": "input_sentence_4", "RandomFifthSentenceQuiz1": "sentence_quiz1",
           "RandomFifthSentenceQuiz2": "sentence_quiz2", "AnswerRightEnding": "answer_right_ending"}
  out = {names.get(k, k): v for k, v in record.items()}
  if isinstance(out.get("answer_right_ending"), str):
    out["answer_right_ending"] = int(out["answer_right_ending"])
  return out


# ---- registration ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Collection:
  """What `register` made: task names per mixture, rates and the task -> dataset map."""

  templates: str
  mixtures: dict[str, list[str]]
  rates: dict[str, int]
  datasets: dict[str, T0Dataset]
  skipped: list[str]


COLLECTION: Collection | None = None


def _metrics(template: ps.PromptTemplate, dataset: T0Dataset) -> list:
  """T0's metric choice where mtjax has the metric: T5's GLUE / SuperGLUE metric of the subset
  (for templates with fixed answer choices), else the template's `metadata.metrics` mapped as
  T0's GET_METRICS maps them (BLEU, ROUGE, Squad, Trivia QA, AUC, ...)."""
  names = {"Accuracy": "accuracy", "Squad": "squad", "Trivia QA": "trivia_qa",
           "Sequence Accuracy": "sequence_accuracy", "Pearson Correlation": "pearson_corrcoef",
           "Spearman Correlation": "spearman_corrcoef", "BLEU": "bleu", "ROUGE": "rouge",
           "Span Squad": "span_squad", "MultiRC": "multirc_f1_over_all_answers", "AUC": "auc",
           "COQA F1": "coqa_f1", "Edit Distance": "edit_distance",
           "Other": "accuracy"}  # T0's GET_METRICS names -> mtjax.eval.metrics
  if dataset.name in ("glue", "super_glue") and template.fixed_choices():
    # (T5's label metrics compare class ids: the fixed-choice templates' postprocessor; free
    # text templates, e.g. paraphrase generation, keep their own metadata metrics below)
    from mtjax.collections import t5_metrics  # pylint: disable=g-import-not-at-top

    if dataset.name == "super_glue" and dataset.subset in ("wsc.fixed", "multirc", "record"):
      # as T0 for wsc.fixed and multirc (they need T5's own pre/postprocessing); record's T5
      # metric reads T5's record postprocessor's dicts, which T0's templates do not produce
      return [metrics.accuracy]
    found = t5_metrics.metric_fns(dataset.name, dataset.subset)
    if found is not None:
      return found
  out = []
  for name in (template.metadata or {}).get("metrics") or []:
    fn = getattr(metrics, names.get(name, ""), None)
    if fn is not None and fn not in out:
      out.append(fn)
  return out


def _dataset(row: T0Dataset, hub: Mapping[str, str], revisions: Mapping[str, str],
             data_root: str | None) -> tuple[hf_datasets.HFDataset, Any]:
  repo = hub.get(row.name, HUB.get(row.name, row.name))
  if row.name == "story_cloze":  # manual download: the organisers' two CSV files
    folder = os.path.join(data_root or "", "story_cloze", row.subset or "")
    return (hf_datasets.HFDataset(
        repo="story_cloze", config=row.subset, data_dir=folder if data_root else None,
        data_files={"validation": "*val*.csv", "test": "*test*.csv"}), story_cloze_record)
  revision = revisions.get(repo) or revisions.get(row.name)
  if revision is None and repo in CONVERTED:
    revision = PARQUET_BRANCH
  config = row.subset or ("default" if revision == PARQUET_BRANCH else None)
  return hf_datasets.HFDataset(repo=repo, config=config, revision=revision), None


def register(templates: str | None = None, data_root: str | None = None,
             hub: Mapping[str, str] | None = None,
             revisions: Mapping[str, str] | None = None, vocabulary=None) -> Collection:
  """Registers T0's tasks (and their `_score_eval` twins) and mixtures; returns what it made.

  `templates`: PromptSource's templates folder (see `templates_dir`). `data_root`: local copies
  of the dataset repositories (`<data_root>/<repo id>`; default `data.hf_data_dir`).
  `hub`: {T0 dataset name: Hub repo id} overriding `HUB`. `revisions`: {repo id or T0 name:
  commit} pins. Registering reads the templates only, never the data.
  """
  import seqio  # pylint: disable=g-import-not-at-top

  global COLLECTION
  root = templates_dir(templates)
  data_root = data_root or modules.option("hf_data_dir")
  hub, revisions = dict(hub or {}), dict(revisions or {})
  by_key = {}
  for row in DATASETS:
    by_key.setdefault((row.name, row.subset), row)
  train_tasks = {"BASE": [], "GPT_EVAL": [], "SGLUE": []}
  eval_tasks = {"BASE": [], "BIAS_FAIRNESS": []}
  rates, datasets, skipped = {}, {}, []
  one_og, all_og, twins = {}, [], set()

  def add(name: str, row: T0Dataset, template: ps.PromptTemplate, splits: Mapping[str, str],
          recorded: bool = True):
    source, map_record = _dataset(row, hub, revisions, data_root)
    choices = template.fixed_choices()
    post = (functools.partial(class_id_postprocessor, label_classes=tuple(choices)) if choices
            else strip_postprocessor)
    common = dict(splits=splits, vocabulary=vocabulary, add_eos=(False, True),
                  map_record=map_record, data_root=data_root,
                  recorded={"train": row.train_size} if recorded and row.train_size else None)
    hf_tasks.register_hf_task(name, source, functools.partial(apply_template, template=template),
                              metric_fns=_metrics(template, row), postprocess_fn=post, **common)
    datasets[name] = row
    if template.answer_choices:  # T0's twin: T5's rank_classification metric, its num_classes
      # the number of fixed choices (None when the choices depend on the example)
      hf_tasks.register_hf_task(
          name + "_score_eval", source, functools.partial(score_eval_rows, template=template),
          metric_fns=[functools.partial(metrics.rank_classification,
                                        num_classes=len(choices) if choices else None)],
          postprocess_fn=t5_postprocessors.rank_classification, **common)
      datasets[name + "_score_eval"] = row
      twins.add(name)

  for row in by_key.values():
    found = load_templates(root, row.name, row.subset)
    if not found:
      skipped.append(f"{row.name}/{row.subset}" if row.subset else row.name)
      continue
    if row.name == "anli":  # rounds as tasks, T0's split names
      for r in ("r1", "r2", "r3"):
        for template in found:
          name = task_name(row.name, row.subset, template.name) + f"_{r}"
          add(name, row, template, {"train": f"train_{r}", "validation": f"dev_{r}",
                                    "test": f"test_{r}"}, recorded=False)
          if template.metadata.get("original_task"):
            eval_tasks["BASE"].append(name)
      continue
    dataset_cap = cap(row.train_size, len(found))
    for template in found:
      name = task_name(row.name, row.subset, template.name)
      add(name, row, template, {s: s for s in SPLITS})
      original = bool(template.metadata.get("original_task"))
      if original:
        one_og.setdefault((row.name, row.subset), name)
        all_og.append(name)
      if row.train:
        train_tasks[row.train].append(name)
        rates[name] = dataset_cap
      if row.eval == "BASE" and original:
        eval_tasks["BASE"].append(name)
      if row.eval == "BIAS_FAIRNESS":
        eval_tasks["BIAS_FAIRNESS"].append(name)

  def keep(names):
    return [n for n in names if n not in BLACKLIST]

  base = set(train_tasks["BASE"])
  mixtures = {
      "t0_train": keep(train_tasks["BASE"]),
      "t0+_train": keep(train_tasks["BASE"] + train_tasks["GPT_EVAL"]),
      "t0++_train": keep(train_tasks["BASE"] + train_tasks["GPT_EVAL"] + train_tasks["SGLUE"]),
      "t0_eval_score_eval": [n + "_score_eval" for n in keep(eval_tasks["BASE"]) if n in twins],
      "t0_train_score_eval": [
          n + "_score_eval" for n in keep(train_tasks["BASE"])
          if n in twins and n in all_og and n + "_score_eval" not in TRAIN_SCORE_EVAL_BLACKLIST
          and not any(skip in n + "_score_eval" for skip in TRAIN_SKIP_EVAL)],
      "t0_train_one_og_prompt": keep(n for n in one_og.values() if n in base),
      "t0_train_all_og_prompts": keep(n for n in all_og if n in base),
      "bias_fairness_eval_score_eval": [n + "_score_eval" for n in eval_tasks["BIAS_FAIRNESS"]
                                        if n in twins],
  }
  for name, tasks in mixtures.items():
    seqio.MixtureRegistry.remove(name)
    if not tasks:
      log.warning("T0 mixture %s has no tasks with the templates in %s", name, root)
      continue
    if name.endswith("_score_eval"):
      seqio.MixtureRegistry.add(name, [(t, _eval_rate) for t in tasks])
    else:
      seqio.MixtureRegistry.add(name, [(t, float(rates[t])) for t in tasks])
  if skipped:
    log.info("T0: no PromptSource templates for %s in %s (skipped, as T0 did)",
             ", ".join(skipped), root)
  COLLECTION = Collection(root, mixtures, rates, datasets, skipped)
  return COLLECTION


def _eval_rate(task) -> float:
  """Evaluation mixtures: the task's number of examples, at most 500,000 (T0's
  `mixing_rate_num_examples(maximum=500_000)`; its validation split where it has no train)."""
  split = "train" if "train" in task.splits else "validation"
  return float(min(task.num_input_examples(split), MAX_EXAMPLES_PER_DATASET))


def describe_rate(task: str) -> str:
  """How `mtjax tasks` shows a task's T0 rate."""
  if COLLECTION is not None and task in COLLECTION.rates:
    row = COLLECTION.datasets[task]
    return f"{COLLECTION.rates[task]} (train size {row.train_size})"
  return "examples, at most 500,000"


# Registered at import with the run's options (`data.promptsource_dir`, `data.hf_data_dir`).
# Without templates the import itself succeeds (tests, `mtjax tasks`, other collections use
# this module's functions) and keeps the error: `mtjax.data.modules.import_modules` and
# `mtjax tasks` raise it for a run that asks for this collection.
REGISTRATION_ERROR = modules.register_or_defer(register)
