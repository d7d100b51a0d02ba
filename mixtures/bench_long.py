"""A long-example mixture for throughput benchmarks: prompted NLI / QA / summary-like tasks whose
inputs are 200-1000 tokens, generated deterministically in code (no downloads).

Why it exists: the built-in synthetic mixture has ~18-token examples, so a packed row holds
hundreds of them, which is the worst case for the input pipeline but nothing like T0/FLAN
training, where prompted passages run to hundreds of tokens and a 2048-token row holds a handful.
The kernels (segment-aware attention), the packer and the peers' padding-free paths behave
differently at these lengths, so `scripts/bench_train.py --data=cache --mixture=bench_long`
times them on this shape. The words are random, so the tasks are not learnable; only the lengths
and the prompt structure are realistic. SeqIO's `ByteVocabulary`: one token per byte.

Tasks `bench_long_nli` (premise passage, hypothesis, yes / maybe / no), `bench_long_qa`
(passage + question, a short span answer), `bench_long_summary` (passage, its first sentences as
a 20-200 token target); mixture `bench_long` mixes them by example count.
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
NUM_TRAIN = 1500  # per task: enough that a benchmark of ~50 packed batches rarely repeats
VALIDATION_SIZE = 50
# Passage length in bytes (= tokens), drawn log-uniformly so short and long prompts both occur;
# the templates add ~60-120 bytes, so inputs land in 200-1000 tokens.
PASSAGE_BYTES = (170, 780)


def _words(seed: int = 7, n: int = 400) -> np.ndarray:
  """A fixed pseudo-vocabulary of 2-10 letter words (Zipf-ish reuse comes from the sampler)."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
  p = np.linspace(2.0, 0.2, len(letters))
  p /= p.sum()
  return np.array(["".join(rng.choice(letters, size=rng.integers(2, 11), p=p))
                   for _ in range(n)])


WORDS = _words()
ZIPF = 1.0 / np.arange(1, len(WORDS) + 1)
ZIPF /= ZIPF.sum()


def _sentence(rng) -> str:
  words = rng.choice(WORDS, size=rng.integers(6, 19), p=ZIPF)
  return " ".join(words).capitalize() + "."


def _passage(rng) -> list[str]:
  """Sentences until the drawn byte length is reached."""
  lo, hi = PASSAGE_BYTES
  want = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
  out, size = [], 0
  while size < want:
    out.append(_sentence(rng))
    size += len(out[-1]) + 1
  return out


def _nli(rng):
  sents = _passage(rng)
  hyp = _sentence(rng) if rng.random() < 0.5 else sents[rng.integers(len(sents))]
  return {"premise": " ".join(sents), "hypothesis": hyp,
          "answer": str(rng.choice(["yes", "maybe", "no"]))}


def _qa(rng):
  sents = _passage(rng)
  src = sents[rng.integers(len(sents))].rstrip(".").split()
  start = rng.integers(0, max(1, len(src) - 2))
  span = " ".join(src[start:start + rng.integers(1, 6)])
  question = " ".join(rng.choice(WORDS, size=rng.integers(4, 10), p=ZIPF)).capitalize() + "?"
  return {"context": " ".join(sents), "question": question, "answer": span}


def _summary(rng):
  sents = _passage(rng)
  k = max(1, min(len(sents) - 1, int(rng.integers(1, 5))))
  return {"document": " ".join(sents), "answer": " ".join(sents[:k])[:200]}


# name: (generator, templates, metric)
TASKS = {
    "nli": (_nli, [
        Template("gpt3_style", "{premise}\nQuestion: {hypothesis} Yes, no, or maybe?",
                 "{answer}"),
        Template("does_it_follow", "Given that \"{premise}\" Does it follow that "
                 "\"{hypothesis}\"? Yes, no, or maybe?", "{answer}"),
    ], metrics.accuracy),
    "qa": (_qa, [
        Template("read_answer", "Read the passage and answer the question.\n\nPassage: "
                 "{context}\n\nQuestion: {question}\nAnswer:", "{answer}"),
        Template("context_first", "{context}\n\nQ: {question}\nA:", "{answer}"),
    ], metrics.exact_match),
    "summary": (_summary, [
        Template("tldr", "{document}\n\nTL;DR:", "{answer}"),
        Template("summarize", "Summarize the following article in a few sentences.\n\n"
                 "Article: {document}\n\nSummary:", "{answer}"),
    ], metrics.exact_match),
}


def generate(task: str, split: str) -> list[dict[str, str]]:
  """The raw examples of one split, identical on every call and machine (validation draws from
  its own stream, so the splits share no example)."""
  make = TASKS[task][0]
  wanted = {"train": NUM_TRAIN, "validation": VALIDATION_SIZE}[split]
  rng = np.random.default_rng([zlib.crc32(task.encode()), split == "validation"])
  return [make(rng) for _ in range(wanted)]


def _dataset_fn(split: str, shuffle_files: bool = False, seed=None, *, task: str):
  del shuffle_files, seed  # generation order is the canonical order; the pipeline shuffles
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  examples = generate(task, split)
  columns = {k: [ex[k] for ex in examples] for k in examples[0]}
  columns["idx"] = np.arange(len(examples), dtype=np.int64)
  return tf.data.Dataset.from_tensor_slices(columns)


def _strip(text, **unused_kwargs):
  return text.strip()


def register() -> None:
  """Registers tasks `bench_long_<name>` and mixture `bench_long` (idempotent)."""
  for name, (_, templates, metric) in TASKS.items():
    task_name = f"bench_long_{name}"
    seqio.TaskRegistry.remove(task_name)
    seqio.TaskRegistry.add(
        task_name,
        source=seqio.FunctionDataSource(
            functools.partial(_dataset_fn, task=name), splits=("train", "validation"),
            num_input_examples={"train": NUM_TRAIN, "validation": VALIDATION_SIZE}),
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
  seqio.MixtureRegistry.remove("bench_long")
  seqio.MixtureRegistry.add("bench_long", [f"bench_long_{n}" for n in TASKS],
                            default_rate=seqio.mixing_rate_num_examples)


register()
