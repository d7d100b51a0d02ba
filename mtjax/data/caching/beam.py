"""The build plan as an Apache Beam pipeline: the same units, ledger and assembly as `run.py`.

    manifests = beam.build(jobs, "gs://bucket/cache", ["--runner=DataflowRunner", ...])

For CPU clusters (Dataflow, Flink, Spark; Beam's DirectRunner by default), where SeqIO users
already build their caches. The pipeline is

    Create(every unit) | Reshuffle | build each unit (units.Ledger.write, skipped when finished)
      | GroupByKey(split) | assemble the split (assemble.py, first writer wins)

so the cache is the one the built-in engine writes, byte for byte: units are cut by the plan
(`mtjax.data.cache.plan_mixture`), a unit's examples come from the job's producer, and a split is
assembled from its units in order whatever worker built them. A retried or speculatively
duplicated unit rewrites the same bytes; a finished unit (of an earlier, killed build) is skipped.

The jobs (producers and their payloads: task sources, vocabularies) travel once, as a cloudpickle
file in the cache dir's `.build/beam/` (not in the pipeline graph, which runners limit in size),
so the cache dir must be one every worker reaches: `gs://...` on a cloud runner (units go
through the store, as on many hosts), a shared filesystem on a cluster. Workers need mtjax
installed (for Dataflow: `--requirements_file`, `--setup_file` or `--sdk_container_image`).

`apache_beam` is imported only here, only when the engine is used (`pip install 'mtjax[beam]'`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from typing import Any, Sequence

from mtjax import errors, fs
from mtjax.data.caching import layout, run, units

INSTALL = "pip install 'mtjax[beam]'"


def import_beam():
  """apache_beam, or a ConfigError naming the extra that installs it."""
  try:
    import apache_beam  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.ConfigError(f"the beam engine needs Apache Beam, which is not installed "
                             f"({e}): {INSTALL}") from None
  return apache_beam


def pipeline_options(options: Any = None):
  """Beam's PipelineOptions from None (DirectRunner), a command-line string, a list of flags, a
  dict, or PipelineOptions themselves."""
  from apache_beam.options import pipeline_options as po  # pylint: disable=g-import-not-at-top

  if isinstance(options, po.PipelineOptions):
    return options
  if options is None:
    return po.PipelineOptions([])
  if isinstance(options, dict):
    return po.PipelineOptions.from_dictionary(options)
  if isinstance(options, str):
    options = shlex.split(options)
  return po.PipelineOptions(list(options))


# --- worker side ------------------------------------------------------------------------------

_JOBS: dict[str, list] = {}  # jobs file -> jobs (one at a time)


def _jobs(path: str) -> list:
  if path not in _JOBS:
    import cloudpickle  # pylint: disable=g-import-not-at-top

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per bundle
    _JOBS.clear()
    _JOBS[path] = cloudpickle.loads(fs.read_bytes(path))
  return _JOBS[path]


def _build_unit(element: tuple[int, int], jobs_path: str, cache_dir: str, shared: bool):
  """(job, unit) -> (job, examples written; -1: finished already)."""
  from apache_beam.metrics import Metrics  # pylint: disable=g-import-not-at-top

  j, i = element
  job = _jobs(jobs_path)[j]
  n = run._run_unit(job.units[i], job.producer, job.payload,  # pylint: disable=protected-access
                    job.token_features, cache_dir, shared)
  Metrics.counter("mtjax_cache", "units_built" if n >= 0 else "units_skipped").inc()
  if n > 0:
    Metrics.counter("mtjax_cache", "examples").inc(n)
  yield j, n


def _assemble_split(element: tuple[int, Any], jobs_path: str, cache_dir: str, shared: bool):
  """(job, its units' results) -> (task, split, examples in the published split)."""
  j, _ = element
  job = _jobs(jobs_path)[j]
  manifest = run._assemble(units.Ledger(cache_dir, shared), job)  # pylint: disable=protected-access
  yield job.task, job.split, int(manifest["num_examples"])


# --- the pipeline -----------------------------------------------------------------------------

def build(jobs: Sequence[run.SplitJob], cache_dir: str,
          options: Any = None) -> dict[tuple[str, str], dict]:
  """Builds every job's split into `cache_dir` with a Beam pipeline run under `options` (see
  `pipeline_options`); returns {(task, split): manifest} once the pipeline has finished."""
  beam = import_beam()
  import cloudpickle  # pylint: disable=g-import-not-at-top

  if not jobs:
    return {}
  try:
    opts = pipeline_options(options)
  except (ValueError, TypeError) as e:
    raise errors.ConfigError(f"beam pipeline options {options!r}: {e}") from None
  shared = fs.is_url(cache_dir)  # workers may be other machines: units go through the store
  raw = cloudpickle.dumps(list(jobs))
  folder = fs.join(cache_dir, layout.BUILD, "beam")
  # one file per pipeline (a concurrent build of the same plan has its own)
  name = f"{hashlib.sha256(raw).hexdigest()[:12]}-{os.urandom(4).hex()}.pkl"
  jobs_path = fs.join(folder, name)
  fs.makedirs(folder)
  with fs.open(jobs_path, "wb") as f:
    f.write(raw)
  elements = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.units))]
  try:
    try:
      pipeline = beam.Pipeline(options=opts)
    except ValueError as e:  # e.g. an unknown --runner
      raise errors.ConfigError(f"beam pipeline options: {e}") from None
    with pipeline:
      _ = (pipeline
           | "Units" >> beam.Create(elements)
           | "Spread" >> beam.Reshuffle()
           | "Build" >> beam.FlatMap(_build_unit, jobs_path, cache_dir, shared)
           | "BySplit" >> beam.GroupByKey()
           | "Assemble" >> beam.FlatMap(_assemble_split, jobs_path, cache_dir, shared))
  finally:
    try:
      fs.remove(jobs_path)
    except OSError:
      pass
    if not fs.is_url(cache_dir):
      for empty in (folder, os.path.dirname(folder)):
        try:
          os.rmdir(empty)
        except OSError:
          break
  manifests = {}
  for job in jobs:
    manifest = run.published(cache_dir, job.task, job.split, job.fingerprint)
    if manifest is None:
      raise RuntimeError(f"the beam pipeline finished but {job.task}/{job.split} is not "
                         f"published in {cache_dir}")
    manifests[job.key] = manifest
  return manifests
