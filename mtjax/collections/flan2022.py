"""Flan 2022 (Longpre et al. 2023, "The Flan Collection"): its five pre-rendered submixes.

    data.modules=("mtjax.collections.flan2022",)  data.mixture="flan2022"
    data.hf_data_dir=/data/hf   (holding DataProvenanceInitiative/<submix>_submix_original)

Where each fact comes from:
- Data: the rendered releases the FLAN README links, on the Hugging Face Hub as
  `DataProvenanceInitiative/{flan2021,t0,niv2,cot,dialog}_submix_original`: one `train` split,
  parquet files `data/train-*`, string columns `inputs, targets, task_source, task_name,
  template_type` (dataset cards; recorded sizes flan2021 5,362,361 rows, t0 1,650,308, cot
  183,848, niv2 10,066,896). `template_type` is FLAN's `_template_type` (google-research/FLAN
  @e9e4ec6, flan/v2/preprocessors.py `add_template_info`): `zs_opt`, `zs_noopt`, `fs_opt`,
  `fs_noopt`. The dialog release's layout is assumed to be the others' (not confirmed), and how
  the releases sampled their rows is not documented.
- Caps and weights: flan/v2/mixtures.py and mixtures_utils.py. Per-dataset caps
  (`DEFAULT_MIXTURE_MAX_EXAMPLES`) FLAN 30,000, T0 20,000, NIv2 5,000, CoT 100,000, Dialog
  200,000; a template-type submix gives each of its tasks the rate `min(examples, cap)`
  (`seqio.mixing_rate_num_examples(maximum=cap)`); a submix mixes its template types equally
  (FLAN and T0: zero-/few-shot x with/without options, 25% each; CoT, NIv2 and Dialog have no
  no-options variant: zs_opt / fs_opt 50% each); CoT and Dialog mix their input-inversion
  tasks (`CoT-II`, `Dialog-II`) at rate 0.3 beside the others at 1. The final mixture
  (flan/v2/run_example.py) takes flan2021 0.4, t0 0.32, niv2 0.2, cot 0.05, dialog 0.03.

How that maps onto the releases (mtjax's choices):
- A task is one (submix, task_name, template_type) of a release, named
  `{prefix}_{name}_{template_type}` with prefix `flan2021`, `t0_submix`, `niv2`, `cot`, `dialog`
  and `name` the task_name with every run of characters other than ASCII letters, digits and
  `_` replaced by one `_` (`glue/mnli:2.0.0` -> `flan2021_glue_mnli_2_0_0_zs_opt`); names that
  would coincide get the first 8 hex digits of their original's SHA-1 appended
  (`prerendered.unique_names`). Inputs and targets are the release's text, both with EOS
  (FLAN's T5X tasks add EOS to both).
- The cap applies per (task_name, template_type) to the release's row count. FLAN capped each
  T5X task (a task and one template variant) at its full dataset size, one variant per task for
  zs_opt and two for fs_opt; the release does not say which variant a row came from, so the
  row count of a (task, template type) stands in for it (an assumption).
- Input-inversion tasks are those whose task_name ends in `_ii` (`cot_gsm8k_ii`, `qrecc_ii`)
  or `_input_inversion`: in cot and dialog they form `<mixture>_ii`, mixed at 0.3 against
  `<mixture>_base` (the suffix is from third-party code built on the releases, not confirmed).
- Mixtures: `{prefix}_{template_type}` (tasks at `min(n, cap)`), `{submix}_submix`
  (`flan2021_submix`, `t0_submix`, `niv2_submix`, `cot_submix`, `dialog_submix`: its template
  types), `flan2022` (and FLAN's own name for it, `flan2022_submix`): the five submixes.
  `register_mixture` registers re-weighted variants (submix or template-type weights, caps)
  for mixture ablations.

Registering needs the task names, so it reads the `task_name` and `template_type` columns of
each release that is on this machine (`data.hf_data_dir/<repo>`, the Hugging Face cache, or
`register(paths=...)`; nothing is downloaded at import) and counts rows per (task, template
type) in pyarrow. A release that is not here registers nothing and is named in one log line with
the command that fetches it (`MISSING` keeps why per mixture name); `flan2022` needs all five.
With none here the import keeps the error as `REGISTRATION_ERROR`, which
`mtjax.data.modules.check_registered` raises for a run that asks for it. A task's rows are found
through the same index when its split is cached (`prerendered.PreRenderedSource`): only the
parquet row groups holding them are read. If a release's rows of one task are spread over all
its row groups (a shuffled file), caching each task reads the whole file. A release whose row
count differs from its recorded size is registered with a warning (a partial download?).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Mapping

from mtjax import errors
from mtjax.collections import hf_datasets, prerendered
from mtjax.data import modules

log = logging.getLogger(__name__)

TEMPLATE_TYPES = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")


@dataclasses.dataclass(frozen=True)
class Submix:
  key: str  # as in SUBMIX_WEIGHTS / CAPS
  repo: str  # the Hub release
  prefix: str  # of its task and mixture names (each inside catalog.COLLECTIONS' patterns)
  rows: int | None  # the release's recorded size (checked at registration; None: unknown)


SUBMIXES = (
    Submix("flan2021", "DataProvenanceInitiative/flan2021_submix_original", "flan2021", 5_362_361),
    Submix("t0", "DataProvenanceInitiative/t0_submix_original", "t0_submix", 1_650_308),
    Submix("niv2", "DataProvenanceInitiative/niv2_submix_original", "niv2", 10_066_896),
    Submix("cot", "DataProvenanceInitiative/cot_submix_original", "cot", 183_848),
    Submix("dialog", "DataProvenanceInitiative/dialog_submix_original", "dialog", None),
)
BY_KEY = {s.key: s for s in SUBMIXES}

# flan/v2/run_example.py: the final mixture's submix rates.
SUBMIX_WEIGHTS = {"flan2021": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}
# flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES (CoT-II and Dialog-II share CoT's / Dialog's).
CAPS = {"flan2021": 30_000, "t0": 20_000, "niv2": 5_000, "cot": 100_000, "dialog": 200_000}
# flan/v2/mixtures.py: each template-type submix at rate 1 (CoT, NIv2, Dialog: no NoOpt ones).
_ALL = {t: 0.25 for t in TEMPLATE_TYPES}
_OPT = {"zs_opt": 0.5, "fs_opt": 0.5}
TEMPLATE_WEIGHTS = {"flan2021": _ALL, "t0": _ALL, "niv2": _OPT, "cot": _OPT, "dialog": _OPT}
# flan/v2/mixtures.py: `{task: 1, f"{task}-II": 0.3}` for CoT and Dialog.
INVERSION_WEIGHTS = {"cot": 0.3, "dialog": 0.3}
INVERSION_SUFFIXES = ("_ii", "_input_inversion")

DATA_FILES = ("data/train-*.parquet", "*.parquet")  # the release's files, or a folder of them
KEY_COLUMNS = ("task_name", "template_type")
COLUMNS = ("inputs", "targets", "task_source", "task_name", "template_type")
NOT_FOUND = "not found on this machine"


@dataclasses.dataclass(frozen=True)
class FlanTask:
  name: str
  submix: str
  task_name: str  # the release's task_name
  template_type: str
  rows: int  # rows of (task_name, template_type) in the release
  inversion: bool


@dataclasses.dataclass
class Collection:
  """What `register` found and made."""

  found: dict[str, tuple[str, str, tuple[str, ...]]]  # submix -> (folder, origin, files)
  missing: dict[str, str]  # submix -> why it is not registered
  tasks: dict[str, FlanTask]
  mixtures: dict[str, list[tuple[str, float]]]


COLLECTION: Collection | None = None
# Mixture names this module would register but did not, and why (for error messages).
MISSING: dict[str, str] = {}


def is_inversion(task_name: str) -> bool:
  return task_name.endswith(INVERSION_SUFFIXES)


def _dataset(sub: Submix, folder: str) -> hf_datasets.HFDataset:
  return hf_datasets.HFDataset(repo=sub.repo, path=folder, data_files={"train": DATA_FILES})


def _find(sub: Submix, path: str | None, data_root: str | None) -> tuple[str, str, list[str]]:
  where = prerendered.local_folder(sub.repo, path, data_root)
  if where is None:
    raise errors.MissingError(NOT_FOUND)
  folder, origin = where
  files = hf_datasets.split_files(_dataset(sub, folder), folder).get("train") or []
  if not files:
    raise errors.MissingError(f"no parquet files in {folder} ({origin})")
  return folder, origin, [os.path.join(folder, f) for f in files]


def register(data_root: str | None = None, paths: Mapping[str, str] | None = None,
             vocabulary=None) -> Collection:
  """Registers the tasks of every release on this machine and the default mixtures.

  `data_root`: local copies as `<data_root>/<repo id>` (default `data.hf_data_dir`). `paths`:
  {submix key: folder of its parquet files} instead. The index read here is kept in memory.
  """
  global COLLECTION, REGISTRATION_ERROR
  data_root = data_root or modules.option("hf_data_dir")
  paths = dict(paths or {})
  unknown = sorted(set(paths) - set(BY_KEY))
  if unknown:
    raise errors.ConfigError(f"Flan 2022: unknown submix(es) {unknown}; known: {list(BY_KEY)}")
  found, missing, tasks = {}, {}, {}
  for sub in SUBMIXES:
    try:
      folder, origin, files = _find(sub, paths.get(sub.key), data_root)
      counts = prerendered.key_counts(files, KEY_COLUMNS)
    except errors.UserError as e:
      missing[sub.key] = str(e)
      continue
    found[sub.key] = (folder, origin, tuple(files))
    if sub.rows and sum(counts.values()) != sub.rows:
      log.warning("Flan 2022 submix %s: %d rows with a task name and template type in %s, the "
                  "release has %d (a partial download, or another revision?)", sub.key,
                  sum(counts.values()), folder, sub.rows)
    names = prerendered.unique_names(name for name, _ in counts)
    dataset = _dataset(sub, folder)
    for (task_name, template_type), rows in sorted(counts.items()):
      name = f"{sub.prefix}_{names[task_name]}_{prerendered.sanitize(template_type)}"
      source = prerendered.PreRenderedSource(
          dataset, prerendered.text_example, {"train": "train"}, data_root=data_root,
          recorded={"train": rows}, where=(("task_name", task_name),
                                           ("template_type", template_type)),
          columns=COLUMNS)
      prerendered.register_task(name, source, vocabulary=vocabulary, add_eos=True)
      tasks[name] = FlanTask(name, sub.key, task_name, template_type, rows,
                             is_inversion(task_name))
  COLLECTION = Collection(found, missing, tasks, {})
  MISSING.clear()
  for key in found:
    if _submix_mixture(BY_KEY[key], TEMPLATE_WEIGHTS[key], CAPS[key],
                       INVERSION_WEIGHTS.get(key), str) is None:
      missing[key] = (f"no tasks of the template types {sorted(TEMPLATE_WEIGHTS[key])} in "
                      f"{found[key][0]}")
  REGISTRATION_ERROR = None
  if not missing:
    members = [(f"{key}_submix", w) for key, w in SUBMIX_WEIGHTS.items()]
    _add("flan2022", members)
    _add("flan2022_submix", [("flan2022", 1.0)])
    return COLLECTION
  example = BY_KEY[next(iter(missing))]
  hint = (f"get one with {prerendered.download_hint(example.repo, data_root)} (likewise for the "
          "others), or give register(paths={submix: folder})")
  for key, why in missing.items():
    sub = BY_KEY[key]
    message = (f"Flan 2022 submix {key} ({sub.repo}): {why}; get it with "
               f"{prerendered.download_hint(sub.repo, data_root)}")
    for name in [f"{key}_submix"] + [f"{sub.prefix}_{t}" for t in TEMPLATE_TYPES]:
      MISSING[name] = message
    MISSING.setdefault("flan2022", message)
    MISSING.setdefault("flan2022_submix", message)
  prerendered.forget_mixtures(MISSING)  # a previous registration's, now without data
  searched = (os.path.join(data_root, "<repo>") + " or " if data_root else "") + \
      f"the Hugging Face cache ({hf_datasets.hub_cache_dir()})"
  not_found = [k for k, w in missing.items() if w == NOT_FOUND]
  summary = (f"Flan 2022: submix(es) {', '.join(missing)} not registered"
             + (f" ({', '.join(not_found)} not found in {searched})" if not_found else "")
             + "".join(f"; {k}: {w}" for k, w in missing.items() if w != NOT_FOUND)
             + "; flan2022 needs all five")
  if not found:
    REGISTRATION_ERROR = errors.MissingError(summary, hint=hint)
    raise REGISTRATION_ERROR
  log.warning("%s (%s)", summary, hint)
  return COLLECTION


def _add(name: str, members: list[tuple[str, float]]) -> None:
  prerendered.register_mixture(name, members)
  COLLECTION.mixtures[name] = list(members)


def _submix_mixture(sub: Submix, template_weights: Mapping[str, float], cap: int,
                    inversion: float | None, inner: Callable[[str], str]) -> str | None:
  """Registers `{submix}_submix` (named through `inner`) and its template-type mixtures;
  returns its name (None: no tasks at all)."""
  members = []
  for template_type, weight in template_weights.items():
    if weight <= 0:
      continue
    group = [t for t in COLLECTION.tasks.values()
             if t.submix == sub.key and t.template_type == template_type]
    if not group:
      log.warning("Flan 2022: submix %s has no %s tasks; %s mixes the others", sub.key,
                  template_type, inner(f"{sub.key}_submix"))
      continue
    name = inner(f"{sub.prefix}_{template_type}")
    base = [(t.name, float(min(t.rows, cap))) for t in group if not t.inversion]
    inverted = [(t.name, float(min(t.rows, cap))) for t in group if t.inversion]
    if inversion is not None and inversion <= 0:
      inverted = []
    if inversion is not None and base and inverted:  # FLAN: {task: 1, task-II: inversion}
      _add(name + "_base", base)
      _add(name + "_ii", inverted)
      _add(name, [(name + "_base", 1.0), (name + "_ii", float(inversion))])
    elif base or inverted:
      _add(name, base + inverted)
    else:
      continue
    members.append((name, float(weight)))
  if not members:
    return None
  name = inner(f"{sub.key}_submix")
  _add(name, members)
  return name


def register_mixture(name: str, submix_weights: Mapping[str, float] | None = None,
                     template_weights: Mapping[str, float | Mapping[str, float]] | None = None,
                     caps: Mapping[str, int] | None = None,
                     inversion_weights: Mapping[str, float] | None = None):
  """Registers a re-weighted Flan 2022 mixture `name` (for mixture ablations) and returns it.

  `submix_weights`: {submix: weight} (default `SUBMIX_WEIGHTS`; a submix left out or at 0 is
  not mixed). `template_weights`: {template_type: weight} for every submix, or {submix:
  {template_type: weight}} (default `TEMPLATE_WEIGHTS`). `caps`: {submix: cap} overriding
  `CAPS`. `inversion_weights`: {submix: rate of its input-inversion tasks} overriding
  `INVERSION_WEIGHTS` (0 drops them). Its inner mixtures are `{name}.{submix}_submix` and
  `{name}.{prefix}_{template_type}`. Every submix it mixes must be registered.
  """
  if COLLECTION is None:
    raise errors.DataError("Flan 2022: call register() first")
  weights = dict(SUBMIX_WEIGHTS if submix_weights is None else submix_weights)
  caps = dict(CAPS, **dict(caps or {}))
  inversions = dict(INVERSION_WEIGHTS, **dict(inversion_weights or {}))
  for what, keys in (("submix_weights", weights), ("caps", caps), ("inversion_weights",
                                                                     inversions)):
    unknown = sorted(set(keys) - set(BY_KEY))
    if unknown:
      raise errors.ConfigError(f"Flan 2022 mixture {name!r}: {what} names unknown submix(es) "
                               f"{unknown}; known: {list(BY_KEY)}")
  if template_weights is None:
    per_submix = dict(TEMPLATE_WEIGHTS)
  elif all(isinstance(v, (int, float)) for v in template_weights.values()):
    per_submix = {key: dict(template_weights) for key in BY_KEY}
  else:
    per_submix = dict(TEMPLATE_WEIGHTS, **{k: dict(v) for k, v in template_weights.items()})
  members = []
  for key, weight in weights.items():
    if weight <= 0:
      continue
    if key not in COLLECTION.found:
      sub = BY_KEY[key]
      raise errors.MissingError(
          f"Flan 2022 mixture {name!r} mixes submix {key}, which is not registered: "
          f"{COLLECTION.missing.get(key, 'no data')}",
          hint=f"get it with {prerendered.download_hint(sub.repo, modules.option('hf_data_dir'))}"
               " or give register(paths=...), or set its weight to 0")
    sub_name = _submix_mixture(BY_KEY[key], per_submix.get(key, {}), caps[key],
                               inversions.get(key), lambda s: f"{name}.{s}")
    if sub_name is None:
      raise errors.DataError(f"Flan 2022 mixture {name!r}: submix {key} has no tasks of the "
                             f"template types {sorted(per_submix.get(key, {}))}")
    members.append((sub_name, float(weight)))
  if not members:
    raise errors.ConfigError(f"Flan 2022 mixture {name!r}: no submix has a positive weight")
  _add(name, members)
  import seqio  # pylint: disable=g-import-not-at-top

  return seqio.get_mixture_or_task(name)


# Registered at import with the run's options (`data.hf_data_dir`). With no release here the
# import still succeeds and keeps the error, which `mtjax.data.modules.check_registered` raises
# (after trying again under the run's options) for a run that asks for this collection.
REGISTRATION_ERROR = modules.register_or_defer(register)
