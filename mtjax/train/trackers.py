"""Where a run's metrics rows go: one small writer interface and its implementations.

A `Tracker` receives what the loop reports: training rows, evaluation rows, a few decoded
samples per task at each full evaluation, and the resolved config once. `metrics.jsonl` and
TensorBoard are trackers like any other and are always on; `train.trackers` adds more by name
(`("wandb",)`). Adding a destination is one file, never an edit of the loop:

    from mtjax.train import trackers

    @trackers.register("mlflow")
    class MlflowTracker(trackers.Tracker):
      def __init__(self, context: trackers.Context): ...
      def log(self, step, row): ...

and `train.trackers=my_trackers:mlflow` imports `my_trackers` (the working directory is
importable) and takes its registered `mlflow` (or the module's attribute of that name). Trackers
run on process 0 only (mtjax.train.metrics.MetricWriter), so a multi-host run logs once.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import secrets
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtjax import errors, fs

# The trackers every run has, in this order; `train.trackers` adds to them.
DEFAULT = ("jsonl", "tensorboard")
# Per task, how many decoded examples a full evaluation shows (its results keep three).
SAMPLES_PER_TASK = 3
_MAX_CHARS = 500  # per cell of a samples table: a long document would swamp TensorBoard


@dataclasses.dataclass(frozen=True)
class Context:
  """What a tracker is built from.

  `local_dir` is where a tracker writes files of the run dir: the run dir itself when local, a
  working copy (fs.WorkingCopy) that the MetricWriter uploads when `run_dir` is a URL.
  `resume_step`: the checkpoint step a resumed run continues from (rows after it, written by a
  process that died before its next checkpoint, are written again), None for a fresh run.
  `config`: the resolved run config (schema.to_dict).
  """
  run_dir: str
  local_dir: str
  resume_step: int | None = None
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def path(self, relative: str) -> str:
    return os.path.join(self.local_dir, relative)


class Tracker:
  """One destination of a run's metrics. Every method has a default, so a tracker implements
  only what it shows. Rows are flat `{name: float}`; names use `/` to group (`loss/<task>`)."""

  def log(self, step: int, row: Mapping[str, float]) -> None:
    """A training row (also the teacher-forced `eval/loss...` row) for `step`."""

  def log_eval(self, step: int, row: Mapping[str, float]) -> None:
    """The metrics of a full evaluation (`eval/<task>/<metric>`, `eval/average/<metric>`).
    The file trackers leave them out: mtjax.eval.evaluate.report already wrote them to
    `eval_metrics.jsonl` and TensorBoard; others take them as a row."""
    self.log(step, row)

  def log_samples(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """A few decoded examples of task `name` at a full evaluation: dicts with `inputs`,
    `target`, `prediction` (None when the task is only scored)."""

  def log_config(self, config: Mapping[str, Any]) -> None:
    """The resolved run config, once when the writer opens."""

  def flush(self) -> None:
    """Makes what was logged durable (the writer uploads a remote run dir after this)."""

  def close(self) -> None:
    self.flush()


Factory = Callable[[Context], Tracker]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
  """Class decorator: makes a tracker available as `train.trackers=(name,)`."""

  def add(factory: Factory) -> Factory:
    _REGISTRY[name] = factory
    return factory

  return add


def registered() -> list[str]:
  return sorted(_REGISTRY)


def resolve(name: str) -> Factory:
  """The factory of a `train.trackers` entry: a registered name, or `module:name` (the module
  is imported first; `name` is then a registered name or an attribute of the module).
  Unknown: errors.ConfigError naming the entry and the known names."""
  if name in _REGISTRY:
    return _REGISTRY[name]
  if ":" in name:
    module_name, attr = name.split(":", 1)
    if os.getcwd() not in sys.path:  # as data.modules: a my_trackers.py next to the command
      sys.path.insert(0, os.getcwd())
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise errors.ModuleError(f"train.trackers: cannot import {module_name!r} (for {name!r}): "
                               f"{e}") from e
    if attr in _REGISTRY:
      return _REGISTRY[attr]
    if callable(getattr(module, attr, None)):
      return getattr(module, attr)
    raise errors.ConfigError(f"train.trackers: {module_name!r} has no tracker {attr!r}")
  raise errors.ConfigError(f"train.trackers: unknown tracker {name!r} (known: "
                           f"{', '.join(registered())}; or module:name for one of your own)")


def check(names: Sequence[str]) -> None:
  """Fails now, before the model is built, on a tracker that cannot be made: an unknown name or a
  missing optional package (a factory's `check()`)."""
  if isinstance(names, str):
    raise errors.ConfigError(f"train.trackers expects a tuple of names, got {names!r}")
  for name in names:
    factory = resolve(name)
    if hasattr(factory, "check"):
      factory.check()


def _short(value: Any) -> str:
  """One line of at most _MAX_CHARS characters (JSON for a non-string: a list of labels)."""
  text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
  text = " ".join(text.split())
  return text[:_MAX_CHARS] + " ..." if len(text) > _MAX_CHARS else text


def _cell(value: Any) -> str:
  """A markdown table cell: `_short`, with what markdown would read as markup escaped."""
  return _short(value).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def samples_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """Decoded examples as a markdown table (TensorBoard's text plugin renders it)."""
  lines = ["| input | target | prediction |", "|---|---|---|"]
  for r in rows:
    prediction = r.get("prediction")
    if prediction is None and "target_log_likelihood" in r:
      prediction = f"(scored: target log-likelihood {r['target_log_likelihood']:.3f})"
    lines.append(f"| {_cell(r.get('inputs'))} | {_cell(r.get('target'))} | "
                 f"{_cell(prediction)} |")
  return "\n".join(lines)


@register("jsonl")
class JsonlTracker(Tracker):
  """`metrics.jsonl`: one JSON object per row, `{"step": N, name: value, ...}`."""

  def __init__(self, context: Context):
    """A resumed run drops the rows after its checkpoint (written by a run that died before its
    next checkpoint), so the file holds each step once and matches an uninterrupted run."""
    self.path = context.path("metrics.jsonl")
    if context.resume_step is not None and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [line for line in f
                if _step(line) is not None and _step(line) <= context.resume_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(rows)
      os.replace(self.path + ".tmp", self.path)
    self._file = open(self.path, "a")  # noqa: SIM115  (kept open for the run)

  def log(self, step, row):
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in row.items()}})
                     + "\n")
    self._file.flush()

  def log_eval(self, step, row):
    pass  # eval_metrics.jsonl (mtjax.eval.evaluate.report)

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


@register("tensorboard")
class TensorBoardTracker(Tracker):
  """`tensorboard/` event files: rows as scalars, samples as markdown text summaries."""

  def __init__(self, context: Context):
    SummaryWriter = summary_writer_class()  # pylint: disable=invalid-name
    # A resumed run starts a new event file whose first record tells TensorBoard to drop the
    # points after the checkpoint that an earlier (killed) process wrote; those steps are
    # written again. Every row is flushed (below), so a kill loses no point on disk.
    purge = context.resume_step + 1 if context.resume_step else None
    self._tb = SummaryWriter(context.path("tensorboard"), purge_step=purge)

  def log(self, step, row):
    for k, v in row.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._tb.flush()  # tensorboardX queues events and writes them every 2 minutes otherwise

  def log_eval(self, step, row):
    pass  # written as `eval/...` scalars by mtjax.eval.evaluate.report

  def log_samples(self, step, name, rows):
    self._tb.add_text(f"samples/{name}", samples_markdown(rows), int(step))
    self._tb.flush()

  def flush(self):
    self._tb.flush()

  def close(self):
    self._tb.close()


@register("wandb")
class WandbTracker(Tracker):
  """Weights & Biases (`pip install 'mtjax[wandb]'`): the same rows, eval metrics, samples as
  tables, and the resolved config.

  Settings: `train.wandb_project`, `train.wandb_entity`, `train.wandb_name` (default: the run
  dir's name); W&B's own environment variables apply (`WANDB_MODE=offline` logs to disk for a
  later `wandb sync`, `WANDB_API_KEY`, `WANDB_DIR`). The W&B run id is kept in the run dir
  (`wandb_run_id`), so a resumed run continues the same W&B run; W&B keeps the first value of a
  step it already has (the steps a killed process logged after its checkpoint)."""

  ID_FILE = "wandb_run_id"

  @staticmethod
  def check() -> None:
    try:
      import wandb  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise errors.ModuleError(
          "train.trackers has 'wandb' but the wandb package is not installed: "
          "pip install 'mtjax[wandb]'") from e

  def __init__(self, context: Context):
    self.check()
    import wandb  # pylint: disable=g-import-not-at-top

    self._wandb = wandb
    train = dict(context.config.get("train") or {})
    id_path = fs.join(context.run_dir, self.ID_FILE)
    run_id = fs.read_text(id_path).strip() if fs.exists(id_path) else None
    if not run_id:
      run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
      fs.write_text(id_path, run_id + "\n")
    kwargs = {}
    if not fs.is_url(context.run_dir) and "WANDB_DIR" not in os.environ:
      kwargs["dir"] = context.local_dir  # W&B makes `<dir>/wandb/`; next to the run's logs
    name = train.get("wandb_name") or os.path.basename(context.run_dir.rstrip("/"))
    self._run = wandb.init(project=train.get("wandb_project") or "mtjax",
                           entity=train.get("wandb_entity") or None, name=name, id=run_id,
                           resume="allow", **kwargs)

  def log(self, step, row):
    self._run.log({k: float(v) for k, v in row.items()}, step=int(step))

  def log_samples(self, step, name, rows):
    table = self._wandb.Table(columns=["input", "target", "prediction"])
    for r in rows:
      table.add_data(*(_short(r.get(k)) for k in ("inputs", "target", "prediction")))
    self._run.log({f"samples/{name}": table}, step=int(step))

  def log_config(self, config):
    self._run.config.update(dict(config), allow_val_change=True)  # a resume may change the lr

  def close(self):
    self._run.finish()


def summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch unless torch is already loaded:
  tensorboardX imports torch only to accept torch tensors (we log floats), and that import costs
  ~13 s of CPU at every start where torch is installed."""
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a line cut short by a kill
