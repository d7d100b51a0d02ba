"""Hugging Face datasets as a task source: every place a dataset can be found, read against the
`datasets` library's own reading of the same files, and the fingerprint mtjax keeps."""

import json
import os
import shutil

import datasets
import pytest

from mtjax import errors
from mtjax.collections import hf_datasets as hfd
from mtjax.collections import hf_tasks
from mtjax.data import cache, pipeline
from tests.collections import hub_layouts as L


@pytest.fixture
def hub(tmp_path, monkeypatch):
  """An offline Hub cache holding nyu-mll/glue's rte config (train, validation)."""
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  files = L.hub_repo_files(str(tmp_path / "src"), "rte",
                           {"train": L.rte_dataset(4), "validation": L.rte_dataset(3, 10)})
  commit = L.hub_cache(str(tmp_path / "hub"), "nyu-mll/glue", files)
  return tmp_path, commit


def _records(ds, split, root=None):
  return [r for _, r in hfd.iter_records(hfd.resolve(ds, split, root))]


def test_hub_cache_offline_matches_datasets_reading(hub):
  tmp_path, commit = hub
  ds = hfd.HFDataset("nyu-mll/glue", "rte")
  resolved = hfd.resolve(ds, "validation")
  assert resolved.origin == "hub cache" and resolved.revision == commit
  assert resolved.class_labels() == {"label": ["entailment", "not_entailment"]}
  assert hfd.available_splits(ds) == ["train", "validation"]
  # the `datasets` library reading the same parquet files gives the same records
  reference = datasets.load_dataset("parquet", data_files=list(resolved.files), split="train")
  assert _records(ds, "validation") == reference.to_list()
  assert hfd.num_rows(resolved) == 3
  # pinned to the cached commit: found; to another: one error naming both
  assert _records(hfd.HFDataset("nyu-mll/glue", "rte", revision=commit), "train")
  with pytest.raises(errors.MissingError, match=f"does not match the cached files.*{commit}"):
    hfd.resolve(hfd.HFDataset("nyu-mll/glue", "rte", revision="f" * 40), "train")


def test_errors_name_what_was_asked_and_what_exists(hub):
  with pytest.raises(errors.DataError, match="no config 'mnli'.*available: rte"):
    hfd.resolve(hfd.HFDataset("nyu-mll/glue", "mnli"), "train")
  with pytest.raises(errors.DataError, match="no split 'test'.*available: train, validation"):
    hfd.resolve(hfd.HFDataset("nyu-mll/glue", "rte"), "test")
  with pytest.raises(errors.MissingError) as e:
    hfd.resolve(hfd.HFDataset("nyu-mll/other", "rte"), "train")
  assert "not cached and mtjax is offline" in str(e.value) and str(hub[0] / "hub") in str(e.value)
  assert "hf download --repo-type dataset nyu-mll/other --include 'rte/*'" in e.value.hint


def test_local_copy_before_the_cache_and_its_revision(hub, tmp_path):
  tmp_path, commit = hub
  root = tmp_path / "data"
  copy = root / "nyu-mll" / "glue"
  L.hub_repo_files(str(copy), "rte", {"train": L.rte_dataset(2, 50)})
  ds = hfd.HFDataset("nyu-mll/glue", "rte")
  assert hfd.resolve(ds, "train", str(root)).origin == "local copy"
  assert _records(ds, "train", str(root))[0]["premise"] == "Premise 50 is here."
  # a `--local-dir` download records its commit: a different pin is refused
  meta = copy / ".cache" / "huggingface" / "download" / "rte"
  meta.mkdir(parents=True)
  (meta / "train-00000-of-00001.parquet.metadata").write_text(f"{'a' * 40}\netag123\n1.0\n")
  with pytest.raises(errors.DataError, match=f"holds revision {'a' * 40}, not the pinned"):
    hfd.resolve(hfd.HFDataset("nyu-mll/glue", "rte", revision="b" * 40), "train", str(root))
  assert hfd.identity(ds, "train", str(root)).endswith(
      "rev=" + "a" * 40 + ":local copy:['rte/train-00000-of-00001.parquet=etag:etag123']")


def test_save_to_disk_folder(tmp_path):
  dd = datasets.DatasetDict({"train": L.rte_dataset(3), "dev_r1": L.rte_dataset(2, 7)})
  dd.save_to_disk(str(tmp_path / "saved"))
  ds = hfd.HFDataset(path=str(tmp_path / "saved"))
  assert hfd.available_splits(ds) == ["train", "dev_r1"]
  assert _records(ds, "dev_r1") == datasets.load_from_disk(str(tmp_path / "saved"))["dev_r1"].to_list()
  assert hfd.resolve(ds, "dev_r1").class_labels() == {"label": ["entailment", "not_entailment"]}
  with pytest.raises(errors.DataError, match="no split 'validation'.*available: train, dev_r1"):
    hfd.resolve(ds, "validation")


def test_readme_configs_jsonl_and_conventions(tmp_path):
  """A repository whose README says where each split is (jsonl here), and the conventions of
  the refs/convert/parquet branch ({config}/{split}/0000.parquet) and data/{split}-*."""
  repo = tmp_path / "repo"
  (repo / "files").mkdir(parents=True)
  for split, n in (("train", 3), ("dev", 2)):
    with open(repo / "files" / f"{split}.jsonl", "w") as f:
      for i in range(n):
        f.write(json.dumps({"text": f"{split} {i}", "label": i}) + "\n")
  (repo / "README.md").write_text(
      "---\nconfigs:\n- config_name: plain\n  data_files:\n  - split: train\n    path: "
      "files/train.jsonl\n  - split: validation\n    path: files/dev*.jsonl\n"
      "dataset_info:\n  config_name: plain\n  features:\n  - name: text\n    dtype: string\n"
      "  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': no\n"
      "          '1': yes\n---\n# card\n")
  ds = hfd.HFDataset(path=str(repo), config="plain")
  assert [r["text"] for r in _records(ds, "validation")] == ["dev 0", "dev 1"]
  assert hfd.resolve(ds, "train").class_labels() == {"label": ["no", "yes"]}
  with pytest.raises(errors.DataError, match="no config 'other'.*available: plain"):
    hfd.resolve(hfd.HFDataset(path=str(repo), config="other"), "train")
  converted = tmp_path / "converted"
  L.write_parquet(L.rte_dataset(2), str(converted / "default" / "train" / "0000.parquet"))
  L.write_parquet(L.rte_dataset(1), str(converted / "default" / "validation" / "0000.parquet"))
  assert hfd.available_splits(hfd.HFDataset(path=str(converted), config="default")) == [
      "train", "validation"]
  flat = tmp_path / "flat"
  L.write_parquet(L.rte_dataset(2), str(flat / "data" / "train-00000-of-00002.parquet"))
  L.write_parquet(L.rte_dataset(2, 2), str(flat / "data" / "train-00001-of-00002.parquet"))
  assert len(_records(hfd.HFDataset(path=str(flat)), "train")) == 4


def test_fingerprint_is_mtjax_own_and_stable(hub, tmp_path):
  """The cache fingerprint names repo, config, split, commit and file etags: the same for a
  copy of the Hub cache made elsewhere (new mtimes), changed by other data, and for a pinned
  commit computed without the files at all."""
  tmp_path, commit = hub

  def prepare(record):
    return {"inputs": record["premise"], "targets": record["label"]}

  task = hf_tasks.register_hf_task("hfd_rte", hfd.HFDataset("nyu-mll/glue", "rte"), prepare,
                                   class_label_names=("label",))
  fp = cache.fingerprint(task, "validation")
  moved = tmp_path / "hub2"
  shutil.copytree(tmp_path / "hub", moved, symlinks=True)
  os.environ["HF_HUB_CACHE"] = str(moved)
  assert cache.fingerprint(task, "validation") == fp
  pinned = hf_tasks.register_hf_task(
      "hfd_rte_pinned", hfd.HFDataset("nyu-mll/glue", "rte", revision=commit), prepare)
  ident = hfd.identity(hfd.HFDataset("nyu-mll/glue", "rte", revision=commit), "validation")
  shutil.rmtree(moved)
  assert ident == hfd.identity(hfd.HFDataset("nyu-mll/glue", "rte", revision=commit),
                               "validation")  # no files needed
  assert cache.fingerprint(pinned, "validation")
  with pytest.raises(errors.MissingError, match="task 'hfd_rte' split 'validation'"):
    cache.fingerprint(task, "validation")  # unpinned and gone: named, not a traceback


def test_task_caches_with_label_names_and_split_aliases(tmp_path):
  dd = datasets.DatasetDict({"train_r1": L.rte_dataset(4), "dev_r1": L.rte_dataset(3, 20)})
  dd.save_to_disk(str(tmp_path / "anli"))

  def prepare(record):
    if record["idx"] == 1:
      return None  # dropped examples leave no gap in idx
    return {"inputs": record["premise"], "targets": record["label"]}

  task = hf_tasks.register_hf_task(
      "hfd_anli_r1", hfd.HFDataset(path=str(tmp_path / "anli")), prepare,
      splits={"train": "train_r1", "validation": "dev_r1"}, class_label_names=("label",))
  assert list(task.splits) == ["train", "validation"]
  assert task.num_input_examples("validation") == 2
  cache.cache_task_split(task, "validation", str(tmp_path / "cache"))
  manifest = cache.read_manifest(str(tmp_path / "cache"), "hfd_anli_r1", "validation")
  assert manifest["num_examples"] == 2
  cached = pipeline.read_examples(str(tmp_path / "cache"), "hfd_anli_r1", "validation")
  assert [e["inputs_pretokenized"] for e in cached] == ["Premise 20 is here.", "Premise 22 is here."]
  assert [e["targets_pretokenized"] for e in cached] == ["entailment", "entailment"]
  assert [int(e["idx"]) for e in cached] == [0, 1]
  assert json.loads(cached[1]["example_json"])["label"] == "entailment"
  with pytest.raises(errors.DataError, match="not ClassLabel features"):
    hf_tasks.register_hf_task("hfd_bad", hfd.HFDataset(path=str(tmp_path / "anli")), prepare,
                              splits={"train": "train_r1"},
                              class_label_names=("premise",)).num_input_examples("train")


def test_listing_counts_rows_from_local_metadata_only(hub, monkeypatch):
  """`mtjax tasks` counts a split from the files' metadata when they are here, and never
  downloads to do it (online, a dataset that is not cached has no count)."""

  def prepare(record):
    return {"inputs": record["premise"], "targets": record["hypothesis"]}

  task = hf_tasks.register_hf_task("hfd_count", hfd.HFDataset("nyu-mll/glue", "rte"), prepare)
  assert hf_tasks.hf_source(task).local_rows("train") == 4
  monkeypatch.delenv("HF_HUB_OFFLINE")
  monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a call would fail
  other = hf_tasks.register_hf_task("hfd_count2", hfd.HFDataset("nyu-mll/other", "rte"), prepare)
  assert hf_tasks.hf_source(other).local_rows("train") is None
