"""Synthetic in-context tasks: the task is only knowable from the demonstrations.

Tasks of one family share an input format and differ in the mapping, so zero-shot a model can
only guess the task; with k demonstrations it can tell which one it is. Pretraining on their
k-shot variants (`icl_pretrain`) teaches a small model k-shot in-context learning from scratch,
and the families' outputs have different formats (letters, numbers), so a finetuned model that
answers them with a classification label ("yes"/"no") shows format specialisation. Used by
`scripts/repro_promot.py`; the target task there is `synthetic_compare` (mtjax.mixtures.synthetic).

Families: `letters` ("abcde ->": copy or reverse) and `numbers` ("23 41 ->": the larger or
the smaller number). Needs no files; deterministic like mtjax.mixtures.synthetic.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import seqio

from mtjax.mixtures import synthetic  # noqa: F401  (the target task synthetic_compare)
from mtjax.data.templates import Template, apply_templates
from mtjax.eval import metrics

VOCAB = seqio.ByteVocabulary()
OUTPUT_FEATURES = {
    "inputs": seqio.Feature(vocabulary=VOCAB, add_eos=True),
    "targets": seqio.Feature(vocabulary=VOCAB, add_eos=True),
}
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
NUM_TRAIN, NUM_VALIDATION = 4000, 200
SHOTS = (1, 2, 3)  # the k-shot variants in the pretraining mixture


def _letters(rng):
  return "".join(rng.choice(LETTERS, size=rng.integers(3, 7)))


def _pair(rng):
  a, b = rng.choice(np.arange(10, 100), size=2, replace=False)
  return int(a), int(b)


def _copy(rng):
  t = _letters(rng)
  return {"x": t, "answer": t}


def _reverse(rng):
  t = _letters(rng)
  return {"x": t, "answer": t[::-1]}


def _larger(rng):
  a, b = _pair(rng)
  return {"x": f"{a} {b}", "answer": str(max(a, b))}


def _smaller(rng):
  a, b = _pair(rng)
  return {"x": f"{a} {b}", "answer": str(min(a, b))}


TEMPLATE = Template("arrow", "{x} ->", "{answer}")
# task -> (family, generator)
TASKS = {"icl_copy": ("letters", _copy), "icl_reverse": ("letters", _reverse),
         "icl_larger": ("numbers", _larger), "icl_smaller": ("numbers", _smaller)}


def generate(task: str, split: str) -> list[dict[str, str]]:
  """The split's raw examples; validation and train never share an input."""
  make = TASKS[task][1]
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
  """Registers `icl_*` tasks, their k-shot variants and the mixture `icl_pretrain` (idempotent)."""
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
        metric_fns=[metrics.exact_match])
  shots = [few_shot.register_few_shot_task(name, k).name for name in TASKS for k in SHOTS]
  seqio.MixtureRegistry.remove("icl_pretrain")
  seqio.MixtureRegistry.add("icl_pretrain", [(t, 1.0) for t in shots])


register()
