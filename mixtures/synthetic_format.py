"""In-context families that share one surface form with a yes/no target (format specialisation).

Every task here, the in-context families and the target alike, renders its example as

    Q: <x>
    A:

with the answer after a newline; k-shot prompts (mtjax.data.few_shot) stack demonstrations in
the same layout. Within a family the tasks share their inputs and differ only in the mapping, so
zero-shot the task is ambiguous and k demonstrations say which one it is (as in
mtjax.mixtures.synthetic_icl). The families differ in their output format:

  letters  `fmt_copy` / `fmt_reverse`: a 3-5 letter string -> itself / reversed
  pick     `fmt_first` / `fmt_last`: a 3-5 letter string -> its first / last letter
  numbers  `fmt_larger` / `fmt_smaller`: "23 41" -> the larger / smaller number
  order    `fmt_before` / `fmt_after`: a letter string -> "true"/"false": does its first letter
           come before (after) its last letter in the alphabet

`fmt_pretrain` mixes their 1-, 2- and 3-shot variants (the pretraining suite). The target
`fmt_vowel` (zero-shot, never pretrained) asks whether a 3-5 letter string contains a vowel and
answers "yes"/"no" (balanced), in the same layout and on the same alphabet as letters, pick and
order; no pretraining task answers "yes" or "no". A model finetuned on it can learn "Q/A prompt
-> yes/no" and then answer the other families with those labels (the format-specialisation rate
against the label set ("yes", "no")); `scripts/repro_promot.py` measures that.

Needs no files; deterministic (every split is generated from the task name).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import seqio

from mtjax.data.templates import Template, apply_templates
from mtjax.eval import metrics

VOCAB = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCAB, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCAB, add_eos=True),
}
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
VOWELS = frozenset("aeiou")
CONSONANTS = np.array([c for c in LETTERS if c not in VOWELS])
NUM_TRAIN, NUM_VALIDATION = 4000, 200
SHOTS = (1, 2, 3)  # the k-shot variants in the pretraining mixture
TEMPLATE = Template("qa", "Q: {x}\nA:", "{answer}")  # the one surface form of every task
LABEL_SET = ("yes", "no")  # the target's labels
TARGET = "fmt_vowel"
PRETRAIN_MIXTURE = "fmt_pretrain"


def _letters(rng, alphabet=LETTERS):
  return "".join(rng.choice(alphabet, size=rng.integers(3, 6)))


def _distinct_ends(rng):
  while True:
    t = _letters(rng)
    if t[0] != t[-1]:
      return t


def _pair(rng):
  a, b = rng.choice(np.arange(10, 100), size=2, replace=False)
  return int(a), int(b)


def _copy(rng):
  t = _letters(rng)
  return {"x": t, "answer": t}


def _reverse(rng):
  t = _letters(rng)
  return {"x": t, "answer": t[::-1]}


def _first(rng):
  t = _letters(rng)
  return {"x": t, "answer": t[0]}


def _last(rng):
  t = _letters(rng)
  return {"x": t, "answer": t[-1]}


def _larger(rng):
  a, b = _pair(rng)
  return {"x": f"{a} {b}", "answer": str(max(a, b))}


def _smaller(rng):
  a, b = _pair(rng)
  return {"x": f"{a} {b}", "answer": str(min(a, b))}


def _before(rng):
  t = _distinct_ends(rng)
  return {"x": t, "answer": "true" if t[0] < t[-1] else "false"}


def _after(rng):
  t = _distinct_ends(rng)
  return {"x": t, "answer": "true" if t[0] > t[-1] else "false"}


def _vowel(rng):
  if rng.random() < 0.5:  # balanced labels: "no" strings are drawn from the consonants alone
    return {"x": _letters(rng, CONSONANTS), "answer": "no"}
  while True:
    t = _letters(rng)
    if VOWELS & set(t):
      return {"x": t, "answer": "yes"}


# family -> its tasks (each: name -> generator); the in-context suite
FAMILIES = {
    "letters": {"fmt_copy": _copy, "fmt_reverse": _reverse},
    "pick": {"fmt_first": _first, "fmt_last": _last},
    "numbers": {"fmt_larger": _larger, "fmt_smaller": _smaller},
    "order": {"fmt_before": _before, "fmt_after": _after},
}
ICL_TASKS = {name: make for tasks in FAMILIES.values() for name, make in tasks.items()}
TASKS = {**ICL_TASKS, TARGET: _vowel}


def family_tasks() -> dict[str, tuple[str, ...]]:
  """family -> its task names (the in-context suite, without the target)."""
  return {family: tuple(tasks) for family, tasks in FAMILIES.items()}


def generate(task: str, split: str) -> list[dict[str, str]]:
  """The split's raw examples; validation and train never share an input, validation has no
  duplicate input."""
  make = TASKS[task]
  wanted = NUM_TRAIN if split == "train" else NUM_VALIDATION
  rng = np.random.default_rng(zlib.crc32(task.encode()))
  out, seen = [], set()
  while len(out) < wanted:
    ex = make(rng)
    if (zlib.crc32(ex["x"].encode()) % 10 == 0) != (split == "validation") or (
        split == "validation" and ex["x"] in seen):
      continue
    seen.add(ex["x"])
    out.append(ex)
  return out


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, task: str):
  del shuffle_files, seed
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  examples = generate(task, split)
  columns = {k: [ex[k] for ex in examples] for k in examples[0]}
  columns["idx"] = np.arange(len(examples), dtype=np.int64)
  return tf.data.Dataset.from_tensor_slices(columns)


def _strip(text, **unused_kwargs):
  return text.strip()


def register() -> None:
  """Registers the `fmt_*` tasks, the in-context tasks' k-shot variants and the mixture
  `fmt_pretrain` (idempotent)."""
  from mtjax.data import few_shot  # pylint: disable=g-import-not-at-top

  for name in TASKS:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, task=name), splits=("train", "validation"),
            num_input_examples={"train": NUM_TRAIN, "validation": NUM_VALIDATION}),
        preprocessors=[apply_templates([TEMPLATE]), seqio.preprocessors.tokenize,
                       seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=OUTPUT_FEATURES, postprocess_fn=_strip,
        metric_fns=[metrics.accuracy if name == TARGET else metrics.exact_match])
  shots = [few_shot.register_few_shot_task(name, k).name for name in ICL_TASKS for k in SHOTS]
  seqio.MixtureRegistry.remove(PRETRAIN_MIXTURE)
  seqio.MixtureRegistry.add(PRETRAIN_MIXTURE, [(t, 1.0) for t in shots])


register()
