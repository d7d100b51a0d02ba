"""xP3 (Muennighoff et al. 2023, "Crosslingual Generalization through Multitask Finetuning"):
mT0 / BLOOMZ's training data, and mT0's held-out evaluation suite.

    data.modules=("mtjax.collections.xp3",)  data.mixture="xp3"
    data.hf_data_dir=/data/hf   (holding bigscience/xP3/<lang>/...)

Where each fact comes from:
- Data: `bigscience/xP3` on the Hugging Face Hub (its card and loader `xP3.py`): one folder per
  language (46 and `code`), holding one JSON-lines file per (dataset, subset, split, prompt),
  `xp3_{dataset}_{subset}_{split}_{template}.jsonl` ("/" and " " replaced by "_"; bigscience
  `data/xp3/prepare_xp3_train.py`), and `merged_{lang}.jsonl` with the same rows (xmtf README:
  to recreate xP3 from the Hub copy, remove the merged files); columns `inputs`, `targets`.
- BLOOMZ's language weights (`BLOOMZ_WEIGHTS`): bigscience-workshop/xmtf @5caa1b1,
  `xp3capmixnewcodelong_train.txt` (Megatron blend; "each language's share of xP3, code
  slightly upsampled"); their sum is 1.0137, SeqIO normalises. How mT0 (T5X) mixed languages
  is not published: the default here is each language's share of the examples found.
- Held-out evaluation (xmtf README "Rank Evaluation", bigscience EVAL_DATASETS_L1/L2): XNLI
  {ar, en, es, fr, hi, sw, ur, vi, zh} + {bg, de, el, ru, th, tr}, XCOPA {id, ta, sw, vi, zh} +
  {et, ht, it, qu, th, tr}, XStoryCloze {ar, es, eu, id, hi, te, sw, zh}, XWinograd {en, fr,
  pt, zh} + {jp, ru}; English prompts; rank classification; XNLI / XCOPA / XStoryCloze on
  validation, XWinograd on test. Hub repositories today: facebook/xnli, cambridgeltl/xcopa,
  juletxara/xstory_cloze (its `refs/convert/parquet` branch, `{lang}/eval/0000.parquet`: the
  1,511-row `eval` split taken as xmtf's validation, an assumption), Muennighoff/xwinograd
  (`test/{lang}.jsonl`). The prompts are PromptSource's (xmtf used Muennighoff/promptsource
  branch xp3mt): `xnli/en`, `xcopa/en`, `Muennighoff/xstory_cloze/en`,
  `Muennighoff/xwinograd/en` where the templates folder has them, else the stand-ins with the
  same fields and (for the last three) the same prompt names: PromptSource v0.1.0's
  `super_glue/copa`, `story_cloze/2016`, `winogrande/winogrande_xl` (v0.1.0's `xnli/en` is an
  8-prompt set, not the paper's 15). The prompts the paper reports (bigscience
  evaluation-results) are known for XStoryCloze and XWinograd (`EVALUATED`); XNLI and XCOPA
  use every prompt with answer choices.

How mtjax registers it:
- One task per file: `xp3_{lang}_{name}`, `name` the file name without `.jsonl` and its `xp3_`
  prefix, sanitized as `prerendered.sanitize` (a merged file: `xp3_{lang}_merged`). `layout`:
  "auto" uses a language's per-prompt files where it has any, else its merged file; "files" or
  "merged" only those. Inputs and targets are the file's text, both with EOS (T5X's default
  features, and what the Hugging Face tokenizer of xmtf's evaluation appends).
- `xp3_{lang}`: a language's tasks weighted by their example counts (lines, counted when the
  mixture's rates are first asked for). `xp3`: every language by its share of the examples
  found (`language_weights="data"`: one flat mixture whose rates are the example counts, which
  is that share times each task's share of its language; SeqIO needs a sub-mixture's rate as a
  number, known only after counting), or by BLOOMZ's weights (`"bloomz"`, nested
  `xp3_{lang}`), or a {lang: weight} mapping. `xp3_bloomz` is always the BLOOMZ-weighted one.
- Held-out: `{dataset}_{lang}_{template}_score_eval` per prompt with answer choices (T0's
  naming, `promptsource_tasks.task_name`; rendered by `promptsource_tasks.score_eval_rows`: one row per answer choice), split
  `validation` (XWinograd's is its `test` split, the only one it has, so the suite evaluates
  on one split name); mixtures `{dataset}_score_eval` and `mt0_eval_score_eval` (the evaluated
  prompts, weighted by their number of examples as T0's evaluation mixtures).

The training files are listed from what is on this machine (`register(path=...)`,
`<data.hf_data_dir>/bigscience/xP3`, or the Hugging Face cache; nothing is downloaded at
import); without them the xP3 mixtures are not registered and one log line says how to get
them. The held-out tasks are registered like T0's (data read when a split is cached); without
a PromptSource templates folder (`data.promptsource_dir`) they are skipped with one log line.
`MISSING` keeps why per mixture name; with neither part registered the import keeps the error
as `REGISTRATION_ERROR` (raised by `mtjax.data.modules.check_registered` when asked for).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import re
from typing import Mapping, Sequence

from mtjax import errors
from mtjax.collections import hf_datasets, hf_tasks, prerendered
from mtjax.data import modules

log = logging.getLogger(__name__)

REPO = "bigscience/xP3"
LANGUAGES = ("ak", "ar", "as", "bm", "bn", "ca", "code", "en", "es", "eu", "fon", "fr", "gu",
             "hi", "id", "ig", "ki", "kn", "lg", "ln", "ml", "mr", "ne", "nso", "ny", "or", "pa",
             "pt", "rn", "rw", "sn", "st", "sw", "ta", "te", "tn", "ts", "tum", "tw", "ur", "vi",
             "wo", "xh", "yo", "zh", "zu")

# xmtf xp3capmixnewcodelong_train.txt: BLOOMZ's sampling weight per language folder.
BLOOMZ_WEIGHTS = {
    "en": 0.3924620202, "es": 0.0797519865, "pt": 0.0645613968, "code": 0.0592991658,
    "fr": 0.0584218969, "ar": 0.0492644683, "id": 0.0485168956, "zh": 0.0483443270,
    "hi": 0.0462777165, "vi": 0.0326663657, "ur": 0.0202046859, "te": 0.0140392334,
    "ta": 0.0097374884, "bn": 0.0087708344, "mr": 0.0070173416, "sw": 0.0059077793,
    "gu": 0.0059055884, "pa": 0.0055112422, "ne": 0.0041465344, "yo": 0.0037157869,
    "ig": 0.0034255885, "ny": 0.0028662571, "zu": 0.0027776135, "xh": 0.0026823974,
    "sn": 0.0026594781, "ts": 0.0026358847, "rw": 0.0026264474, "lg": 0.0024850557,
    "tn": 0.0024808426, "nso": 0.0024194999, "rn": 0.0020327371, "ml": 0.0018436532,
    "kn": 0.0017427072, "or": 0.0017007448, "as": 0.0016458059, "ln": 0.0013303289,
    "wo": 0.0012908943, "tum": 0.0012221364, "ki": 0.0012116880, "st": 0.0012015765,
    "fon": 0.0011909595, "ca": 0.0011650068, "eu": 0.0011387170, "ak": 0.0011385485,
    "bm": 0.0011275944, "tw": 0.0011195053,
}
LAYOUTS = ("auto", "files", "merged")


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """One dataset of mT0's held-out suite."""

  dataset: str  # name prefix of its tasks
  repo: str
  languages: tuple[str, ...]  # configs evaluated (seen + unseen languages)
  split: str  # the dataset split evaluated, the task's `validation`
  templates: tuple[tuple[str, str | None], ...]  # PromptSource (dataset, subset); first found
  evaluated: tuple[str, ...] | None = None  # prompts of the paper (sanitized); None: all
  revision: str | None = None
  data_files: str | None = None  # the split's file, `{lang}` filled in


HELD_OUT = (
    HeldOut("xnli", "facebook/xnli",
            ("ar", "en", "es", "fr", "hi", "sw", "ur", "vi", "zh", "bg", "de", "el", "ru", "th",
             "tr"), "validation", (("xnli", "en"),)),
    HeldOut("xcopa", "cambridgeltl/xcopa",
            ("id", "ta", "sw", "vi", "zh", "et", "ht", "it", "qu", "th", "tr"), "validation",
            (("xcopa", "en"), ("super_glue", "copa"))),
    HeldOut("xstory_cloze", "juletxara/xstory_cloze",
            ("ar", "es", "eu", "id", "hi", "te", "sw", "zh"), "eval",
            (("Muennighoff/xstory_cloze", "en"), ("story_cloze", "2016")),
            evaluated=("Answer_Given_options", "Choose_Story_Ending", "Generate_Ending",
                       "Novel_Correct_Ending", "Story_Continuation_and_Options"),
            revision="refs/convert/parquet"),
    HeldOut("xwinograd", "Muennighoff/xwinograd", ("en", "fr", "pt", "zh", "jp", "ru"), "test",
            (("Muennighoff/xwinograd", "en"), ("winogrande", "winogrande_xl")),
            evaluated=("Replace", "True_or_False", "does_underscore_refer_to", "stand_for",
                       "underscore_refer_to"),
            data_files="test/{lang}.jsonl"),
)
EVAL_MIXTURE = "mt0_eval_score_eval"


@dataclasses.dataclass
class Collection:
  """What `register` found and made."""

  folder: str | None  # the xP3 folder used (None: none found)
  origin: str
  languages: dict[str, list[str]]  # language -> task names
  files: dict[str, str]  # task -> its file
  mixtures: dict[str, list[str]]  # mixture -> task or sub-mixture names
  held_out: dict[str, list[str]]  # dataset -> every held-out task registered
  templates: str | None  # the PromptSource folder of the held-out suite


COLLECTION: Collection | None = None
MISSING: dict[str, str] = {}  # mixture names not registered, and why


# ---- xP3's files ---------------------------------------------------------------------------------


def task_name(lang: str, file_name: str) -> str:
  """`xp3_{lang}_{file name without .jsonl and xp3_, sanitized}`; `xp3_{lang}_merged`."""
  stem = file_name[:-len(".jsonl")] if file_name.endswith(".jsonl") else file_name
  if stem == f"merged_{lang}":
    return f"xp3_{lang}_merged"
  stem = stem[len("xp3_"):] if stem.startswith("xp3_") else stem
  return f"xp3_{lang}_{prerendered.sanitize(stem)}"


def list_files(folder: str, layout: str = "auto",
               languages: Sequence[str] | None = None) -> dict[str, list[str]]:
  """{language: file names} of an xP3 folder (language folders holding .jsonl files)."""
  if layout not in LAYOUTS:
    raise errors.ConfigError(f"xP3 layout {layout!r}: use one of {LAYOUTS}")
  out = {}
  for lang in sorted(os.listdir(folder)):
    here = os.path.join(folder, lang)
    if lang.startswith(".") or not os.path.isdir(here) or (languages and lang not in languages):
      continue
    names = sorted(f for f in os.listdir(here) if f.endswith(".jsonl") and not f.startswith("."))
    merged = [f for f in names if f == f"merged_{lang}.jsonl"]
    prompts = [f for f in names if f not in merged]
    chosen = {"files": prompts, "merged": merged}.get(layout, prompts or merged)
    if chosen:
      out[lang] = chosen
  return out


def _file_rate(task, *, path: str) -> float:
  """A task's rate: the rows of its file (`prerendered.count_rows`, memoised)."""
  del task
  return float(prerendered.count_rows([path]))


def _eval_rate(task) -> float:
  """Held-out mixtures: a task's number of evaluation examples (as T0's evaluation mixtures)."""
  return float(task.num_input_examples("validation"))


def _register_training(folder: str, origin: str, data_root: str | None, layout: str,
                       languages: Sequence[str] | None, language_weights, vocabulary,
                       collection: Collection) -> None:
  found = list_files(folder, layout, languages)
  rates = {}
  for lang, names in found.items():
    tasks = []
    for name in names:
      task = task_name(lang, name)
      if task in collection.files:
        raise errors.DataError(f"xP3: files {collection.files[task]} and {lang}/{name} both "
                               f"make task {task}")
      relative = f"{lang}/{name}"
      dataset = hf_datasets.HFDataset(repo=REPO, path=folder,
                                      data_files={"train": prerendered.glob_literal(relative)})
      source = prerendered.PreRenderedSource(dataset, prerendered.text_example,
                                             {"train": "train"}, data_root=data_root)
      prerendered.register_task(task, source, vocabulary=vocabulary, add_eos=True)
      path = os.path.join(folder, lang, name)
      collection.files[task] = path
      rates[task] = functools.partial(_file_rate, path=path)
      tasks.append(task)
    collection.languages[lang] = tasks
    _add(collection, f"xp3_{lang}", [(t, rates[t]) for t in tasks])
  if not found:
    raise errors.MissingError(f"no language folders with .jsonl files in {folder} ({origin})")
  bloomz = [(f"xp3_{lang}", BLOOMZ_WEIGHTS[lang]) for lang in found if lang in BLOOMZ_WEIGHTS]
  if bloomz:
    _add(collection, "xp3_bloomz", bloomz)
  if isinstance(language_weights, str) and language_weights == "data":
    _add(collection, "xp3", [(t, rates[t]) for tasks in collection.languages.values()
                             for t in tasks])
  elif isinstance(language_weights, str) and language_weights == "bloomz":
    _add(collection, "xp3", bloomz)
  elif isinstance(language_weights, Mapping):
    members = [(f"xp3_{lang}", float(w)) for lang, w in language_weights.items()
               if lang in found and w > 0]
    left = sorted(set(found) - set(language_weights))
    if left:
      log.info("xP3: languages %s have no weight in language_weights and are not in xp3",
               ", ".join(left))
    if not members:
      raise errors.ConfigError(f"xP3: language_weights names none of the languages found "
                               f"({', '.join(found)})")
    _add(collection, "xp3", members)
  else:
    raise errors.ConfigError(f"xP3: language_weights {language_weights!r}: use 'data', "
                             "'bloomz' or a {language: weight} mapping")


def _add(collection: Collection, name: str, members) -> None:
  prerendered.register_mixture(name, members)
  collection.mixtures[name] = [m for m, _ in members]


# ---- the held-out suite --------------------------------------------------------------------------


def _sanitized(template_name: str) -> str:
  return re.sub(r"[^\w\d\._]+", "_", template_name)


def _register_held_out(templates: str | None, data_root: str | None, vocabulary,
                       collection: Collection) -> None:
  if not (templates or modules.option("promptsource_dir")
          or importlib.util.find_spec("promptsource") is not None):
    raise errors.MissingError(  # (said before importing T0, which registers itself)
        "no PromptSource templates folder is set",
        hint="set data.promptsource_dir (or $MTJAX_PROMPTSOURCE_DIR) to PromptSource's "
             "`templates` folder (v0.1.0, T0's, or Muennighoff/promptsource branch xp3mt)")
  from mtjax.collections import promptsource_tasks  # pylint: disable=g-import-not-at-top

  root = promptsource_tasks.templates_dir(templates)
  collection.templates = root
  evaluated = {}
  for spec in HELD_OUT:
    found = ()
    for dataset, subset in spec.templates:
      found = promptsource_tasks.load_templates(root, dataset, subset)
      if found:
        break
    if not found:
      log.warning("xP3: no PromptSource templates for %s in %s (looked for %s); skipped",
                  spec.dataset, root, ", ".join("/".join(filter(None, p)) for p in spec.templates))
      continue
    names, chosen = [], []
    for template in found:
      if not template.answer_choices:
        continue
      for lang in spec.languages:
        name = promptsource_tasks.task_name(spec.dataset, lang, template.name) + "_score_eval"
        data_files = ({spec.split: spec.data_files.format(lang=lang)} if spec.data_files
                      else None)
        dataset = hf_datasets.HFDataset(repo=spec.repo, config=lang, revision=spec.revision,
                                        data_files=data_files)
        hf_tasks.register_hf_task(
            name, dataset, functools.partial(promptsource_tasks.score_eval_rows, template=template),
            splits={"validation": spec.split}, vocabulary=vocabulary, add_eos=True,
            data_root=data_root)
        names.append(name)
        if spec.evaluated is None or _sanitized(template.name) in spec.evaluated:
          chosen.append(name)
    collection.held_out[spec.dataset] = names
    if chosen:
      evaluated[spec.dataset] = chosen
      _add(collection, f"{spec.dataset}_score_eval", [(n, _eval_rate) for n in chosen])
  tasks = [n for names in evaluated.values() for n in names]
  if tasks:
    _add(collection, EVAL_MIXTURE, [(n, _eval_rate) for n in tasks])


# ---- registration --------------------------------------------------------------------------------


def register(data_root: str | None = None, path: str | None = None,
             templates: str | None = None, layout: str = "auto",
             languages: Sequence[str] | None = None,
             language_weights: str | Mapping[str, float] = "data",
             vocabulary=None) -> Collection:
  """Registers xP3's tasks and mixtures from the files on this machine, and mT0's held-out
  suite; returns what it made.

  `data_root`: local copies as `<data_root>/<repo id>` (default `data.hf_data_dir`); `path`: an
  xP3 folder (language folders) instead. `templates`: PromptSource's templates folder (default
  `data.promptsource_dir`). `layout`, `language_weights`: see the module docstring;
  `languages`: only these language folders.
  """
  global COLLECTION, REGISTRATION_ERROR
  data_root = data_root or modules.option("hf_data_dir")
  collection = Collection(None, "", {}, {}, {}, {}, None)
  COLLECTION = collection
  MISSING.clear()
  problems, hints = [], []
  where = prerendered.local_folder(REPO, path, data_root)
  try:
    if where is None:
      searched = (os.path.join(data_root, REPO) + " or " if data_root else "") + \
          f"the Hugging Face cache ({hf_datasets.hub_cache_dir()})"
      raise errors.MissingError(f"not found in {searched}")
    collection.folder, collection.origin = where
    _register_training(where[0], where[1], data_root, layout, languages, language_weights,
                       vocabulary, collection)
  except errors.MissingError as e:
    MISSING.update(dict.fromkeys(("xp3", "xp3_bloomz"), f"xP3 ({REPO}): {e}"))
    prerendered.forget_mixtures(["xp3", "xp3_bloomz"])
    problems.append(f"xP3 ({REPO}): {e}; the xp3 mixtures are not registered")
    hints.append(f"get a language with {prerendered.download_hint(REPO, data_root, 'fr/*')} "
                 "(all of xP3 without --include) or give register(path=...)")
  try:
    _register_held_out(templates, data_root, vocabulary, collection)
  except errors.MissingError as e:
    names = [EVAL_MIXTURE] + [f"{spec.dataset}_score_eval" for spec in HELD_OUT]
    MISSING.update(dict.fromkeys(names, f"mT0's held-out suite: {e}"))
    prerendered.forget_mixtures(names)
    problems.append(f"mT0's held-out suite (XNLI, XCOPA, XStoryCloze, XWinograd) is not "
                    f"registered: {e}")
    hints.append(e.hint or "set data.promptsource_dir")
  REGISTRATION_ERROR = None
  if problems and not (collection.files or collection.held_out):
    REGISTRATION_ERROR = errors.MissingError("; ".join(problems), hint="; ".join(hints))
    raise REGISTRATION_ERROR
  for problem, hint in zip(problems, hints):
    log.warning("%s (%s)", problem, hint)
  return collection


# Registered at import with the run's options (`data.hf_data_dir`, `data.promptsource_dir`).
# With neither xP3's files nor templates here the import still succeeds and keeps the error,
# which `mtjax.data.modules.check_registered` raises (after trying again under the run's
# options) for a run that asks for this collection.
REGISTRATION_ERROR = modules.register_or_defer(register)
