"""Orbax checkpoints of a run: params, optimizer state, Grain iterator state, metadata.

One `CheckpointManager` per run directory. Saves are asynchronous and atomic (Orbax writes to a
temporary folder and commits it), so a crash during a save leaves the previous checkpoint as the
latest complete one. Restoring takes abstract targets carrying shardings, so a checkpoint can be
restored onto whatever mesh the new run uses. Retention: the newest `keep`, plus (with a
`best_metric`) the best one by that metric. A checkpoint that fails to restore (truncated,
corrupted) is skipped with a warning in favour of the previous one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from mtjax import fs

log = logging.getLogger(__name__)

# Config keys a run may not change when it resumes from its own checkpoints (everything else,
# e.g. train.steps, logging, eval, may change).
RESUME_KEYS = (("model", "preset"), ("data", "mixture"), ("data", "inputs_length"),
               ("data", "targets_length"), ("data", "batch_size"), ("data", "pack"),
               ("data", "packer"), ("data", "seed"), ("optimizer", "name"),
               ("train", "trainable"), ("train", "seed"))


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding of every array: the restore target for that tree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpointer:
  """Saves every `save_every` steps (and on demand); keeps the newest `keep` (+ the best)."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True,
               best_metric: str = "", best_mode: str = "min"):
    self.directory = fs.abspath(directory)  # a URL stays one: Orbax writes gs:// itself
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.save_every = max(save_every, 1)
    if best_mode not in ("min", "max"):
      raise ValueError(f"train.best_mode must be 'min' or 'max', got {best_mode!r}")
    retention = {"max_to_keep": keep}
    if best_metric:
      retention = {"preservation_policy": policies.AnyPreservationPolicy([
          policies.LatestN(n=keep),
          policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
                         n=1, keep_checkpoints_without_metrics=False)])}
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=max(save_every, 1), enable_async_checkpointing=async_save,
            **retention),
        item_handlers={
            "params": ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "data_iter": grain.checkpoint.CheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Every `save_every` steps exactly (Orbax alone would also save a run's first step)."""
    return step % self.save_every == 0

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, params, opt_state, data_iter, meta: dict,
           metrics: dict | None = None) -> bool:
    """`metrics` (e.g. the last eval) rank the checkpoint for `best_metric`."""
    if self.best_metric:
      metrics = metrics if metrics and self.best_metric in metrics else None
    if metrics:  # kept in the metadata too, so `best_step` works after the run
      meta = dict(meta, metrics={k: float(v) for k, v in metrics.items()})
    items = {"params": ocp.args.StandardSave(params),
             "data_iter": grain.checkpoint.CheckpointSave(data_iter),
             "meta": ocp.args.JsonSave(meta)}
    if jax.tree.leaves(opt_state):  # stateless optimizers (plain SGD) have nothing to save
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    return self.manager.save(step, args=ocp.args.Composite(**items),
                             metrics=metrics if self.best_metric else None,
                             force=True)  # when to save is decided here and by the loop

  def restore(self, step: int, params_like, opt_state_like, data_iter):
    """Restores onto the shardings of `*_like`; sets `data_iter`'s state in place."""
    items = {"params": ocp.args.StandardRestore(abstract(params_like)),
             "data_iter": grain.checkpoint.CheckpointRestore(data_iter),
             "meta": ocp.args.JsonRestore()}
    if jax.tree.leaves(opt_state_like):
      items["opt_state"] = ocp.args.StandardRestore(abstract(opt_state_like))
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["params"], restored.get("opt_state", opt_state_like), restored["meta"]

  def meta(self, step: int) -> dict | None:
    """The run metadata saved with `step` (None if unreadable)."""
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # noqa: BLE001  # pylint: disable=broad-except
      return None

  def best_step(self, metric: str | None = None, mode: str | None = None) -> int | None:
    """The kept step whose saved `metric` (default `best_metric`) is best; None if no kept
    checkpoint recorded it. Ties go to the later step (as Orbax's BestN keeps)."""
    metric = metric or self.best_metric
    mode = mode or self.best_mode
    scored = []
    for step in self.all_steps():
      value = ((self.meta(step) or {}).get("metrics") or {}).get(metric)
      if value is not None:
        scored.append((value if mode == "min" else -value, -step))
    return -min(scored)[1] if scored else None

  def restore_latest(self, params_like, opt_state_like, data_iter):
    """(step, params, opt_state, meta) of the newest checkpoint that restores, or None.

    A checkpoint that fails (a truncated or corrupted file) is skipped with a warning.
    """
    for step in reversed(self.all_steps()):
      try:
        return (step,) + self.restore(step, params_like, opt_state_like, data_iter)
      except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
        log.warning("checkpoint %s/%d cannot be restored (%s: %s); trying the previous one",
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:300])
    return None

  def restore_params(self, step: int, params_like):
    restored = self.manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract(params_like))))
    return restored["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_resumable(saved: dict, current: dict) -> None:
  """Raises if the run's config changed in a way its checkpoints cannot continue."""
  diffs = []
  for key in RESUME_KEYS:
    a, b = saved, current
    for k in key:
      a, b = (a or {}).get(k), (b or {}).get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += [f"{'.'.join(key)}.{k}: checkpoint {a.get(k)!r}, config {b.get(k)!r}"
                for k in sorted(set(a) | set(b)) if _norm(a.get(k)) != _norm(b.get(k))]
    elif _norm(a) != _norm(b):
      diffs.append(f"{'.'.join(key)}: checkpoint {a!r}, config {b!r}")
  if diffs:
    raise ValueError("the run directory's checkpoints were written with a different config; "
                     "use a new run_dir or restore the setting. Mismatch: " + "; ".join(diffs))


def _norm(value):
  return list(value) if isinstance(value, tuple) else value


def find_step_dir(path: str) -> str:
  """A run dir, its `checkpoints` dir, or one step dir -> the newest complete step dir."""
  path = fs.abspath(path)
  if fs.isdir(os.path.join(path, "params")):
    return path
  if fs.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted(int(d) for d in fs.listdir(path) if d.isdigit()) if fs.isdir(path) else []
  if fs.is_url(path):  # in a bucket a step folder exists while it uploads; done once committed
    steps = [s for s in steps if fs.exists(os.path.join(path, str(s), "commit_success.txt"))]
  if not steps:
    raise FileNotFoundError(f"train.init_from: no checkpoint under {path}")
  return os.path.join(path, str(steps[-1]))


def init_params(source: str, params: Any) -> tuple[Any, list[str], list[str]]:
  """Parameters of a pretrained mtjax checkpoint, on `params`' shardings; params it lacks keep
  their fresh init. Returns (params, restored paths, fresh paths)."""
  item = os.path.join(find_step_dir(source), "params")
  handler = ocp.StandardCheckpointer()
  metadata = _to_dict(handler.metadata(item))
  key = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  ours = {key(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  saved = {key(p): m for p, m in jax.tree_util.tree_flatten_with_path(
      metadata, is_leaf=lambda x: hasattr(x, "shape"))[0]}
  mismatched = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
                for k, v in ours.items() if k in saved and tuple(saved[k].shape) != v.shape]
  if mismatched:
    raise ValueError(f"train.init_from={source}: shapes differ: " + "; ".join(mismatched))
  some = next(iter(ours.values())).sharding  # parameters we lack: replicated, then dropped
  replicated = (jax.sharding.NamedSharding(some.mesh, jax.P())
                if isinstance(some, jax.sharding.NamedSharding) else some)

  def target(path, m):
    k = key(path)
    if k in ours:
      return jax.ShapeDtypeStruct(ours[k].shape, ours[k].dtype, sharding=ours[k].sharding)
    return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=replicated)

  restored = handler.restore(item, jax.tree_util.tree_map_with_path(
      target, metadata, is_leaf=lambda x: hasattr(x, "shape")))
  handler.close()
  restored = {key(p): v for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
  merged = jax.tree_util.tree_map_with_path(lambda p, v: restored.get(key(p), v), params)
  return merged, sorted(set(ours) & set(saved)), sorted(set(ours) - set(saved))


def _to_dict(tree):
  """Orbax metadata trees may use other mapping types; plain nested dicts are easier to walk."""
  if hasattr(tree, "item_metadata"):  # StepMetadata -> TreeMetadata
    tree = tree.item_metadata
  if hasattr(tree, "tree"):
    tree = tree.tree
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
