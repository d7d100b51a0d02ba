"""Cache-build benchmark: mtjax's TF-free path vs SeqIO, on one text task, in the same run.

The task: RTE-shaped JSONL records (premise ~ 250 words, hypothesis ~ 12) rendered by five
PromptSource templates in the style of `glue/rte` (example i gets template i % 5), tokenized by
one of two vocabularies trained here on the same text (no downloads):

  sp   SeqIO's SentencePieceVocabulary (a unigram model, as T5 / T0 / mT0 use)
  hf   an HF tokenizer (`tokenizer.json`, a Llama-3-style byte-level BPE) as mtjax's HFVocabulary

Measured for each vocabulary in a process of its own, every builder in that process (imports
done before the clock starts), mtjax's TF-free builds first (as in `mtjax cache`: SeqIO imported,
no TF pipeline run yet; one that has run leaves the process slower by 10-40% for a while):

  seqio_beam          SeqIO's own cache job (`seqio/scripts/cache_tasks_main.py`'s `run_pipeline`:
                      `beam_utils.PreprocessTask` -> TFRecord shards + info) on Beam's
                      DirectRunner, one worker: what SeqIO users run to cache a task
  seqio_get_dataset   SeqIO's pipeline of the task (`task.get_dataset`, use_cached=False),
                      iterated as numpy: rendering + `tokenize`, nothing written
  mtjax_seqio_1w      `mtjax cache`'s SeqIO path (tf_free=False), one worker
  mtjax_tf_free_1w    the TF-free path, one worker (in this process)
  mtjax_tf_free_2w    the TF-free path, two worker processes (process start-up included)

The mtjax caches are compared byte for byte. Printed: examples/s of each, the ratios, and the
scaling from one to two workers.

  python scripts/bench_cache.py [--examples 24000] [--workers 2] [--vocab sp hf] [--skip_seqio]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import subprocess
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


def vocabulary(kind: str, root: str, sample: list[str]):
  """The task's vocabulary, trained here on `sample`."""
  if kind == "sp":
    import io

    import seqio
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sample), model_writer=model,
                                   vocab_size=3000, model_type="unigram", minloglevel=2)
    path = os.path.join(root, "sp.model")
    with open(path, "wb") as f:
      f.write(model.getvalue())
    return seqio.SentencePieceVocabulary(path)
  from mtjax.data import hf_vocab
  from tests.data import tokenizer_files

  folder = tokenizer_files.llama3(os.path.join(root, "tok"), vocab_size=8000, texts=sample)
  return hf_vocab.HFVocabulary.from_dir(folder)


def register(name: str, path: str, vocab):
  from mtjax.data import file_tasks
  from mtjax.data.promptsource import PromptTemplate

  templates = [PromptTemplate(t, jinja, "yes ||| no") for t, jinja in TEMPLATES]
  return file_tasks.register_file_task(name, {"train": path}, templates, vocabulary=vocab)


def seqio_beam(task_name: str, out: str) -> int:
  """SeqIO's cache job for one task on Beam's DirectRunner (one worker); returns the examples
  it wrote (from SeqIO's own info file)."""
  import apache_beam as beam
  from absl import flags
  from seqio.scripts import cache_tasks_main

  if not flags.FLAGS.is_parsed():
    flags.FLAGS(["bench_cache"])
  options = beam.options.pipeline_options.PipelineOptions(
      ["--runner=DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"])
  with beam.Pipeline(options=options) as pipeline:
    cache_tasks_main.run_pipeline(pipeline, [task_name], out)
  import seqio

  stats = seqio.get_cached_stats_path(os.path.join(out, seqio.get_task_dir_from_name(task_name)),
                                      "train")
  with open(stats) as f:
    return int(json.load(f)["examples"])


def examples_differing(a: str, b: str) -> int:
  """How many examples' token ids differ between two caches of one split."""
  import numpy as np

  count = 0
  for feature in ("inputs", "targets"):
    ta, tb = (np.load(os.path.join(d, f"{feature}.tokens.npy")) for d in (a, b))
    oa, ob = (np.load(os.path.join(d, f"{feature}.offsets.npy")) for d in (a, b))
    count += sum(1 for i in range(len(oa) - 1)
                 if not np.array_equal(ta[oa[i]:oa[i + 1]], tb[ob[i]:ob[i + 1]]))
  return count


def same_bits(a: str, b: str) -> bool:
  files = sorted(os.listdir(a))
  return files == sorted(os.listdir(b)) and all(
      filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in files)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--examples", type=int, default=24_000)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--vocab", nargs="+", choices=("sp", "hf"), default=["sp", "hf"])
  parser.add_argument("--skip_seqio", action="store_true",
                      help="only the TF-free path (no SeqIO pipeline, no SeqIO-path cache)")
  parser.add_argument("--json_out", help=argparse.SUPPRESS)
  args = parser.parse_args()

  if len(args.vocab) > 1:  # each vocabulary in a fresh process: none runs after the other's
    report = {}          # TF / Beam pipelines, which leave the process slower for a while
    for kind in args.vocab:
      out = tempfile.mktemp(suffix=".json")
      command = [sys.executable, os.path.abspath(__file__), "--examples", str(args.examples),
                 "--workers", str(args.workers), "--vocab", kind, "--json_out", out]
      subprocess.run(command + (["--skip_seqio"] if args.skip_seqio else []), check=True)
      with open(out) as f:
        report.update(json.load(f))
    print(json.dumps(report, indent=1))
    return

  from mtjax.data import cache

  root = tempfile.mkdtemp(prefix="bench_cache_")
  path, sample = write_data(root, args.examples)
  n = args.examples
  report = {"examples": n, "cores": os.cpu_count()}
  if not args.skip_seqio:  # imports before any clock starts
    import apache_beam  # noqa: F401
    from seqio.scripts import cache_tasks_main  # noqa: F401

  for kind in args.vocab:
    task = register(f"bench_rte_{kind}", path, vocabulary(kind, root, sample))
    results = {}

    def timed(name, fn):
      start = time.perf_counter()
      fn()
      seconds = time.perf_counter() - start
      results[name] = {"seconds": round(seconds, 2), "examples_per_s": round(n / seconds, 1)}
      print(f"{kind} {name:20s} {seconds:8.2f} s  {n / seconds:9.1f} examples/s", flush=True)

    def build(name, **kw):
      out = os.path.join(root, f"{kind}_{name}")
      timed(name, lambda: cache.cache_task_split(task, "train", out, **kw))
      return cache.split_dir(out, task.name, "train")

    # mtjax's TF-free builds first: as in `mtjax cache`, SeqIO is imported (the task is
    # registered) but no TF pipeline has run in this process yet
    one = build("mtjax_tf_free_1w", tf_free=True)
    many = build(f"mtjax_tf_free_{args.workers}w", tf_free=True, num_workers=args.workers)
    if not args.skip_seqio:
      slow = build("mtjax_seqio_1w", tf_free=False)

      def seqio_pipeline():
        ds = task.get_dataset(None, split="train", use_cached=False, shuffle=False)
        count = sum(1 for _ in ds.as_numpy_iterator())
        assert count == n, count
      timed("seqio_get_dataset", seqio_pipeline)

      def beam_job():
        written = seqio_beam(task.name, os.path.join(root, f"{kind}_seqio_beam"))
        assert written == n, written
      timed("seqio_beam", beam_job)
    with open(os.path.join(one, "manifest.json")) as f:
      tokens = json.load(f)["token_lengths"]["inputs"]["mean"]

    fast = results["mtjax_tf_free_1w"]["examples_per_s"]
    summary = {
        "mean_input_tokens": round(tokens, 1),
        "tf_free_per_worker": fast,
        "scaling_1_to_%dw" % args.workers:
            round(results[f"mtjax_tf_free_{args.workers}w"]["examples_per_s"] / fast, 2),
        "same_bits_1w_%dw" % args.workers: same_bits(one, many),
    }
    if not args.skip_seqio:
      summary.update({
          "tf_free_vs_seqio_beam": round(fast / results["seqio_beam"]["examples_per_s"], 2),
          "tf_free_vs_seqio_get_dataset": round(
              fast / results["seqio_get_dataset"]["examples_per_s"], 2),
          "tf_free_vs_mtjax_seqio_path": round(
              fast / results["mtjax_seqio_1w"]["examples_per_s"], 2),
          "same_bits_seqio_path_tf_free": same_bits(slow, one),
      })
      if not summary["same_bits_seqio_path_tf_free"]:
        # SentencePiece: tf_text's op (SeqIO's encode_tf) and the sentencepiece library (SeqIO's
        # encode, the TF-free path) break exact Viterbi ties differently
        summary["examples_tokenized_differently"] = examples_differing(slow, one)
    report[kind] = {"results": results, "summary": summary}
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(report, f)
  else:
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
