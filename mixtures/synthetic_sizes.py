"""A synthetic suite whose task sizes span 100x, for T5's mixing study (`scripts/repro_mixing.py`).

Every task rewrites a string of 4-8 random letters, so all of them share one skill (read the
letters, write letters back) and differ in the rule and in how many training examples they have:

| task | rule | train examples | role |
|---|---|---|---|
| `sizes_reverse` | reverse the letters | 20,000 | high-resource |
| `sizes_swap` | swap each adjacent pair (`abcde` -> `badce`) | 2,000 | mid-resource |
| `sizes_shift` | each letter to the next one (`az` -> `ba`) | 200 | low-resource |
| `sizes_double` | write each letter twice (`ab` -> `aabb`) | 200 | low-resource |
| `sizes_copy` | copy the letters | 50,000 | general data (used by one variant) |

Validation examples are distinct from the training ones (a hash of the letters decides the split,
and validation has no duplicates), so a model that memorises the 200 training strings of a
low-resource task does not score on its validation split by memory. Two evaluation-only probes,
`sizes_shift_trainset` and `sizes_double_trainset`, evaluate on those 200 *training* examples:
the gap between a probe and its task's validation score measures memorisation (overfitting).
The probes must never be trained on (every variant of the study excludes them).

Mixture `synthetic_sizes` holds all seven tasks (SeqIO drops zero rates, so each has a positive
rate: T5's `min(n, 2**21) ** (1/2)`); an ablation picks rates per variant and excludes the probes
(and the general task unless the variant uses it). Mixture `synthetic_sizes_train` is the four
supervised tasks alone at the same rates, for plain `mtjax train`.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import seqio

from mtjax.data import rates
from mtjax.data.templates import Template, apply_templates
from mtjax.eval import metrics

VOCAB = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCAB, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCAB, add_eos=True),
}
VALIDATION_SIZE = 200
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _shift(text: str) -> str:
  return "".join(chr((ord(c) - 97 + 1) % 26 + 97) for c in text)


def _swap(text: str) -> str:
  pairs = [text[i:i + 2][::-1] for i in range(0, len(text), 2)]
  return "".join(pairs)


# name: (rule, number of train examples, template)
TASKS = {
    "reverse": (lambda s: s[::-1], 20_000, Template("reverse", "Reverse: {text}", "{answer}")),
    "swap": (_swap, 2_000, Template("swap", "Swap pairs: {text}", "{answer}")),
    "shift": (_shift, 200, Template("shift", "Next letters: {text}", "{answer}")),
    "double": (lambda s: "".join(c + c for c in s), 200,
               Template("double", "Double: {text}", "{answer}")),
    "copy": (lambda s: s, 50_000, Template("copy", "Copy: {text}", "{answer}")),
}
HIGH, MID, LOW, GENERAL = ("sizes_reverse",), ("sizes_swap",), ("sizes_shift", "sizes_double"), \
    ("sizes_copy",)
PROBES = {"sizes_shift_trainset": "shift", "sizes_double_trainset": "double"}
MIXING_CAP = 2 ** 21  # T5's K for temperature-scaled mixing


def generate(task: str, split: str) -> list[dict[str, str]]:
  """The raw examples of one split, identical on every call and machine."""
  rule, num_train, _ = TASKS[task]
  wanted = {"train": num_train, "validation": VALIDATION_SIZE}[split]
  rng = np.random.default_rng(zlib.crc32(f"sizes/{task}".encode()))
  out, seen, tries = [], set(), 0
  while len(out) < wanted:
    tries += 1
    if tries > 50 * (num_train + VALIDATION_SIZE):
      raise RuntimeError(f"synthetic_sizes task {task!r}: cannot draw {wanted} {split} examples")
    text = "".join(rng.choice(LETTERS, size=rng.integers(4, 9)))
    in_validation = zlib.crc32(text.encode()) % 10 == 0
    if in_validation != (split == "validation"):
      continue
    if split == "validation" and text in seen:  # keep validation free of duplicates
      continue
    seen.add(text)
    out.append({"text": text, "answer": rule(text)})
  return out


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, task: str,
                probe: bool = False):
  del shuffle_files, seed  # generation order is the canonical order; Grain shuffles later
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  # A probe's every split is its task's training set (evaluated, never trained on).
  examples = generate(task, "train" if probe else split)
  columns = {k: [ex[k] for ex in examples] for k in examples[0]}
  columns["idx"] = np.arange(len(examples), dtype=np.int64)
  return tf.data.Dataset.from_tensor_slices(columns)


def _strip(text, **unused_kwargs):
  return text.strip()


def _add_task(task_name: str, task: str, probe: bool = False) -> None:
  _, num_train, template = TASKS[task]
  seqio.TaskRegistry.remove(task_name)
  seqio.TaskRegistry.add(
      task_name,
      source=seqio.FunctionDataSource(
          functools.partial(_dataset_fn, task=task, probe=probe),
          splits=("train", "validation"),
          num_input_examples={"train": num_train,
                              "validation": num_train if probe else VALIDATION_SIZE},
      ),
      preprocessors=[
          apply_templates([template]),
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=OUTPUT_FEATURES,
      postprocess_fn=_strip,
      metric_fns=[metrics.exact_match],
  )


def register() -> None:
  """Registers the `sizes_*` tasks and mixtures `synthetic_sizes`, `synthetic_sizes_train`."""
  for name in TASKS:
    _add_task(f"sizes_{name}", name)
  for probe, task in PROBES.items():
    _add_task(probe, task, probe=True)
  rate = rates.t5_examples_proportional(MIXING_CAP, temperature=2.0)
  supervised = [*HIGH, *MID, *LOW]
  seqio.MixtureRegistry.remove("synthetic_sizes")
  seqio.MixtureRegistry.add("synthetic_sizes", [*supervised, *GENERAL, *PROBES],
                            default_rate=rate)
  seqio.MixtureRegistry.remove("synthetic_sizes_train")
  seqio.MixtureRegistry.add("synthetic_sizes_train", supervised, default_rate=rate)


register()
