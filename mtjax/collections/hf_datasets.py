"""Hugging Face datasets as a task source: find a dataset's files, read its records.

A dataset is named as on the Hub (`HFDataset(repo="nyu-mll/glue", config="rte",
revision="<commit>")`) and read from the first place that has it:

1. `path` (or `data_dir`): a folder of the user's: a `save_to_disk` folder (`dataset_dict.json`
   or `state.json`), a copy of the dataset repository, or plain data files;
2. `<data_root>/<repo>`: a local copy of the repository (`hf download --repo-type dataset
   <repo> --local-dir <data_root>/<repo>`), e.g. on a TPU VM's disk;
3. the Hugging Face cache (`HF_HUB_CACHE`): downloaded there when online (only the files of the
   asked config), read from there when `HF_HUB_OFFLINE=1` or `HF_DATASETS_OFFLINE=1`.

Inside a folder the files of a (config, split) are found as the Hub finds them: the `configs:`
of the repository's README.md (`data_files` per split), else the Hub's file-name conventions
(`{config}/{split}-00000-of-00001.parquet`, `{config}/{split}/0000.parquet` of the
`refs/convert/parquet` branch, `data/{split}-*`, ...) in parquet, jsonl/json, csv, tsv or arrow.
Records are read with pyarrow / json in this process: `datasets` itself is not imported (its
fingerprints differ online and offline; mtjax's cache has its own, `identity`).

ClassLabel features are read from the files' own metadata (parquet `huggingface` schema
metadata, a `save_to_disk` folder's `dataset_info.json`, the README's `dataset_info`), so a task
can turn label indexes into names where its templates want names (`class_label_names`).

Nothing here runs at import or at task registration: a collection of hundreds of tasks
registers without touching the Hub; files are found when a split is cached or inspected.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import json
import os
import re
from typing import Any, Iterator, Mapping, Sequence

from mtjax import errors

EXTENSIONS = (".parquet", ".jsonl", ".json", ".csv", ".tsv", ".arrow")
SHA = re.compile(r"[0-9a-f]{40}")


def offline() -> bool:
  """Hugging Face's own switches: `HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE` set to 1/true."""
  return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
             for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_cache_dir() -> str:
  """The Hugging Face hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/...)."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
  return os.path.join(home, "hub")


@dataclasses.dataclass(frozen=True)
class HFDataset:
  """Where a dataset lives: a Hub repository (+ config, revision), or a folder of the user's.

  `revision`: a branch, tag or commit; a 40-hex commit pins the data (the cache fingerprint then
  needs no file look-up). `data_files`: {split: glob or globs} relative to the repository root,
  for repositories whose layout is neither a README `configs:` nor a convention. `data_dir`:
  a folder holding files that must be downloaded by hand (Story Cloze); it is the only place
  searched. `path`: a local folder used instead of the Hub.
  """

  repo: str = ""
  config: str | None = None
  revision: str | None = None
  data_files: Mapping[str, str | Sequence[str]] | None = None
  data_dir: str | None = None
  path: str | None = None

  def __post_init__(self):
    if not (self.repo or self.path or self.data_dir):
      raise errors.ConfigError("HFDataset: give a repo id, a path or a data_dir")
    if self.data_files is not None:  # frozen: a hashable, sorted copy
      files = {s: (v,) if isinstance(v, str) else tuple(v) for s, v in dict(self.data_files).items()}
      object.__setattr__(self, "data_files", tuple(sorted(files.items())))

  @property
  def label(self) -> str:
    """How errors and listings name it: `repo (config rte, revision main)` or the folder."""
    name = self.repo or self.path or self.data_dir
    extra = [f"config {self.config}"] if self.config else []
    extra += [f"revision {self.revision}"] if self.revision else []
    return f"{name} ({', '.join(extra)})" if extra else name

  @property
  def pinned(self) -> bool:
    return bool(self.revision and SHA.fullmatch(self.revision))


@dataclasses.dataclass(frozen=True)
class Resolved:
  """The files of one split and what they are: `origin` says where they were found."""

  root: str
  files: tuple[str, ...]  # absolute paths, in order
  origin: str  # "folder" | "local copy" | "hub cache" | "save_to_disk"
  revision: str | None  # the commit the files are from, where known
  features: Mapping[str, Any]  # HF features JSON (field -> feature), {} if unknown

  def class_labels(self) -> dict[str, list[str]]:
    """{field: names} of the top-level ClassLabel features."""
    return class_labels(self.features)


# ---- where: folders, the local copy, the Hub cache ------------------------------------------------


def _is_save_to_disk(folder: str) -> bool:
  return (os.path.isfile(os.path.join(folder, "dataset_dict.json"))
          or os.path.isfile(os.path.join(folder, "state.json")))


def _hub_patterns(ds: HFDataset) -> list[str]:
  """What to download for one config: the README (configs, features) and the config's files."""
  patterns = ["README.md", "*.json"]
  if ds.data_files:
    patterns += [p for _, globs in ds.data_files for p in globs]
  elif ds.config:
    patterns += [f"{ds.config}/*", f"{ds.config}/**", f"data/{ds.config}/**",
                 f"data/{ds.config}-*", f"data/{ds.config}_*"]
  else:
    patterns += ["*", "**"]
  return patterns


def _fill_hint(ds: HFDataset, data_root: str | None) -> str:
  include = f" --include '{ds.config}/*'" if ds.config and not ds.data_files else ""
  rev = f" --revision {ds.revision}" if ds.revision else ""
  where = (f" (or --local-dir {os.path.join(data_root, ds.repo)})" if data_root else
           " (or --local-dir <folder>, then point data.hf_data_dir at the folder above it)")
  return (f"on a machine with network: `hf download --repo-type dataset {ds.repo}{include}{rev}`"
          f"{where}, and copy the cache ({hub_cache_dir()}) here")


def _cached_revisions(repo: str) -> list[str]:
  folder = os.path.join(hub_cache_dir(), "datasets--" + repo.replace("/", "--"), "snapshots")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _from_hub(ds: HFDataset, data_root: str | None, download: bool = True) -> tuple[str, str]:
  """(snapshot folder, commit) of the repo in the Hub cache; downloads when online and
  `download`."""
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors as hub_errors  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.MissingError(
        f"dataset {ds.label}: reading the Hugging Face Hub needs huggingface_hub "
        "(pip install 'mtjax[hf]')") from None
  local_only = offline() or not download
  try:
    folder = huggingface_hub.snapshot_download(
        ds.repo, repo_type="dataset", revision=ds.revision, cache_dir=hub_cache_dir(),
        allow_patterns=_hub_patterns(ds), local_files_only=local_only)
  except hub_errors.RepositoryNotFoundError:
    raise errors.MissingError(f"dataset {ds.label}: no such dataset repository on the Hub "
                              "(names moved to organisations, e.g. anli -> facebook/anli)") from None
  except hub_errors.RevisionNotFoundError:
    raise errors.MissingError(f"dataset {ds.label}: the Hub has no revision "
                              f"{ds.revision!r}") from None
  except hub_errors.LocalEntryNotFoundError as e:  # (offline, or online without a connection)
    searched = [hub_cache_dir()] + ([os.path.join(data_root, ds.repo)] if data_root else [])
    cached = _cached_revisions(ds.repo)
    if cached and ds.revision:
      raise errors.MissingError(
          f"dataset {ds.label}: revision {ds.revision} does not match the cached files "
          f"(cached snapshots: {', '.join(cached)}; searched {', '.join(searched)})",
          hint=_fill_hint(ds, data_root)) from None
    why = ("mtjax is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if local_only
           else f"the Hub could not be reached ({str(e).splitlines()[0]})")
    raise errors.MissingError(
        f"dataset {ds.label} is not cached and {why}; searched "
        f"{', '.join(searched)}", hint=_fill_hint(ds, data_root)) from None
  return folder, os.path.basename(os.path.normpath(folder))


def _local_copy_revision(folder: str) -> str | None:
  """The commit a `--local-dir` download came from (huggingface_hub's metadata files)."""
  meta = os.path.join(folder, ".cache", "huggingface", "download")
  for path in glob.glob(os.path.join(meta, "**", "*.metadata"), recursive=True):
    with open(path, encoding="utf-8") as f:
      first = f.readline().strip()
    if SHA.fullmatch(first):
      return first
  return None


def locate(ds: HFDataset, data_root: str | None = None, download: bool = True
           ) -> tuple[str, str, str | None]:
  """(folder, origin, commit or None): the first place holding the dataset (see the module);
  `download=False` looks only at what is on this machine."""
  for folder in (ds.data_dir, ds.path):
    if folder:
      if not os.path.isdir(folder):
        what = "data_dir (files downloaded by hand)" if folder == ds.data_dir else "path"
        raise errors.MissingError(f"dataset {ds.label}: {what} {folder!r} is not a folder")
      return folder, "folder", None
  if data_root:
    copy = os.path.join(data_root, ds.repo)
    if os.path.isdir(copy):
      commit = _local_copy_revision(copy)
      if ds.pinned and commit and commit != ds.revision:
        raise errors.DataError(
            f"dataset {ds.label}: the local copy {copy} holds revision {commit}, not the pinned "
            f"{ds.revision}", hint=_fill_hint(ds, data_root))
      return copy, "local copy", commit
  folder, commit = _from_hub(ds, data_root, download)
  return folder, "hub cache", commit


# ---- which files: README configs, conventions, save_to_disk ---------------------------------------


def _readme_yaml(folder: str) -> dict:
  path = os.path.join(folder, "README.md")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    text = f.read()
  match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
  if not match:
    return {}
  import yaml  # pylint: disable=g-import-not-at-top

  try:  # every scalar as written: label names such as no / yes / False are names, not booleans
    meta = yaml.load(match.group(1), Loader=yaml.BaseLoader)  # noqa: S506
  except yaml.YAMLError as e:
    raise errors.DataError(f"{path}: unreadable YAML header ({' '.join(str(e).split())})") from None
  return meta if isinstance(meta, dict) else {}


def _readme_configs(meta: dict) -> dict[str, dict[str, list[str]]]:
  """{config: {split: [globs]}} from a README's `configs:` (the Hub's data-files spec)."""
  out = {}
  for entry in meta.get("configs") or []:
    name = entry.get("config_name", "default")
    files = entry.get("data_files")
    base = entry.get("data_dir")
    if files is None:
      files = [{"split": "train", "path": "**"}] if base else []
    if isinstance(files, (str, list)) and not (isinstance(files, list) and files
                                                and isinstance(files[0], dict)):
      files = [{"split": "train", "path": files}]
    splits = {}
    for item in files:
      paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
      splits.setdefault(item.get("split", "train"), []).extend(
          f"{base}/{p}" if base else p for p in paths)
    out[name] = splits
    if str(entry.get("default", "")).lower() == "true":
      out.setdefault("__default__", {"name": name})
  return out


def _data_files_under(folder: str) -> list[str]:
  """Every data file below `folder`, relative, sorted (hidden folders and `.cache` skipped)."""
  out = []
  for here, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for f in files:
      if f.endswith(EXTENSIONS) and not f.startswith("."):
        out.append(os.path.relpath(os.path.join(here, f), folder).replace(os.sep, "/"))
  return sorted(out)


def _glob(folder: str, patterns: Sequence[str], files: Sequence[str]) -> list[str]:
  out = []
  for pattern in patterns:
    matched = [f for f in files if fnmatch.fnmatchcase(f, pattern)
               or fnmatch.fnmatchcase(f, pattern.replace("**/", ""))]
    out += [f for f in matched if f not in out]
  return out


def _split_of(relative: str) -> str | None:
  """The split a conventionally named data file belongs to (None: not recognisable).

  `train-00000-of-00001.parquet`, `train.jsonl`, `dev_r1-00000-of-00003.parquet` -> the name;
  `train/0000.parquet` (the `refs/convert/parquet` branch) -> the folder; `glue-train.parquet`
  (its older `{dataset}-{split}` names) -> the part after the last hyphen.
  """
  parts = relative.split("/")
  name = parts[-1]
  for ext in EXTENSIONS:
    if name.endswith(ext):
      name = name[:-len(ext)]
      break
  name = re.sub(r"-\d{5}-of-\d{5}$", "", name)
  if re.fullmatch(r"\d+", name):
    name = parts[-2] if len(parts) > 1 else ""
  name = name.rsplit("-", 1)[-1]
  return name if re.fullmatch(r"[A-Za-z]\w*(\.\w+)?", name) else None


def _conventional(folder: str, config: str | None, files: Sequence[str]) -> dict[str, list[str]]:
  """{split: files} by the Hub's naming conventions inside the config's folder."""
  if config and any(f.startswith(config + "/") for f in files):
    scope, prefix = [f for f in files if f.startswith(config + "/")], config + "/"
  elif config and any(f.startswith(f"data/{config}/") for f in files):
    scope, prefix = [f for f in files if f.startswith(f"data/{config}/")], f"data/{config}/"
  else:
    scope, prefix = list(files), ""
    if prefix == "" and any(f.startswith("data/") for f in files):
      scope, prefix = [f for f in files if f.startswith("data/")], "data/"
  splits: dict[str, list[str]] = {}
  for f in scope:
    split = _split_of(f[len(prefix):])
    if split:
      splits.setdefault(split, []).append(f)
  return splits


def configs(folder: str) -> list[str]:
  """The configs a repository folder offers (README `configs:`, else its top-level folders)."""
  meta = _readme_configs(_readme_yaml(folder))
  names = [n for n in meta if n != "__default__"]
  if names:
    return names
  return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                and not d.startswith(".") and d != "data"
                and any(f.endswith(EXTENSIONS) for _, _, fs_ in os.walk(os.path.join(folder, d))
                        for f in fs_))


def split_files(ds: HFDataset, folder: str) -> dict[str, list[str]]:
  """{split: relative files} of the dataset's config in a repository / data folder."""
  files = _data_files_under(folder)
  if ds.data_files:
    return {split: _glob(folder, globs, files) for split, globs in ds.data_files}
  meta = _readme_configs(_readme_yaml(folder))
  if meta:
    name = ds.config or (meta.get("__default__") or {}).get("name")
    if name is None and len([n for n in meta if n != "__default__"]) == 1:
      name = next(n for n in meta if n != "__default__")
    if name not in meta:
      raise errors.DataError(f"dataset {ds.label}: no config {ds.config!r} in {folder}; "
                             f"available: {', '.join(n for n in meta if n != '__default__')}")
    return {split: _glob(folder, globs, files) for split, globs in meta[name].items()}
  if ds.config:
    available = configs(folder)
    if available and ds.config not in available:
      raise errors.DataError(f"dataset {ds.label}: no config {ds.config!r} in {folder}; "
                             f"available: {', '.join(available)}")
  return _conventional(folder, ds.config, files)


def _save_to_disk_split(ds: HFDataset, folder: str, split: str) -> tuple[str, list[str]]:
  """(split folder, arrow files) of a `save_to_disk` folder (a DatasetDict or one Dataset)."""
  if ds.config and os.path.isdir(os.path.join(folder, ds.config)) and _is_save_to_disk(
      os.path.join(folder, ds.config)):
    folder = os.path.join(folder, ds.config)
  if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
    with open(os.path.join(folder, "dataset_dict.json"), encoding="utf-8") as f:
      splits = json.load(f).get("splits", [])
    if split not in splits:
      raise errors.DataError(f"dataset {ds.label}: no split {split!r} in the save_to_disk folder "
                             f"{folder}; available: {', '.join(splits)}")
    folder = os.path.join(folder, split)
  with open(os.path.join(folder, "state.json"), encoding="utf-8") as f:
    state = json.load(f)
  return folder, [d["filename"] for d in state.get("_data_files", [])]


def available_splits(ds: HFDataset, data_root: str | None = None) -> list[str]:
  folder, _, _ = locate(ds, data_root)
  if _is_save_to_disk(folder) or (ds.config and _is_save_to_disk(os.path.join(folder, ds.config))):
    base = os.path.join(folder, ds.config) if ds.config and _is_save_to_disk(
        os.path.join(folder, ds.config)) else folder
    path = os.path.join(base, "dataset_dict.json")
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        return list(json.load(f).get("splits", []))
    return ["train"]
  return sorted(s for s, f in split_files(ds, folder).items() if f)


def available_splits_cached(ds: HFDataset) -> list[str]:
  """The splits of a Hub dataset as far as the Hub cache shows them, without any download
  ([] when it is not cached)."""
  if not ds.repo:
    return []
  folder = os.path.join(hub_cache_dir(), "datasets--" + ds.repo.replace("/", "--"))
  ref = os.path.join(folder, "refs", ds.revision or "main")
  commit = ds.revision if ds.pinned else None
  if commit is None and os.path.isfile(ref):
    with open(ref, encoding="utf-8") as f:
      commit = f.read().strip()
  snapshot = os.path.join(folder, "snapshots", commit or "")
  if not commit or not os.path.isdir(snapshot):
    return []
  return sorted(s for s, f in split_files(ds, snapshot).items() if f)


def resolve(ds: HFDataset, split: str, data_root: str | None = None,
            download: bool = True) -> Resolved:
  """The files of `split` (a dataset split name, e.g. ANLI's `dev_r1`) and their features
  (`download=False`: only from what is on this machine)."""
  folder, origin, commit = locate(ds, data_root, download)
  if _is_save_to_disk(folder) or (ds.config and _is_save_to_disk(os.path.join(folder, ds.config))):
    where, names = _save_to_disk_split(ds, folder, split)
    info = os.path.join(where, "dataset_info.json")
    features = {}
    if os.path.isfile(info):
      with open(info, encoding="utf-8") as f:
        features = json.load(f).get("features") or {}
    return Resolved(folder, tuple(os.path.join(where, n) for n in names), "save_to_disk", commit,
                    features)
  splits = split_files(ds, folder)
  if not splits.get(split):
    have = sorted(s for s, f in splits.items() if f)
    raise errors.DataError(f"dataset {ds.label}: no split {split!r} in {folder} ({origin}); "
                           f"available: {', '.join(have) if have else 'none (no data files)'}")
  paths = tuple(os.path.join(folder, f) for f in splits[split])
  return Resolved(folder, paths, origin, commit, _features(folder, ds, paths))


def _features(folder: str, ds: HFDataset, paths: Sequence[str]) -> dict:
  """HF features JSON from the first parquet file's metadata, else the README's dataset_info."""
  for path in paths:
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

      meta = pq.read_schema(path).metadata or {}
      if b"huggingface" in meta:
        info = json.loads(meta[b"huggingface"]).get("info") or {}
        if info.get("features"):
          return info["features"]
      break
  infos = _readme_yaml(folder).get("dataset_info")
  if isinstance(infos, dict):
    infos = [infos]
  for info in infos or []:
    if ds.config in (None, info.get("config_name")) or len(infos) == 1:
      return _readme_features(info.get("features") or [])
  return {}


def _readme_features(items: Sequence[Mapping]) -> dict:
  """README `dataset_info.features` (a list of {name, dtype}) in the features-JSON form."""
  out = {}
  for item in items:
    dtype = item.get("dtype")
    if isinstance(dtype, dict) and "class_label" in dtype:
      names = dtype["class_label"].get("names") or {}
      ordered = [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else names
      out[item["name"]] = {"_type": "ClassLabel", "names": ordered}
    else:
      out[item["name"]] = {"_type": "Value", "dtype": dtype}
  return out


def class_labels(features: Mapping[str, Any]) -> dict[str, list[str]]:
  return {k: list(v["names"]) for k, v in features.items()
          if isinstance(v, Mapping) and v.get("_type") == "ClassLabel"}


# ---- reading --------------------------------------------------------------------------------------


def _arrow_table(path: str):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top

  with pa.memory_map(path) as source:
    try:
      return pa.ipc.open_stream(source).read_all()  # save_to_disk writes the stream format
    except pa.ArrowInvalid:
      source.seek(0)
      return pa.ipc.open_file(source).read_all()


def iter_file(path: str) -> Iterator[tuple[int, dict]]:
  """(row or line, record) of one data file."""
  if path.endswith(".arrow"):
    for row, record in enumerate(_arrow_table(path).to_pylist(), start=1):
      yield row, record
    return
  if path.endswith(".json"):  # the Hub's .json files are JSON lines or one JSON array
    with open(path, encoding="utf-8") as f:
      head = f.read(1024).lstrip()
    if head.startswith("["):
      with open(path, encoding="utf-8") as f:
        try:
          rows = json.load(f)
        except json.JSONDecodeError as e:
          raise errors.DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
      for row, record in enumerate(rows, start=1):
        yield row, record
      return
  from mtjax.data import file_tasks  # pylint: disable=g-import-not-at-top

  yield from file_tasks.iter_records(path)


def iter_records(resolved: Resolved) -> Iterator[tuple[str, dict]]:
  """(where, record) for each record of the split's files, in order; `where` is file:row."""
  for path in resolved.files:
    for row, record in iter_file(path):
      yield f"{path}:{row}", record


def num_rows(resolved: Resolved) -> int:
  """The split's record count: from parquet / arrow metadata where they have it (no read)."""
  total = 0
  for path in resolved.files:
    if path.endswith(".parquet"):
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

      total += pq.ParquetFile(path).metadata.num_rows
    elif path.endswith(".arrow"):
      total += _arrow_table(path).num_rows
    else:
      total += sum(1 for _ in iter_file(path))
  return total


def _file_identity(root: str, path: str) -> str:
  """A file's identity that is the same online and offline: its Hub blob (etag) when it is a
  Hub-cache symlink or a `--local-dir` download (whose metadata file's second line is the etag),
  else its size and modification time."""
  if os.path.islink(path):
    target = os.readlink(path).replace(os.sep, "/")
    if "/blobs/" in target:
      return "etag:" + target.rsplit("/", 1)[-1]
  meta = os.path.join(root, ".cache", "huggingface", "download",
                      os.path.relpath(path, root) + ".metadata")
  if os.path.isfile(meta):
    with open(meta, encoding="utf-8") as f:
      lines = f.read().splitlines()
    if len(lines) > 1 and lines[1]:
      return "etag:" + lines[1]
  st = os.stat(path)
  return f"size:{st.st_size}:mtime:{st.st_mtime_ns}"


def identity(ds: HFDataset, split: str, data_root: str | None = None) -> str:
  """What mtjax's cache fingerprint records of a dataset split (never `datasets`' fingerprint).

  A pinned commit names immutable data: repo, config, split, commit and the given data_files
  are enough, so a host with the mtjax cache but without the dataset can still train. Otherwise
  the files are looked up: the commit they come from (where known) and each file's relative
  name and identity (Hub etag, else size and mtime), the same whether the Hub cache was filled
  online or is read offline.
  """
  head = f"hf:{ds.repo}:{ds.config}:{split}:{ds.data_files}"
  if ds.pinned and not (ds.path or ds.data_dir):
    return f"{head}:rev={ds.revision}"
  resolved = resolve(ds, split, data_root)
  files = [f"{os.path.relpath(p, resolved.root)}={_file_identity(resolved.root, p)}"
           for p in resolved.files]
  return f"{head}:rev={resolved.revision or 'unknown'}:{resolved.origin}:{files}"

