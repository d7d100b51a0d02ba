"""A second yes/no target for the forgetting comparison (scripts/repro_forgetting.py).

`mtjax.mixtures.synthetic_format` has one target, `fmt_vowel` ("Q: <letters>\\nA:" -> yes/no).
Merging needs two task-finetuned models, so this module adds a second one in the same layout,
on the other input form of that suite:

  `fmt_greater`  "Q: 23 41\\nA:" -> "yes" if the first number is larger than the second, else
                 "no" (balanced: the pair's order is a coin flip). Its inputs are drawn exactly
                 as the `numbers` family's ("23 41", two distinct numbers in 10-99), so it is
                 to `numbers` what `fmt_vowel` is to `letters` / `pick` / `order`: same layout,
                 same inputs, a yes/no answer that no pretraining task gives.

The two targets can be told apart by their inputs (letters vs digits), so one model can learn
both (multi-task finetuning on `fmt_two_targets`, the equal-rate mixture of the two) and a
merge of the two finetuned models is not asked to do the impossible.

Needs no files; deterministic (every split is generated from the task name, with
synthetic_format's split rule: validation and train never share an input).
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import seqio

from mtjax.eval import metrics
from mtjax.mixtures import synthetic_format as fmt

SECOND_TARGET = "fmt_greater"
TARGETS = (fmt.TARGET, SECOND_TARGET)
TWO_TARGETS_MIXTURE = "fmt_two_targets"
LABEL_SET = fmt.LABEL_SET


def _greater(rng):
  a, b = fmt._pair(rng)  # pylint: disable=protected-access
  if rng.random() < 0.5:
    a, b = b, a
  return {"x": f"{a} {b}", "answer": "yes" if a > b else "no"}


TASKS = {SECOND_TARGET: _greater}


def generate(task: str, split: str) -> list[dict[str, str]]:
  """The split's raw examples (synthetic_format.generate's rule for this module's tasks)."""
  make = TASKS[task]
  wanted = fmt.NUM_TRAIN if split == "train" else fmt.NUM_VALIDATION
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


def register() -> None:
  """Registers `fmt_greater` and the mixture `fmt_two_targets` (idempotent); importing
  synthetic_format above registered the rest of the suite."""
  from mtjax.data.templates import apply_templates  # pylint: disable=g-import-not-at-top

  for name in TASKS:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, task=name), splits=("train", "validation"),
            num_input_examples={"train": fmt.NUM_TRAIN, "validation": fmt.NUM_VALIDATION}),
        preprocessors=[apply_templates([fmt.TEMPLATE]), seqio.preprocessors.tokenize,
                       seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        output_features=fmt.OUTPUT_FEATURES,
        postprocess_fn=fmt._strip,  # pylint: disable=protected-access
        metric_fns=[metrics.accuracy])
  seqio.MixtureRegistry.remove(TWO_TARGETS_MIXTURE)
  seqio.MixtureRegistry.add(TWO_TARGETS_MIXTURE, [(t, 1.0) for t in TARGETS])


register()
