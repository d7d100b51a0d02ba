"""Cache-build benchmark: mtjax's TF-free path vs SeqIO, on one text task, in the same run.

The task: RTE-shaped JSONL records (premise ~ 250 words, hypothesis ~ 12) rendered by five
PromptSource templates in the style of `glue/rte` (example i gets template i % 5), tokenized by an
HF tokenizer (`tokenizer.json`, a BPE trained here on the same text: no downloads). Measured:

  seqio_get_dataset   SeqIO's own pipeline of the task (`task.get_dataset`, use_cached=False),
                      iterated as numpy: rendering + `tokenize`, nothing written. (SeqIO's cache
                      job runs the same pipeline under Apache Beam, which cannot be installed
                      beside our pinned dependencies: docs/DESIGN.md, "Caching at scale".)
  mtjax_seqio_1w      `mtjax cache`'s SeqIO path (tf_free=False), one worker
  mtjax_tf_free_1w    the TF-free path, one worker (in this process)
  mtjax_tf_free_2w    the TF-free path, two worker processes (process start-up included)

Each builds into a fresh folder; the three mtjax caches are compared byte for byte. Printed:
examples/s of each, the ratios, and the scaling from one to two workers.

  python scripts/bench_cache.py [--examples 12000] [--workers 2]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker, as measured
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEMPLATES = [  # PromptSource glue/rte's shapes (answer choices "yes ||| no")
    ("does the claim", "Does the claim \"{{sentence2}}\" follow from the fact that "
     "\"{{sentence1}}\"? Please answer either {{\"yes\"}} or {{\"no\"}}. ||| "
     "{{answer_choices[label]}}"),
    ("imply", "{{sentence1}}\n\nQuestion: Does this imply that \"{{sentence2}}\"? Yes or no? "
     "||| {{answer_choices[label]}}"),
    ("entailment explained", "We say that one sentence \"{{\"entails\"}}\" another sentence "
     "when the first sentence implies the second sentence. Consider the following two sentences:"
     "\n{{sentence1}}\n{{sentence2}}\nIs the relationship from the first to the second sentence "
     "\"{{\"entailment\"}}\" or \"{{\"not entailment\"}}\"? ||| {{answer_choices[label]}}"),
    ("imply separated", "{{sentence1}}\nDoes this imply\n{{sentence2}}\nPlease answer "
     "{{\"A) yes or B) no.\"}} ||| {{answer_choices[label]}}"),
    ("mean", "{{sentence1}}\n\nQuestion: Does this mean that \"{{sentence2}}\" is true? "
     "{{\"A) yes or B) no.\"}} ||| {{answer_choices[label]}}"),
]


def _text(rng, words, n):
  out = []
  for i in range(n):
    w = rng.choice(words)
    out.append(w.capitalize() if i == 0 or out[-1].endswith(".") else w)
    if rng.random() < 0.08:
      out[-1] += rng.choice([".", ",", ";"])
  return " ".join(out) + "."


def write_data(folder: str, n: int) -> tuple[str, list[str]]:
  rng = random.Random(0)
  syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "an", "el", "or"]
  words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
                  for _ in range(4000)}) + ["café", "naïve", "Zürich", "1932", "don't"]
  path = os.path.join(folder, "rte_train.jsonl")
  sample = []
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      record = {"sentence1": _text(rng, words, rng.randint(180, 320)),
                "sentence2": _text(rng, words, rng.randint(6, 18)),
                "label": i % 2, "idx": i}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
      if i < 300:
        sample += [record["sentence1"], record["sentence2"]]
  return path, sample


def register(path: str, tokenizer_dir: str):
  from mtjax.data import file_tasks, hf_vocab
  from mtjax.data.promptsource import PromptTemplate

  vocab = hf_vocab.HFVocabulary.from_dir(tokenizer_dir)
  templates = [PromptTemplate(name, jinja, "yes ||| no") for name, jinja in TEMPLATES]
  return file_tasks.register_file_task("bench_rte", {"train": path}, templates,
                                       vocabulary=vocab)


def same_bits(a: str, b: str) -> bool:
  files = sorted(os.listdir(a))
  return files == sorted(os.listdir(b)) and all(
      filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in files)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=12_000)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--skip_seqio", action="store_true",
                      help="only the TF-free path (no SeqIO pipeline, no SeqIO-path cache)")
  args = parser.parse_args()

  from mtjax.data import cache
  from tests.data import tokenizer_files

  root = tempfile.mkdtemp(prefix="bench_cache_")
  path, sample = write_data(root, args.examples)
  tokenizer = tokenizer_files.llama3(os.path.join(root, "tok"), vocab_size=8000, texts=sample)
  task = register(path, tokenizer)
  n = args.examples
  results = {}

  def timed(name, fn):
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    results[name] = {"seconds": round(seconds, 2), "examples_per_s": round(n / seconds, 1)}
    print(f"{name:20s} {seconds:8.2f} s  {n / seconds:9.1f} examples/s", flush=True)

  def build(name, **kw):
    out = os.path.join(root, name)
    timed(name, lambda: cache.cache_task_split(task, "train", out, **kw))
    return cache.split_dir(out, "bench_rte", "train")

  if not args.skip_seqio:
    def seqio_pipeline():
      ds = task.get_dataset(None, split="train", use_cached=False, shuffle=False)
      count = sum(1 for _ in ds.as_numpy_iterator())
      assert count == n, count
    timed("seqio_get_dataset", seqio_pipeline)
    slow = build("mtjax_seqio_1w", tf_free=False)
  one = build("mtjax_tf_free_1w", tf_free=True)
  many = build(f"mtjax_tf_free_{args.workers}w", tf_free=True, num_workers=args.workers)
  with open(os.path.join(one, "manifest.json")) as f:
    tokens = json.load(f)["token_lengths"]["inputs"]["mean"]

  fast = results["mtjax_tf_free_1w"]["examples_per_s"]
  summary = {
      "examples": n, "mean_input_tokens": round(tokens, 1), "cores": os.cpu_count(),
      "scaling_1_to_%dw" % args.workers:
          round(results[f"mtjax_tf_free_{args.workers}w"]["examples_per_s"] / fast, 2),
      "same_bits_1w_%dw" % args.workers: same_bits(one, many),
  }
  if not args.skip_seqio:
    summary.update({
        "tf_free_vs_seqio_get_dataset": round(fast / results["seqio_get_dataset"]
                                              ["examples_per_s"], 2),
        "tf_free_vs_mtjax_seqio_path": round(fast / results["mtjax_seqio_1w"]
                                             ["examples_per_s"], 2),
        "same_bits_seqio_path_tf_free": same_bits(slow, one),
    })
  print(json.dumps({"results": results, "summary": summary}, indent=1))


if __name__ == "__main__":
  main()
