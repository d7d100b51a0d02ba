"""Cache builds as a plan of units (mtjax/data/caching): the TF-free path writes the bytes the
SeqIO path writes; a mixture runs on several workers with one progress display; a killed build
resumes with only its unfinished units; concurrent builds and several hosts (a shared dir, the
GCS emulator) end with the same bytes as one plain build.

The reference everywhere is the SeqIO path (`tf_free=False`: SeqIO's `tokenize` over the task's
tf.data source, one worker, one host), compared file by file, byte for byte.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import seqio

from mtjax.data import cache, pipeline
from mtjax.data.caching import hosts, progress
from mtjax.data.caching import units as caching_units

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                   "sentencepiece.model")

# The tasks of the build tests, as a module the `mtjax cache` processes import (--module).
TASKS_MODULE = """
import os
import seqio
from mtjax.data import file_tasks
from mtjax.data.promptsource import PromptTemplate
from mtjax.data.templates import Template

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB = seqio.SentencePieceVocabulary(SPM_PATH)
NLI = PromptTemplate("nli", "{{ premise }} Question: {{ hypothesis }} True or False? ||| "
                     "{{ answer_choices[label] }}", "True ||| False")
file_tasks.register_file_task(
    "build_nli", {"train": os.path.join(HERE, "nli_train.jsonl"),
                  "validation": os.path.join(HERE, "nli_dev.csv")},
    [NLI, Template("nli2", "{premise} => {hypothesis}", "{label}")], vocabulary=VOCAB,
    label_names=("yes", "no"))
file_tasks.register_file_task("build_qa", {"train": os.path.join(HERE, "qa.tsv")},
                              [Template("qa", "Q: {q}", "{a}")], vocabulary=seqio.ByteVocabulary())
seqio.MixtureRegistry.remove("build_mix")
seqio.MixtureRegistry.add("build_mix", [("build_nli", 2.0), ("build_qa", 1.0)])
"""


def _write_data(folder, n_nli=90, n_qa=60):
  """Small files in three formats, with text that tokenizes to many ids (accents, quotes)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "nli_train.jsonl"), "w", encoding="utf-8") as f:
    for i in range(n_nli):
      f.write(json.dumps({"premise": f"Zürich's café {i} opened in {1900 + i}, \"they\" said.",
                          "hypothesis": f"A café is {i % 7} years old.",
                          "label": ["yes", "no"][i % 2]}) + "\n")
      if i % 17 == 0:
        f.write("\n")  # blank lines are no records
  with open(os.path.join(folder, "nli_dev.csv"), "w", encoding="utf-8") as f:
    f.write("premise,hypothesis,label\n")
    for i in range(23):
      f.write(f"\"Line {i}, with a comma\",It is {i}.,{['yes', 'no'][i % 2]}\n")
  with open(os.path.join(folder, "qa.tsv"), "w", encoding="utf-8") as f:
    f.write("q\ta\n")
    for i in range(n_qa):
      f.write(f"what is {i} + {i}?\t{2 * i}\n")
  with open(os.path.join(folder, "build_tasks.py"), "w", encoding="utf-8") as f:
    f.write(TASKS_MODULE.replace("SPM_PATH", repr(SPM)))


def _register(folder):
  import importlib.util

  spec = importlib.util.spec_from_file_location("build_tasks", os.path.join(folder,
                                                                            "build_tasks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)


def _files(cache_dir):
  """{relative path: bytes} of every finished split (and mixture spec) under cache_dir."""
  out = {}
  for root, dirs, names in os.walk(cache_dir):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, cache_dir)] = f.read()
  return out


def _same(a, b):
  fa, fb = _files(a), _files(b)
  assert sorted(fa) == sorted(fb)
  assert [k for k in fa if fa[k] != fb[k]] == []
  return fa


@pytest.fixture
def data(tmp_path, monkeypatch):
  folder = str(tmp_path / "data")
  _write_data(folder)
  _register(folder)
  monkeypatch.setattr(cache, "FAST_BLOCK", 16)  # many units: block seams, idx offsets
  return folder


@pytest.fixture
def reference(data, tmp_path):
  """The mixture through SeqIO's path, one worker."""
  out = str(tmp_path / "reference")
  cache.cache_mixture("build_mix", out, num_shards=2, tf_free=False)
  return out


def test_tf_free_path_writes_the_seqio_paths_bytes_on_workers(reference, tmp_path):
  # PromptSource and plain templates, answer choices, label names, JSONL / CSV / TSV,
  # SentencePiece and byte vocabularies; 2 processes across tasks, one progress display.
  stream = io.StringIO()
  out = str(tmp_path / "fast")
  cache.cache_mixture("build_mix", out, num_shards=2, tf_free=True, num_workers=2,
                      stream=stream, progress_every=0.0, summary=True)
  files = _same(reference, out)
  assert "build_nli/train/manifest.json" in files and "mixtures/build_mix.json" in files
  assert not os.path.exists(os.path.join(out, ".build"))  # units removed once published
  lines = stream.getvalue().splitlines()
  assert lines and "\r" not in stream.getvalue()  # not a terminal: plain lines
  assert lines[-1].startswith("caching: 12/12 units, 173/173 rows (100%)"), lines[-1]


def _parquet_dataset(folder, n=40):
  import pyarrow as pa
  import pyarrow.parquet as pq

  os.makedirs(os.path.join(folder, "data"), exist_ok=True)
  rows = {"sentence": [f"Sentence number {i}: naïve résumé {i * i}." for i in range(n)],
          "label": [i % 3 for i in range(n)]}
  pq.write_table(pa.table(rows), os.path.join(folder, "data", "train-00000-of-00001.parquet"),
                 row_group_size=7)


def plain(record):
  """Drops some records; the others are one example each (idx counts the kept ones)."""
  if record["label"] == 2 and len(record["sentence"]) % 5 == 0:
    return None
  return {"inputs": record["sentence"], "targets": ["zero", "one", "two"][record["label"]]}


def rank_rows(record):
  """Drops the same records; the others become rank-classification rows (idx [example, row])."""
  if plain(record) is None:
    return None
  return [{"inputs": record["sentence"], "targets": choice,
           "is_correct": int(choice == ["zero", "one", "two"][record["label"]])}
          for choice in ("zero", "one", "two")]


@pytest.mark.parametrize("prepare", [plain, rank_rows])
def test_tf_free_hf_source_with_dropped_records(prepare, tmp_path, monkeypatch):
  from mtjax.collections import hf_datasets, hf_tasks
  from mtjax.data import hf_vocab
  from tests.data import tokenizer_files

  _parquet_dataset(str(tmp_path / "ds"))
  vocab = hf_vocab.HFVocabulary.from_dir(tokenizer_files.llama3(str(tmp_path / "tok")))
  task = hf_tasks.register_hf_task("build_hf", hf_datasets.HFDataset(path=str(tmp_path / "ds")),
                                   prepare, splits=("train",), vocabulary=vocab)
  monkeypatch.setattr(cache, "FAST_READ_BLOCK", 6)  # read-to-seek source: blocks of 6 rows
  slow, fast = str(tmp_path / "slow"), str(tmp_path / "fast")
  cache.cache_task_split(task, "train", slow, tf_free=False)
  cache.cache_task_split(task, "train", fast, tf_free=True)
  _same(slow, fast)
  idx = [e["idx"].tolist() for e in pipeline.read_examples(fast, "build_hf", "train")]
  dropped = sum(1 for i in range(40) if i % 3 == 2 and len(f"Sentence number {i}: naïve "
                                                            f"résumé {i * i}.") % 5 == 0)
  assert dropped and idx[-1] == ([39 - dropped, 2] if prepare is rank_rows else 39 - dropped)


def test_progress_is_one_redrawn_line_on_a_terminal_and_plain_lines_off_one():
  tty, log = io.StringIO(), io.StringIO()
  for stream, is_tty in ((tty, True), (log, False)):
    bar = progress.Progress(4, 400, every=0.0, stream=stream, tty=is_tty)
    for _ in range(4):
      bar.update(units=1, rows=100, examples=150)
    bar.close()
  assert tty.getvalue().count("\r") >= 1 and tty.getvalue().count("\n") == 1
  lines = log.getvalue().splitlines()
  assert len(lines) == 5 and "\r" not in log.getvalue()
  assert lines[-1].startswith("caching: 4/4 units, 400/400 rows (100%), 600 examples")
  assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_host_shares_are_disjoint_and_cover_the_plan():
  owners = [hosts.unit_owner("t", "train", i, 3) for i in range(7)]
  assert sorted(owners.count(p) for p in range(3)) == [2, 2, 3]  # round the processes
  assert all((b - a) % 3 == 1 for a, b in zip(owners, owners[1:]))
  assert hosts.process_share(env={"JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}) == (4, 3)
  assert hosts.process_share(env={"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "1"}) == (2, 1)
  assert hosts.process_share(env={}) == (1, 0)
  with pytest.raises(ValueError, match="process id 2 is not in 0..1"):
    hosts.process_share(2, 2)


KILL_AFTER = '''
import os, signal, sys
sys.path.insert(0, {data!r})
import build_tasks
from mtjax.data import cache
from mtjax.data.caching import units
cache.FAST_BLOCK = 16
written = []
original = units.Ledger.write
def write(self, *args, **kwargs):
  out = original(self, *args, **kwargs)
  written.append(1)
  if len(written) == 5:
    os.kill(os.getpid(), signal.SIGKILL)
  return out
units.Ledger.write = write
cache.cache_mixture("build_mix", {out!r}, num_shards=2, tf_free=True)
'''


def test_a_killed_build_redoes_only_its_unfinished_units(reference, data, tmp_path, monkeypatch):
  out = str(tmp_path / "killed")
  script = KILL_AFTER.format(data=data, out=out)
  done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
  finished = sum(1 for root, _, names in os.walk(os.path.join(out, ".build"))
                 for n in names if n.endswith(".json"))
  published = sum(1 for root, _, names in os.walk(out)
                  for n in names if n == "manifest.json")
  assert (finished, published) == (5, 0)  # the first split has 6 units
  calls = []
  original = caching_units.Ledger.write
  monkeypatch.setattr(caching_units.Ledger, "write",
                      lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
  cache.cache_mixture("build_mix", out, num_shards=2, tf_free=True)
  assert len(calls) == 12 - 5  # only the units the killed build had not finished
  _same(reference, out)


# `mtjax cache` with the blocks of the `data` fixture (all builders of a split must cut it alike)
SMALL_BLOCKS = ("import sys; from mtjax.data import cache; cache.FAST_BLOCK = 16; "
                "from mtjax.cli import main; sys.argv[0] = 'mtjax'; main()")


def _mtjax_cache(data, out, *flags, env=None):
  return subprocess.Popen(
      [sys.executable, "-c", SMALL_BLOCKS, "cache", "--mixture_or_task=build_mix",
       "--module=build_tasks", f"--cache_dir={out}", "--num_shards=2", "--path=tf_free",
       "--progress_every=1", *flags],
      cwd=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(processes):
  results = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, results):
    assert p.returncode == 0, err[-3000:]
  return [err for _, err in results]


def _when_building(process, folder):
  """Waits until `process` has begun writing units under `folder`."""
  import time

  while not os.path.isdir(os.path.join(folder, ".build")) and process.poll() is None:
    time.sleep(0.05)


def test_concurrent_builds_and_two_hosts_sharing_a_dir(reference, data, tmp_path):
  """A build of a mixture while another builds it into the same dir, and a two-host build
  (disjoint shares, this process as host 0) into another: both dirs equal the reference."""
  both, pod = str(tmp_path / "both"), str(tmp_path / "pod")
  other = _mtjax_cache(data, both)
  host1 = _mtjax_cache(data, pod, "--num_processes=2", "--process_id=1")
  _when_building(other, both)
  cache.cache_mixture("build_mix", both, num_shards=2, tf_free=True)
  cache.cache_mixture("build_mix", pod, num_shards=2, tf_free=True, num_processes=2,
                      process_id=0, poll_s=0.2)
  errs = _wait([other, host1])
  _same(reference, both)
  _same(reference, pod)
  for folder in (both, pod):  # no unit left behind by the builder that lost the race
    assert not os.path.exists(os.path.join(folder, ".build")), os.listdir(folder)
  last = re.findall(r"caching \(2 hosts, process 1\): (\d+)/(\d+) units", errs[1])[-1]
  assert last[0] == last[1], errs[1]


def test_two_hosts_build_one_cache_on_gcs(reference, data, gcs_bucket, tmp_path, monkeypatch):
  """Two hosts (each with its own staging mirror: another process is host 1; host 0 with two
  workers) build disjoint shares into a gs:// cache dir; a third host reads it back: the
  reference's bytes."""
  from mtjax import fs
  from mtjax.data import staging

  url = f"{gcs_bucket}/cache"
  host1 = _mtjax_cache(data, url, "--num_processes=2", "--process_id=1",
                       env=dict(os.environ, MTJAX_STAGING_DIR=str(tmp_path / "host1")))
  monkeypatch.setenv("MTJAX_STAGING_DIR", str(tmp_path / "host0"))
  staging.forget()
  # host 0 on two workers: they also assemble the splits whose units host 1 finishes meanwhile
  cache.cache_mixture("build_mix", url, num_shards=2, tf_free=True, num_processes=2,
                      process_id=0, poll_s=0.2, num_workers=2)
  _wait([host1])
  assert not fs.exists(f"{url}/.build") or not fs.listdir(f"{url}/.build")
  monkeypatch.setenv("MTJAX_STAGING_DIR", str(tmp_path / "reader"))
  staging.forget()
  for task, split in (("build_nli", "train"), ("build_nli", "validation"), ("build_qa", "train")):
    assert cache.read_manifest(url, task, split) is not None
  staging.forget()
  reader = os.path.join(str(tmp_path / "reader"), os.listdir(tmp_path / "reader")[0])
  ref = {k: v for k, v in _files(reference).items() if not k.startswith("mixtures")}
  got = _files(reader)
  assert sorted(got) == sorted(ref) and [k for k in ref if ref[k] != got[k]] == []


def _unit_examples(n):
  import numpy as np

  return [{"inputs": np.arange(i + 1, dtype=np.int32), "targets": np.asarray([i], np.int32)}
          for i in range(n)]


def test_a_unit_written_while_a_concurrent_build_clears_the_split(tmp_path):
  """A concurrent builder published the split and removed its units (`Ledger.clear`) while this
  one was writing a unit (two training runs caching one mixture at once; it used to end in a
  FileNotFoundError on the unit's temporary file): the unit ends complete and readable."""
  import numpy as np

  from mtjax.data import records

  ledger = caching_units.Ledger(str(tmp_path))
  unit = caching_units.Unit("t", "train", "b0", 0, 0, 3, 3)
  other = caching_units.Unit("t", "train", "b0", 1, 3, 4, 1)
  ledger.write(other, _unit_examples(1), ("inputs", "targets"), 1, [])
  assert set(ledger.done("t", "train", "b0")) == {1}

  def examples():
    for i, example in enumerate(_unit_examples(3)):
      yield example
      if i == 1:
        ledger.clear("t", "train", "b0")  # what the publishing builder does meanwhile

  assert ledger.write(unit, examples(), ("inputs", "targets"), 3, []) == 3
  assert set(ledger.done("t", "train", "b0")) == {0}
  base = ledger.fetch("t", "train", "b0", 0)
  got = [records.decode(r) for r in caching_units.read_records(base, 3)]
  want = _unit_examples(3)
  assert [list(g["inputs"]) for g in got] == [list(w["inputs"]) for w in want]
  tokens = caching_units.read_tokens(base)
  assert list(tokens["targets"]) == [0, 1, 2]
  np.testing.assert_array_equal(np.load(base + ".lengths.npy"), [[1, 1], [2, 1], [3, 1]])
  assert not os.path.exists(os.path.join(str(tmp_path), ".build", ".scratch"))


def test_a_unit_is_never_finished_without_its_files(tmp_path, monkeypatch):
  """The split's units are removed between this writer's data files and its entry being moved
  into place: the entry is taken back (the unit is not finished), nothing raises."""
  ledger = caching_units.Ledger(str(tmp_path))
  unit = caching_units.Unit("t", "train", "b0", 0, 0, 2, 2)
  replace, moved = os.replace, []

  def racing_replace(src, dst):
    replace(src, dst)
    moved.append(dst)
    if dst.endswith(".tokens.npz"):  # the last data file: the publisher clears now
      ledger.clear("t", "train", "b0")

  monkeypatch.setattr(os, "replace", racing_replace)
  assert ledger.write(unit, _unit_examples(2), ("inputs", "targets"), 2, []) == 2
  assert moved[-1].endswith("unit-00000.json")
  assert not ledger.has(unit) and ledger.done("t", "train", "b0") == {}


def test_a_shared_vocabulary_reaches_the_workers_once(data, tmp_path):
  """The payloads of a mixture's splits share their vocabulary: pickled for the workers, its
  SentencePiece model travels once (by content), not once per split, and comes back intact."""
  from mtjax.data.caching import run as caching_run

  _, jobs, _ = cache.plan_mixture("build_mix", str(tmp_path / "unused"), tf_free=True)
  nli = [job for job in jobs if job.task == "build_nli"]
  assert len(nli) == 2  # train and validation, one SentencePiece vocabulary
  model = nli[0].payload[1]["inputs"].model
  assert len(model) >= caching_run.BLOB_SIZE
  blobs = {}
  raw = {job.key: caching_run.dumps(job.payload, blobs) for job in jobs}
  assert list(blobs.values()) == [model]
  assert all(len(r) < len(model) for r in raw.values())
  for job in nli:
    rows, encoders = caching_run.loads(raw[job.key], blobs)
    assert encoders["inputs"].model == model
    assert rows.num_rows(job.split) == job.payload[0].num_rows(job.split)


def test_splits_finished_while_this_process_assembles_another_go_to_the_workers(
    reference, tmp_path, monkeypatch, caplog):
  """With workers running, this process assembles one split at a time; a split whose units all
  finish meanwhile is assembled by a worker. (This process's assembly is slowed down here so
  that happens; the workers are other processes.) The cache is the reference's bytes."""
  import logging
  import time

  from mtjax.data.caching import assemble

  add = assemble.SplitWriter.add
  monkeypatch.setattr(assemble.SplitWriter, "add",
                      lambda self, entry: time.sleep(0.3) or add(self, entry))
  out = str(tmp_path / "offloaded")
  with caplog.at_level(logging.INFO, logger="mtjax.data.caching.run"):
    cache.cache_mixture("build_mix", out, num_shards=2, tf_free=True, num_workers=2)
  _same(reference, out)
  assert not os.path.exists(os.path.join(out, ".build"))
  found = re.findall(r"(\d+) of 3 splits assembled by workers", caplog.text)
  assert found and int(found[0]) >= 1, caplog.text
