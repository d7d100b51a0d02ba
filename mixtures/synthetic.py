"""The built-in synthetic mixture: five text-to-text tasks generated deterministically in code.

Needs no files and no network, so `make quickstart` and the tests run anywhere. Every task has
raw fields, two or more prompt templates, disjoint train/validation splits (an example goes to
validation iff a hash of its content says so), a metric, and `seqio.ByteVocabulary`.

Tasks: copy, reverse and sort a string of letters, add two numbers, answer whether one number is
greater than another (yes/no). Mixture `synthetic` mixes them by example count (capped);
`synthetic_nested` mixes a string sub-mixture with the arithmetic tasks, to exercise nesting.
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
VALIDATION_SIZE = 200
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _letters(rng):
  return "".join(rng.choice(LETTERS, size=rng.integers(4, 11)))


def _copy(rng):
  text = _letters(rng)
  return {"text": text, "answer": text}


def _reverse(rng):
  text = _letters(rng)
  return {"text": text, "answer": text[::-1]}


def _sort(rng):
  text = _letters(rng)
  return {"text": text, "answer": "".join(sorted(text))}


def _add(rng):
  a, b = rng.integers(0, 50, size=2)
  return {"a": str(a), "b": str(b), "answer": str(a + b)}


def _compare(rng):
  a, b = rng.choice(100, size=2, replace=False)
  return {"a": str(a), "b": str(b), "answer": "yes" if a > b else "no"}


# name: (generator, number of train examples, templates, metric)
TASKS = {
    "copy": (_copy, 4000, [
        Template("copy_text", "Copy the text: {text}", "{answer}"),
        Template("repeat", "Repeat after me: {text}", "{answer}"),
    ], metrics.exact_match),
    "reverse": (_reverse, 8000, [
        Template("reverse_letters", "Reverse the letters: {text}", "{answer}"),
        Template("backwards", "Write {text} backwards.", "{answer}"),
    ], metrics.exact_match),
    "sort": (_sort, 8000, [
        Template("sort_letters", "Sort the letters: {text}", "{answer}"),
        Template("alphabetical", "Put the letters of {text} in alphabetical order.", "{answer}"),
    ], metrics.exact_match),
    "add": (_add, 6000, [
        Template("plus", "{a} + {b} =", "{answer}"),
        Template("sum_of", "What is the sum of {a} and {b}?", "{answer}"),
    ], metrics.exact_match),
    "compare": (_compare, 4000, [
        Template("greater", "Is {a} greater than {b}?", "{answer}"),
        Template("larger", "Question: is {a} larger than {b}? Answer yes or no.", "{answer}"),
    ], metrics.accuracy),
}
MIXING_CAP = 6000


def generate(task: str, split: str) -> list[dict[str, str]]:
  """The raw examples of one split, identical on every call and machine."""
  make, num_train, _, _ = TASKS[task]
  wanted = {"train": num_train, "validation": VALIDATION_SIZE}[split]
  rng = np.random.default_rng(zlib.crc32(task.encode()))
  out, seen, tries = [], set(), 0
  while len(out) < wanted:
    tries += 1
    if tries > 50 * (num_train + VALIDATION_SIZE):
      raise RuntimeError(f"synthetic task {task!r}: cannot draw {wanted} {split} examples")
    example = make(rng)
    key = "|".join(f"{k}={v}" for k, v in sorted(example.items()))
    in_validation = zlib.crc32(key.encode()) % 10 == 0
    if in_validation != (split == "validation"):
      continue
    if split == "validation" and key in seen:  # keep validation free of duplicates
      continue
    seen.add(key)
    out.append(example)
  return out


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, task: str):
  del shuffle_files, seed  # generation order is the canonical order; Grain shuffles later
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  examples = generate(task, split)
  columns = {k: [ex[k] for ex in examples] for k in examples[0]}
  columns["idx"] = np.arange(len(examples), dtype=np.int64)
  return tf.data.Dataset.from_tensor_slices(columns)


def _strip(text, **unused_kwargs):
  return text.strip()


def register() -> None:
  """Registers tasks `synthetic_<name>` and mixtures `synthetic`, `synthetic_nested` (idempotent)."""
  for name, (_, num_train, templates, metric) in TASKS.items():
    task_name = f"synthetic_{name}"
    seqio.TaskRegistry.remove(task_name)
    seqio.TaskRegistry.add(
        task_name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, task=name),
            splits=("train", "validation"),
            num_input_examples={"train": num_train, "validation": VALIDATION_SIZE},
        ),
        preprocessors=[
            apply_templates(templates),
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=OUTPUT_FEATURES,
        postprocess_fn=_strip,
        metric_fns=[metric],
    )
  rate = functools.partial(seqio.mixing_rate_num_examples, maximum=MIXING_CAP)
  seqio.MixtureRegistry.remove("synthetic")
  seqio.MixtureRegistry.add("synthetic", [f"synthetic_{n}" for n in TASKS], default_rate=rate)
  seqio.MixtureRegistry.remove("synthetic_strings")
  seqio.MixtureRegistry.add(
      "synthetic_strings", [("synthetic_copy", 1.0), ("synthetic_reverse", 2.0),
                            ("synthetic_sort", 2.0)])
  seqio.MixtureRegistry.remove("synthetic_nested")
  seqio.MixtureRegistry.add(
      "synthetic_nested",
      [("synthetic_strings", 3.0), ("synthetic_add", 1.0), ("synthetic_compare", 1.0)])


register()
