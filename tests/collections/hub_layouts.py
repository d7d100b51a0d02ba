"""Small Hugging Face datasets in the layouts the Hub, its cache and `datasets` write, for tests.

Nothing here downloads: the files are written with the `datasets` library and pyarrow, and the
Hub cache is laid out as huggingface_hub lays it out (`datasets--org--name/{blobs,refs,
snapshots}`, snapshot files symlinked to blobs named by their etag), so huggingface_hub's own
offline look-up (`snapshot_download(local_files_only=True)`) is what the tests exercise.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import datasets


def rte_dataset(n: int = 4, offset: int = 0) -> "datasets.Dataset":
  """A GLUE/SuperGLUE-RTE-shaped split: premise, hypothesis, idx, label (ClassLabel)."""
  features = datasets.Features({
      "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
      "idx": datasets.Value("int32"),
      "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
  rows = {"premise": [f"Premise {offset + i} is here." for i in range(n)],
          "hypothesis": [f"Hypothesis {offset + i}." for i in range(n)],
          "idx": list(range(n)), "label": [i % 2 for i in range(n)]}
  return datasets.Dataset.from_dict(rows, features=features)


def write_parquet(ds: "datasets.Dataset", path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds.to_parquet(path)
  return path


def hub_repo_files(root: str, config: str, splits: dict) -> dict[str, str]:
  """The Hub's parquet layout of one config: {relative path: local file}."""
  out = {}
  for split, ds in splits.items():
    rel = f"{config}/{split}-00000-of-00001.parquet"
    out[rel] = write_parquet(ds, os.path.join(root, rel))
  return out


def hub_cache(cache: str, repo: str, files: dict[str, str], commit: str | None = None,
              ref: str = "main") -> str:
  """Lays `files` ({relative path: local file}) out as huggingface_hub's cache of the dataset
  repo at `commit`, with `refs/<ref>` naming it. Returns the commit."""
  commit = commit or hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
  folder = os.path.join(cache, "datasets--" + repo.replace("/", "--"))
  os.makedirs(os.path.join(folder, "blobs"), exist_ok=True)
  os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
  with open(os.path.join(folder, "refs", ref), "w") as f:
    f.write(commit)
  for rel, path in files.items():
    with open(path, "rb") as f:
      data = f.read()
    etag = hashlib.sha256(data).hexdigest()
    blob = os.path.join(folder, "blobs", etag)
    shutil.copyfile(path, blob)
    link = os.path.join(folder, "snapshots", commit, rel)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
  return commit
