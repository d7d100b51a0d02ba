"""A run's tasks and cache at start-up, without SeqIO or TensorFlow when nothing changed.

Registering a run's tasks imports its `data.modules`, and with them SeqIO and TensorFlow (5-10 s);
the cache's staleness check (`cache.fingerprint`) needs the registered tasks. On a warm cache that
is all wasted: the tasks are what they were when the cache was built. So after a start-up that
registered the tasks and checked (or built) the cache, `prepare` writes a start-up record next to
the cache, `<cache_dir>/.startup/<key>.json`. Its key is everything of the run that the tasks
depend on without importing them: mixture, splits, feature lengths, `data.modules`, tokenizer,
data options and their environment variables, the working directory and `sys.path`, the Python
and the cache format. It holds the mixture spec, each cached split's fingerprint, and what the
task definitions were made from:

- code: the file (size, mtime) of every module loaded by then outside the standard library (all
  of mtjax's sources, the task modules of `data.modules`; one file per installed package, which
  an upgrade replaces);
- files the registration read (templates, READMEs: seen through an audit hook on `open`) and
  folders it listed (a file added to a globbed folder changes the folder's mtime);
- each task's data files (file tasks' `data_files`, file-pattern sources' matches) and its
  vocabulary's files (HF tokenizer files, a SentencePiece model), with size and mtime, as the
  fingerprint itself records them.

The next start with the same key stats those files, reads the manifests and, when all is as
recorded, returns the spec with the registration put off (`registration.ensure_registered` runs
it when something needs the tasks: evaluation, export metadata of an unrecorded vocabulary).
Anything else takes the normal path, which rebuilds what is stale. There is no record, and so no
fast path, for what cannot be checked cheaply: a remote cache dir, TFDS or Hugging Face dataset
sources (their files are resolved at cache time), sources of other kinds, remote data or
vocabulary files, a start-up where SeqIO was already imported (tasks registered earlier in the
process: their files were not watched). `MTJAX_FAST_START=0` turns the fast path off.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import logging
import os
import site
import sys
import sysconfig
import tempfile
from typing import Any, Iterable

from mtjax import fs
from mtjax.data import cache, mixing, modules, registration, vocabularies

log = logging.getLogger(__name__)

RECORD_DIR = ".startup"  # a hidden folder of the cache dir: never taken for a task
RECORD_VERSION = 1
ENV_SWITCH = "MTJAX_FAST_START"
# (size, mtime_ns) of a file; mtime_ns of a folder
_VOCAB_ATTRS = ("eos_id", "pad_id", "bos_id", "unk_id", "vocab_size", "special_ids", "stop_ids",
                "start_id", "source")


class Uncertain(Exception):
  """The tasks depend on something a start-up cannot check cheaply: no record is written."""


def enabled() -> bool:
  return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def prepare(cfg, splits: Iterable[str]) -> mixing.MixtureSpec:
  """The run's mixture spec, its tasks registered and its cache in place (built if missing or
  stale), as `mtjax.train.setup.build` needs them. With a matching start-up record, the
  registration is put off and neither SeqIO nor TensorFlow is imported."""
  splits = tuple(splits)
  key, record, why = _check(cfg, splits)
  if not why:
    spec = mixing.MixtureSpec(record["spec"]["name"], tuple(
        mixing.TaskRate(t["name"], float(t["rate"])) for t in record["spec"]["tasks"]))
    registration.defer(functools.partial(register, cfg), record.get("vocabularies"))
    log.debug("tasks of %s unchanged since they were cached: their registration is put off",
              cfg.data.mixture)
    return spec
  if record is not None:
    log.info("start-up record of %s not used (%s): registering the tasks", cfg.data.mixture, why)
  watch = _Watch(cfg.data.cache_dir) if key is not None else contextlib.nullcontext()
  with watch:
    register(cfg)
    spec = cache.ensure_cached(cfg.data.mixture, cfg.data.cache_dir,
                               sequence_length=cfg.data.sequence_length, splits=splits)
  if key is not None:
    try:
      _write(cfg, key, splits, spec, watch)
    except Uncertain as e:
      log.debug("no start-up record for %s: %s", cfg.data.mixture, e)
      _remove(cfg.data.cache_dir, key)
    except Exception as e:  # pylint: disable=broad-except  (a record only saves time)
      log.warning("could not write the start-up record in %s: %s: %s", cfg.data.cache_dir,
                  type(e).__name__, e)
  return spec


def why_slow(cfg, splits: Iterable[str]) -> str:
  """Why `prepare` would register the run's tasks now ("" when it would put that off)."""
  return _check(cfg, tuple(splits))[2]


def _check(cfg, splits: tuple[str, ...]) -> tuple[dict | None, dict | None, str]:
  """(key, record, why the record cannot be used ("": it can)); key None: write no record."""
  if os.getcwd() not in sys.path:  # as `modules.import_modules` does, before the key reads it
    sys.path.insert(0, os.getcwd())
  if not enabled():
    return None, None, f"{ENV_SWITCH}=0"
  if fs.is_url(cfg.data.cache_dir):
    return None, None, "a remote cache dir"
  if "seqio" in sys.modules:
    return None, None, "SeqIO is imported already (tasks may be registered)"
  key = _key(cfg, splits)
  try:
    with open(record_path(cfg.data.cache_dir, key)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return key, None, "no start-up record"
  try:
    return key, record, _changed(record, key, cfg.data.cache_dir)
  except Exception as e:  # pylint: disable=broad-except  (a damaged record: the normal path)
    return key, None, f"unreadable start-up record ({type(e).__name__}: {e})"


def register(cfg) -> None:
  """Registers a run's tasks: its `data.modules` with its default vocabulary and data options,
  and a k-shot variant its mixture names."""
  modules.import_modules(cfg.data.modules, vocabularies.for_run(cfg),
                         options=modules.run_options(cfg.data))
  modules.ensure_shot_task(cfg.data.mixture)


# ---------------------------------------------------------------------------------- the key


def _key(cfg, splits) -> dict:
  import mtjax  # pylint: disable=g-import-not-at-top

  data = cfg.data
  return {
      "record": RECORD_VERSION, "cache_format": cache.FORMAT_VERSION,
      "mtjax": getattr(mtjax, "__version__", ""), "python": sys.version,
      "executable": sys.executable, "cwd": os.getcwd(), "sys_path": list(sys.path),
      "cache_dir": os.path.abspath(data.cache_dir), "mixture": data.mixture,
      "splits": list(splits), "sequence_length": dict(sorted(data.sequence_length.items())),
      "modules": list(data.modules), "tokenizer": data.tokenizer,
      "hf_checkpoint": cfg.model.hf_checkpoint, "options": modules.run_options(data),
      "env": {v: os.environ.get(v) for v in sorted(modules.OPTION_ENV.values())},
  }


def _digest(key: dict) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def record_path(cache_dir: str, key: dict) -> str:
  return os.path.join(cache_dir, RECORD_DIR, f"{_digest(key)}.json")


def _remove(cache_dir: str, key: dict) -> None:
  with contextlib.suppress(OSError):
    os.remove(record_path(cache_dir, key))


# ---------------------------------------------------------------------------------- fast path


def _changed(record: dict, key: dict, cache_dir: str) -> str:
  """What differs from the record ("" when nothing does)."""
  if record.get("key") != key:
    return "another run's record"
  for path, want in record["files"].items():
    try:
      st = os.stat(path)
    except OSError:
      return f"{path} is gone"
    if [st.st_size, st.st_mtime_ns] != want:
      return f"{path} changed"
  for path, want in record["dirs"].items():
    try:
      if os.stat(path).st_mtime_ns != want:
        return f"{path} changed"
    except OSError:
      return f"{path} is gone"
  for pattern, want in record["globs"].items():
    if sorted(glob.glob(pattern)) != want:
      return f"the files of {pattern} changed"
  for name, want in record["manifests"].items():
    task, split = name.rsplit("/", 1)
    try:
      manifest = cache.read_manifest(cache_dir, task, split)
    except (OSError, ValueError):
      manifest = None
    if (manifest or {}).get("fingerprint") != want:
      return f"the cache of {name} changed"
  spec = mixing.read_spec(record["spec"]["name"], cache_dir)
  if spec is None or mixing._to_json(spec) != record["spec"]:  # pylint: disable=protected-access
    return "the mixture's rates changed"
  return ""


# ---------------------------------------------------------------------------------- recording


_active: list["_Watch"] = []
_hooked = False


def _audit(event: str, args) -> None:
  if not _active:
    return
  try:
    watch = _active[-1]
    if event == "open":
      path, mode, flags = args
      if isinstance(path, int):
        return
      path = os.path.abspath(os.fsdecode(os.fspath(path)))
      writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
          isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT |
                                              os.O_APPEND | os.O_TRUNC))
      (watch.written if writes else watch.read).add(path)
    elif event in ("os.listdir", "os.scandir"):
      path = args[0] if args and args[0] is not None else "."
      if isinstance(path, int):
        return
      watch.listed.add(os.path.abspath(os.fsdecode(os.fspath(path))))
  except Exception:  # pylint: disable=broad-except  (an audit hook must never fail the caller)
    pass


class _Watch:
  """Files read and folders listed while the tasks register and the cache is checked."""

  def __init__(self, cache_dir: str):
    self.cache_dir = os.path.abspath(cache_dir)
    self.read: set[str] = set()
    self.written: set[str] = set()
    self.listed: set[str] = set()

  def __enter__(self):
    global _hooked
    if not _hooked:
      sys.addaudithook(_audit)  # (cannot be removed: inactive outside a watch)
      _hooked = True
    _active.append(self)
    return self

  def __exit__(self, *exc):
    _active.remove(self)
    return False


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(standard library folders, site-packages folders)."""
  paths = sysconfig.get_paths()
  std = {paths.get("stdlib"), paths.get("platstdlib")}
  sites = {paths.get("purelib"), paths.get("platlib")}
  with contextlib.suppress(Exception):
    sites.update(site.getsitepackages())
  with contextlib.suppress(Exception):
    sites.add(site.getusersitepackages())
  norm = lambda s: tuple(sorted({f(p) + os.sep for p in s if p
                                 for f in (os.path.abspath, os.path.realpath)}))
  return norm(std), norm(sites)


def _under(path: str, roots: Iterable[str]) -> bool:
  return any(path.startswith(r) for r in roots)


def _stat(path: str) -> list[int]:
  st = os.stat(path)
  return [st.st_size, st.st_mtime_ns]


def _code_files() -> set[str]:
  """The source files the tasks' definitions may depend on: every loaded module's outside the
  standard library (one per top-level package for installed packages other than mtjax, which a
  reinstall replaces) and all of mtjax's."""
  std, sites = _installed_roots()
  out = set()
  for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path:
      continue
    path = os.path.abspath(path)
    top = name.partition(".")[0]
    if _under(path, sites):  # (first: a venv's "platstdlib" holds its site-packages)
      if top != "mtjax":
        top_file = getattr(sys.modules.get(top), "__file__", None)
        path = os.path.abspath(top_file) if isinstance(top_file, str) and top_file else path
    elif _under(path, std):
      continue
    out.add(path)
  import mtjax  # pylint: disable=g-import-not-at-top

  for root in list(mtjax.__path__):
    for folder, dirs, files in os.walk(root):
      dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
      out.update(os.path.abspath(os.path.join(folder, f)) for f in files if f.endswith(".py"))
  return out


def _local(path: str, what: str) -> str:
  if fs.is_url(path):
    raise Uncertain(f"{what} {path} is remote")
  return os.path.abspath(path)


def vocabulary_facts(vocab) -> dict:
  """What `registration.RecordedVocabulary` gives back of a vocabulary: its class name, ids,
  size, special and stop ids, start id, source folder (JSON values only)."""
  attrs = {}
  for name in _VOCAB_ATTRS:
    try:
      value = getattr(vocab, name)
    except Exception:  # pylint: disable=broad-except  (missing, or not defined for this one)
      continue
    if isinstance(value, tuple):
      value = list(value)
    try:
      json.dumps(value)
    except (TypeError, ValueError):
      continue
    attrs[name] = value
  attrs["start_id"] = cache.vocab_start_id(vocab)
  return {"name": type(vocab).__name__, "attrs": attrs, "has_files": hasattr(vocab, "files")}


def _task_inputs(task, files: dict, globs: dict) -> None:
  """Adds a task's data and vocabulary files (or raises `Uncertain`)."""
  import seqio  # pylint: disable=g-import-not-at-top  (the normal path imported it)

  source = task.source
  fn = getattr(source, "_dataset_fn", None)
  if isinstance(source, seqio.TfdsDataSource):
    raise Uncertain(f"task {task.name!r} reads TFDS")
  if isinstance(source, seqio.FunctionDataSource):
    if hasattr(fn, "fingerprint_parts"):
      raise Uncertain(f"task {task.name!r} reads a Hugging Face dataset")
    for path in getattr(fn, "data_files", ()):
      path = _local(path, "data file")
      files[path] = _stat(path)
  else:
    patterns = getattr(source, "_split_to_filepattern", None)
    if not patterns:
      raise Uncertain(f"task {task.name!r} has a {type(source).__name__} source")
    for pattern in patterns.values():
      for p in [pattern] if isinstance(pattern, str) else list(pattern):
        p = _local(p, "file pattern")
        globs[p] = sorted(glob.glob(p))
        for path in globs[p]:
          files[path] = _stat(path)
  for feature in task.output_features.values():
    vocab = feature.vocabulary
    model = getattr(vocab, "sentencepiece_model_file", None)
    if model:
      path = _local(model, "SentencePiece model")
      files[path] = _stat(path)
    folder = getattr(vocab, "source", None)
    if hasattr(vocab, "files") and isinstance(folder, str) and folder:
      for name in vocab.files:
        path = os.path.join(_local(folder, "tokenizer dir"), name)
        if os.path.exists(path):
          files[path] = _stat(path)


def _write(cfg, key: dict, splits, spec: mixing.MixtureSpec, watch: _Watch) -> None:
  try:
    import seqio  # pylint: disable=g-import-not-at-top  (the normal path imported it)
  except ImportError:
    raise Uncertain("seqio is not installed (the run reads an existing cache)") from None

  cache_dir = cfg.data.cache_dir
  provider = seqio.get_mixture_or_task(cfg.data.mixture)
  members = list(getattr(provider, "tasks", None) or [provider])
  training = set(spec.task_names)
  files: dict[str, list[int]] = {}
  globs: dict[str, list[str]] = {}
  manifests: dict[str, str] = {}
  vocabs: dict[str, dict] = {}
  for task in members:
    _task_inputs(task, files, globs)
    vocabs[task.name] = {n: vocabulary_facts(f.vocabulary)
                         for n, f in task.output_features.items()}
    for split in splits:
      if split in task.splits and (task.name in training or split != "train"):
        manifest = cache.read_manifest(cache_dir, task.name, split)
        if not manifest or "fingerprint" not in manifest:
          raise Uncertain(f"{task.name}/{split} has no manifest")
        manifests[f"{task.name}/{split}"] = manifest["fingerprint"]
  for name in cfg.data.modules:  # the task modules themselves must be files the next start stats
    path = getattr(sys.modules.get(modules.builtin_name(name)), "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
      raise Uncertain(f"data.modules: {name!r} is not a module file")
  code = _code_files()
  std, sites = _installed_roots()
  skip = (watch.cache_dir + os.sep, "/proc/", "/sys/", "/dev/") + std + sites
  code_dirs = {os.path.dirname(p) for p in code}
  for path in sorted(watch.read - watch.written):
    if (path.endswith((".py", ".pyc", ".so")) or "__pycache__" in path or _under(path, skip)
        or path in files or not os.path.isfile(path)):
      continue
    files[path] = _stat(path)
  for path in sorted(code):
    with contextlib.suppress(OSError):  # (a module file gone since: not a dependency now)
      files[path] = _stat(path)
  on_path = {os.path.abspath(p or ".") for p in sys.path}
  dirs = {}
  for path in sorted(watch.listed):
    if (path in on_path or path in code_dirs or _under(path + os.sep, skip)
        or not os.path.isdir(path)):
      continue
    dirs[path] = os.stat(path).st_mtime_ns
  record = {"key": key, "spec": mixing._to_json(spec),  # pylint: disable=protected-access
            "manifests": manifests, "files": files, "dirs": dirs, "globs": globs,
            "vocabularies": vocabs}
  path = record_path(cache_dir, key)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".record.", suffix=".tmp", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(record, f, indent=0, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
